"""Exact activation patching, batched: many layer sets of one prompt pair in few generations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textloc.localization.prompts import PromptPair
from textloc.patching import KV, BranchChoice, RowPatch, StepWindow, run_with_patches
from textloc.seeding import generator

SOURCE_ROW, TARGET_ROW = 0, 1


@dataclass(frozen=True)
class PatchSettings:
    """What every patch of a localization shares: step window, heads, CFG branch, keys and/or values."""

    patch_steps: StepWindow = None
    heads: tuple[int, ...] | None = None
    branch: BranchChoice = "cond"
    kv: KV = "both"


@dataclass
class PairImages:
    """The unpatched source and target images of a pair and one patched image per layer set."""

    source: np.ndarray
    target: np.ndarray
    patched: list[np.ndarray]


def check_max_batch(max_batch: int) -> None:
    """A batch holds the source row, the target row and at least one patched row."""
    if max_batch < 3:
        raise ValueError(f"max_batch must be at least 3 (source, target and one patched row), not {max_batch}.")


def generate_patched(
    pipe: Any,
    pair: PromptPair,
    layer_sets: Sequence[Sequence[str]],
    settings: PatchSettings,
    seed: int,
    max_batch: int,
    generate_kwargs: dict[str, Any],
) -> PairImages:
    """Generate the source prompt with each layer set patched from the target prompt.

    Each batch holds the source row, the target row (the live source of every patch, so joint
    layers get the target's K/V of the same step) and up to ``max_batch - 2`` patched rows, all
    from the same noise. The source and target images come from the first batch.
    """
    if not layer_sets:
        raise ValueError("No layer set to patch: give at least one.")
    check_max_batch(max_batch)
    chunk = max_batch - 2
    source = target = None
    patched: list[np.ndarray] = []
    for start in range(0, len(layer_sets), chunk):
        sets = layer_sets[start : start + chunk]
        prompts = [pair.source, pair.target] + [pair.source] * len(sets)
        plan = [
            RowPatch(tuple(layers), source=TARGET_ROW, row=2 + i, patch_steps=settings.patch_steps, heads=settings.heads, branch=settings.branch, kv=settings.kv)
            for i, layers in enumerate(sets)
        ]
        images = np.asarray(run_with_patches(pipe, prompts, plan, generator=generator(seed), output_type="np", **generate_kwargs).images)
        if source is None:
            source, target = images[SOURCE_ROW], images[TARGET_ROW]
        patched.extend(images[2:])
    return PairImages(source, target, patched)
