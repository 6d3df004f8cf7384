"""PixArt-α and PixArt-Σ: a DiT whose ``attn2`` layers cross-attend to T5's hidden states, with padded
text tokens masked out.

CFG: one batch ``[uncond, cond]``; the engine reads the flag the pipeline passes to ``encode_prompt``.
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.spec import (
    CAPTION_AS_GIVEN, CROSS, SIZE_AS_ASKED, AttentionRule, Family, PublishedDenoiser, TinyPipeline,
)


def _pixart_transformer(seed: int) -> Any:
    from diffusers import PixArtTransformer2DModel

    return parts.init(
        seed,
        PixArtTransformer2DModel,
        sample_size=parts.LATENT_SIZE,
        patch_size=2,
        in_channels=4,
        out_channels=8,  # learned variance
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        caption_channels=parts.TEXT_WIDTH,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )


def _pixart(seed: int) -> dict[str, Any]:
    from diffusers import DPMSolverMultistepScheduler

    tokenizer = parts.t5_tokenizer()
    return dict(
        tokenizer=tokenizer,
        text_encoder=parts.t5_encoder(seed, tokenizer),
        vae=parts.autoencoder_kl(seed),
        transformer=_pixart_transformer(seed),
        scheduler=DPMSolverMultistepScheduler(),
    )


PIXART_SIGMA = PublishedDenoiser(
    "PixArt-Σ XL-2 1024", "PixArtTransformer2DModel",
    {"caption_channels": 4096, "interpolation_scale": 2, "use_additional_conditions": False}, 300,
    "PixArt-Sigma-XL-2-1024-MS transformer/config.json (inferred: caption_channels, the T5-XXL width, is the one that sets the shapes)",
)

FAMILY = Family(
    name="pixart",
    denoisers=("PixArtTransformer2DModel",),
    pipelines=("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
    attention=(AttentionRule("Attention", CROSS, when="is_cross_attention"),),
    call_defaults={**CAPTION_AS_GIVEN, **SIZE_AS_ASKED},
    tiny={
        "pixart-alpha": TinyPipeline("PixArtAlphaPipeline", _pixart),
        "pixart-sigma": TinyPipeline("PixArtSigmaPipeline", _pixart),
    },
    published=(PIXART_SIGMA,),
)
