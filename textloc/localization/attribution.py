"""Attribution patching: rank every layer at once from one gradient, before the exact sweep.

Patching layer l with strength a moves its text K/V from the source's toward the target's:
``kv = kv_src + a * (kv_tgt - kv_src)``. The first-order effect of a full patch (a = 1) on a
differentiable proxy m is ``dm/da`` at a = 0, which one backward pass gives for every layer
together. The proxy is how far the source row's denoiser prediction lies from the target row's
at the same step and noise: a layer whose patch pulls the prediction toward the target's is a
candidate for rendering the text. Cost per pair: a two-row generation up to the last gradient
step and one backward pass per gradient step.
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
) -> list[float]:
    """Per layer, the estimated drop of ``||pred_source - pred_target||^2`` from patching it alone.

    Summed over ``grad_steps`` (step indices), on the CFG branch of ``settings`` ("both" uses
    the conditional one). Larger means the layer moves the source toward the target more.
    """
    strengths = torch.zeros(len(layers), requires_grad=True)
    plan = [
        RowPatch(
            (layer.name,), source=TARGET_ROW, row=SOURCE_ROW, patch_steps=settings.patch_steps, heads=settings.heads,
            branch=settings.branch, strength=strengths[i],
        )
        for i, layer in enumerate(layers)
    ]
    branch = "uncond" if settings.branch == "uncond" else "cond"
    total = torch.zeros(len(layers))

    def on_output(call, prediction: torch.Tensor) -> None:
        if not prediction.requires_grad or branch not in call.branch_rows:
            return
        rows = call.branch_rows[branch]
        distance = (prediction[rows[SOURCE_ROW]] - prediction[rows[TARGET_ROW]].detach()).float().pow(2).sum()
        (gradient,) = torch.autograd.grad(distance, strengths)
        total.sub_(gradient.cpu())  # a negative gradient: patching shrinks the distance

    run_with_patches(
        pipe, [pair.source, pair.target], plan, generator=generator(seed), on_output=on_output,
        grad_steps=grad_steps, stop_at_step=max(grad_steps) + 1, output_type="np", **generate_kwargs,
    )
    return total.tolist()
