"""Sana: a linear-attention DiT whose ``attn2`` layers cross-attend to Gemma's hidden states, with
padded text tokens masked out.

CFG: one batch ``[uncond, cond]``, from the pipeline's ``do_classifier_free_guidance``.
"""

from __future__ import annotations

import math
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import Inversion, encode_prompt, learned_sigma_mean, vae_decoding, vae_encoding
from textloc.architectures.spec import CROSS, SIZE_AS_ASKED, AttentionRule, Family, PublishedDenoiser, TinyPipeline


def _sana(seed: int) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel

    tokenizer = parts.gemma_tokenizer()
    transformer = parts.init(
        seed,
        SanaTransformer2DModel,
        sample_size=parts.LATENT_SIZE,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=16,
        num_cross_attention_heads=2,
        cross_attention_head_dim=16,
        cross_attention_dim=32,
        caption_channels=parts.TEXT_WIDTH,
    )
    return dict(
        tokenizer=tokenizer,
        text_encoder=parts.gemma_encoder(seed, tokenizer),
        vae=parts.autoencoder_dc(seed),
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


class _SanaInversion(Inversion):
    """Flow inversion of Sana: a deep-compression autoencoder, float32 latents."""

    flow = True

    def size_multiple(self, pipe: Any) -> int:
        return math.lcm(32, pipe.vae_scale_factor * pipe.transformer.config.patch_size)

    def encode_image(self, pipe, pixels, generators=None):
        # Sana decodes latents / scaling_factor, with no shift.
        return vae_encoding(pipe.vae, pixels, generators) * pipe.vae.config.scaling_factor

    def decode_sample(self, pipe, sample, height, width):
        return vae_decoding(pipe.vae, sample / pipe.vae.config.scaling_factor)

    def latents_dtype(self, pipe):
        import torch

        return torch.float32  # SanaPipeline draws its latents in float32 whatever the model's dtype

    def conditioning(self, pipe, prompts, arguments, height, width):
        prompt_embeds, mask, _, _ = encode_prompt(pipe, prompts, arguments)
        return {"encoder_hidden_states": prompt_embeds, "encoder_attention_mask": mask}

    def predict(self, pipe, sample, timestep, conditioning):
        transformer = pipe.transformer
        timestep = timestep.expand(sample.shape[0]) * transformer.config.timestep_scale
        hidden = {**conditioning, "encoder_hidden_states": conditioning["encoder_hidden_states"].to(transformer.dtype)}
        output = transformer(sample.to(transformer.dtype), timestep=timestep, **hidden, return_dict=False)[0]
        return learned_sigma_mean(transformer, output.float())


SANA_1600M = PublishedDenoiser(
    "Sana 1.6B 1024px", "SanaTransformer2DModel", {}, 300, "diffusers' class defaults, which are Sana 1.6B's",
)

FAMILY = Family(
    name="sana",
    denoisers=("SanaTransformer2DModel",),
    pipelines=("SanaPipeline",),
    attention=(AttentionRule("Attention", CROSS, when="is_cross_attention"),),
    # Its captions are cleaned only when asked (clean_caption=False by default).
    call_defaults=SIZE_AS_ASKED,
    # Sana prepends a ~700-character "complex human instruction" to every prompt by default;
    # with character-level tokens that is 15x the prompt's cost, for random weights.
    tiny={"sana": TinyPipeline("SanaPipeline", _sana, {"complex_human_instruction": []})},
    published=(SANA_1600M,),
    inversion=_SanaInversion(),
)
