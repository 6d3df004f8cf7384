"""Cosmos-Predict2 text-to-image: a video DiT run on one frame, whose ``attn2`` layers cross-attend
to T5's hidden states (padded rows zeroed, no mask); the timestep modulates the image stream only,
so the text K/V depend on the prompt alone.

CFG: two plain denoiser calls a step, the conditional one first (``pipeline_cosmos2_text2image.py``),
with no ``cache_context``: the branch is the call's place in the step. Latents are 5-D
``(batch, channels, frames, height, width)``; the pipeline passes the timestep as σ/(σ+1).

The tiny pipeline differs from the real one in two things that do not touch attention: no padding
mask channel (resizing it needs torchvision), and a pass-through safety checker (the pipeline
refuses to run without one, and the real one needs the ``cosmos_guardrail`` package).
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.spec import CROSS, AttentionRule, Family, Guidance, PublishedDenoiser, TinyPipeline


class PassThroughSafetyChecker:
    """Stands in for ``cosmos_guardrail.CosmosSafetyChecker`` in the tiny pipeline: flags nothing."""

    def to(self, *args: Any, **kwargs: Any) -> PassThroughSafetyChecker:
        return self

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, video: Any) -> Any:
        return video


def _cosmos2(seed: int) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel, FlowMatchEulerDiscreteScheduler

    tokenizer = parts.t5_tokenizer()
    latent_channels = 4
    transformer = parts.init(
        seed,
        CosmosTransformer3DModel,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        mlp_ratio=2.0,
        text_embed_dim=parts.TEXT_WIDTH,
        adaln_lora_dim=8,
        max_size=(4, 16, 16),
        patch_size=(1, 2, 2),
        rope_scale=(1.0, 4.0, 4.0),
        concat_padding_mask=False,
        extra_pos_embed_type=None,
    )
    # One spatial downsample: 32 px -> 16x16 latents, 8x8 tokens after 2x2 patches.
    vae = parts.init(
        seed, AutoencoderKLWan, base_dim=8, z_dim=latent_channels, dim_mult=[1, 2], num_res_blocks=1,
        temperal_downsample=[False], latents_mean=[0.0] * latent_channels, latents_std=[1.0] * latent_channels,
    )
    return dict(
        text_encoder=parts.t5_encoder(seed, tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
        safety_checker=PassThroughSafetyChecker(),
    )


COSMOS_PREDICT2_2B = PublishedDenoiser(
    "Cosmos-Predict2 2B Text2Image", "CosmosTransformer3DModel",
    {"num_attention_heads": 16, "attention_head_dim": 128, "num_layers": 28, "rope_scale": (1.0, 4.0, 4.0)}, 512,
    "inferred: a 2B model of 28 blocks 2048 wide (16 heads of 128) on T5-11B's 1024-wide text; the rest: diffusers' class defaults",
)

FAMILY = Family(
    name="cosmos2",
    denoisers=("CosmosTransformer3DModel",),
    pipelines=("Cosmos2TextToImagePipeline",),
    attention=(AttentionRule("Attention", CROSS, when="is_cross_attention"),),
    guidance=Guidance(call_order=("cond", "uncond")),
    refuses=dict.fromkeys(
        ("train_lora", "denoiser_inputs"), "its pipeline wraps the denoiser in EDM preconditioning (timestep σ/(σ+1), scaled input and output)",
    ),
    # Its default negative prompt is ~700 characters: the tiny pipeline's is empty. Three steps: of
    # two Karras-spaced ones, the second runs at the final sigma and changes nothing.
    tiny={"cosmos2": TinyPipeline("Cosmos2TextToImagePipeline", _cosmos2, {"negative_prompt": "", "num_inference_steps": 3})},
    published=(COSMOS_PREDICT2_2B,),
)
