"""Uses of the localized text layers: edit the words in an image, guard against toxic ones."""

from textloc.edit.core import EDIT_METHODS, EditResult, EditResults, edit_image, edit_text, score_edit
from textloc.edit.detectors import DETECTORS, Detector, WordDetector, get_detector
from textloc.edit.findings import Finding, find_toxic
from textloc.edit.image_check import ImageCheck
from textloc.edit.guard import BENIGN_WORDS, GUARD_METHODS, Benign, Drop, GuardOutput, Mask, PromptReport, ToxicTextGuard
from textloc.scoring.quoted import quoted_spans, replace_quoted

__all__ = [
    "BENIGN_WORDS", "DETECTORS", "EDIT_METHODS", "GUARD_METHODS", "Benign", "Detector", "Drop", "EditResult", "EditResults", "Finding",
    "GuardOutput", "ImageCheck", "Mask", "PromptReport", "ToxicTextGuard", "WordDetector", "edit_image", "edit_text", "find_toxic", "get_detector", "quoted_spans",
    "replace_quoted", "score_edit",
]
