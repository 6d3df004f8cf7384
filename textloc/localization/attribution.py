"""Attribution patching: rank every layer at once from gradients, before the exact sweep.

Patching layer l with strength a moves its text K/V from the source's toward the target's:
``kv = kv_src + a * (kv_tgt - kv_src)``. The proxy m is how far the source row's denoiser
prediction lies from the target row's at the same step and noise: a layer whose patch pulls the
prediction toward the target's is a candidate for rendering the text. Two screens estimate the
effect of a full patch (a = 1) on m:

- ``gradient``: ``dm/da`` at a = 0, the first-order estimate; one backward pass for every layer.
- ``integrated``: the gradient averaged over k points along the straight path from a = 0 to
  a = 1, all layers at the same strength (the midpoint rule of integrated gradients), which
  follows the path's curvature that a single gradient misses (softmax saturation, layers that
  cancel each other's effect). The k points are k rows of one batch: one generation, one backward.

Cost per pair: a generation of k + 1 rows up to the last gradient step and one backward pass per
gradient step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from textloc.attention import AttentionLayer
from textloc.localization.prompts import PromptPair
from textloc.localization.sweep import SOURCE_ROW, TARGET_ROW, PatchSettings
from textloc.patching import RowPatch, run_with_patches
from textloc.seeding import generator


def attribution_scores(
    pipe: Any,
    pair: PromptPair,
    layers: Sequence[AttentionLayer],
    settings: PatchSettings,
    seed: int,
    grad_steps: Sequence[int],
    generate_kwargs: dict[str, Any],
    points: Sequence[float] = (0.0,),
) -> list[float]:
    """Per layer, the estimated drop of ``||pred_source - pred_target||^2`` from patching it alone.

    The gradient with respect to the layer's patch strength, averaged over the strengths
    ``points`` (``(0.0,)``: plain attribution patching; :func:`path_points` for integrated
    gradients) and summed over ``grad_steps`` (step indices), on the CFG branch of ``settings``
    ("both" uses the conditional one). Larger means the layer moves the source toward the target more.
    """
    if not points:
        raise ValueError("Attribution needs at least one strength to take its gradient at.")
    # Row 0 is the source at the first point, row 1 the target, rows 2.. the source at the others.
    rows = [SOURCE_ROW, *range(TARGET_ROW + 1, TARGET_ROW + len(points))]
    strengths = torch.tensor([[float(point)] * len(layers) for point in points], requires_grad=True)
    plan = [
        RowPatch(
            (layer.name,), source=TARGET_ROW, row=row, patch_steps=settings.patch_steps, heads=settings.heads,
            branch=settings.branch, kv=settings.kv, strength=strengths[j, i],
        )
        for j, row in enumerate(rows)
        for i, layer in enumerate(layers)
    ]
    branch = "uncond" if settings.branch == "uncond" else "cond"
    total = torch.zeros(len(layers))

    def on_output(call, prediction: torch.Tensor) -> None:
        if not prediction.requires_grad or branch not in call.branch_rows:
            return
        batch = call.branch_rows[branch]
        target = prediction[batch[TARGET_ROW]].detach()
        # Each row's distance depends on its own strengths only, so one backward serves every point.
        distance = sum((prediction[batch[row]] - target).float().pow(2).sum() for row in rows)
        (gradient,) = torch.autograd.grad(distance, strengths)
        total.sub_(gradient.mean(dim=0).cpu())  # a negative gradient: patching shrinks the distance

    run_with_patches(
        pipe, [pair.source, pair.target] + [pair.source] * (len(points) - 1), plan, generator=generator(seed), on_output=on_output,
        grad_steps=grad_steps, stop_at_step=max(grad_steps) + 1, output_type="np", **generate_kwargs,
    )
    return total.tolist()


def path_points(k: int) -> tuple[float, ...]:
    """The strengths at which integrated gradients with ``k`` points takes its gradients: the
    midpoints of ``k`` equal steps from 0 to 1 (k = 2: 0.25 and 0.75)."""
    if k < 1:
        raise ValueError(f"Integrated gradients needs at least 1 point on the path; got {k}.")
    return tuple((j + 0.5) / k for j in range(k))
