"""Record the text K/V of attention layers from a generation: :func:`record`, :func:`run_with_cache`, :func:`record_text`."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from textloc import seeding
from textloc.architectures import denoiser, image_size_multiple
from textloc.architectures.spec import STEP_INDEPENDENT_KINDS
from textloc.engine.cache import TextCache
from textloc.engine.install import hooked, pipeline_kwargs, run_pipeline
from textloc.engine.recorder import Recorder
from textloc.engine.units import LayerSelector, select_layers
from textloc.fingerprint import module_fingerprint
from textloc.pipeline_calls import is_modular


def run_with_cache(
    pipe: Any,
    layers: LayerSelector,
    prompt: str | list[str],
    *,
    cache_device: torch.device | str | None = None,
    **generate_kwargs: Any,
) -> tuple[Any, TextCache]:
    """Generate ``prompt`` and record the text K/V of ``layers`` at every step and branch.

    Returns ``(pipeline output, TextCache)``. The cache is written to ``cache_device`` as it is
    recorded (default: the device that computes it). ``generate_kwargs`` go to the pipeline call.
    """
    selected = select_layers(pipe, layers)
    return _record(pipe, selected, prompt, cache_device, stop_when_complete=False, **generate_kwargs)


def record(
    pipe: Any,
    layers: LayerSelector,
    prompt: str | list[str],
    *,
    cache_device: torch.device | str | None = None,
    **generate_kwargs: Any,
) -> TextCache:
    """The text K/V of ``layers`` while generating ``prompt`` (see :func:`run_with_cache`).

    When every layer is step-independent (``cross``, ``added_kv``) the generation stops as soon as
    they have computed their text K/V in the first denoiser pass: nothing later adds to the cache.
    """
    selected = select_layers(pipe, layers)
    static = all(layer.kind in STEP_INDEPENDENT_KINDS for layer in selected)
    if not is_modular(pipe):  # whose decoders take only the image types (Qwen-Image's refuses "latent")
        generate_kwargs.setdefault("output_type", "latent" if hasattr(pipe, "vae") else "pt")
    return _record(pipe, selected, prompt, cache_device, stop_when_complete=static, **generate_kwargs)[1]


def _record(pipe, selected, prompt, cache_device, stop_when_complete: bool, **generate_kwargs) -> tuple[Any, TextCache]:
    if not isinstance(prompt, (str, list, tuple)):
        raise TypeError(f"prompt is a string or a list of strings, not {type(prompt).__name__}.")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    cache = TextCache(module_fingerprint(denoiser(pipe)), prompts, 0, {layer.name: layer.kind for layer in selected})
    kwargs = pipeline_kwargs(pipe, generate_kwargs)
    with hooked(pipe, selected, recorder=Recorder(cache, cache_device, stop_when_complete)) as state:
        output = run_pipeline(pipe, prompt=prompts if len(prompts) > 1 else prompts[0], **kwargs)
    cache.num_steps, cache.num_positions = state.num_steps, state.num_positions
    return output, cache


def record_text(pipe: Any, layers: LayerSelector, prompt: str | list[str], **generate_kwargs: Any) -> TextCache:
    """The text K/V of step-independent (``cross``, ``added_kv``) layers, at the least cost.

    Those K/V depend on the prompt only, not on the image or the step: one text encoding and part
    of one denoiser pass on the smallest image the model takes, stopped once the layers have them,
    from a private generator (the caller's global RNG is untouched). Of ``generate_kwargs`` only
    those that shape the text encoding are used: the parameters the pipeline's ``encode_prompt``
    also takes (``negative_prompt``, ``max_sequence_length``, ...), and ``guidance_scale``, which
    decides whether an unconditional branch is encoded.
    """
    selected = select_layers(pipe, layers)
    stepwise = [layer.name for layer in selected if layer.kind not in STEP_INDEPENDENT_KINDS]
    if stepwise:
        raise ValueError(
            f"{', '.join(stepwise)} rewrite the text at every step, so their text K/V cannot be encoded "
            "once: record them with `tl.record(pipe, layers, prompt, **generate_kwargs)` using the same "
            "generation settings, or generate the source in the same batch with `tl.run_with_patches`."
        )
    pipeline_kwargs(pipe, generate_kwargs)  # a misspelt argument is an error, not silently dropped
    # A pipeline that runs true CFG (FLUX, Qwen-Image) encodes its negative prompt with a second encode_prompt call.
    shaping = set(inspect.signature(pipe.encode_prompt).parameters) | {"guidance_scale", "true_cfg_scale", "negative_prompt"}
    settings = {**one_text_pass(pipe), "generator": seeding.generator(0)}
    return record(pipe, selected, prompt, **settings, **{k: v for k, v in generate_kwargs.items() if k in shaping})


def one_text_pass(pipe: Any) -> dict[str, Any]:
    """The cheapest call that runs every layer on the prompt once: one step on the smallest image."""
    size = smallest_image_side(pipe)
    return {"num_inference_steps": 1, "height": size, "width": size}



def smallest_image_side(pipe: Any, at_least: int = 32) -> int:
    """A small image side (pixels) that the pipeline's VAE and denoiser both divide evenly."""
    multiple = image_size_multiple(pipe)
    return -(-at_least // multiple) * multiple


