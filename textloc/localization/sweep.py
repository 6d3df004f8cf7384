"""Exact activation patching, batched: many layer sets of one prompt pair in few generations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textloc.scoring.prompts import PromptPair
from textloc.engine import KV, BranchChoice, RowPatch, StepWindow, run_with_patches
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


def head_unit(layer: str, head: int) -> str:
    """The name of one attention head as a unit of a layer set: ``"<layer>@<head>"``."""
    return f"{layer}@{head}"


def split_unit(unit: str) -> tuple[str, int | None]:
    """A unit's layer and head (``None`` for a whole layer)."""
    layer, at, head = unit.rpartition("@")
    return (layer, int(head)) if at else (unit, None)


def unit_patches(units: Sequence[str], row: int, settings: PatchSettings) -> list[RowPatch]:
    """The patches that give batch row ``row`` the target row's text at ``units``: one for the
    whole layers, one per layer whose heads are patched one by one."""
    layers, heads = [], {}
    for unit in units:
        layer, head = split_unit(unit)
        if head is None:
            layers.append(layer)
        else:
            heads.setdefault(layer, []).append(head)
    shared = {"source": TARGET_ROW, "row": row, "patch_steps": settings.patch_steps, "branch": settings.branch, "kv": settings.kv}
    patches = [RowPatch(tuple(layers), heads=settings.heads, **shared)] if layers else []
    patches += [RowPatch((layer,), heads=tuple(sorted(chosen)), **shared) for layer, chosen in heads.items()]
    return patches


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

    A set names whole layers or single heads of layers (:func:`head_unit`).

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
        plan = [patch for i, units in enumerate(sets) for patch in unit_patches(units, 2 + i, settings)]
        images = np.asarray(run_with_patches(pipe, prompts, plan, generator=generator(seed), output_type="np", **generate_kwargs).images)
        if source is None:
            source, target = images[SOURCE_ROW], images[TARGET_ROW]
        patched.extend(images[2:])
    return PairImages(source, target, patched)
