"""Edit the words in an image through the localized text layers (the guard is :mod:`textloc.guard`).

Each public name is imported from its module when first used (:mod:`textloc.lazy`): the command
line's ``--method`` choices come without torch.
"""

from __future__ import annotations

from textloc.lazy import lazy_namespace

#: Each public name and the module it comes from.
_EXPORTS: dict[str, str] = {
    "EDIT_METHODS": "textloc.edit.methods",
    **dict.fromkeys(("EditResult", "EditResults", "edit_image", "edit_text", "score_edit"), "textloc.edit.core"),
    **dict.fromkeys(("quoted_spans", "replace_quoted"), "textloc.scoring.quoted"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)
