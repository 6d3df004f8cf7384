"""Exact activation patching, batched: many layer sets of one prompt pair in few generations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textloc.scoring.prompts import PromptPair
from textloc.engine import KV, BranchChoice, RowPatch, StepWindow, run_with_patches
from textloc.pipeline_calls import images_of
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


@dataclass(frozen=True)
class Unit:
    """What a localization patches, scores and selects: a whole layer, or one head of it.

    Logs and reports name a unit by :attr:`name` (``"<layer>"`` or ``"<layer>@<head>"``), so
    :meth:`parse` reads it back.
    """

    layer: str
    head: int | None = None

    @property
    def name(self) -> str:
        return self.layer if self.head is None else f"{self.layer}@{self.head}"

    @classmethod
    def parse(cls, name: str) -> Unit:
        layer, at, head = name.rpartition("@")
        return cls(layer, int(head)) if at else cls(name)


def unit_patches(units: Sequence[str], row: int, settings: PatchSettings) -> list[RowPatch]:
    """The patches that give batch row ``row`` the target row's text at ``units`` (their names):
    one for the whole layers, one per layer whose heads are patched one by one."""
    layers, heads = [], {}
    for unit in map(Unit.parse, units):
        if unit.head is None:
            layers.append(unit.layer)
        else:
            heads.setdefault(unit.layer, []).append(unit.head)
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

    A set names whole layers or single heads of layers (:class:`Unit`'s names).

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
        output = run_with_patches(pipe, prompts, plan, generator=generator(seed), output_type="np", **generate_kwargs)
        images = np.asarray(images_of(output))
        if source is None:
            source, target = images[SOURCE_ROW], images[TARGET_ROW]
        patched.extend(images[2:])
    return PairImages(source, target, patched)
