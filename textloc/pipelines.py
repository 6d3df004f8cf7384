"""Load a pipeline (a named model, or any diffusers id/path), and fingerprint its weights."""

from __future__ import annotations

import os
from typing import Any

import torch
from diffusers import DiffusionPipeline

from textloc.architectures import default_image_side
from textloc.models import DEFAULT_MODEL, TEXTLOC_TINY, embedded_model_of, find_named_model
from textloc.pipeline_calls import call_kwargs, from_pretrained

__all__ = ["TINY_MODEL_DIR", "call_kwargs", "load_pipeline", "model_image_side", "recommended_settings"]

#: Where textloc-tiny's weights are shipped.
TINY_MODEL_DIR = TEXTLOC_TINY.folder


def load_pipeline(
    model: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **from_pretrained_kwargs: Any,
) -> DiffusionPipeline:
    """Load a text-to-image pipeline by name.

    ``model`` is a named model (``"textloc-tiny"``, the embedded model, no download;
    ``"tiny-random-<arch>"``, a random-init pipeline built in code; see
    :func:`textloc.models.named_models`), or anything that ``DiffusionPipeline.from_pretrained``
    accepts (a hub id or a local folder, as a string or a path). The progress bar is off. Any other
    name raises :class:`textloc.models.UnknownModelError`, which lists the named models.
    """
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        raise TypeError(f"model is a name, a hub id or a folder, not {type(model).__name__}.")
    named = find_named_model(model)
    if named is not None:
        pipe = named.load(dtype, **from_pretrained_kwargs)
    else:
        pipe = from_pretrained(model, dtype, **from_pretrained_kwargs)
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def model_image_side(pipe: Any) -> int:
    """The image side ``pipe``'s model is meant to run at: an embedded model's own (its settings;
    textloc-tiny-flux is 64 pixels where FluxPipeline's default is 512), else the pipeline's default."""
    embedded = embedded_model_of(pipe)
    return (embedded.settings.get("height") if embedded is not None else None) or default_image_side(pipe)


def recommended_settings(model: str) -> dict[str, Any]:
    """The sampler settings of a named model (:attr:`textloc.models.NamedModel.settings`); empty
    for other models."""
    named = find_named_model(model)
    return {} if named is None else dict(named.settings)
