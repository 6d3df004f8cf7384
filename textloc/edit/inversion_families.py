"""How each pipeline family encodes an image and conditions its denoiser, for inversion.

One adapter per architecture family (Stable Diffusion 1.x/2.x, SDXL, DeepFloyd IF, PixArt, SD3,
FLUX, Sana): image -> the clean sample its sampler ends at, prompt -> the conditioning, and one
conditional prediction of the denoiser, each as the family's pipeline ``__call__`` does it.
:mod:`textloc.edit.inversion` runs the sampler backwards with them; :func:`family_of` picks one.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import (
    FluxTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    PixArtTransformer2DModel,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from textloc.engine import denoiser

# encode_prompt's arguments that inversion sets itself: one conditional prediction per image.
_OWN_ENCODE_ARGUMENTS = frozenset({"prompt", "device", "num_images_per_prompt", "do_classifier_free_guidance"})


class Family(abc.ABC):
    """What inversion needs to know about one family of pipelines."""

    name: ClassVar[str]
    #: Flow-matching (velocity) model, inverted along the flow ODE; else DDIM.
    flow: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def matches(cls, pipe: Any) -> bool:
        """Whether ``pipe`` belongs to this family."""

    @abc.abstractmethod
    def size_multiple(self, pipe: Any) -> int:
        """Heights and widths the pipeline takes are multiples of this (pixels)."""

    def encode_image(self, pipe: Any, pixels: torch.Tensor) -> torch.Tensor:
        """The clean sample the pipeline's sampler ends at, for ``pixels`` (B x 3 x H x W in [-1, 1])."""
        latents = _vae_encoding(pipe.vae, pixels)
        return (latents - _shift_factor(pipe)) * pipe.vae.config.scaling_factor

    def decode_sample(self, pipe: Any, sample: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``pixels`` back from :meth:`encode_image`'s sample, as the pipeline decodes it."""
        return _vae_decoding(pipe.vae, sample / pipe.vae.config.scaling_factor + _shift_factor(pipe))

    def latents_dtype(self, pipe: Any) -> torch.dtype:
        """The dtype the pipeline draws its starting noise in."""
        return denoiser(pipe).dtype

    @abc.abstractmethod
    def conditioning(self, pipe: Any, prompts: list[str], arguments: dict[str, Any], height: int, width: int) -> dict[str, Any]:
        """Everything the denoiser takes besides the sample and the timestep, conditional branch only."""

    @abc.abstractmethod
    def predict(self, pipe: Any, sample: torch.Tensor, timestep: torch.Tensor, conditioning: dict[str, Any]) -> torch.Tensor:
        """The denoiser's prediction, in the parameterization the scheduler steps with."""

    def set_flow_timesteps(self, pipe: Any, scheduler: FlowMatchEulerDiscreteScheduler, num_inference_steps: int, sample: torch.Tensor) -> None:
        """``scheduler.set_timesteps`` as the pipeline calls it (flow families only)."""
        scheduler.set_timesteps(num_inference_steps, device=sample.device)


def _shift_factor(pipe: Any) -> float:
    return pipe.vae.config.get("shift_factor") or 0.0  # SD3 and FLUX shift; the others have none


def _vae_dtype(vae: Any) -> torch.dtype:
    # SDXL's VAE overflows in float16: it runs in float32, as its pipelines do.
    upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
    return torch.float32 if upcast else vae.dtype


def _vae_encoding(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """The VAE's deterministic encoding (the posterior's mode), in float32."""
    dtype = _vae_dtype(vae)
    with _cast(vae, dtype):
        # On the pipeline's execution device already: an offloaded VAE moves there when called.
        encoded = vae.encode(pixels.to(dtype=dtype))
    if hasattr(encoded, "latent_dist"):
        return encoded.latent_dist.mode().float()
    return encoded.latent.float()  # AutoencoderDC (Sana) is deterministic


def _vae_decoding(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    dtype = _vae_dtype(vae)
    with _cast(vae, dtype):
        return vae.decode(latents.to(dtype=dtype), return_dict=False)[0].float()


@contextlib.contextmanager
def _cast(module: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    original = next(module.parameters()).dtype
    if original != dtype:
        module.to(dtype=dtype)
    try:
        yield
    finally:
        if original != dtype:
            module.to(dtype=original)


def _encode(pipe: Any, prompts: list[str], arguments: dict[str, Any]) -> Any:
    """``pipe.encode_prompt`` for the conditional branch, with the call's arguments it shares
    (``prompt_2``, ``max_sequence_length``, ``clean_caption``, ...)."""
    parameters = inspect.signature(pipe.encode_prompt).parameters
    shared = {
        name: value
        for name, value in arguments.items()
        if name in parameters and name not in _OWN_ENCODE_ARGUMENTS and not name.startswith("negative_")
    }
    own = {"device": pipe._execution_device, "num_images_per_prompt": 1, "do_classifier_free_guidance": False}
    shared.update({name: value for name, value in own.items() if name in parameters})
    return pipe.encode_prompt(prompts, **shared)


class _StableDiffusion(Family):
    name = "Stable Diffusion 1.x/2.x"

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return isinstance(getattr(pipe, "unet", None), UNet2DConditionModel) and getattr(pipe, "vae", None) is not None

    def size_multiple(self, pipe: Any) -> int:
        # The pipeline's own check asks for multiples of 8; the U-Net pads any latent size itself.
        return math.lcm(8, pipe.vae_scale_factor)

    def conditioning(self, pipe, prompts, arguments, height, width):
        return {"encoder_hidden_states": _encode(pipe, prompts, arguments)[0]}

    def predict(self, pipe, sample, timestep, conditioning):
        return pipe.unet(sample, timestep, **conditioning, return_dict=False)[0]


class _StableDiffusionXL(_StableDiffusion):
    name = "Stable Diffusion XL"

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return super().matches(pipe) and pipe.unet.config.addition_embed_type == "text_time"

    def conditioning(self, pipe, prompts, arguments, height, width):
        prompt_embeds, _, pooled, _ = _encode(pipe, prompts, arguments)
        if pipe.text_encoder_2 is None:
            projection_dim = int(pooled.shape[-1])
        else:
            projection_dim = pipe.text_encoder_2.config.projection_dim
        time_ids = pipe._get_add_time_ids(
            arguments["original_size"] or (height, width),
            arguments["crops_coords_top_left"],
            arguments["target_size"] or (height, width),
            dtype=prompt_embeds.dtype,
            text_encoder_projection_dim=projection_dim,
        )
        time_ids = time_ids.to(prompt_embeds.device).repeat(len(prompts), 1)
        return {"encoder_hidden_states": prompt_embeds, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


class _DeepFloydIF(Family):
    name = "DeepFloyd IF (pixel space)"

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return isinstance(getattr(pipe, "unet", None), UNet2DConditionModel) and getattr(pipe, "vae", None) is None

    def size_multiple(self, pipe: Any) -> int:
        # The U-Net's skip connections need every downsampling to halve the size exactly.
        return 2 ** (len(pipe.unet.config.block_out_channels) - 1)

    def encode_image(self, pipe, pixels):
        return pixels.float()

    def decode_sample(self, pipe, sample, height, width):
        return sample

    def conditioning(self, pipe, prompts, arguments, height, width):
        return {"encoder_hidden_states": _encode(pipe, prompts, arguments)[0]}

    def predict(self, pipe, sample, timestep, conditioning):
        output = pipe.unet(sample, timestep, **conditioning, return_dict=False)[0]
        # Learned variance: the first channels are the prediction, the rest the variance.
        return output[:, : sample.shape[1]]


class _PixArt(Family):
    name = "PixArt"

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return isinstance(getattr(pipe, "transformer", None), PixArtTransformer2DModel)

    def size_multiple(self, pipe: Any) -> int:
        return math.lcm(8, pipe.vae_scale_factor * pipe.transformer.config.patch_size)

    def conditioning(self, pipe, prompts, arguments, height, width):
        prompt_embeds, mask, _, _ = _encode(pipe, prompts, arguments)
        resolution = aspect_ratio = None
        # PixArt-Alpha 1024 takes the size as micro-conditions; the pipeline passes them when the
        # model uses them.
        if pipe.transformer.use_additional_conditions:
            options = {"dtype": prompt_embeds.dtype, "device": prompt_embeds.device}
            resolution = torch.tensor([[height, width]], **options).repeat(len(prompts), 1)
            aspect_ratio = torch.tensor([[height / width]], **options).repeat(len(prompts), 1)
        return {
            "encoder_hidden_states": prompt_embeds,
            "encoder_attention_mask": mask,
            "added_cond_kwargs": {"resolution": resolution, "aspect_ratio": aspect_ratio},
        }

    def predict(self, pipe, sample, timestep, conditioning):
        output = pipe.transformer(sample, timestep=timestep.expand(sample.shape[0]), **conditioning, return_dict=False)[0]
        return _learned_sigma_mean(pipe.transformer, output)


def _learned_sigma_mean(transformer: Any, output: torch.Tensor) -> torch.Tensor:
    if transformer.config.out_channels // 2 == transformer.config.in_channels:
        return output.chunk(2, dim=1)[0]
    return output


class _StableDiffusion3(Family):
    name = "Stable Diffusion 3"
    flow = True

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return isinstance(getattr(pipe, "transformer", None), SD3Transformer2DModel)

    def size_multiple(self, pipe: Any) -> int:
        return pipe.vae_scale_factor * pipe.transformer.config.patch_size

    def conditioning(self, pipe, prompts, arguments, height, width):
        prompt_embeds, _, pooled, _ = _encode(pipe, prompts, arguments)
        return {"encoder_hidden_states": prompt_embeds, "pooled_projections": pooled}

    def predict(self, pipe, sample, timestep, conditioning):
        return pipe.transformer(hidden_states=sample, timestep=timestep.expand(sample.shape[0]), **conditioning, return_dict=False)[0]

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        options = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            patch = pipe.transformer.config.patch_size
            options["mu"] = _shift(scheduler, (sample.shape[2] // patch) * (sample.shape[3] // patch), max_shift=1.16)
        scheduler.set_timesteps(num_inference_steps, device=sample.device, **options)


def _shift(scheduler: Any, image_seq_len: int, max_shift: float) -> float:
    """The resolution-dependent shift ``mu``, with the defaults the pipeline uses."""
    config = scheduler.config
    return calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", max_shift),
    )


class _Flux(Family):
    name = "FLUX"
    flow = True

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return isinstance(getattr(pipe, "transformer", None), FluxTransformer2DModel)

    def size_multiple(self, pipe: Any) -> int:
        # Latents are packed 2x2 into tokens.
        return pipe.vae_scale_factor * 2

    def encode_image(self, pipe, pixels):
        latents = super().encode_image(pipe, pixels)
        batch, channels, height, width = latents.shape
        return pipe._pack_latents(latents, batch, channels, height, width)

    def decode_sample(self, pipe, sample, height, width):
        return super().decode_sample(pipe, pipe._unpack_latents(sample, height, width, pipe.vae_scale_factor), height, width)

    def conditioning(self, pipe, prompts, arguments, height, width):
        prompt_embeds, pooled, text_ids = _encode(pipe, prompts, arguments)
        latent_height = 2 * (height // (pipe.vae_scale_factor * 2))
        latent_width = 2 * (width // (pipe.vae_scale_factor * 2))
        image_ids = pipe._prepare_latent_image_ids(len(prompts), latent_height // 2, latent_width // 2, prompt_embeds.device, prompt_embeds.dtype)
        guidance = None
        if pipe.transformer.config.guidance_embeds:
            # Distilled guidance is an input of the model, not CFG: the regeneration's value.
            guidance = torch.full([len(prompts)], arguments["guidance_scale"], device=prompt_embeds.device, dtype=torch.float32)
        return {
            "encoder_hidden_states": prompt_embeds,
            "pooled_projections": pooled,
            "txt_ids": text_ids,
            "img_ids": image_ids,
            "guidance": guidance,
        }

    def predict(self, pipe, sample, timestep, conditioning):
        timestep = timestep.expand(sample.shape[0]).to(sample.dtype) / 1000
        return pipe.transformer(hidden_states=sample, timestep=timestep, **conditioning, return_dict=False)[0]

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        scheduler.set_timesteps(num_inference_steps, device=sample.device, sigmas=sigmas, mu=_shift(scheduler, sample.shape[1], max_shift=1.15))


class _Sana(Family):
    name = "Sana"
    flow = True

    @classmethod
    def matches(cls, pipe: Any) -> bool:
        return isinstance(getattr(pipe, "transformer", None), SanaTransformer2DModel)

    def size_multiple(self, pipe: Any) -> int:
        return math.lcm(32, pipe.vae_scale_factor * pipe.transformer.config.patch_size)

    def encode_image(self, pipe, pixels):
        # Sana decodes latents / scaling_factor, with no shift.
        return _vae_encoding(pipe.vae, pixels) * pipe.vae.config.scaling_factor

    def decode_sample(self, pipe, sample, height, width):
        return _vae_decoding(pipe.vae, sample / pipe.vae.config.scaling_factor)

    def latents_dtype(self, pipe):
        return torch.float32  # SanaPipeline draws its latents in float32 whatever the model's dtype

    def conditioning(self, pipe, prompts, arguments, height, width):
        prompt_embeds, mask, _, _ = _encode(pipe, prompts, arguments)
        return {"encoder_hidden_states": prompt_embeds, "encoder_attention_mask": mask}

    def predict(self, pipe, sample, timestep, conditioning):
        transformer = pipe.transformer
        timestep = timestep.expand(sample.shape[0]) * transformer.config.timestep_scale
        hidden = {**conditioning, "encoder_hidden_states": conditioning["encoder_hidden_states"].to(transformer.dtype)}
        output = transformer(sample.to(transformer.dtype), timestep=timestep, **hidden, return_dict=False)[0]
        return _learned_sigma_mean(transformer, output.float())


# Most specific first: SDXL is a Stable Diffusion U-Net with added conditions.
_FAMILIES: tuple[type[Family], ...] = (_StableDiffusionXL, _StableDiffusion, _DeepFloydIF, _PixArt, _StableDiffusion3, _Flux, _Sana)


def family_of(pipe: Any) -> Family:
    """The adapter for ``pipe``'s family; a ``ValueError`` names the families inversion knows."""
    for family in _FAMILIES:
        if family.matches(pipe):
            return family()
    names = ", ".join(family.name for family in _FAMILIES)
    raise ValueError(f"invert does not know {type(pipe).__name__}; it inverts {names} pipelines.")
