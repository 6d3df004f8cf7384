"""textloc: find and use the attention layers that render text in diffusion models.

Importing textloc is cheap: each public name is imported from its module when first used
(PEP 562), so ``import textloc`` does not pull torch, transformers and diffusers (7 s on a
shared CPU) before the first call that needs them. The block under ``TYPE_CHECKING`` says the
same to type checkers and editors.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the module it comes from.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("AttentionLayer", "RowPatch", "TextCache", "attention_layers", "patch", "patch_rows", "record", "record_text",
         "run_with_cache", "run_with_patches", "select_layers"),
        "textloc.engine",
    ),
    **dict.fromkeys(("EditResult", "ToxicTextGuard", "edit_image", "edit_text"), "textloc.edit"),
    **dict.fromkeys(("TrainConfig", "TrainedLora", "load_lora", "train_lora"), "textloc.finetune"),
    **dict.fromkeys(("Localization", "LocalizeConfig", "PromptPair", "localize", "make_pairs"), "textloc.localization"),
    "load_pipeline": "textloc.pipelines",
    "generator": "textloc.seeding",
}
__all__ = sorted([*_EXPORTS, "engine"])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        # A subpackage (``tl.engine``, ``tl.edit``, ...) is imported on first use, as a name is.
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'textloc' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # asked once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:
    from textloc import engine
    from textloc.edit import EditResult, ToxicTextGuard, edit_image, edit_text
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
    from textloc.finetune import TrainConfig, TrainedLora, load_lora, train_lora
    from textloc.localization import Localization, LocalizeConfig, PromptPair, localize, make_pairs
    from textloc.pipelines import load_pipeline
    from textloc.seeding import generator
