"""Attribution patching: rank every layer at once from gradients, before the exact sweep.

Patching layer l with strength a moves its text K/V from the source's toward the target's:
``kv = kv_src + a * (kv_tgt - kv_src)``. The proxy m is how far the source row's denoiser
prediction lies from the target row's at the same step and noise: a layer whose patch pulls the
prediction toward the target's is a candidate for rendering the text. Three screens estimate the
effect of a full patch (a = 1) on m:

- ``gradient``: ``dm/da`` at a = 0, the first-order estimate; one backward pass for every layer.
- ``integrated``: the gradient averaged over k points along the straight path from a = 0 to
  a = 1, all layers at the same strength (the midpoint rule of integrated gradients), which
  follows the path's curvature that a single gradient misses (softmax saturation, layers that
  cancel each other's effect). The k points are k rows of one batch: one generation, one backward.
- ``key-exact``: AtP*'s fix for saturated attention (Kramár et al. 2024), for text K/V: a patched
  layer's softmax can saturate where its gradient at no patch sees nothing, so each layer's
  attention output is computed exactly with the target's text K/V patched in, and only what follows
  it is linearized: ``-(dm/dO_l) . (O_l(patched) - O_l(clean))``, ``O_l`` the attention module's
  output (a joint layer's image and text outputs both) and ``dm/dO_l`` taken in the unpatched run.
  Every layer kind, FLUX's single-stream blocks included, goes through the engine's replays
  (:func:`textloc.engine.run_with_patches`).

Cost per pair: a generation of k + 1 rows (two for ``key-exact``) up to the last gradient step and
one backward pass per gradient step; ``key-exact`` calls every layer once more at each gradient step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from textloc.engine import AttentionLayer, RowPatch, run_with_patches
from textloc.scoring.prompts import PromptPair
from textloc.localization.sweep import SOURCE_ROW, TARGET_ROW, PatchSettings
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
    plan = [_patch(layer, settings, row, strengths[j, i]) for j, row in enumerate(rows) for i, layer in enumerate(layers)]
    total = torch.zeros(len(layers))

    def on_output(call, prediction: torch.Tensor) -> None:
        # Each row's distance depends on its own strengths only, so one backward serves every point.
        distance = _distance(call, prediction, settings, rows)
        if distance is not None:
            (gradient,) = torch.autograd.grad(distance, strengths)
            total.sub_(gradient.mean(dim=0).cpu())  # a negative gradient: patching shrinks the distance

    prompts = [pair.source, pair.target] + [pair.source] * (len(points) - 1)
    _run_to_the_last_gradient(pipe, prompts, plan, seed, grad_steps, generate_kwargs, on_output)
    return total.tolist()


def key_exact_scores(
    pipe: Any,
    pair: PromptPair,
    layers: Sequence[AttentionLayer],
    settings: PatchSettings,
    seed: int,
    grad_steps: Sequence[int],
    generate_kwargs: dict[str, Any],
) -> list[float]:
    """Per layer, the estimated drop of ``||pred_source - pred_target||^2`` from patching it alone,
    its attention output under the patch computed exactly: ``-(dm/dO) . (O(patched) - O)``,
    summed over ``grad_steps`` (step indices), on the CFG branch of ``settings`` as in
    :func:`attribution_scores`."""
    # One unpatched run of the source and the target, in which every layer is replayed with its patch.
    replays = [_patch(layer, settings, SOURCE_ROW) for layer in layers]
    total = [0.0] * len(layers)

    def on_output(call, prediction: torch.Tensor) -> None:
        distance = _distance(call, prediction, settings, [SOURCE_ROW])
        if distance is None:
            return
        found = [call.replays[layer.name] for layer in layers]
        outputs = [output for replay in found for output in replay.output]
        gradients = iter(torch.autograd.grad(distance, outputs, allow_unused=True))
        for i, replay in enumerate(found):
            for output, patched in zip(replay.output, replay.patched):
                gradient = next(gradients)
                if gradient is not None:  # None: an output that feeds nothing (the text stream of SD3's last block)
                    total[i] -= float(_dot(gradient, patched - output.detach()))

    _run_to_the_last_gradient(pipe, [pair.source, pair.target], [], seed, grad_steps, generate_kwargs, on_output, replays)
    return total


def _patch(layer: AttentionLayer, settings: PatchSettings, row: int, strength: float | torch.Tensor = 1.0) -> RowPatch:
    """The patch that gives ``layer`` of batch row ``row`` the target row's text signal, restricted as ``settings`` say."""
    return RowPatch(
        (layer.name,), source=TARGET_ROW, row=row, patch_steps=settings.patch_steps, heads=settings.heads,
        branch=settings.branch, kv=settings.kv, strength=strength,
    )


def _distance(call: Any, prediction: torch.Tensor, settings: PatchSettings, rows: Sequence[int]) -> torch.Tensor | None:
    """m summed over ``rows``: each row's squared distance to the target row's prediction on the
    CFG branch the patch acts on ("both": the conditional one); ``None`` for a call without
    gradients or without that branch."""
    branch = "uncond" if settings.branch == "uncond" else "cond"
    if not prediction.requires_grad or branch not in call.branch_rows:
        return None
    batch = call.branch_rows[branch]
    target = prediction[batch[TARGET_ROW]].detach()
    return sum((prediction[batch[row]] - target).float().pow(2).sum() for row in rows)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a . b``, summed in float32 at least: in half precision a sum over a whole activation loses the score."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    return (a.to(dtype) * b.to(dtype)).sum()


def _run_to_the_last_gradient(
    pipe: Any, prompts: list[str], patches: list[RowPatch], seed: int, grad_steps: Sequence[int], generate_kwargs: dict[str, Any],
    on_output: Callable[[Any, torch.Tensor], None], replays: Sequence[RowPatch] = (),
) -> None:
    """One batched generation of ``prompts`` from the seed's noise, stopped after the last gradient step."""
    run_with_patches(
        pipe, prompts, patches, generator=generator(seed), on_output=on_output, grad_steps=grad_steps, replays=replays,
        stop_at_step=max(grad_steps) + 1, output_type="np", **generate_kwargs,
    )


def path_points(k: int) -> tuple[float, ...]:
    """The strengths at which integrated gradients with ``k`` points takes its gradients: the
    midpoints of ``k`` equal steps from 0 to 1 (k = 2: 0.25 and 0.75)."""
    if k < 1:
        raise ValueError(f"Integrated gradients needs at least 1 point on the path; got {k}.")
    return tuple((j + 0.5) / k for j in range(k))
