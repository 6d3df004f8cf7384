"""How textloc loads and calls a stock diffusers pipeline and reads its images, the same way on every
diffusers version and family.

The bottom layer: it imports only the family specs (:mod:`textloc.architectures`), so the tiny
random pipelines (:mod:`textloc.testing`), the registry of named models (:mod:`textloc.models`) and
the loader (:mod:`textloc.pipelines`) all build on it without importing one another.
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

from textloc.architectures import FAMILIES, UnsupportedArchitectureError, family_of

# diffusers 0.40 renamed from_pretrained's `torch_dtype` to `dtype` and warns on the old name.
_DTYPE_KEYWORD = "dtype" if Version(diffusers.__version__) >= Version("0.40.0") else "torch_dtype"


def from_pretrained(source: str | Path, dtype: torch.dtype | None = None, **kwargs: Any) -> DiffusionPipeline:
    """``DiffusionPipeline.from_pretrained(source, **kwargs)``, cast to ``dtype`` under the keyword
    the installed diffusers takes for it."""
    if dtype is not None:
        kwargs[_DTYPE_KEYWORD] = dtype
    return DiffusionPipeline.from_pretrained(source, **kwargs)


def call_kwargs(pipe: DiffusionPipeline | type[DiffusionPipeline], **kwargs: Any) -> dict[str, Any]:
    """Add the keyword arguments a pipeline (or pipeline class) needs to run offline and reproducibly:
    its family's :attr:`~textloc.architectures.spec.Family.call_defaults`, each where the caller did
    not set it. A pipeline of no family textloc knows gets none: it runs as the caller asks.
    """
    try:
        defaults = family_of(pipe).call_defaults
    except UnsupportedArchitectureError:
        return kwargs
    # Only what this pipeline takes: an argument it does not take fails its call, and a family's
    # pipelines differ (LongCatImageEditPipeline, LongCat's by its transformer, has no prompt rewrite).
    accepted = inspect.signature(pipe.__call__).parameters
    for key, value in defaults.items():
        if key in accepted:
            kwargs.setdefault(key, value)
    return kwargs


def prompt_token_ids(pipe: Any, prompt: str, clean_caption: bool = False) -> list[list[int]]:
    """The token ids of ``prompt`` under each of the pipeline's tokenizers (``tokenizer``,
    ``tokenizer_2``, ``tokenizer_3``, a ``processor``'s: those it has), special tokens included,
    unpadded, of the text as the pipeline tokenizes it (IF and PixArt lowercase it first, and clean
    it with ``clean_caption``); a chat template, where the pipeline wraps the prompt in one, is left out."""
    preprocess = getattr(pipe, "_text_preprocessing", None)
    text = preprocess(prompt, clean_caption=clean_caption)[0] if preprocess else prompt
    processor = getattr(pipe, "processor", None)
    tokenizers = [getattr(pipe, name, None) for name in ("tokenizer", "tokenizer_2", "tokenizer_3")] + [getattr(processor, "tokenizer", None)]
    return [tokenizer(text).input_ids for tokenizer in tokenizers if tokenizer is not None]


def is_modular(pipe: Any) -> bool:
    """Whether ``pipe`` is one of diffusers' modular pipelines (``diffusers.modular_pipelines``): its
    inputs are its blocks', its CFG runs through a guider, and it returns what ``output=`` names."""
    modular = getattr(diffusers, "ModularPipeline", None)  # diffusers 0.35 on
    return modular is not None and isinstance(pipe, modular)


def refuse_modular(pipe: Any, use: str) -> None:
    """A one-line ``ValueError`` when ``use`` (which calls the pipeline the plain way: ``output_type``,
    ``.images``, ``encode_prompt``) is given a modular pipeline; the engine's own calls take one."""
    if is_modular(pipe):
        raise ValueError(
            f"{use} runs a plain diffusers pipeline, and {type(pipe).__name__} is a modular one: load the model with "
            "DiffusionPipeline.from_pretrained (tl.load_pipeline); tl.record, tl.patch and tl.run_with_patches take either."
        )


def images_of(output: Any) -> Any:
    """The images of a pipeline's output: its ``images``, or the field a family's spec names for an
    output class that holds them under another name (Kandinsky 5's ``image``); a ``return_dict=False``
    tuple's first item."""
    if isinstance(output, tuple):
        return output[0]
    name = type(output).__name__
    field = next((family.image_outputs[name] for family in FAMILIES if name in family.image_outputs), "images")
    return getattr(output, field)


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
