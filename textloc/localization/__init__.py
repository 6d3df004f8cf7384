"""Localization: find the attention layers that render the text in a model's images.

Each public name is imported from its module when first used (:mod:`textloc.lazy`): the command
line builds its options from :class:`LocalizeConfig` without importing torch.
"""

from __future__ import annotations

from textloc.lazy import lazy_namespace

#: Each public name and the module it comes from.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("DIRECTIONS", "METHODS", "RULES", "SCREENS", "SELECTIONS", "UNITS", "LocalizeConfig"), "textloc.localization.config",
    ),
    "localize": "textloc.localization.core",
    **dict.fromkeys(("PromptPair", "load_glyphcontrol", "load_words", "make_pairs", "pairs_from_prompts"), "textloc.scoring.prompts"),
    "Localization": "textloc.localization.report",
    **dict.fromkeys(
        ("Agreement", "Baselines", "HeadScores", "Heads", "HeldOut", "ImageScores", "Means", "Outcome", "PairScores", "SeedStability", "SetScores", "Share", "UnitScores"),
        "textloc.localization.results",
    ),
    "spearman": "textloc.localization.stats",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)
