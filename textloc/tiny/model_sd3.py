"""textloc-tiny-sd3's architecture: config builders for a stock diffusers ``StableDiffusion3Pipeline``.

A latent MMDiT like SD3-medium, scaled down: a small ``AutoencoderKL`` (64x64x3 -> 16x16x4), an
``SD3Transformer2DModel`` whose joint-attention blocks read image and text tokens together, and
SD3's two CLIP text encoders, here byte-level over a ``ByT5Tokenizer`` (as textloc-tiny's). There
is no T5: the pipeline is built and loaded with ``text_encoder_3=None, tokenizer_3=None`` and called
with ``max_sequence_length=0``, so the transformer reads exactly the 77 CLIP tokens it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextModelWithProjection

from textloc.tiny.data import IMAGE_SIZE
from textloc.tiny.model import (
    MAX_TOKENS,
    EncodedCaptions,
    SavedConfig,
    build_tokenizer,
    byte_clip_config,
)

@dataclass(frozen=True)
class TinySD3Config(SavedConfig):
    """The sizes that define a textloc-tiny-sd3 model, and its autoencoder's latent statistics
    (measured once the autoencoder is trained); stored in training_state.json."""

    autoencoder_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    joint_layers: int = 8
    attention_heads: int = 6
    attention_head_dim: int = 32
    patch_size: int = 2
    # Each CLIP's width; the transformer reads both side by side (2x this).
    text_width: int = 96
    text_layers: int = 3
    text_heads: int = 4
    # Latents are (mean - shift) * scale; the identity until the autoencoder is measured.
    latent_shift: float = 0.0
    latent_scale: float = 1.0

    @property
    def latent_size(self) -> int:
        """The latents' side: each autoencoder block after the first halves the image."""
        return IMAGE_SIZE // 2 ** (len(self.autoencoder_channels) - 1)


#: A model small enough for tests.
TEST_SD3_CONFIG = TinySD3Config(
    autoencoder_channels=(8, 8, 8),
    joint_layers=2,
    attention_heads=2,
    attention_head_dim=8,
    text_width=16,
    text_layers=1,
    text_heads=2,
)


def build_autoencoder(config: TinySD3Config) -> AutoencoderKL:
    """A small ``AutoencoderKL``: one resnet per block, no mid-block attention, no quant convs (as
    SD3's), 64x64x3 -> 16x16x``latent_channels``."""
    blocks = len(config.autoencoder_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=config.autoencoder_channels,
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=min(32, min(config.autoencoder_channels)),
        sample_size=IMAGE_SIZE,
        scaling_factor=config.latent_scale,
        shift_factor=config.latent_shift,
        force_upcast=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
    )


def build_text_encoder(config: TinySD3Config) -> CLIPTextModelWithProjection:
    """One of the two text encoders: a byte-level CLIP text model with its pooled projection."""
    return CLIPTextModelWithProjection(
        byte_clip_config(config.text_width, config.text_layers, config.text_heads, projection_dim=config.text_width)
    )


def build_transformer(config: TinySD3Config) -> SD3Transformer2DModel:
    """The MMDiT: ``joint_layers`` joint-attention blocks over 2x2 latent patches and the 77 text
    tokens (both CLIPs' states side by side, so ``joint_attention_dim`` is twice a CLIP's width)."""
    width = config.attention_heads * config.attention_head_dim
    return SD3Transformer2DModel(
        sample_size=config.latent_size,
        patch_size=config.patch_size,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        num_layers=config.joint_layers,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.attention_heads,
        joint_attention_dim=2 * config.text_width,
        caption_projection_dim=width,
        pooled_projection_dim=2 * config.text_width,
        pos_embed_max_size=config.latent_size // config.patch_size,
    )


def build_sampling_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """SD3's sampler. Shift 3 (SD3's) spends most steps at high noise, where the caption decides
    colours and word; the image is small, but those decisions are not."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)


def build_pipeline(config: TinySD3Config, seed: int = 0) -> StableDiffusion3Pipeline:
    """A freshly initialised textloc-tiny-sd3 pipeline (weights seeded by ``seed``)."""
    torch.manual_seed(seed)
    return StableDiffusion3Pipeline(
        transformer=build_transformer(config),
        scheduler=build_sampling_scheduler(),
        vae=build_autoencoder(config),
        text_encoder=build_text_encoder(config),
        tokenizer=build_tokenizer(),
        text_encoder_2=build_text_encoder(config),
        tokenizer_2=build_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )


def set_latent_statistics(pipe: StableDiffusion3Pipeline, shift: float, scale: float) -> None:
    """Record the autoencoder's latent statistics where the pipeline reads them when it decodes."""
    pipe.vae.register_to_config(shift_factor=shift, scaling_factor=scale)


def encode(pipe: StableDiffusion3Pipeline, captions: list[str]) -> EncodedCaptions:
    """The text embeddings exactly as ``StableDiffusion3Pipeline.encode_prompt(max_sequence_length=0)``
    makes them (no lower-casing, no attention mask, CLIP's penultimate layer), but with gradients.
    A test checks the two agree."""
    tokens = pipe.tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    device = pipe.text_encoder.device
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    states, pooled = [], []
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        output = encoder(ids, output_hidden_states=True)
        states.append(output.hidden_states[-2])
        pooled.append(output.text_embeds)
    return EncodedCaptions(torch.cat(states, dim=-1), ids, mask, torch.cat(pooled, dim=-1))
