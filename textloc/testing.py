"""Tiny random-init pipelines of every family textloc serves, for tests and demos.

Each pipeline is the stock diffusers class of its family (``StableDiffusionXLPipeline``,
``FluxPipeline``, ...), built from configs its family's spec writes (:mod:`textloc.architectures`):
no file is read and nothing is downloaded, so they work on a machine with no network and no cached
weights. The models keep the layout that matters to the attention engine (U-Net cross-attention in
several blocks, added-K/V attention for IF, joint blocks for SD3, double- and single-stream blocks
for FLUX, attn2 for PixArt/Sana, every attention with at least two heads) at a size that builds in
about 0.1 s and generates a 32x32 image in two steps in about 0.1 s on one CPU thread.

Their weights are random, so their images are noise; what tests can rely on is that the same
seed gives the same pipeline and the same image, and that a different prompt gives a different
image.
"""

from __future__ import annotations

import inspect
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline

from textloc.architectures import family_of, tiny_family, tiny_pipelines
from textloc.architectures.tiny_parts import IMAGE_SIZE, LATENT_SIZE, TEXT_LENGTH, TEXT_WIDTH
from textloc.pipeline_calls import call_kwargs

#: The tiny random pipelines, by architecture name, in the order of their families.
ARCHITECTURES: tuple[str, ...] = tuple(tiny_pipelines())

__all__ = ["ARCHITECTURES", "IMAGE_SIZE", "LATENT_SIZE", "TEXT_LENGTH", "TEXT_WIDTH", "tiny_call_kwargs", "tiny_pipeline"]


def tiny_pipeline(arch: str, seed: int = 0) -> DiffusionPipeline:
    """A random-init pipeline of ``arch`` (one of :data:`ARCHITECTURES`), built offline.

    The same ``arch`` and ``seed`` always give the same weights; the caller's global torch RNG is
    left as it was. Every component is in eval mode and the progress bar is off. Run it with
    :func:`tiny_call_kwargs`.
    """
    tiny = tiny_family(arch).tiny[arch]
    with torch.random.fork_rng(devices=[]):
        pipe = getattr(diffusers, tiny.pipeline)(**tiny.components(seed))
    if tiny.adjust is not None:
        tiny.adjust(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_call_kwargs(arch_or_pipe: str | DiffusionPipeline) -> dict[str, Any]:
    """Keyword arguments that run a tiny pipeline fast, deterministically and with CFG.

    Two steps (or what the family's tiny pipeline needs) at :data:`IMAGE_SIZE`, NumPy output (``images`` is a float array ``(batch, H, W, 3)``
    in [0, 1]; the one format every pipeline agrees on, as IF's ``"pt"`` output stays in [-1, 1]),
    and a guidance scale above 1 so every denoiser that runs CFG sees a conditional and an
    unconditional branch; beyond these, what the family's tiny pipeline asks for (FLUX's
    ``true_cfg_scale`` and empty negative prompt, which FluxPipeline runs as a second,
    unconditional pass). Captions are not cleaned, sizes not snapped to resolution bins, and text
    is cut to :data:`TEXT_LENGTH` tokens.
    """
    tiny = _tiny_of(arch_or_pipe)
    pipeline_class = getattr(diffusers, tiny.pipeline)
    kwargs: dict[str, Any] = {"height": IMAGE_SIZE, "width": IMAGE_SIZE, "num_inference_steps": 2, "output_type": "np"}
    accepted = inspect.signature(pipeline_class.__call__).parameters
    if "guidance_scale" in accepted:  # HunyuanImage's guiders hold their own scale
        kwargs["guidance_scale"] = 4.0
    if "max_sequence_length" in accepted:
        kwargs["max_sequence_length"] = TEXT_LENGTH
    # call_kwargs only reads the signature of __call__, which the class has as well.
    return call_kwargs(pipeline_class, **{**kwargs, **tiny.call})


def _tiny_of(arch_or_pipe: str | DiffusionPipeline):
    if isinstance(arch_or_pipe, str):
        return tiny_family(arch_or_pipe).tiny[arch_or_pipe]
    for tiny in family_of(arch_or_pipe).tiny.values():
        if type(arch_or_pipe).__name__ == tiny.pipeline:
            return tiny
    known = ", ".join(tiny.pipeline for tiny in tiny_pipelines().values())
    raise ValueError(f"no tiny call arguments for {type(arch_or_pipe).__name__}; known pipelines: {known}")

