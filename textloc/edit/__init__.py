"""Uses of the localized text layers: edit the words in an image."""

from textloc.edit.core import DEFAULT_START_STEP, METHODS, EditResult, edit_text, score_edit
from textloc.quoted import quoted_spans, replace_quoted

__all__ = ["DEFAULT_START_STEP", "METHODS", "EditResult", "edit_text", "quoted_spans", "replace_quoted", "score_edit"]
