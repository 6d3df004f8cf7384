"""The one plan edit and guard share: "these rows' text layers read these prompts from step s".

Step-independent units (``cross``, ``added_kv``, ``refiner`` layers, the pooled vector) read a prompt that is encoded once
(:func:`~textloc.engine.recording.record_text`) and injected into the very batch the caller runs:
no extra denoising row. Layers that rewrite the text at every step (``joint``, ``single``) read it
live from extra rows that generate the prompt alongside, which the caller appends to its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from textloc.architectures.spec import STEP_INDEPENDENT_KINDS
from textloc.engine.plan import RowPatch, check_step_window
from textloc.engine.recording import record_text
from textloc.engine.units import AttentionLayer

@dataclass(frozen=True)
class TextSwap:
    """A plan: the patches to run with, and the rows to append to the batch for them.

    ``extra_prompts[i]`` is generated as ``len(rows[i])`` extra rows after the caller's (one row,
    or ``num_images_per_prompt`` rows), and ``extra_noise_rows`` names, for every extra row in
    order, the caller's row whose noise it must start from. Both are empty when the layers take
    a cache.
    """

    patches: list[RowPatch]
    extra_prompts: list[str]
    extra_noise_rows: list[int]


def plan_text_swap(
    pipe: Any,
    layers: Sequence[AttentionLayer],
    rows: Sequence[Sequence[int]],
    prompts: Sequence[str],
    batch_size: int,
    start_step: int | float,
    **text_kwargs: Any,
) -> TextSwap:
    """The plan by which batch rows ``rows[i]`` read ``prompts[i]`` at ``layers`` from ``start_step`` on.

    ``batch_size`` is the number of rows the caller's batch has before any extra row; ``text_kwargs``
    are the arguments that shape the prompts' encoding (as the caller's call passes them).
    """
    if len(rows) != len(prompts):
        raise ValueError(f"{len(rows)} groups of rows for {len(prompts)} prompts.")
    window = (start_step, None)
    check_step_window(window)
    names = tuple(layer.name for layer in layers)
    if all(layer.kind in STEP_INDEPENDENT_KINDS for layer in layers):
        cache = record_text(pipe, names, list(prompts), **text_kwargs)
        patches = [RowPatch(names, source=cache, source_row=i, row=row, patch_steps=window) for i, group in enumerate(rows) for row in group]
        return TextSwap(patches, [], [])
    targets = [row for group in rows for row in group]
    patches = [RowPatch(names, source=batch_size + k, row=row, patch_steps=window) for k, row in enumerate(targets)]
    return TextSwap(patches, list(prompts), targets)
