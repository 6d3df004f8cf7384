"""The anchor: a penalty on how far a LoRA moves the text keys and values of chosen prompts.

For a LoRA ``ΔW = s·B A`` on a text K/V projection ``W``, the mean square change of the outputs
over the anchor prompts' text tokens is ``tr(ΔW Σ ΔWᵀ)``, with ``Σ`` their inputs' second moment
(:func:`textloc.engine.text_input_moments`, recorded once on the base model). Each projection's
term is taken relative to the size of its own outputs there (less any bias), ``tr(W Σ Wᵀ)``, so a weight means the
same on any model: 0.01 is a change of a tenth of the outputs' root mean square. The anchor is the
mean over the anchored projections. Where the text K/V depend on the prompt alone (``cross`` and
``added_kv`` layers), a LoRA on those projections alone changes nothing else, so the anchor
measures all that it changes for the anchor prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from textloc.architectures import denoiser
from textloc.engine.input_moments import text_kv_columns
from textloc.engine.units import AttentionLayer
from textloc.finetune.lora import ADAPTER_NAME


def anchored_paths(layers: Sequence[AttentionLayer], paths: Sequence[str]) -> dict[str, list[slice] | None]:
    """The LoRA targets ``paths`` the anchor holds, the text K/V projections of ``layers``, each with
    the output columns that are keys or values (:func:`~textloc.engine.input_moments.text_kv_columns`);
    an error where there are none."""
    columns = {path: blocks for layer in layers if layer.kind != "pooled" for path, blocks in text_kv_columns(layer).items()}
    anchored = {path: columns[path] for path in paths if path in columns}
    if not anchored:
        raise ValueError(
            "The anchor holds the text keys and values still, but the LoRA trains none of the layers' text K/V "
            f"projections ({', '.join(columns) or 'none'}); add them to targets, e.g. ('to_k', 'to_v')."
        )
    return anchored


class TextAnchor:
    """The anchor of the LoRA that :func:`~textloc.finetune.lora.add_lora` put on ``pipe``, over its
    projections ``anchored`` (:func:`anchored_paths`), from the anchor prompts' input moments
    (``moments``: projection path -> ``Σ``, recorded on the base model); ``adapter``: the LoRA's
    name in peft's layers (a LoRA loaded by ``pipe.load_lora_weights`` gets diffusers' own). Made
    where the model is: the matrices are kept on the device its weights are on."""

    def __init__(
        self, pipe: Any, anchored: Mapping[str, list[slice] | None], moments: Mapping[str, torch.Tensor], adapter: str = ADAPTER_NAME,
    ):
        self.adapter = adapter
        modules = dict(denoiser(pipe).named_modules())
        self.terms = []
        for path, blocks in anchored.items():
            module = modules[path]
            weight = module.base_layer.weight.detach().float()
            rows = None if blocks is None else torch.cat([torch.arange(weight.shape[0])[block] for block in blocks]).to(weight.device)
            if rows is not None:
                weight = weight[rows]
            moment = moments[path].to(weight.device)
            size = float((weight @ moment * weight).sum())
            self.terms.append((module, rows, moment, size))

    def __call__(self) -> torch.Tensor:
        """The mean, over the anchored projections, of ``tr(ΔW Σ ΔWᵀ) / tr(W Σ Wᵀ)``; differentiable in the LoRA's weights."""
        total = 0.0
        for module, rows, moment, size in self.terms:
            down = module.lora_A[self.adapter].weight.float()
            up = module.lora_B[self.adapter].weight.float()
            if rows is not None:  # a fused projection: its K and V rows alone
                up = up[rows]
            scale = module.scaling[self.adapter]
            total = total + scale * scale * (up @ (down @ moment @ down.T) * up).sum() / size
        return total / len(self.terms)
