"""HunyuanImage 2.1: a DiT of double-stream (joint) blocks, then single-stream blocks that read
``[image, text]``: its text comes **after** the image. The text stream is Qwen2.5-VL's tokens with
ByT5's glyph tokens (of the prompt's quoted text) appended inside the denoiser, reordered per row as
``[valid glyph, valid Qwen, masked glyph, masked Qwen]``: a call's shared sequences hold
``encoder_hidden_states`` plus ``encoder_hidden_states_2`` tokens, with a boolean key mask over
``[image, text]`` that travels with a patched row's text. Its token refiner (a text-only attention
gated by the timestep) is not patched: listed as a self-attention.

CFG: a guider object runs a conditional then an unconditional pass, inside
``cache_context("pred_cond")`` and ``cache_context("pred_uncond")``; outside the guider's step range,
the conditional one alone. The timestep is on the 0..1000 scale.

The tiny pipeline: a stock ``HunyuanImagePipeline`` of 2 double, 2 single and 2 refiner blocks of 2
heads, a 3-layer Qwen2.5-VL (read at ``hidden_states[-3]``) behind Qwen-Image's tiny tokenizer, a
byte-level T5 for the glyphs, and two CFG guiders; its fixed text lengths (1000 Qwen and 128 ByT5
tokens, set by the constructor) cut to 48 each.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import CapturedInversion
from textloc.architectures.qwenimage import qwen25_vl_encoder, system_prompt_tokenizer
from textloc.architectures.spec import JOINT, TEXT_LAST, AttentionRule, Family, Guidance, PublishedDenoiser, TinyPipeline


def _text_length(args: tuple, kwargs: Mapping[str, Any]) -> int:
    glyphs = kwargs.get("encoder_hidden_states_2")
    return kwargs["encoder_hidden_states"].shape[1] + (0 if glyphs is None else glyphs.shape[1])


def _hunyuan_image(seed: int) -> dict[str, Any]:
    from diffusers import AutoencoderKLHunyuanImage, FlowMatchEulerDiscreteScheduler, HunyuanImageTransformer2DModel
    from diffusers.guiders import AdaptiveProjectedMixGuidance

    tokenizer = system_prompt_tokenizer()
    byt5_tokenizer = parts.t5_tokenizer()
    latent_channels = 4
    transformer = parts.init(
        seed,
        HunyuanImageTransformer2DModel,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        num_single_layers=2,
        num_refiner_layers=2,
        mlp_ratio=2.0,
        patch_size=(1, 1),
        guidance_embeds=False,  # the non-distilled model: real CFG through the guider
        text_embed_dim=parts.TEXT_WIDTH,
        text_embed_2_dim=parts.TEXT_WIDTH,  # glyph tokens join the text sequence
        rope_axes_dim=(8, 8),
    )
    # One pixel-shuffle downsample: 32 px -> 16x16 latents; GroupNorm(32) wants channels of 32.
    vae = parts.init(
        seed, AutoencoderKLHunyuanImage, in_channels=3, out_channels=3, latent_channels=latent_channels,
        block_out_channels=(32, 32), layers_per_block=1, spatial_compression_ratio=2, sample_size=parts.IMAGE_SIZE,
        scaling_factor=0.75289,
    )
    # CFG for the first steps, adaptive projected guidance after (2.1's guider): two passes a step.
    def guider(scale: float) -> Any:
        return AdaptiveProjectedMixGuidance(guidance_scale=scale, adaptive_projected_guidance_start_step=5)

    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=4.0),
        vae=vae,
        text_encoder=qwen25_vl_encoder(seed, tokenizer, layers=3),
        tokenizer=tokenizer,
        text_encoder_2=parts.t5_encoder(seed, byt5_tokenizer),
        tokenizer_2=byt5_tokenizer,
        transformer=transformer,
        guider=guider(4.0),
        ocr_guider=guider(3.0),  # used instead when the prompt has quoted (glyph) text
    )


def _short_text(pipe: Any) -> None:
    pipe.tokenizer_max_length = pipe.tokenizer_2_max_length = parts.TEXT_LENGTH


class _HunyuanImageInversion(CapturedInversion):
    """Flow inversion of HunyuanImage 2.1, as ``HunyuanImagePipeline.__call__`` samples: the VAE's
    latents divided by ``scaling_factor`` only (the default encoding: no shift), unpacked, its noise
    drawn in the transformer's dtype; sigmas evenly spaced from 1 (the scheduler's own shift, no
    ``mu``); the denoiser takes ``t``, and distilled guidance as an input (from the capture)."""

    def size_multiple(self, pipe: Any) -> int:
        return pipe.vae_scale_factor

    def latents_dtype(self, pipe: Any) -> Any:
        return pipe.transformer.dtype

    def conditioning(self, pipe, prompts, arguments, height, width):
        if pipe.transformer.config.use_meanflow:
            # Its timestep_r is the next step's timestep: a captured call holds the first step's only.
            raise ValueError("invert does not follow a MeanFlow HunyuanImage (use_meanflow): it hands its denoiser the next step's time too.")
        return super().conditioning(pipe, prompts, arguments, height, width)

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        import numpy as np

        scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1], device=sample.device)


HUNYUAN_IMAGE_2_1 = PublishedDenoiser(
    "HunyuanImage 2.1", "HunyuanImageTransformer2DModel", {"text_embed_2_dim": 1472}, 1128,
    "diffusers' class defaults, which are HunyuanImage 2.1's, with its ByT5 glyph encoder (inferred: 1472 wide); "
    "text: 1000 Qwen2.5-VL + 128 ByT5 tokens",
)

FAMILY = Family(
    name="hunyuan-image",
    denoisers=("HunyuanImageTransformer2DModel",),
    pipelines=("HunyuanImagePipeline",),
    attention=(
        AttentionRule("Attention", JOINT, when="add_q_proj"),
        AttentionRule("Attention", TEXT_LAST, where="single_transformer_blocks.*"),
    ),
    guidance=Guidance(contexts={"pred_cond": "cond", "pred_uncond": "uncond"}),
    text_length=_text_length,
    inversion=_HunyuanImageInversion(),
    tiny={"hunyuan-image": TinyPipeline("HunyuanImagePipeline", _hunyuan_image, {}, _short_text)},
    published=(HUNYUAN_IMAGE_2_1,),
)
