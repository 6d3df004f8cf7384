"""Invert a user's own image to the starting noise from which the pipeline regenerates it.

Deterministic inversion with the model itself: the image (pixel-space models: the image in
[-1, 1]; latent models: its VAE encoding, scaled and shifted as the pipeline decodes it) is run
backwards through the sampler's steps with the prompt's *conditional* prediction only (no
classifier-free guidance, the usual choice: guidance during inversion amplifies the inversion error). Two
samplers, each reversed through diffusers' own schedulers:

- epsilon/v-prediction models (SD 1.x/2.x, SDXL, DeepFloyd IF, PixArt, HunyuanDiT): DDIM.
  ``DDIMInverseScheduler`` steps the image up to noise; ``DDIMScheduler``, built from the same
  config, steps it back down.
- flow-matching models (every other family): the flow ODE, integrated backwards with Euler steps
  over the sigmas ``FlowMatchEulerDiscreteScheduler`` gives the pipeline (the resolution-dependent
  shift included where the pipeline applies one), and forwards by that scheduler itself. The
  velocity is the denoiser's output times the family's ``Training.prediction_sign``, as its
  pipeline steps with it (and as training's target has it); Cosmos 2's is its EDM ODE's derivative,
  made from its preconditioned denoiser as its pipeline makes it.

Each family's image encoding and denoiser conditioning live in its spec (``Family.inversion``,
:mod:`textloc.architectures.inversion`); a family without one is refused.

Each step is reversed with the prediction at the point it starts from, as DDIM inversion does, so
the round trip is approximate; its error shrinks with more steps and a better-trained model.
Regenerate inside :func:`starting_from`, which starts the pipeline from the inverted noise and
samples with the matching scheduler::

    latents = invert(pipe, image, prompt, num_inference_steps=25)
    with starting_from(pipe, latents):
        again = images_of(pipe(prompt, num_inference_steps=25, guidance_scale=1.0))[0]  # Z-Image: 0.0

:func:`reconstruct` does exactly that and scores the result against the image.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image

from textloc.architectures import FAMILIES, denoiser, family_of
from textloc.architectures.inversion import Inversion
from textloc.pipeline_calls import call_kwargs, images_of, instance_attribute
from textloc.scoring.metrics import psnr, ssim, to_float_array

ImageInput = Image.Image | np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------------------------
# The family's inversion, and the samplers it reverses


def _inversion_of(pipe: Any) -> Inversion:
    """``pipe``'s family's :class:`Inversion`; a one-line ``ValueError`` for a family without one."""
    family = family_of(pipe)
    if family.inversion is None:
        inverted = ", ".join(other.name for other in FAMILIES if other.inversion is not None)
        raise ValueError(f"invert does not know {type(pipe).__name__} (the {family.name} family); it inverts {inverted} pipelines.")
    return family.inversion


def _ddim_config(pipe: Any) -> dict[str, Any]:
    """The pipeline scheduler's noise schedule and prediction type, for DDIM and its inverse."""
    config = dict(pipe.scheduler.config)
    # DDIM and its inverse step between evenly spaced timesteps ("leading" or "trailing");
    # "trailing" is the one that, like "linspace", starts from the last training timestep.
    if config.get("timestep_spacing") not in ("leading", "trailing"):
        config["timestep_spacing"] = "trailing"
    # Clipping or thresholding the predicted image is not invertible: off both ways. (IF thresholds,
    # which costs textloc-tiny's reconstructions up to 3 dB; DDIM's own default clips to [-1, 1],
    # which would clip a latent model's latents when its scheduler config does not say otherwise.)
    config.update(thresholding=False, clip_sample=False)
    return config


def _sampling_scheduler(pipe: Any) -> Any:
    """The deterministic scheduler whose steps :func:`invert` reverses, for ``pipe``.

    Flow-matching models: the pipeline's own ``FlowMatchEulerDiscreteScheduler`` (one with the same
    config otherwise). Others: a ``DDIMScheduler`` (eta 0) with the pipeline scheduler's noise
    schedule and prediction type, without clipping or thresholding of the predicted image.
    """
    if _inversion_of(pipe).flow:
        if isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
            return pipe.scheduler
        config = dict(pipe.scheduler.config)
        if "flow_shift" in config:  # a DPM-Solver with flow sigmas (Sana's own configs)
            config["shift"] = config["flow_shift"]
        return _from_config(FlowMatchEulerDiscreteScheduler, config)
    scheduler = _from_config(DDIMScheduler, _ddim_config(pipe))
    # IF's pipeline splits the learned variance off the prediction only when the scheduler's
    # variance_type says it does not use it; DDIM steps with the mean alone.
    scheduler.register_to_config(variance_type=None)
    return scheduler


def _from_config(scheduler_class: type, config: Any) -> Any:
    """``scheduler_class.from_config`` with the keys it takes (others would each log a warning)."""
    accepted = inspect.signature(scheduler_class.__init__).parameters
    return scheduler_class.from_config({key: value for key, value in dict(config).items() if key in accepted})


@contextlib.contextmanager
def starting_from(pipe: Any, latents: torch.Tensor) -> Iterator[None]:
    """Inside this context every call of ``pipe`` starts from ``latents`` (from :func:`invert`) and
    samples with the scheduler whose steps inversion reversed; on exit the pipeline is exactly as
    before.

    ``latents`` is one row per image, or one row for every row of the batch (copied). It reaches
    the pipeline as its ``latents`` argument (DeepFloyd IF, which has none: as its starting images;
    ERNIE-Image, which prepares none: as the noise it draws), so a caller must not pass ``latents=`` too. Enter this context before any ``tl.patch``: the
    engine counts the steps of the scheduler it finds on entry.
    """
    scheduler = _sampling_scheduler(pipe)
    original_scheduler = pipe.scheduler
    if hasattr(pipe, "prepare_latents"):
        owner, method, replace = pipe, "prepare_latents", _replace_latents_argument(pipe, latents)
    elif hasattr(pipe, "prepare_intermediate_images"):
        owner, method, replace = pipe, "prepare_intermediate_images", _replace_intermediate_images(pipe, latents)
    else:
        # ERNIE-Image draws its noise in __call__ itself, with its module's randn_tensor: that draw is replaced.
        owner, method, replace = sys.modules[type(pipe).__call__.__module__], "randn_tensor", _replace_draw(latents)
    original_method = getattr(owner, method)
    pipe.scheduler = scheduler
    try:
        with instance_attribute(owner, method, functools.wraps(original_method)(replace(original_method))):
            yield
    finally:
        pipe.scheduler = original_scheduler


def _rows(latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    if latents.shape[0] == batch_size:
        return latents
    if latents.shape[0] == 1:
        return latents.expand(batch_size, *latents.shape[1:])
    raise ValueError(f"{latents.shape[0]} inverted latents for a batch of {batch_size}: give one row per image, or one row for all.")


def _replace_latents_argument(pipe: Any, latents: torch.Tensor):
    def replace(original):
        signature = inspect.signature(original)

        def prepare_latents(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            if bound.arguments["latents"] is not None:
                raise ValueError("inside starting_from the pipeline starts from the inverted latents: do not pass latents= as well.")
            arguments = bound.arguments  # Kandinsky 3's takes the latents' shape, not a batch size
            bound.arguments["latents"] = _rows(latents, arguments["batch_size"] if "batch_size" in arguments else arguments["shape"][0])
            return original(*bound.args, **bound.kwargs)

        return prepare_latents

    return replace


def _replace_draw(latents: torch.Tensor):
    def replace(original):
        signature = inspect.signature(original)

        def randn_tensor(*args, **kwargs):
            arguments = signature.bind(*args, **kwargs).arguments
            shape = tuple(arguments["shape"])
            rows = _rows(latents, shape[0])
            if tuple(rows.shape) != shape:
                raise ValueError(
                    f"inverted latents of shape {tuple(rows.shape)} where the pipeline draws {shape}: generate at the size inverted."
                )
            return rows.to(arguments.get("device"), arguments.get("dtype"))

        return randn_tensor

    return replace


def _replace_intermediate_images(pipe: Any, latents: torch.Tensor):
    def replace(original):
        signature = inspect.signature(original)

        def prepare_intermediate_images(*args, **kwargs):
            arguments = signature.bind(*args, **kwargs).arguments
            rows = _rows(latents, arguments["batch_size"]).to(arguments["device"], arguments["dtype"])
            # What IFPipeline does to the noise it draws.
            return rows * pipe.scheduler.init_noise_sigma

        return prepare_intermediate_images

    return replace


# ----------------------------------------------------------------------------------------------
# Inversion


def _call_arguments(pipe: Any, generate_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every argument of ``pipe.__call__`` as a call with ``generate_kwargs`` would see it."""
    parameters = {
        name: parameter
        for name, parameter in inspect.signature(pipe.__call__).parameters.items()
        if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
    }
    for name in generate_kwargs:
        if name not in parameters:
            close = difflib.get_close_matches(name, parameters, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "."
            raise TypeError(f"{name!r} is not an argument of {type(pipe).__name__}.__call__{hint}")
    arguments = {name: parameter.default for name, parameter in parameters.items() if parameter.default is not parameter.empty}
    arguments.update(call_kwargs(pipe, **generate_kwargs))
    for name in ("timesteps", "sigmas"):
        if arguments.get(name) is not None:
            raise ValueError(f"invert follows num_inference_steps; custom {name} are not supported.")
    if arguments.get("use_resolution_binning"):
        raise ValueError("invert needs the image's own size: pass use_resolution_binning=False.")
    return arguments


def _pixels(image: ImageInput | Sequence[ImageInput], height: int | None, width: int | None) -> torch.Tensor:
    """Images as a float32 B x 3 x H x W tensor in [-1, 1], resized to ``height`` x ``width`` if given."""
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
        images = list(image)
    elif isinstance(image, (list, tuple)):
        images = list(image)
    else:
        images = [image]
    arrays = []
    for one in images:
        array = to_float_array(one)
        array = np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[:, :, :3]
        arrays.append(torch.from_numpy(array).permute(2, 0, 1).float())
    if len({tuple(array.shape) for array in arrays}) > 1:
        raise ValueError(f"images to invert together must share one size, got {sorted({tuple(a.shape[1:]) for a in arrays})}")
    pixels = torch.stack(arrays) * 2 - 1
    size = (height or pixels.shape[2], width or pixels.shape[3])
    if size != tuple(pixels.shape[2:]):
        pixels = torch.nn.functional.interpolate(pixels, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
    return pixels


def _check_size(pipe: Any, inversion: Inversion, height: int, width: int) -> None:
    multiple = inversion.size_multiple(pipe)

    def near(size: int) -> int:
        return max(multiple, round(size / multiple) * multiple)

    if height % multiple or width % multiple:
        problem = f"takes heights and widths that are multiples of {multiple}, not {height}x{width} (height x width)"
    elif inversion.generated_size(pipe, height, width) != (height, width):
        generated = "x".join(map(str, inversion.generated_size(pipe, height, width)))
        problem = f"generates {generated} images when asked for {height}x{width} (height x width)"
    else:
        return
    # A size the pipeline keeps: HiDream's rescaling rounds down, so its sizes only grow towards one (a few steps).
    suggested = (near(height), near(width))
    while inversion.generated_size(pipe, *suggested) != suggested:
        suggested = inversion.generated_size(pipe, *suggested)
    raise ValueError(
        f"{type(pipe).__name__} {problem}: crop or resize the image, or pass height={suggested[0]}, width={suggested[1]}."
    )


def _prompts(prompt: str | Sequence[str], count: int) -> list[str]:
    prompts = [prompt] * count if isinstance(prompt, str) else list(prompt)
    if len(prompts) != count:
        raise ValueError(f"{len(prompts)} prompts for {count} images: give one prompt, or one per image.")
    return prompts


@torch.no_grad()
def invert(
    pipe: Any,
    image: ImageInput | Sequence[ImageInput],
    prompt: str | Sequence[str],
    *,
    num_inference_steps: int,
    height: int | None = None,
    width: int | None = None,
    **generate_kwargs: Any,
) -> torch.Tensor:
    """The starting noise from which ``pipe`` regenerates ``image`` for ``prompt``.

    ``image``: a PIL image, or an ``H x W x C`` array/tensor (uint8, or float in [0, 1]); a list
    of them, or a ``B x H x W x C`` array, inverts a batch (``prompt``: one for all, or one per
    image). It is resized to ``height`` x ``width`` when they are given; the size must be one the
    pipeline takes, else a ``ValueError`` names one that is. ``prompt`` describes the image, its
    text included. ``num_inference_steps`` must be the regeneration's.

    ``generate_kwargs`` are the other arguments the regeneration passes to the pipeline; the ones
    that shape the conditional prediction are used as the pipeline would use them
    (``max_sequence_length``, ``clean_caption``, Sana's ``complex_human_instruction``, SDXL's size
    conditions, FLUX's distilled ``guidance_scale``), defaults included. Classifier-free guidance
    is not: inversion uses the conditional prediction alone, whatever ``guidance_scale`` the
    regeneration uses.

    Returns exactly what the pipeline's ``latents`` argument takes, on every family, so that
    ``pipe(prompt, latents=inverted, ...)`` regenerates the image: its layout (B x C x h x w; FLUX,
    Chroma, Qwen-Image: packed tokens B x hw/4 x 4C; FLUX.2: its 2x2 patches unpacked,
    B x 4C x h/2 x w/2, which it packs into tokens itself; DeepFloyd IF, which takes no ``latents``:
    its starting images B x 3 x H x W), the dtype the pipeline draws its noise in, its execution
    device. That is not always the layout the pipeline samples in, nor its ``output_type="latent"``
    (FLUX.2 samples packed tokens; Klein's ``"latent"`` is the VAE's own latents). Regenerate
    inside :func:`starting_from`, which also sets the sampler the inversion reverses.
    """
    pixels = _pixels(image, height, width)
    return _Inverted.of(pipe, pixels, prompt, num_inference_steps, generate_kwargs).latents


@torch.no_grad()
def encode_image(
    pipe: Any, image: ImageInput | Sequence[ImageInput], *, height: int | None = None, width: int | None = None
) -> torch.Tensor:
    """The clean sample the pipeline's sampler ends at for ``image``: what :func:`invert` runs back to noise.

    Latent models: the VAE's encoding (the posterior's mode), scaled, shifted and normalised as the
    pipeline decodes it; pixel-space models: the image in [-1, 1]. Float32, in the layout of
    :func:`invert`'s result, which is the pipeline's ``latents`` argument on every family (FLUX,
    Chroma, Qwen-Image: packed tokens; FLUX.2: its 2x2 patches unpacked; IF: its images): the
    pipeline packs it as it packs its ``latents``. That is not always a generation's
    ``output_type="latent"`` (FLUX.2-Klein's is the VAE's own latents). ``image``, ``height`` and
    ``width`` as in :func:`invert`.
    """
    inversion = _inversion_of(pipe)
    pixels = _pixels(image, height, width)
    return inversion.latents_argument(pipe, _encode_pixels(pipe, inversion, pixels), *pixels.shape[2:])


def _encode_pixels(pipe: Any, inversion: Inversion, pixels: torch.Tensor) -> torch.Tensor:
    _check_size(pipe, inversion, *pixels.shape[2:])
    return inversion.encode_image(pipe, pixels.to(pipe._execution_device)).float()


@dataclass(frozen=True)
class _Inverted:
    inversion: Inversion
    #: What the sampler should end at, in the layout it samples in: the image encoded (latent models) or the image itself.
    clean: torch.Tensor
    latents: torch.Tensor

    @classmethod
    def of(cls, pipe: Any, pixels: torch.Tensor, prompt: str | Sequence[str], num_inference_steps: int, generate_kwargs: dict[str, Any]) -> _Inverted:
        inversion = _inversion_of(pipe)
        arguments = _call_arguments(pipe, generate_kwargs)
        prompts = _prompts(prompt, pixels.shape[0])
        clean = _encode_pixels(pipe, inversion, pixels)
        height, width = pixels.shape[2:]
        device = pipe._execution_device
        conditioning = inversion.conditioning(pipe, prompts, arguments, height, width)
        model_dtype = denoiser(pipe).dtype
        # The pipeline steps its scheduler with this sign times the denoiser's output (HiDream, Lumina 2,
        # Z-Image: -1), as training's target has it.
        sign = family_of(pipe).training.prediction_sign

        def predict(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return sign * inversion.predict(pipe, x.to(model_dtype), timestep, conditioning).float()

        sample = clean
        if inversion.flow:
            scheduler = _from_config(FlowMatchEulerDiscreteScheduler, _sampling_scheduler(pipe).config)
            inversion.set_flow_timesteps(pipe, scheduler, num_inference_steps, sample)
            sigmas = scheduler.sigmas.to(device)
            # The sampler steps sigma_i -> sigma_i+1 with the velocity at sigma_i: run it backwards,
            # with the velocity at the point each backward step starts from.
            for i in reversed(range(len(scheduler.timesteps))):
                sample = sample - (sigmas[i + 1] - sigmas[i]) * predict(sample, scheduler.timesteps[i])
        else:
            scheduler = _from_config(DDIMInverseScheduler, _ddim_config(pipe))
            scheduler.set_timesteps(num_inference_steps, device=device)
            for timestep in scheduler.timesteps:
                prediction = predict(scheduler.scale_model_input(sample, timestep), timestep)
                sample = scheduler.step(prediction, timestep, sample).prev_sample
        return cls(inversion, clean, inversion.latents_argument(pipe, sample, height, width).to(inversion.latents_dtype(pipe)))


# ----------------------------------------------------------------------------------------------
# Reconstruction


@dataclass(frozen=True)
class Reconstruction:
    """Images regenerated from their own inverted noise, beside the images they were inverted from."""

    #: The inverted noise (:func:`invert`'s result).
    latents: torch.Tensor
    #: The regenerated images.
    images: list[Image.Image]
    #: The images that were inverted, at the size they were inverted at.
    originals: list[Image.Image]
    #: The originals through the pipeline's own autoencoder (encoded, then decoded): the best any
    #: inversion can regenerate. The originals themselves for pixel-space models.
    autoencoded: list[Image.Image]
    #: PSNR (dB) and SSIM of each regenerated image against its original.
    psnr: list[float]
    ssim: list[float]
    #: PSNR of each autoencoded image against its original: the ceiling the autoencoder sets.
    autoencoder_psnr: list[float]


@torch.no_grad()
def reconstruct(
    pipe: Any,
    image: ImageInput | Sequence[ImageInput],
    prompt: str | Sequence[str],
    *,
    num_inference_steps: int,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    **generate_kwargs: Any,
) -> Reconstruction:
    """Invert ``image`` (see :func:`invert`) and regenerate it from the inverted noise.

    The regeneration runs at ``guidance_scale``, by default the family's scale that turns
    classifier-free guidance off (``Training.unguided_scale``: 1 for most, 0 for Z-Image, which
    guides at any scale above 0): the conditional prediction alone, as the inversion; a higher CFG
    scale drifts away from the image (textloc-tiny's CFG 5 falls from about 30 dB to 10). It runs
    with ``generate_kwargs``. FLUX's distilled guidance is a model input, not CFG:
    give the value it generates with (3.5 for FLUX.1-dev); inversion uses the same. What the
    regeneration loses against the original is what inversion alone costs an edit; for latent
    models ``autoencoder_psnr`` says how much of it the VAE alone loses.
    """
    if "guidance_scale" in inspect.signature(pipe.__call__).parameters:
        generate_kwargs["guidance_scale"] = family_of(pipe).training.unguided_scale if guidance_scale is None else guidance_scale
    # Quantized first, so the originals scored against are exactly the pixels inverted.
    originals = _to_pil(_pixels(image, height, width))
    pixels = _pixels(originals, None, None)
    inverted = _Inverted.of(pipe, pixels, prompt, num_inference_steps, generate_kwargs)
    height, width = pixels.shape[2:]
    autoencoded = _to_pil(inverted.inversion.decode_sample(pipe, inverted.clean, height, width).cpu())
    with starting_from(pipe, inverted.latents):
        output = pipe(
            _prompts(prompt, len(originals)),
            num_inference_steps=num_inference_steps,
            height=height,
            width=width,
            **call_kwargs(pipe, **{**generate_kwargs, "output_type": "np"}),
        )
    # "np" is the one output every pipeline gives in [0, 1] (IF's "pt" stays in [-1, 1]).
    images = _to_pil(torch.from_numpy(images_of(output)).permute(0, 3, 1, 2) * 2 - 1)
    return Reconstruction(
        latents=inverted.latents,
        images=images,
        originals=originals,
        autoencoded=autoencoded,
        psnr=[psnr(a, b) for a, b in zip(images, originals)],
        ssim=[ssim(a, b) for a, b in zip(images, originals)],
        autoencoder_psnr=[psnr(a, b) for a, b in zip(autoencoded, originals)],
    )


def _to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """B x 3 x H x W in [-1, 1] to PIL images."""
    arrays = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(array) for array in arrays]
