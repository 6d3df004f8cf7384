"""What the text K/V projections of attention layers read: :func:`text_input_moments`.

A change ``ΔW`` to a projection moves the output of an input ``x`` by ``ΔW x``; over the text
tokens of some prompts its mean square is ``tr(ΔW Σ ΔWᵀ)``, where ``Σ = E[x xᵀ]`` is the second
moment of those tokens' inputs. With ``Σ`` recorded once, how far a LoRA moves those prompts' text
keys and values is a quadratic in its weights, with no forward pass (the anchor of
:func:`textloc.finetune.train_lora`; closed-form concept edits build on the same matrix).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from textloc import seeding
from textloc.architectures.spec import STEP_INDEPENDENT_KINDS
from textloc.engine.input_moments import InputMoments, text_kv_columns
from textloc.engine.install import hooked, pipeline_kwargs, run_pipeline
from textloc.engine.recording import one_text_pass
from textloc.engine.units import LayerSelector, select_layers


def text_input_moments(
    pipe: Any,
    layers: LayerSelector,
    prompts: Sequence[str],
    *,
    batch_size: int = 8,
    progress: bool = True,
    **generate_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """The second moment ``E[x xᵀ]`` (float32, on the CPU) of what each text K/V projection of
    ``layers`` reads over the text tokens of ``prompts``, keyed by its full module path.

    Every token a layer attends to counts (its padding where the model attends to it), in every
    CFG branch the pipeline runs. Step-independent layers (``cross``, ``added_kv``, ...) read the
    prompt alone: one text encoding and part of one denoiser pass per batch, as
    :func:`~textloc.engine.record_text`. Layers that rewrite the text at every step (``joint``,
    ``single``) are read at every step of a generation with ``generate_kwargs`` (each batch from
    seed 0 unless they hold a ``generator``).
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts is a non-empty list of prompts, e.g. ['A sign that says \"OPEN\".'].")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: prompts per pipeline call, a positive integer.")
    selected = select_layers(pipe, layers)
    for layer in selected:
        text_kv_columns(layer)  # a unit with no text tokens is refused before any work
    static = all(layer.kind in STEP_INDEPENDENT_KINDS for layer in selected)
    kwargs = pipeline_kwargs(pipe, generate_kwargs)
    if static:  # the prompt alone shapes what they read
        kwargs.update(one_text_pass(pipe), output_type="latent" if hasattr(pipe, "vae") else "pt")
    moments = InputMoments()
    seeded = kwargs.get("generator") is None
    batches = [list(prompts[start : start + batch_size]) for start in range(0, len(prompts), batch_size)]
    for batch in tqdm(batches, desc="text inputs", disable=not progress):
        if seeded:  # each batch from the same seed unless the caller gave a generator
            kwargs["generator"] = seeding.generator(0)
        with hooked(pipe, selected, input_moments=moments):
            run_pipeline(pipe, prompt=batch, **kwargs)
    return moments.moments()
