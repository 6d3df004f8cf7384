"""Load a pipeline (textloc-tiny, a tiny random one, or any diffusers id/path) and call it."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline
from packaging.version import Version

TINY_MODEL_NAME = "textloc-tiny"
TINY_MODEL_DIR = Path(__file__).parent / "tiny" / "weights"
RANDOM_PREFIX = "tiny-random-"
# diffusers 0.40 renamed from_pretrained's `torch_dtype` to `dtype` and warns on the old name.
_DTYPE_KEYWORD = "dtype" if Version(diffusers.__version__) >= Version("0.40.0") else "torch_dtype"


def load_pipeline(
    model: str = TINY_MODEL_NAME,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **from_pretrained_kwargs: Any,
) -> DiffusionPipeline:
    """Load a text-to-image pipeline by name.

    ``model`` is ``"textloc-tiny"`` (the embedded model, no download), ``"tiny-random-<arch>"``
    (a random-init pipeline from :func:`textloc.testing.tiny_pipeline`), or anything that
    ``DiffusionPipeline.from_pretrained`` accepts (a hub id or a local folder).
    """
    if model.startswith(RANDOM_PREFIX):
        from textloc.testing import tiny_pipeline

        if from_pretrained_kwargs:
            raise ValueError(f"{model} is built in code, not loaded: the from_pretrained options "
                             f"{sorted(from_pretrained_kwargs)} do not apply to it.")
        pipe = tiny_pipeline(model[len(RANDOM_PREFIX):])
        if dtype is not None:
            pipe.to(dtype=dtype)
    else:
        if model == TINY_MODEL_NAME and not (TINY_MODEL_DIR / "model_index.json").exists():
            raise FileNotFoundError(
                f"textloc-tiny weights are missing from {TINY_MODEL_DIR}; reinstall textloc, or "
                "retrain them with `python -m textloc.tiny.train`."
            )
        if dtype is not None:
            from_pretrained_kwargs[_DTYPE_KEYWORD] = dtype
        source = TINY_MODEL_DIR if model == TINY_MODEL_NAME else model
        pipe = DiffusionPipeline.from_pretrained(source, **from_pretrained_kwargs)
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def recommended_settings(model: str, pipe: DiffusionPipeline) -> dict[str, Any]:
    """The generation settings a named model is meant to run with; empty for other models.

    textloc-tiny samples well in far fewer steps than IFPipeline's default 100; the tiny random
    pipelines are built for 2 steps at 32x32, and their stock defaults do not even fit them.
    """
    if model == TINY_MODEL_NAME:
        from textloc.tiny.evaluate import GUIDANCE_SCALE, SAMPLING_STEPS

        return {"num_inference_steps": SAMPLING_STEPS, "guidance_scale": GUIDANCE_SCALE}
    if model.startswith(RANDOM_PREFIX):
        from textloc.testing import tiny_call_kwargs

        settings = tiny_call_kwargs(pipe)
        del settings["output_type"]
        return settings
    return {}


def call_kwargs(pipe: DiffusionPipeline, **kwargs: Any) -> dict[str, Any]:
    """Add the keyword arguments a pipeline needs to run offline and reproducibly.

    IF and PixArt clean captions with optional packages (bs4, ftfy) unless told not to, and
    PixArt/Sana snap the size to a resolution bin; both are switched off where the pipeline
    accepts the argument, unless the caller set them.
    """
    accepted = inspect.signature(pipe.__call__).parameters
    defaults = {"clean_caption": False, "use_resolution_binning": False}
    for key, value in defaults.items():
        if key in accepted:
            kwargs.setdefault(key, value)
    return kwargs


@torch.no_grad()
def weights_fingerprint(pipe: DiffusionPipeline) -> str:
    """A short hash of the pipeline's weights, the same on every device.

    It hashes the first 8 values of every parameter tensor of every model component (in float32,
    so a value hashes alike on the CPU and the GPU): far cheaper than hashing the weights whole,
    and any training or another checkpoint changes it. A run that resumes from its log compares it,
    so that new weights under the same model name are never scored together with the old.
    """
    import hashlib

    digest = hashlib.sha1()
    for name, component in sorted(pipe.components.items()):
        if isinstance(component, torch.nn.Module):
            heads = [parameter.detach().flatten()[:8].float() for parameter in component.parameters()]
            if heads:
                digest.update(name.encode())
                digest.update(torch.cat(heads).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
