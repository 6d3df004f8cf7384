"""The embedded models' architectures, as one interface the trainer and the judge share.

textloc-tiny (:class:`PixelIF`) is an ``IFPipeline``: a pixel-space U-Net trained on DDPM
v-prediction. textloc-tiny-sd3 (:class:`LatentSD3`) is a ``StableDiffusion3Pipeline``: an MMDiT on
the latents of a small autoencoder, trained on flow matching as SD3 is. textloc-tiny-flux
(:class:`LatentFlux`) is a ``FluxPipeline``: double- and single-stream blocks trained the same way
on textloc-tiny-sd3's autoencoder. Everything else (the renderer, the recipe, the probes, the loop,
EMA, checkpoints, evaluation) is the same code for all three; what differs is here: how the
pipeline is built and loaded, what is trained, how a clean sample is noised and what the denoiser
must predict, where the glyph probe reads, and how the weights export.

Timesteps are on one scale for all, 0-1000 with 1000 pure noise: IF's integer DDPM steps, and for
the flow models the flow's sigma x 1000, which is what SD3's transformer takes as ``timestep``
(FluxPipeline hands its transformer sigma itself, ``timestep / 1000``). So the recipe's "high
noise" (t >= 900) means the same share of the path for all.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, ClassVar

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    IFPipeline,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    UNet2DConditionModel,
)

from textloc.models import TEXTLOC_TINY, TEXTLOC_TINY_FLUX, TEXTLOC_TINY_SD3
from textloc.pipelines import load_pipeline
from textloc.tiny import model, model_flux, model_sd3
from textloc.tiny.data import IMAGE_SIZE
from textloc.tiny.model import EncodedCaptions, SavedConfig

# Half of every batch (the recipe's ``high_noise_share``) is drawn from the last tenth of the
# timesteps. On IF's cosine schedule a flat colour region of ~800 pixels stays recoverable from the
# noisy image (its averaged SNR is above 1) until t ~ 975, and a letter's ~80 pixels until t ~ 925;
# below that the model can copy colour and word from the noise and never needs the caption. With
# uniform timesteps those decisive steps were 2-8% of training, and colour binding did not appear
# in 2000 steps.
HIGH_NOISE_FROM = 900


def training_timesteps(
    batch: int, num_train_timesteps: int, generator: torch.Generator, high_noise_share: float
) -> torch.Tensor:
    """textloc-tiny's draw: uniform integer timesteps, with a ``high_noise_share`` of them redrawn
    from ``HIGH_NOISE_FROM`` up."""
    uniform = torch.randint(0, num_train_timesteps, (batch,), generator=generator)
    high = torch.randint(HIGH_NOISE_FROM, num_train_timesteps, (batch,), generator=generator)
    return torch.where(torch.rand(batch, generator=generator) < high_noise_share, high, uniform)


class Architecture(abc.ABC):
    """What one embedded model's architecture decides; one instance per model."""

    #: The registry name of the model this architecture trains.
    model_name: ClassVar[str]
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    denoiser_class: ClassVar[type[torch.nn.Module]]
    config_class: ClassVar[type[SavedConfig]]
    default_config: ClassVar[SavedConfig]
    #: A model small enough for tests.
    test_config: ClassVar[SavedConfig]
    #: The shipped weights' folder, the trainer's default export.
    export_dir: ClassVar[Path]
    #: Total steps, batch size and peak learning rate of the shipped run (and, for a latent model,
    #: its autoencoder stage's steps).
    schedule: ClassVar[Mapping[str, float]]
    #: The pipeline-call arguments the model is sampled with, in diffusers' names.
    sampler_settings: ClassVar[Mapping[str, Any]]
    #: Pipeline components stored in fp16 on export (they load as float32).
    half_precision: ClassVar[tuple[str, ...]]

    @abc.abstractmethod
    def build_pipeline(self, config: SavedConfig, seed: int = 0) -> DiffusionPipeline:
        """A freshly initialised pipeline (weights seeded by ``seed``)."""

    def load(self, folder: Path) -> DiffusionPipeline:
        """An exported folder's pipeline, in float32."""
        return load_pipeline(str(folder), dtype=torch.float32)

    @abc.abstractmethod
    def denoiser(self, pipe: DiffusionPipeline) -> torch.nn.Module:
        """The U-Net or transformer."""

    @abc.abstractmethod
    def trained(self, pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
        """The components the optimizer trains and the EMA averages, by component name."""

    def saved(self, pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
        """The components a checkpoint keeps: the trained ones and any trained before them."""
        return self.trained(pipe)

    def autoencoder(self, pipe: DiffusionPipeline) -> AutoencoderKL | None:
        """The autoencoder to train before the denoiser, for latent models."""
        return None

    @abc.abstractmethod
    def training_scheduler(self) -> DDPMScheduler | FlowMatchEulerDiscreteScheduler:
        """The forward process the denoiser is trained on."""

    @abc.abstractmethod
    def draw_timesteps(self, size: int, generator: torch.Generator, high_noise_share: float) -> torch.Tensor:
        """Training timesteps on the 0-1000 scale, a ``high_noise_share`` of them from ``HIGH_NOISE_FROM`` up."""

    @abc.abstractmethod
    def sample_shape(self, pipe: DiffusionPipeline) -> tuple[int, int, int]:
        """(channels, height, width) of what the denoiser denoises."""

    def clean_sample(self, pipe: DiffusionPipeline, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] as the denoiser's clean samples."""
        return images

    @abc.abstractmethod
    def noised(
        self, scheduler: Any, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noisy sample at ``timesteps`` and what the denoiser must predict from it."""

    @abc.abstractmethod
    def encode(self, pipe: DiffusionPipeline, captions: list[str]) -> EncodedCaptions:
        """The captions as the pipeline encodes them, with gradients."""

    @abc.abstractmethod
    def predict(
        self, pipe: DiffusionPipeline, noisy: torch.Tensor, timesteps: torch.Tensor, text: EncodedCaptions
    ) -> torch.Tensor:
        """The denoiser's prediction, shaped like ``noisy``."""

    @abc.abstractmethod
    def text_width(self, pipe: DiffusionPipeline) -> int:
        """The width of the token states the denoiser reads."""

    @abc.abstractmethod
    def glyph_module(self, denoiser: torch.nn.Module) -> torch.nn.Module:
        """The module whose output the glyph probe reads."""

    @abc.abstractmethod
    def glyph_map(self, output: Any) -> torch.Tensor:
        """That module's output as a feature map (N, C, H, W)."""

    @abc.abstractmethod
    def glyph_channels(self, denoiser: torch.nn.Module) -> int:
        """C of :meth:`glyph_map`."""


class PixelIF(Architecture):
    """textloc-tiny: an ``IFPipeline`` whose 64x64 pixel U-Net is trained on v-prediction."""

    model_name = TEXTLOC_TINY.name
    pipeline_class = IFPipeline
    denoiser_class = UNet2DConditionModel
    config_class = model.TinyConfig
    default_config = model.TinyConfig()
    test_config = model.TEST_CONFIG
    export_dir = TEXTLOC_TINY.folder
    schedule = MappingProxyType({"total_steps": 30_000, "batch_size": 16, "lr": 5e-4})
    sampler_settings = TEXTLOC_TINY.settings
    half_precision = ("unet",)

    def build_pipeline(self, config: SavedConfig, seed: int = 0) -> IFPipeline:
        return model.build_pipeline(config, seed)

    def denoiser(self, pipe: IFPipeline) -> torch.nn.Module:
        return pipe.unet

    def trained(self, pipe: IFPipeline) -> dict[str, torch.nn.Module]:
        return {"unet": pipe.unet, "text_encoder": pipe.text_encoder}

    def training_scheduler(self) -> DDPMScheduler:
        return model.build_training_scheduler()

    def draw_timesteps(self, size: int, generator: torch.Generator, high_noise_share: float) -> torch.Tensor:
        return training_timesteps(size, 1000, generator, high_noise_share)

    def sample_shape(self, pipe: IFPipeline) -> tuple[int, int, int]:
        return 3, IMAGE_SIZE, IMAGE_SIZE

    def noised(
        self, scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        timesteps = timesteps.long()
        return scheduler.add_noise(clean, noise, timesteps), scheduler.get_velocity(clean, noise, timesteps)

    def encode(self, pipe: IFPipeline, captions: list[str]) -> EncodedCaptions:
        return model.encode(pipe, captions)

    def predict(
        self, pipe: IFPipeline, noisy: torch.Tensor, timesteps: torch.Tensor, text: EncodedCaptions
    ) -> torch.Tensor:
        # Only the first 3 output channels are a prediction; IF's variance half is left untrained.
        return pipe.unet(noisy, timesteps.long(), encoder_hidden_states=text.states).sample[:, :3]

    def text_width(self, pipe: IFPipeline) -> int:
        return pipe.unet.config.cross_attention_dim

    def glyph_module(self, denoiser: torch.nn.Module) -> torch.nn.Module:
        """The last cross-attention block of the U-Net's 16x16 up block (the second: 8x8 is the first)."""
        return denoiser.up_blocks[1].attentions[-1]

    def glyph_map(self, output: Any) -> torch.Tensor:
        return output[0]

    def glyph_channels(self, denoiser: torch.nn.Module) -> int:
        return self.glyph_module(denoiser).out_channels


class LatentTransformer(Architecture):
    """What textloc-tiny-sd3 and textloc-tiny-flux share: a transformer trained on flow matching
    over an autoencoder's latents, beside two text encoders, with the glyph probe on the image
    tokens after the joint (double-stream) block that ends the first half of them."""

    # All of it: the transformer alone is 20-21 MB in fp16, and the limit is 25 MB.
    half_precision = ("transformer", "vae", "text_encoder", "text_encoder_2")
    #: The model's module of builders (``build_pipeline``, ``build_sampling_scheduler``, ``encode``).
    builders: ClassVar[ModuleType]

    def build_pipeline(self, config: SavedConfig, seed: int = 0) -> DiffusionPipeline:
        return self.builders.build_pipeline(config, seed)

    def training_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        return self.builders.build_sampling_scheduler()

    def encode(self, pipe: DiffusionPipeline, captions: list[str]) -> EncodedCaptions:
        return self.builders.encode(pipe, captions)

    def denoiser(self, pipe: DiffusionPipeline) -> torch.nn.Module:
        return pipe.transformer

    def trained(self, pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
        return {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}

    def saved(self, pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
        return {**self.trained(pipe), "vae": pipe.vae}

    def draw_timesteps(self, size: int, generator: torch.Generator, high_noise_share: float) -> torch.Tensor:
        """SD3's logit-normal sigmas (the middle of the path weighs most), with a
        ``high_noise_share`` of them redrawn uniformly from ``HIGH_NOISE_FROM`` / 1000 up."""
        logit_normal = torch.sigmoid(torch.randn(size, generator=generator))
        high = HIGH_NOISE_FROM / 1000 + (1 - HIGH_NOISE_FROM / 1000) * torch.rand(size, generator=generator)
        sigmas = torch.where(torch.rand(size, generator=generator) < high_noise_share, high, logit_normal)
        return 1000 * sigmas

    def sample_shape(self, pipe: DiffusionPipeline) -> tuple[int, int, int]:
        size = IMAGE_SIZE // pipe.vae_scale_factor
        return pipe.vae.config.latent_channels, size, size

    @torch.no_grad()
    def clean_sample(self, pipe: DiffusionPipeline, images: torch.Tensor) -> torch.Tensor:
        """The latents' means, shifted and scaled as the pipeline undoes before decoding."""
        latents = pipe.vae.encode(images).latent_dist.mode()
        return (latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor

    def noised(
        self, scheduler: FlowMatchEulerDiscreteScheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The straight path from the sample (sigma 0) to the noise (sigma 1); the target is its velocity."""
        sigmas = (timesteps / 1000).view(-1, 1, 1, 1)
        return (1 - sigmas) * clean + sigmas * noise, noise - clean

    def text_width(self, pipe: DiffusionPipeline) -> int:
        return pipe.transformer.config.joint_attention_dim

    def glyph_module(self, denoiser: torch.nn.Module) -> torch.nn.Module:
        """The joint block that ends the first half of them: the word must reach the image tokens by
        then, which leaves the blocks after it free to draw it."""
        return denoiser.transformer_blocks[len(denoiser.transformer_blocks) // 2 - 1]

    def glyph_map(self, output: Any) -> torch.Tensor:
        """A joint block returns (text tokens, image tokens); the image tokens, row by row, as a map."""
        tokens = output[1]
        side = int(tokens.shape[1] ** 0.5)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)

    def glyph_channels(self, denoiser: torch.nn.Module) -> int:
        return denoiser.inner_dim


class LatentSD3(LatentTransformer):
    """textloc-tiny-sd3: a ``StableDiffusion3Pipeline`` whose MMDiT is trained on flow matching over
    the latents of an autoencoder trained first (:mod:`textloc.tiny.autoencoder`)."""

    model_name = TEXTLOC_TINY_SD3.name
    pipeline_class = StableDiffusion3Pipeline
    denoiser_class = SD3Transformer2DModel
    config_class = model_sd3.TinySD3Config
    default_config = model_sd3.TinySD3Config()
    test_config = model_sd3.TEST_SD3_CONFIG
    export_dir = TEXTLOC_TINY_SD3.folder
    schedule = MappingProxyType({"total_steps": 20_000, "batch_size": 16, "lr": 5e-4, "autoencoder_steps": 1000})
    sampler_settings = TEXTLOC_TINY_SD3.settings
    builders = model_sd3

    def load(self, folder: Path) -> StableDiffusion3Pipeline:
        return load_pipeline(str(folder), dtype=torch.float32, **TEXTLOC_TINY_SD3.load_options)

    def autoencoder(self, pipe: StableDiffusion3Pipeline) -> AutoencoderKL:
        return pipe.vae

    def predict(
        self, pipe: StableDiffusion3Pipeline, noisy: torch.Tensor, timesteps: torch.Tensor, text: EncodedCaptions
    ) -> torch.Tensor:
        return pipe.transformer(
            noisy, encoder_hidden_states=text.states, pooled_projections=text.pooled, timestep=timesteps
        ).sample


class LatentFlux(LatentTransformer):
    """textloc-tiny-flux: a ``FluxPipeline`` (double- then single-stream blocks) trained on flow
    matching as textloc-tiny-sd3, over textloc-tiny-sd3's trained autoencoder, reused frozen
    (:func:`textloc.tiny.model_flux.build_autoencoder`): no autoencoder stage."""

    model_name = TEXTLOC_TINY_FLUX.name
    pipeline_class = FluxPipeline
    denoiser_class = FluxTransformer2DModel
    config_class = model_flux.TinyFluxConfig
    default_config = model_flux.TinyFluxConfig()
    test_config = model_flux.TEST_FLUX_CONFIG
    export_dir = TEXTLOC_TINY_FLUX.folder
    schedule = MappingProxyType({"total_steps": 20_000, "batch_size": 16, "lr": 5e-4})
    sampler_settings = TEXTLOC_TINY_FLUX.settings
    builders = model_flux

    def predict(
        self, pipe: FluxPipeline, noisy: torch.Tensor, timesteps: torch.Tensor, text: EncodedCaptions
    ) -> torch.Tensor:
        """The transformer called as FluxPipeline calls it: latents packed into 2x2 tokens with their
        (0, row, column) positions, text positions all zero, and the timestep as sigma (``/ 1000``)."""
        height, width = noisy.shape[-2:]
        text_ids = torch.zeros(text.states.shape[1], 3, device=noisy.device)
        tokens = pipe.transformer(
            hidden_states=model_flux.pack(noisy),
            encoder_hidden_states=text.states,
            pooled_projections=text.pooled,
            timestep=timesteps / 1000,
            img_ids=model_flux.image_ids(height, width, noisy.device),
            txt_ids=text_ids,
        ).sample
        return model_flux.unpack(tokens, height * pipe.vae_scale_factor, width * pipe.vae_scale_factor,
                                 pipe.vae_scale_factor)


#: The architectures by the name of the model they train.
ARCHITECTURES: dict[str, Architecture] = {arch.model_name: arch for arch in (PixelIF(), LatentSD3(), LatentFlux())}


def architecture_of(component: DiffusionPipeline | torch.nn.Module) -> Architecture:
    """The architecture a pipeline, or its denoiser, was built with."""
    for arch in ARCHITECTURES.values():
        if isinstance(component, (arch.pipeline_class, arch.denoiser_class)):
            return arch
    raise TypeError(f"{type(component).__name__} is not part of an embedded model ({', '.join(ARCHITECTURES)}).")


def architecture_of_folder(folder: Path) -> Architecture:
    """The architecture of a pipeline folder the trainer exported (from its ``model_index.json``)."""
    class_name = json.loads((Path(folder) / "model_index.json").read_text())["_class_name"]
    for arch in ARCHITECTURES.values():
        if arch.pipeline_class.__name__ == class_name:
            return arch
    raise ValueError(f"{folder} holds a {class_name}, not an embedded model's pipeline.")
