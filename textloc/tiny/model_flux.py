"""textloc-tiny-flux's architecture: config builders for a stock diffusers ``FluxPipeline``.

A latent transformer laid out like FLUX.1, scaled down: double-stream blocks (text and image keep
their own weights and attend jointly, text first) followed by single-stream blocks (text and image
tokens concatenated into one sequence with one set of weights). As in FLUX.1 the sequence of text
tokens comes from a T5 encoder (``text_encoder_2``) and a pooled vector from a CLIP text model
(``text_encoder``), here both small and byte-level over the ``ByT5Tokenizer`` textloc-tiny uses.

The autoencoder is not trained again: textloc-tiny-sd3's trained ``AutoencoderKL`` (64x64x3 ->
16x16x4, with its measured shift and scale) is loaded frozen from its shipped folder. FLUX packs
2x2 latent cells into one token, so the transformer takes 4 x 4 = 16 channels and a 64x64 image
is 8x8 = 64 image tokens.

What the pipeline does that the model must be trained for (diffusers' ``pipeline_flux.py``):

- CLIP reads ``tokenizer``'s ids padded to ``tokenizer.model_max_length`` (77) with no attention
  mask and gives its ``pooler_output``: the final state at the first end-of-sequence token (id 1,
  ByT5's, which :func:`~textloc.tiny.model.byte_clip_config` declares).
- T5 reads ``tokenizer_2``'s ids padded to the call's ``max_sequence_length`` (512 by default), also
  with no mask, and every one of those states is a text token. The model is trained on 77 of them
  (:data:`~textloc.tiny.model.MAX_TOKENS`; the longest caption is ~70 bytes), so it must be sampled
  with ``max_sequence_length=77``: the registry's settings say so.
- Text tokens all get the rotary position (0, 0, 0) (``txt_ids`` are zeros), image token (i, j)
  gets (0, i, j). A word's letter order therefore reaches the transformer through T5's relative
  position bias or through the pooled CLIP vector (CLIP has absolute positions), nowhere else.
- The transformer is given ``timestep / 1000``, the flow's sigma in [0, 1], and multiplies it by
  1000 itself.
- The pipeline's default size is 512 pixels whatever the model: the settings pass 64x64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextModel, T5Config, T5EncoderModel

from textloc.tiny.model import (
    BYTE_VOCAB_SIZE,
    MAX_TOKENS,
    EncodedCaptions,
    SavedConfig,
    build_tokenizer,
    byte_clip_config,
)
from textloc.tiny.model_sd3 import TinySD3Config
from textloc.tiny.model_sd3 import build_autoencoder as build_sd3_autoencoder

#: Where the reused autoencoder's folder is named from (``TinyFluxConfig.reused_autoencoder``).
TINY_DIR = Path(__file__).parent
# The autoencoder's config entries that decide how latents are made; a reused autoencoder must
# still have the values a run's config recorded.
_AUTOENCODER_KEYS = ("block_out_channels", "latent_channels", "shift_factor", "scaling_factor")


@dataclass(frozen=True)
class TinyFluxConfig(SavedConfig):
    """The sizes that define a textloc-tiny-flux model and the autoencoder it runs on; stored in
    training_state.json."""

    double_layers: int = 4
    single_layers: int = 8
    attention_heads: int = 6
    attention_head_dim: int = 32
    # Rotary dimensions per position axis (unused, row, column); they add up to the head size.
    # FLUX.1's proportions (16, 56, 56 of 128): an eighth of each head sees no position.
    rope_axes: tuple[int, ...] = (4, 14, 14)
    # The CLIP gives the pooled vector only.
    clip_width: int = 96
    clip_layers: int = 3
    clip_heads: int = 4
    # The T5 gives the text tokens; its width is the transformer's ``joint_attention_dim``.
    t5_width: int = 128
    t5_layers: int = 3
    t5_heads: int = 4
    t5_feed_forward: int = 256
    # textloc-tiny-sd3's autoencoder, as shipped in weights_sd3/vae (its config.json): its sizes
    # and the latent statistics measured when it was trained.
    autoencoder_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    latent_shift: float = 0.009469408541917801
    latent_scale: float = 0.965352146745907
    #: The trained autoencoder's folder, relative to ``textloc/tiny``; ``None``: a freshly
    #: initialised one of the sizes above (tests only: nothing trains it).
    reused_autoencoder: str | None = "weights_sd3/vae"


#: A model small enough for tests, on a random autoencoder.
TEST_FLUX_CONFIG = TinyFluxConfig(
    double_layers=2,
    single_layers=2,
    attention_heads=2,
    attention_head_dim=8,
    rope_axes=(2, 2, 4),
    clip_width=16,
    clip_layers=1,
    clip_heads=2,
    t5_width=16,
    t5_layers=1,
    t5_heads=2,
    t5_feed_forward=32,
    autoencoder_channels=(8, 8, 8),
    latent_shift=0.0,
    latent_scale=1.0,
    reused_autoencoder=None,
)


def build_autoencoder(config: TinyFluxConfig) -> AutoencoderKL:
    """The autoencoder, frozen: textloc-tiny-sd3's trained one when ``config.reused_autoencoder``
    names it (checked to still be the one the config describes), else a fresh one of its sizes."""
    vae = build_sd3_autoencoder(TinySD3Config(
        autoencoder_channels=config.autoencoder_channels,
        latent_channels=config.latent_channels,
        latent_shift=config.latent_shift,
        latent_scale=config.latent_scale,
    ))
    if config.reused_autoencoder is not None:
        folder = TINY_DIR / config.reused_autoencoder
        trained = AutoencoderKL.from_pretrained(folder)
        changed = {key: (trained.config[key], vae.config[key]) for key in _AUTOENCODER_KEYS
                   if _as_tuple(trained.config[key]) != _as_tuple(vae.config[key])}
        if changed:
            raise ValueError(f"the autoencoder in {folder} is not the one this config was made with "
                             f"(saved vs expected: {changed}); a run resumes only on the latents it trained on.")
        vae.load_state_dict(trained.state_dict())
    return vae.requires_grad_(False).eval()


def _as_tuple(value: object) -> tuple:
    # A saved config holds lists where a built one holds tuples.
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def build_clip(config: TinyFluxConfig) -> CLIPTextModel:
    """The pooled vector's encoder: a byte-level CLIP text model (see :func:`byte_clip_config`)."""
    return CLIPTextModel(byte_clip_config(config.clip_width, config.clip_layers, config.clip_heads))


def build_t5(config: TinyFluxConfig) -> T5EncoderModel:
    """The text tokens' encoder: a T5 v1.1 encoder (gated GELU, as FLUX's T5-XXL) over byte ids.

    No dropout: FluxPipeline never masks or drops anything, and a dropout draw would come from the
    global RNG, so a resumed run would no longer repeat an uninterrupted one.
    """
    return T5EncoderModel(T5Config(
        vocab_size=BYTE_VOCAB_SIZE,
        d_model=config.t5_width,
        d_kv=config.t5_width // config.t5_heads,
        d_ff=config.t5_feed_forward,
        num_layers=config.t5_layers,
        num_heads=config.t5_heads,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    ))


def build_transformer(config: TinyFluxConfig) -> FluxTransformer2DModel:
    """The denoiser: ``double_layers`` double-stream and ``single_layers`` single-stream blocks over
    the packed latents (``in_channels`` = 4 x latent channels) and T5's tokens, conditioned on the
    pooled CLIP vector and the timestep. No guidance embedding: guidance is classifier-free, a
    second pass on the empty caption (``true_cfg_scale``, ``negative_prompt=""``)."""
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * config.latent_channels,
        num_layers=config.double_layers,
        num_single_layers=config.single_layers,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.attention_heads,
        joint_attention_dim=config.t5_width,
        pooled_projection_dim=config.clip_width,
        guidance_embeds=False,
        axes_dims_rope=config.rope_axes,
    )


def build_sampling_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """The sampler: Euler on the flow, shifted by 3 as textloc-tiny-sd3's.

    FLUX.1 shifts with the image's token count (``use_dynamic_shifting``: FluxPipeline passes
    ``mu`` from ``calculate_shift``), which at our 64 tokens would be a shift of e^0.47 ~ 1.6. This
    model is trained and sampled at one size, and a static shift of 3 spends more of the steps at
    high noise, where only the caption decides the colours and the word; the scheduler ignores the
    ``mu`` FluxPipeline passes when dynamic shifting is off.
    """
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


def build_pipeline(config: TinyFluxConfig, seed: int = 0) -> FluxPipeline:
    """A freshly initialised textloc-tiny-flux pipeline (weights seeded by ``seed``) on its autoencoder."""
    torch.manual_seed(seed)
    return FluxPipeline(
        transformer=build_transformer(config),
        scheduler=build_sampling_scheduler(),
        vae=build_autoencoder(config),
        text_encoder=build_clip(config),
        tokenizer=build_tokenizer(),
        text_encoder_2=build_t5(config),
        tokenizer_2=build_tokenizer(),
    )


def encode(pipe: FluxPipeline, captions: list[str]) -> EncodedCaptions:
    """The text as ``FluxPipeline.encode_prompt(max_sequence_length=77)`` makes it (CLIP's pooled
    output, T5's last states, no masks), but with gradients. A test checks the two agree.

    ``ids`` and ``mask`` are T5's: the byte probe reads the bytes back from T5's states.
    """
    clip_ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer_max_length,
                              truncation=True, return_tensors="pt").input_ids
    tokens = pipe.tokenizer_2(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                              return_tensors="pt")
    device = pipe.text_encoder_2.device
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    pooled = pipe.text_encoder(clip_ids.to(pipe.text_encoder.device)).pooler_output
    return EncodedCaptions(pipe.text_encoder_2(ids)[0], ids, mask, pooled)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) latents as FluxPipeline's (N, H/2 * W/2, 4C) tokens, row by row."""
    n, channels, height, width = latents.shape
    return FluxPipeline._pack_latents(latents, n, channels, height, width)


def unpack(tokens: torch.Tensor, height: int, width: int, vae_scale_factor: int) -> torch.Tensor:
    """:func:`pack` undone, for latents of an ``height`` x ``width``-pixel image."""
    return FluxPipeline._unpack_latents(tokens, height, width, vae_scale_factor)


def image_ids(latent_height: int, latent_width: int, device: torch.device) -> torch.Tensor:
    """The rotary positions of the packed image tokens, as FluxPipeline makes them: (0, row, column)."""
    return FluxPipeline._prepare_latent_image_ids(1, latent_height // 2, latent_width // 2, device, torch.float32)
