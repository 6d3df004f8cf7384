"""textloc-tiny's architecture: config builders for a stock diffusers ``IFPipeline``.

A pixel-space 64x64 U-Net (like DeepFloyd IF stage I) with cross-attention at 16x16 and 8x8, and
a small CLIP text model over a byte tokenizer, trained together from scratch.

Why these choices (measured, see /work/shared/REFERENCE.md): cross-attention is order-blind and a
from-scratch T5 learns almost no position bias, so the caption must reach the U-Net with real
token positions: CLIP's text model has absolute position embeddings. A pooled text embedding is
added to the time embedding (``addition_embed_type="text"``, as in IF) so that the scene (sign and
background colours) is known to every resnet, not only to the attention layers.

The byte tokenizer, the byte-level CLIP config, :class:`SavedConfig` and :class:`EncodedCaptions`
are shared with textloc-tiny-sd3 (:mod:`textloc.tiny.model_sd3`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Self

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, IFPipeline, UNet2DConditionModel
from transformers import ByT5Tokenizer, CLIPTextConfig, CLIPTextModel

# IFPipeline.encode_prompt pads and truncates every prompt to 77 tokens, whatever the tokenizer.
MAX_TOKENS = 77
# ByT5's ids: 0 pad, 1 eos, 2 unk, then the 256 bytes, then 125 extra ids it never emits.
BYTE_VOCAB_SIZE = 384


class SavedConfig:
    """A frozen dataclass of sizes that round-trips through training_state.json."""

    @classmethod
    def from_dict(cls, values: dict) -> Self:
        """Rebuild a config saved with :meth:`to_dict` (JSON turns tuples into lists)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def to_dict(self) -> dict:
        """A JSON-ready copy."""
        return asdict(self)


@dataclass(frozen=True)
class TinyConfig(SavedConfig):
    """The sizes that define a textloc-tiny model; stored in training_state.json."""

    block_out_channels: tuple[int, ...] = (32, 64, 96, 128)
    # Per down block; each up block has one more. Resnets at 64x64 are the costliest.
    layers_per_block: tuple[int, ...] = (1, 1, 2, 2)
    attention_heads: int = 4
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4


#: A model small enough for tests: a few seconds per training step is too slow there.
TEST_CONFIG = TinyConfig(
    block_out_channels=(32, 32, 32, 32),
    layers_per_block=(1, 1, 1, 1),
    attention_heads=2,
    text_width=32,
    text_layers=1,
    text_heads=2,
)


def build_tokenizer() -> ByT5Tokenizer:
    """A byte-level tokenizer built in code (no vocabulary file): every caption is representable."""
    return ByT5Tokenizer(model_max_length=MAX_TOKENS)


def byte_clip_config(width: int, layers: int, heads: int, **extra: int) -> CLIPTextConfig:
    """A small CLIP text model's config over ByT5's byte ids.

    Its causal mask is fine, its absolute positions are the point. ByT5's end of sequence is id 1:
    CLIP pools its projection from the first end-of-sequence token.
    """
    return CLIPTextConfig(
        vocab_size=BYTE_VOCAB_SIZE,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_TOKENS,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        **extra,
    )


def build_text_encoder(config: TinyConfig) -> CLIPTextModel:
    """textloc-tiny's text encoder: a byte-level CLIP text model (see :func:`byte_clip_config`)."""
    return CLIPTextModel(byte_clip_config(config.text_width, config.text_layers, config.text_heads))


def build_unet(config: TinyConfig) -> UNet2DConditionModel:
    """The 64x64 pixel U-Net: plain resnets at 64 and 32, resnets + cross-attention at 16 and 8.

    ``out_channels=6`` follows IF stage I: IFPipeline splits the output into a prediction and a
    variance half; the variance half is never trained and the scheduler ignores it.
    """
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=3,
        out_channels=6,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        # diffusers reads this as the number of heads in cross-attention blocks.
        attention_head_dim=config.attention_heads,
        cross_attention_dim=config.text_width,
        addition_embed_type="text",
        addition_embed_type_num_heads=config.attention_heads,
        resnet_time_scale_shift="scale_shift",
        norm_num_groups=min(32, min(config.block_out_channels)),
    )


def build_training_scheduler() -> DDPMScheduler:
    """The forward process the model is trained on: cosine schedule, v-prediction."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        variance_type="fixed_small",
        clip_sample=False,
    )


def build_sampling_scheduler() -> DPMSolverMultistepScheduler:
    """The sampler shipped with the pipeline: DPM-Solver++ on the training schedule.

    Dynamic thresholding (as in IF) keeps pixel values in range at high guidance.
    """
    return DPMSolverMultistepScheduler.from_config(
        build_training_scheduler().config,
        algorithm_type="dpmsolver++",
        solver_order=2,
        thresholding=True,
        sample_max_value=1.0,
        dynamic_thresholding_ratio=0.995,
        variance_type=None,
    )


def build_pipeline(config: TinyConfig, seed: int = 0) -> IFPipeline:
    """A freshly initialised textloc-tiny pipeline (weights seeded by ``seed``)."""
    torch.manual_seed(seed)
    return IFPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=build_text_encoder(config),
        unet=build_unet(config),
        scheduler=build_sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )


@dataclass(frozen=True)
class EncodedCaptions:
    """What a denoiser reads of a batch of captions, and the byte ids behind it."""

    states: torch.Tensor  # the token states the denoiser attends to: (N, 77, width)
    ids: torch.Tensor  # byte ids, (N, 77)
    mask: torch.Tensor  # 1 on the bytes and the end of sequence, 0 on padding
    pooled: torch.Tensor | None = None  # a pooled caption embedding, for models that take one


def tokenize_captions(pipe: IFPipeline, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask as ``IFPipeline.encode_prompt(clean_caption=False)`` makes them:
    lower-cased, padded and truncated to 77 tokens."""
    texts = [caption.lower().strip() for caption in captions]
    tokens = pipe.tokenizer(
        texts,
        padding="max_length",
        max_length=MAX_TOKENS,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    device = pipe.text_encoder.device
    return tokens.input_ids.to(device), tokens.attention_mask.to(device)


def encode(pipe: IFPipeline, captions: list[str]) -> EncodedCaptions:
    """Text embeddings exactly as ``IFPipeline.encode_prompt(clean_caption=False)`` makes them,
    but with gradients, so the text encoder trains on what it will see at inference. A test
    checks the two agree."""
    ids, mask = tokenize_captions(pipe, captions)
    return EncodedCaptions(pipe.text_encoder(ids, attention_mask=mask)[0], ids, mask)


def encode_captions(pipe: IFPipeline, captions: list[str]) -> torch.Tensor:
    """The embeddings of :func:`encode` alone."""
    return encode(pipe, captions).states
