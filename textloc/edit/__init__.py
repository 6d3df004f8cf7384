"""Uses of the localized text layers: edit the words in an image, guard against toxic ones.

Each public name is imported from its module when first used (:mod:`textloc.lazy`): the command
line's ``--method`` and ``--detector`` choices come without torch.
"""

from __future__ import annotations

from textloc.lazy import lazy_namespace

#: Each public name and the module it comes from.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("EDIT_METHODS", "GUARD_METHODS"), "textloc.edit.methods"),
    **dict.fromkeys(("EditResult", "EditResults", "edit_image", "edit_text", "score_edit"), "textloc.edit.core"),
    **dict.fromkeys(("DETECTORS", "Detector", "WordDetector", "get_detector"), "textloc.edit.detectors"),
    **dict.fromkeys(("Finding", "find_toxic"), "textloc.edit.findings"),
    "ImageCheck": "textloc.edit.image_check",
    **dict.fromkeys(
        ("BENIGN_WORDS", "Benign", "Drop", "GuardOutput", "Mask", "PromptReport", "ToxicTextGuard"),
        "textloc.edit.guard",
    ),
    **dict.fromkeys(("quoted_spans", "replace_quoted"), "textloc.scoring.quoted"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)
