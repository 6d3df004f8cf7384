"""textloc: find and use the attention layers that render text in diffusion models.

Importing textloc is cheap: each public name is imported from its module when first used
(PEP 562), so ``import textloc`` does not pull torch, transformers and diffusers (7 s on a
shared CPU) before the first call that needs them. The block under ``TYPE_CHECKING`` says the
same to type checkers and editors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textloc.lazy import lazy_namespace

__version__ = "0.1.0"

#: Each public name and the module it comes from.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("AttentionLayer", "RowPatch", "TextCache", "attention_layers", "patch", "patch_rows", "record", "record_text",
         "run_with_cache", "run_with_patches", "select_layers"),
        "textloc.engine",
    ),
    **dict.fromkeys(("EditResult", "edit_image", "edit_text"), "textloc.edit"),
    **dict.fromkeys(("ToxicTextGuard", "train_guard_lora"), "textloc.guard"),
    **dict.fromkeys(("ClosedFormEdit", "TrainConfig", "TrainedLora", "closed_form_edit", "load_lora", "train_lora"), "textloc.finetune"),
    **dict.fromkeys(("Localization", "LocalizeConfig", "PromptPair", "localize", "make_pairs"), "textloc.localization"),
    "load_pipeline": "textloc.pipelines",
    "generator": "textloc.seeding",
}
__all__ = sorted([*_EXPORTS, "engine"])
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)


if TYPE_CHECKING:
    from textloc import engine
    from textloc.edit import EditResult, edit_image, edit_text
    from textloc.engine import (
        AttentionLayer,
        RowPatch,
        TextCache,
        attention_layers,
        patch,
        patch_rows,
        record,
        record_text,
        run_with_cache,
        run_with_patches,
        select_layers,
    )
    from textloc.finetune import ClosedFormEdit, TrainConfig, TrainedLora, closed_form_edit, load_lora, train_lora
    from textloc.guard import ToxicTextGuard, train_guard_lora
    from textloc.localization import Localization, LocalizeConfig, PromptPair, localize, make_pairs
    from textloc.pipelines import load_pipeline
    from textloc.seeding import generator
