"""The training objective of a pipeline's own model: its noise schedule, its prediction type, MSE.

- Denoising-diffusion models (SD 1.x/2.x, SDXL, IF, PixArt): ``DDPMScheduler`` built from the
  pipeline's scheduler config (its betas, its ``num_train_timesteps``), timesteps uniform, target
  by ``prediction_type``: the noise (``epsilon``), the velocity (``v_prediction``) or the image
  (``sample``). A model that also predicts a variance (IF, PixArt) is scored on its first half.
- Flow-matching models (SD3, FLUX, Sana): ``FlowMatchEulerDiscreteScheduler`` from the config (its
  shift), timesteps from a logit-normal density as SD3 trains, ``x_t = (1 - s) x + s noise``,
  target ``noise - x``.

Images go through the pipeline's image processor (resize, crop, scale to [-1, 1]) and become the
clean sample the pipeline's sampler ends at, as the family's spec says (``Family.training``,
:class:`~textloc.architectures.spec.Training`): its inversion's encoding where it has one (Qwen-Image:
its video VAE's one-frame latents, normalised, packed into tokens), else the VAE's latents
(``(z - shift_factor) * scaling_factor``, packed where the pipeline packs them), or the pixels of a
pixel-space model (IF). Where a family's pipeline negates its denoiser's output (HiDream, Lumina 2, NucleusMoE-Image, Ideogram 4,
Z-Image) the target is negated too; the time the denoiser is handed comes from the captured call
(:class:`~textloc.engine.DenoiserInputs`). Every random draw of a training sample (its VAE posterior
sample, timestep and noise) comes from that sample's own seed, so that the loss of a batch is the
same however it is split across processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.image_processor import VaeImageProcessor
from diffusers.training_utils import compute_density_for_timestep_sampling
from PIL import Image

from textloc import seeding
from textloc.architectures import family_of
from textloc.architectures.inversion import vae_latents
from textloc.architectures.spec import Family
from textloc.engine import DenoiserInputs
from textloc.finetune.lora import lora_disabled

# SD3's training defaults (diffusers' train_dreambooth_lora_sd3.py): timesteps from a logit-normal density.
LOGIT_MEAN, LOGIT_STD = 0.0, 1.0


def is_flow_matching(scheduler: Any) -> bool:
    """Whether a pipeline's scheduler samples a flow-matching model (SD3, FLUX, Sana)."""
    config = scheduler.config
    return (
        isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
        or config.get("prediction_type") == "flow_prediction"
        or bool(config.get("use_flow_sigmas"))
    )


class Objective:
    """The denoising loss of ``pipe``'s model at ``resolution`` (pixels, square); ``family``: the
    pipeline's own unless given."""

    def __init__(self, pipe: Any, resolution: int, family: Family | None = None):
        self.pipe, self.resolution = pipe, resolution
        family = family or family_of(pipe)
        self.training = family.training
        self.encode = self.training.encode or (family.inversion.encode_image if family.inversion is not None else _encode)
        config = pipe.scheduler.config
        self.flow = is_flow_matching(pipe.scheduler)
        if self.flow:
            shift = config.get("shift", config.get("flow_shift", 1.0))
            self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(config, shift=shift)
        else:
            self.scheduler = DDPMScheduler.from_config(config)
            self.prediction_type = self.scheduler.config.prediction_type
            if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
                raise ValueError(f"Unknown prediction_type {self.prediction_type!r} in the pipeline's scheduler config.")
        self.image_processor = getattr(pipe, "image_processor", None) or VaeImageProcessor(vae_scale_factor=1)
        self.vae = getattr(pipe, "vae", None)

    @property
    def device(self) -> torch.device:
        return next(self.pipe.vae.parameters()).device if self.vae is not None else self.pipe.device

    def clean_samples(self, images: Sequence[Image.Image], seeds: Sequence[int]) -> torch.Tensor:
        """The model-space samples of ``images`` (one VAE posterior sample each, from its seed), float32."""
        pixels = self.image_processor.preprocess(list(images), height=self.resolution, width=self.resolution, resize_mode="crop")
        generators = [seeding.generator(seeding.derived_seed(seed, 0)) for seed in seeds]
        with torch.no_grad():
            return self.encode(self.pipe, pixels.to(self.device), generators).float()

    def loss(
        self, model: torch.nn.Module, inputs: DenoiserInputs, clean: torch.Tensor, seeds: Sequence[int], preserved: Sequence[bool] = ()
    ) -> torch.Tensor:
        """The MSE of ``model``'s prediction for noised ``clean`` samples, conditioned by ``inputs``.

        Rows flagged in ``preserved`` take as their target what ``model`` predicts for the same input
        with its LoRA off (prior preservation, distilled): exact where the image's own target is one
        noisy draw, so that a LoRA taught to change some captions is held to the others at every
        timestep and pixel.
        """
        clean = self._as_denoiser_input(clean, inputs)
        timesteps, noise, sigmas = self._draw(clean, seeds)
        if self.flow:
            sigma = sigmas.view(-1, *[1] * (clean.dim() - 1))
            noisy, target = (1 - sigma) * clean + sigma * noise, noise - clean
        else:
            noisy = self.scheduler.add_noise(clean, noise, timesteps)
            target = {"epsilon": noise, "sample": clean}.get(self.prediction_type)
            if target is None:
                target = self.scheduler.get_velocity(clean, noise, timesteps)
        target = self.training.prediction_sign * target
        if any(preserved):
            with torch.no_grad(), lora_disabled(model):
                own = inputs(model, noisy, timesteps)
            rows = torch.tensor(list(preserved), device=target.device).view(-1, *[1] * (target.dim() - 1))
            target = torch.where(rows, own.to(target.dtype), target)
        prediction = inputs(model, noisy, timesteps)
        return torch.nn.functional.mse_loss(prediction.float(), target.float())

    def _draw(self, clean: torch.Tensor, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample, from its own seed: a timestep, its sigma (flow matching) and the noise."""
        timesteps, sigmas, noises = [], [], []
        total = self.scheduler.config.num_train_timesteps
        for seed in seeds:
            generator = seeding.generator(seeding.derived_seed(seed, 1))
            if self.flow:
                density = compute_density_for_timestep_sampling(
                    "logit_normal", 1, logit_mean=LOGIT_MEAN, logit_std=LOGIT_STD, generator=generator
                )
                index = (density * total).long().clamp(max=total - 1)
                timesteps.append(self.scheduler.timesteps[index])
                sigmas.append(self.scheduler.sigmas[index])
            else:
                timesteps.append(torch.randint(0, total, (1,), generator=generator))
            noises.append(torch.randn(clean.shape[1:], generator=generator))
        device = clean.device
        sigma = torch.cat(sigmas).to(device) if sigmas else torch.zeros(0, device=device)
        return torch.cat(timesteps).to(device), torch.stack(noises).to(device, clean.dtype), sigma

    def _as_denoiser_input(self, clean: torch.Tensor, inputs: DenoiserInputs) -> torch.Tensor:
        if clean.shape == inputs.sample_shape:
            return clean
        pack = getattr(self.pipe, "_pack_latents", None)  # FLUX feeds its transformer 2x2 patches as tokens
        if pack is not None:
            packed = pack(clean, *clean.shape)
            if packed.shape == inputs.sample_shape:
                return packed
        raise ValueError(
            f"The pipeline calls its denoiser with samples of shape {tuple(inputs.sample_shape)}, but the "
            f"training images give {tuple(clean.shape)}: train at the resolution the pipeline was called with."
        )


def _encode(pipe: Any, pixels: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """A family's clean sample by default (``Training.encode``): the VAE's latents as most pipelines
    decode them, or the pixels of a pixel-space model."""
    if getattr(pipe, "vae", None) is None:
        return pixels
    return vae_latents(pipe, pixels, generators)
