"""One spec per text-to-image family: what the engine and the uses know about each, as data.

Each family is one module that builds a :class:`~textloc.architectures.spec.Family`: how text
enters each attention, how its pipelines run CFG, how they call the denoiser, and its tiny random
pipelines. :func:`family_of` finds a pipeline's family, by its class or its denoiser's; a pipeline
of no known family is refused, never patched by guesswork. A family textloc does not ship is added
with :func:`register`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textloc.architectures import (
    auraflow, chroma, cogview3plus, cogview4, cosmos2, deepfloyd_if, dreamlite, ernie_image, flux, flux2, glm_image, hidream, hunyuan_dit, hunyuan_image, ideogram4,
    kandinsky5, krea2, lcm, longcat_image, lumina2, lumina_next, nucleusmoe_image, ovis_image, pixart, qwenimage, qwenimage21, sana, sana_sprint, sd, sd3, sdxl, z_image,
)
from textloc.architectures import bria, bria_fibo, kandinsky3, prx
from textloc.architectures.spec import Family, TinyPipeline

if TYPE_CHECKING:
    import torch

#: Every family textloc knows, in the order listings show them.
FAMILIES: list[Family] = [
    sd.FAMILY, sdxl.FAMILY, sd3.FAMILY, flux.FAMILY, flux2.FAMILY, chroma.FAMILY, deepfloyd_if.FAMILY, pixart.FAMILY,
    sana.FAMILY, lumina2.FAMILY, cosmos2.FAMILY, qwenimage.FAMILY, cogview4.FAMILY, hunyuan_image.FAMILY, hidream.FAMILY,
    z_image.FAMILY, ovis_image.FAMILY, longcat_image.FAMILY, hunyuan_dit.FAMILY, kandinsky5.FAMILY,
    qwenimage21.FAMILY,
    glm_image.FAMILY,
    ernie_image.FAMILY,
    nucleusmoe_image.FAMILY,
    ideogram4.FAMILY,
    krea2.FAMILY,
    auraflow.FAMILY,
    cogview3plus.FAMILY,
    lumina_next.FAMILY,
    sana_sprint.FAMILY,
    lcm.FAMILY,
    kandinsky3.FAMILY, bria.FAMILY, bria_fibo.FAMILY, prx.FAMILY,
    dreamlite.FAMILY, dreamlite.MOBILE,
]


class UnsupportedArchitectureError(ValueError):
    """A pipeline or denoiser of no family textloc knows."""


def register(family: Family) -> None:
    """Add ``family`` to those textloc knows, ahead of the shipped ones (so it can refine one)."""
    FAMILIES.insert(0, family)


def denoiser(pipe_or_model: object) -> torch.nn.Module:
    """The denoiser of a pipeline (``pipe.unet`` or ``pipe.transformer``), or the model itself."""
    import torch  # here: listing the families (the CLI's help) needs no torch

    if isinstance(pipe_or_model, torch.nn.Module):
        return _uncompiled(pipe_or_model)
    for attribute in ("transformer", "unet"):
        model = getattr(pipe_or_model, attribute, None)
        if isinstance(model, torch.nn.Module):
            return _uncompiled(model)
    raise UnsupportedArchitectureError(
        f"Unsupported pipeline class {type(pipe_or_model).__name__}: textloc needs a text-to-image "
        f"pipeline with a `unet` or a `transformer` of a family it knows ({known_families()})."
    )


def image_size_multiple(pipe: Any) -> int:
    """What every image side the pipeline takes is a multiple of: the VAE's scale factor times the
    U-Net's downsampling or the transformer's patch size (the pipeline's, where it patchifies the
    latents itself: Ideogram 4, Krea 2)."""
    config = denoiser(pipe).config
    blocks = getattr(config, "block_out_channels", None)
    patch = getattr(config, "patch_size", None) or getattr(pipe, "patch_size", None) or 1
    factor = 2 ** (len(blocks) - 1) if blocks else max(patch) if isinstance(patch, (tuple, list)) else patch
    return (getattr(pipe, "vae_scale_factor", None) or 1) * factor


def default_image_side(pipe: Any) -> int:
    """The image side the pipeline generates at when not given one: the pixels it states (PRX's
    ``get_default_resolution``, whose ``default_sample_size`` is in pixels), else its
    ``default_sample_size`` (SD3, FLUX, ...) or its denoiser's ``sample_size``, times the VAE's scale factor."""
    stated = getattr(pipe, "get_default_resolution", None)
    if callable(stated):
        return int(stated())
    size = getattr(pipe, "default_sample_size", None) or denoiser(pipe).config.get("sample_size") or 64
    size = size[0] if isinstance(size, (list, tuple)) else size
    return int(size * (getattr(pipe, "vae_scale_factor", None) or 1))


def _uncompiled(model: torch.nn.Module) -> torch.nn.Module:
    # `torch.compile(pipe.unet)` wraps the denoiser: its layers are the wrapped module's, under their
    # own names (not "_orig_mod.…"), and its weights are the same weights.
    return getattr(model, "_orig_mod", model) if type(model).__name__ == "OptimizedModule" else model


def _class_names(obj: object) -> set[str]:
    return {cls.__name__ for cls in (obj if isinstance(obj, type) else type(obj)).__mro__}


def family_of(pipe_or_model: object) -> Family:
    """The family of a pipeline (by its class, else its denoiser's), of a pipeline class (by its
    name alone), or of a bare denoiser."""
    import torch

    if not isinstance(pipe_or_model, torch.nn.Module):
        names = _class_names(pipe_or_model)
        for family in FAMILIES:
            if names.intersection(family.pipelines):
                return family
    model = denoiser(pipe_or_model)
    names = _class_names(model)
    config = getattr(model, "config", {})
    for family in FAMILIES:
        if names.intersection(family.denoisers) and all(config.get(key) == value for key, value in family.denoiser_config.items()):
            return family
    raise UnsupportedArchitectureError(
        f"textloc has no spec for {type(model).__name__} (in {type(pipe_or_model).__name__}): it cannot tell "
        f"how text reaches its attention or how its pipeline runs CFG, so it will not guess. Families it "
        f"knows: {known_families()}; a new one is added with textloc.architectures.register()."
    )


def known_families() -> str:
    return ", ".join(family.name for family in FAMILIES)


def tiny_pipelines() -> dict[str, TinyPipeline]:
    """Every family's tiny random pipelines, by architecture name, in family order."""
    return {arch: tiny for family in FAMILIES for arch, tiny in family.tiny.items()}


def tiny_family(arch: str) -> Family:
    """The family whose tiny random pipeline is named ``arch``."""
    for family in FAMILIES:
        if arch in family.tiny:
            return family
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(tiny_pipelines())}")


__all__ = [
    "FAMILIES", "Family", "UnsupportedArchitectureError", "denoiser", "family_of", "known_families", "register",
    "tiny_family", "tiny_pipelines",
]
