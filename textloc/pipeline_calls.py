"""How textloc loads and calls a stock diffusers pipeline, the same way on every diffusers version.

The bottom layer: it imports nothing from textloc, so the tiny random pipelines
(:mod:`textloc.testing`), the registry of named models (:mod:`textloc.models`) and the loader
(:mod:`textloc.pipelines`) all build on it without importing one another.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DiffusionPipeline
from packaging.version import Version

# diffusers 0.40 renamed from_pretrained's `torch_dtype` to `dtype` and warns on the old name.
_DTYPE_KEYWORD = "dtype" if Version(diffusers.__version__) >= Version("0.40.0") else "torch_dtype"


def from_pretrained(source: str | Path, dtype: torch.dtype | None = None, **kwargs: Any) -> DiffusionPipeline:
    """``DiffusionPipeline.from_pretrained(source, **kwargs)``, cast to ``dtype`` under the keyword
    the installed diffusers takes for it."""
    if dtype is not None:
        kwargs[_DTYPE_KEYWORD] = dtype
    return DiffusionPipeline.from_pretrained(source, **kwargs)


def call_kwargs(pipe: DiffusionPipeline, **kwargs: Any) -> dict[str, Any]:
    """Add the keyword arguments a pipeline needs to run offline and reproducibly.

    IF and PixArt clean captions with optional packages (bs4, ftfy) unless told not to,
    PixArt/Sana snap the size to a resolution bin, and LongCat-Image rewrites the prompt with its
    text encoder (so the text it encodes would not be the prompt given, nor two prompts differ as
    given); each is switched off where the pipeline accepts the argument, unless the caller set it.
    """
    accepted = inspect.signature(pipe.__call__).parameters
    defaults = {"clean_caption": False, "use_resolution_binning": False, "enable_prompt_rewrite": False}
    for key, value in defaults.items():
        if key in accepted:
            kwargs.setdefault(key, value)
    return kwargs


@contextlib.contextmanager
def instance_attribute(owner: Any, name: str, value: Any) -> Iterator[None]:
    """Inside this context ``owner.name`` is ``value``, an instance attribute that shadows the
    class's (so other instances are untouched); on exit the attribute the instance had before
    (none, or an outer context's) is back, also after an exception."""
    shadowed = owner.__dict__.get(name)
    object.__setattr__(owner, name, value)
    try:
        yield
    finally:
        if shadowed is None:
            object.__delattr__(owner, name)
        else:
            object.__setattr__(owner, name, shadowed)
