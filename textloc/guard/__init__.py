"""Keep toxic words out of images: the prompt side reads the whole prompt, normalized (every
quoting style, unquoted, spaced or split letters, look-alikes, leet); the image side reads what was
generated and regenerates, or blanks, what still shows a toxic word; the text layers read a benign
word instead.

Each public name is imported from its module when first used (:mod:`textloc.lazy`): the command
line's ``--method`` and ``--detector`` choices come without torch.
"""

from __future__ import annotations

from textloc.lazy import lazy_namespace

#: Each public name and the module it comes from.
_EXPORTS: dict[str, str] = {
    "GUARD_METHODS": "textloc.guard.methods",
    **dict.fromkeys(("DETECTORS", "Detector", "WordDetector", "get_detector"), "textloc.guard.detectors"),
    **dict.fromkeys(("Finding", "find_toxic"), "textloc.guard.findings"),
    "ImageCheck": "textloc.guard.image_check",
    **dict.fromkeys(("GuardPair", "GuardPairs", "train_guard_lora"), "textloc.guard.lora"),
    **dict.fromkeys(
        ("BENIGN_WORDS", "Benign", "Drop", "GuardOutput", "Mask", "PromptReport", "ToxicTextGuard"),
        "textloc.guard.runtime",
    ),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)
