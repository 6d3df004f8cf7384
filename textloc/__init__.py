"""textloc: find and use the attention layers that render text in diffusion models."""

from textloc import engine
from textloc.edit import EditResult, ToxicTextGuard, edit_image, edit_text
from textloc.finetune import TrainConfig, TrainedLora, load_lora, train_lora
from textloc.localization import Localization, LocalizeConfig, PromptPair, localize, make_pairs
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
from textloc.pipelines import load_pipeline
from textloc.seeding import generator

__all__ = [
    "AttentionLayer",
    "EditResult",
    "Localization",
    "LocalizeConfig",
    "PromptPair",
    "RowPatch",
    "TextCache",
    "ToxicTextGuard",
    "TrainConfig",
    "TrainedLora",
    "attention_layers",
    "edit_image",
    "edit_text",
    "engine",
    "generator",
    "load_lora",
    "load_pipeline",
    "localize",
    "make_pairs",
    "patch",
    "patch_rows",
    "record",
    "record_text",
    "run_with_cache",
    "run_with_patches",
    "select_layers",
    "train_lora",
]
__version__ = "0.1.0"
