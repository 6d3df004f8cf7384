"""The training objective of a pipeline's own model: its noise schedule, its prediction type, MSE.

- Denoising-diffusion models (SD 1.x/2.x, SDXL, IF, PixArt): ``DDPMScheduler`` built from the
  pipeline's scheduler config (its betas, its ``num_train_timesteps``), timesteps uniform, target
  by ``prediction_type``: the noise (``epsilon``), the velocity (``v_prediction``) or the image
  (``sample``). A model that also predicts a variance (IF, PixArt) is scored on its first half.
- Flow-matching models (SD3, FLUX, Sana): ``FlowMatchEulerDiscreteScheduler`` from the config (its
  shift), timesteps from a logit-normal density as SD3 trains, ``x_t = (1 - s) x + s noise``,
  target ``noise - x``.

Images go through the pipeline's image processor (resize, crop, scale to [-1, 1]) and its VAE
(``(z - shift_factor) * scaling_factor``); pixel-space models (IF) take them as they are. Every
random draw of a training sample (its VAE posterior sample, timestep and noise) comes from that
sample's own seed, so that the loss of a batch is the same however it is split across processes.
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
from textloc.engine import DenoiserInputs

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
    """The denoising loss of ``pipe``'s model at ``resolution`` (pixels, square)."""

    def __init__(self, pipe: Any, resolution: int):
        self.pipe, self.resolution = pipe, resolution
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
        """The model-space samples of ``images``: VAE latents (one posterior sample each), or pixels in [-1, 1]."""
        pixels = self.image_processor.preprocess(list(images), height=self.resolution, width=self.resolution, resize_mode="crop")
        if self.vae is None:
            return pixels.to(self.device)
        with torch.no_grad():
            pixels = pixels.to(self.device, self.vae.dtype)
            encoded = self.vae.encode(pixels)
            if hasattr(encoded, "latent_dist"):
                posterior = encoded.latent_dist
                draws = torch.stack([torch.randn(posterior.mean.shape[1:], generator=seeding.generator(seeding.derived_seed(s, 0))) for s in seeds])
                latents = posterior.mean + posterior.std * draws.to(posterior.mean)
            else:  # a deterministic encoder (Sana's DC-AE)
                latents = encoded.latent
        shift = self.vae.config.get("shift_factor") or 0.0
        return ((latents - shift) * self.vae.config.scaling_factor).float()

    def loss(self, model: torch.nn.Module, inputs: DenoiserInputs, clean: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """The MSE of ``model``'s prediction for noised ``clean`` samples, conditioned by ``inputs``."""
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
