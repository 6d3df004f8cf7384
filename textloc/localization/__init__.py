"""Localization: find the attention layers that render the text in a model's images."""

from textloc.localization.config import DIRECTIONS, METHODS, RULES, SCREENS, SELECTIONS, UNITS, LocalizeConfig
from textloc.localization.core import localize
from textloc.scoring.prompts import PromptPair, load_glyphcontrol, load_words, make_pairs, pairs_from_prompts
from textloc.localization.report import Localization
from textloc.localization.stats import spearman

__all__ = [
    "DIRECTIONS",
    "METHODS",
    "RULES",
    "SCREENS",
    "SELECTIONS",
    "UNITS",
    "Localization",
    "LocalizeConfig",
    "PromptPair",
    "load_glyphcontrol",
    "load_words",
    "localize",
    "make_pairs",
    "pairs_from_prompts",
    "spearman",
]
