"""textloc-tiny's architecture: config builders for a stock diffusers ``IFPipeline``.

A pixel-space 64x64 U-Net (like DeepFloyd IF stage I) with cross-attention at 16x16 and 8x8, and
a small CLIP text model over a byte tokenizer, trained together from scratch.

Why these choices (measured, see /work/shared/REFERENCE.md): cross-attention is order-blind and a
from-scratch T5 learns almost no position bias, so the caption must reach the U-Net with real
token positions: CLIP's text model has absolute position embeddings. A pooled text embedding is
added to the time embedding (``addition_embed_type="text"``, as in IF) so that the scene (sign and
background colours) is known to every resnet, not only to the attention layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, IFPipeline, UNet2DConditionModel
from transformers import ByT5Tokenizer, CLIPTextConfig, CLIPTextModel

# IFPipeline.encode_prompt pads and truncates every prompt to 77 tokens, whatever the tokenizer.
MAX_TOKENS = 77
# ByT5's ids: 0 pad, 1 eos, 2 unk, then the 256 bytes, then 125 extra ids it never emits.
BYTE_VOCAB_SIZE = 384


@dataclass(frozen=True)
class TinyConfig:
    """The sizes that define a textloc-tiny model; stored in training_state.json."""

    block_out_channels: tuple[int, ...] = (32, 64, 96, 128)
    # Per down block; each up block has one more. Resnets at 64x64 are the costliest.
    layers_per_block: tuple[int, ...] = (1, 1, 2, 2)
    attention_heads: int = 4
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4

    @classmethod
    def from_dict(cls, values: dict) -> "TinyConfig":
        """Rebuild a config saved with :func:`dataclasses.asdict` (JSON turns tuples into lists)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def to_dict(self) -> dict:
        """A JSON-ready copy."""
        return asdict(self)


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


def build_text_encoder(config: TinyConfig) -> CLIPTextModel:
    """A small CLIP text model over bytes; its causal mask is fine, its absolute positions are the point."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=BYTE_VOCAB_SIZE,
            hidden_size=config.text_width,
            intermediate_size=4 * config.text_width,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=MAX_TOKENS,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
        )
    )


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


def encode_captions(pipe: IFPipeline, captions: list[str]) -> torch.Tensor:
    """Text embeddings exactly as ``IFPipeline.encode_prompt(clean_caption=False)`` makes them,
    but with gradients, so the text encoder trains on what it will see at inference. A test
    checks the two agree."""
    ids, mask = tokenize_captions(pipe, captions)
    return pipe.text_encoder(ids, attention_mask=mask)[0]
