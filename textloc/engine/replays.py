"""Gradients through a generation: the denoiser run with autograd at chosen steps, and layers replayed with a patch.

Attribution patching needs the prediction's gradient with respect to patch strengths (or to a
layer's output) while the pipeline itself runs under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import ModelHook

from textloc.engine.run_state import RunState, prediction_of



class GradientHook(ModelHook):
    """Runs the denoiser with autograd on at chosen steps and hands each prediction to a callback.

    Pipelines run under ``torch.no_grad``; this turns grad back on inside the denoiser only, with
    its parameters frozen so that gradients reach patch strengths and nothing else. The pipeline
    gets a detached prediction and goes on as usual.
    """

    def __init__(self, state: RunState, grad_steps: frozenset[int], on_output):
        super().__init__()
        self.state, self.grad_steps, self.on_output = state, grad_steps, on_output

    def new_forward(self, module, *args, **kwargs):
        call = self.state.call
        if call.step not in self.grad_steps:
            output = self.fn_ref.original_forward(*args, **kwargs)
            if self.on_output is not None:
                self.on_output(call, prediction_of(output))
            return output
        frozen = [p for p in module.parameters() if p.requires_grad]
        try:
            for parameter in frozen:
                parameter.requires_grad_(False)
            with torch.enable_grad():
                output = self.fn_ref.original_forward(*args, **kwargs)
                self.on_output(call, prediction_of(output))
        finally:
            for parameter in frozen:
                parameter.requires_grad_(True)
        if isinstance(output, tuple):
            return tuple(_detached(item) for item in output)
        output.sample = _detached(output.sample)
        return output


def _detached(item: Any) -> Any:
    """A prediction without its autograd history: a tensor, or Z-Image's list of per-row tensors."""
    if isinstance(item, list):
        return [_detached(row) for row in item]
    return item.detach() if torch.is_tensor(item) else item



def map_tensors(output: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``function`` applied to an attention module's output: a tensor, or a tuple of them (joint layers)."""
    if isinstance(output, tuple):
        return tuple(function(item) if torch.is_tensor(item) else item for item in output)
    return function(output)


def output_tensors(output: Any) -> tuple[torch.Tensor, ...]:
    """The tensors of an attention module's output, in order."""
    return tuple(item for item in output if torch.is_tensor(item)) if isinstance(output, tuple) else (output,)


