"""FLUX.1 (and its tiny trained sibling): double-stream joint blocks, then single-stream blocks whose
one set of projections reads ``[text, image]`` tokens.

CFG: guidance-distilled (a guidance embedding); ``true_cfg_scale`` with a negative prompt runs a
second, unconditional pass inside ``cache_context("uncond")`` (the conditional one in ``"cond"``).
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import CapturedInversion, Inversion, encode_prompt, resolution_shift
from textloc.architectures.spec import JOINT, TEXT_FIRST, AttentionRule, Family, Guidance, PublishedDenoiser, TinyPipeline


#: The tiny FLUX.1 layout, shared with Chroma: 2x2 latent patches packed into one token
#: (in_channels = 4 x 4 latent channels), two double- and two single-stream blocks, rotary axes
#: that add up to the head size.
TINY_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=parts.TEXT_WIDTH, axes_dims_rope=(4, 6, 6),
)


def tiny_vae(seed: int) -> Any:
    """FLUX.1's autoencoder in small: 4 latent channels, FLUX's scaling and shift."""
    return parts.autoencoder_kl(
        seed, latent_channels=4, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159,
    )


def _flux(seed: int) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    tokenizer = parts.clip_tokenizer()
    t5_tokenizer = parts.t5_tokenizer()
    # Guidance-embedded like FLUX.1-dev.
    transformer = parts.init(
        seed, FluxTransformer2DModel, **TINY_TRANSFORMER, pooled_projection_dim=parts.TEXT_WIDTH, guidance_embeds=True,
    )
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(seed),
        text_encoder=parts.clip_text_encoder(seed, tokenizer, parts.TEXT_WIDTH),
        tokenizer=tokenizer,
        text_encoder_2=parts.t5_encoder(seed, t5_tokenizer),
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def flux_style_attention(attention_class: str) -> tuple[AttentionRule, ...]:
    """FLUX.1's attention under ``attention_class`` (its own, and its derivatives': Chroma, Ovis-Image,
    LongCat-Image): double-stream blocks are joint, single-stream ones read ``[text, image]``
    through one set of projections."""
    return (
        AttentionRule(attention_class, JOINT, when="add_q_proj"),
        AttentionRule(attention_class, TEXT_FIRST, when="pre_only"),
    )


FLUX_ATTENTION = flux_style_attention("FluxAttention")

class FluxInversion(Inversion):
    """Flow inversion of FLUX.1: 2x2-packed latent tokens, distilled guidance as a model input."""

    flow = True

    def size_multiple(self, pipe: Any) -> int:
        # Latents are packed 2x2 into tokens.
        return pipe.vae_scale_factor * 2

    def encode_image(self, pipe, pixels, generators=None):
        latents = super().encode_image(pipe, pixels, generators)
        batch, channels, height, width = latents.shape
        return pipe._pack_latents(latents, batch, channels, height, width)

    def decode_sample(self, pipe, sample, height, width):
        return super().decode_sample(pipe, pipe._unpack_latents(sample, height, width, pipe.vae_scale_factor), height, width)

    def conditioning(self, pipe, prompts, arguments, height, width):
        import torch

        prompt_embeds, pooled, text_ids = encode_prompt(pipe, prompts, arguments)
        latent_height = 2 * (height // (pipe.vae_scale_factor * 2))
        latent_width = 2 * (width // (pipe.vae_scale_factor * 2))
        image_ids = pipe._prepare_latent_image_ids(len(prompts), latent_height // 2, latent_width // 2, prompt_embeds.device, prompt_embeds.dtype)
        guidance = None
        if pipe.transformer.config.guidance_embeds:
            # Distilled guidance is an input of the model, not CFG: the regeneration's value.
            guidance = torch.full([len(prompts)], arguments["guidance_scale"], device=prompt_embeds.device, dtype=torch.float32)
        return {
            "encoder_hidden_states": prompt_embeds,
            "pooled_projections": pooled,
            "txt_ids": text_ids,
            "img_ids": image_ids,
            "guidance": guidance,
        }

    def predict(self, pipe, sample, timestep, conditioning):
        timestep = timestep.expand(sample.shape[0]).to(sample.dtype) / 1000
        return pipe.transformer(hidden_states=sample, timestep=timestep, **conditioning, return_dict=False)[0]

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        import numpy as np

        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        scheduler.set_timesteps(num_inference_steps, device=sample.device, sigmas=sigmas, mu=resolution_shift(scheduler, sample.shape[1], max_shift=1.15))


class CapturedFluxInversion(CapturedInversion, FluxInversion):
    """FLUX.1's latents (2x2-packed tokens, its VAE's scaling and shift, linspace sigmas shifted by the
    token count: :class:`FluxInversion`'s) under the pipeline's own conditioning
    (:class:`CapturedInversion`'s): FLUX.1's derivatives whose pipelines sample as ``FluxPipeline``
    does, their noise drawn in the prompt embeddings' dtype (Ovis-Image, LongCat-Image)."""

    def latents_dtype(self, pipe):
        return pipe.text_encoder.dtype


FLUX_1_DEV = PublishedDenoiser(
    "FLUX.1-dev", "FluxTransformer2DModel", {"guidance_embeds": True}, 512,
    "FLUX.1-dev transformer/config.json (the rest: diffusers' class defaults, which are FLUX.1's)",
)

FAMILY = Family(
    name="flux",
    denoisers=("FluxTransformer2DModel",),
    pipelines=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
    attention=FLUX_ATTENTION,
    # Without a negative prompt and true_cfg_scale every pass is conditional.
    guidance=Guidance(distilled=True),
    # The pooled CLIP vector (pooled_projections) joins the timestep embedding of every block.
    pooled="time_text_embed.text_embedder",
    tiny={"flux": TinyPipeline("FluxPipeline", _flux, {"true_cfg_scale": 4.0, "negative_prompt": ""})},
    published=(FLUX_1_DEV,),
    inversion=FluxInversion(),
)
