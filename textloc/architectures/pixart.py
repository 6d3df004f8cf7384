"""PixArt-α and PixArt-Σ: a DiT whose ``attn2`` layers cross-attend to T5's hidden states, with padded
text tokens masked out.

CFG: one batch ``[uncond, cond]``; the engine reads the flag the pipeline passes to ``encode_prompt``.
"""

from __future__ import annotations

import math
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import Inversion, encode_prompt, learned_sigma_mean
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


class _PixArtInversion(Inversion):
    """DDIM inversion of a latent DiT that cross-attends to T5, with its padding masked."""

    def size_multiple(self, pipe: Any) -> int:
        return math.lcm(8, pipe.vae_scale_factor * pipe.transformer.config.patch_size)

    def conditioning(self, pipe, prompts, arguments, height, width):
        import torch

        prompt_embeds, mask, _, _ = encode_prompt(pipe, prompts, arguments)
        resolution = aspect_ratio = None
        # PixArt-Alpha 1024 takes the size as micro-conditions; the pipeline passes them when the
        # model uses them.
        if pipe.transformer.use_additional_conditions:
            options = {"dtype": prompt_embeds.dtype, "device": prompt_embeds.device}
            resolution = torch.tensor([[height, width]], **options).repeat(len(prompts), 1)
            aspect_ratio = torch.tensor([[height / width]], **options).repeat(len(prompts), 1)
        return {
            "encoder_hidden_states": prompt_embeds,
            "encoder_attention_mask": mask,
            "added_cond_kwargs": {"resolution": resolution, "aspect_ratio": aspect_ratio},
        }

    def predict(self, pipe, sample, timestep, conditioning):
        output = pipe.transformer(sample, timestep=timestep.expand(sample.shape[0]), **conditioning, return_dict=False)[0]
        return learned_sigma_mean(pipe.transformer, output)


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
    inversion=_PixArtInversion(),
)
