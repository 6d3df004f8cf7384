"""Stable Diffusion 3 and 3.5: an MMDiT whose joint blocks give text and image streams their own
projections; the text stream (``add_k_proj``/``add_v_proj``) is rewritten by every block, so its
K/V depend on the step.

CFG: one batch ``[uncond, cond]``; skip-layer guidance adds a pass with a ``skip_layers`` argument.
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import Inversion, encode_prompt, resolution_shift
from textloc.architectures.spec import JOINT, AttentionRule, Family, PublishedDenoiser, TinyPipeline


def _sd3(seed: int) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    tokenizer = parts.clip_tokenizer()
    t5_tokenizer = parts.t5_tokenizer()
    # The pipeline concatenates the two CLIP hidden states along the features and pads them to
    # T5's width, so each CLIP is half as wide as T5; the pooled input is both CLIP projections.
    clip_width = parts.TEXT_WIDTH // 2
    transformer = parts.init(
        seed,
        SD3Transformer2DModel,
        sample_size=parts.LATENT_SIZE,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=parts.TEXT_WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=2 * clip_width,
        pos_embed_max_size=parts.LATENT_SIZE,
    )
    return dict(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=parts.autoencoder_kl(
            seed, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609
        ),
        text_encoder=parts.clip_text_encoder(seed, tokenizer, clip_width, CLIPTextModelWithProjection),
        tokenizer=tokenizer,
        # seed + 1, as in _sdxl.
        text_encoder_2=parts.clip_text_encoder(seed + 1, tokenizer, clip_width, CLIPTextModelWithProjection),
        tokenizer_2=parts.clip_tokenizer(),
        text_encoder_3=parts.t5_encoder(seed, t5_tokenizer),
        tokenizer_3=t5_tokenizer,
    )


class _SD3Inversion(Inversion):
    """Flow inversion of an MMDiT conditioned on the prompt's tokens and pooled CLIP vectors."""

    flow = True

    def size_multiple(self, pipe: Any) -> int:
        return pipe.vae_scale_factor * pipe.transformer.config.patch_size

    def conditioning(self, pipe, prompts, arguments, height, width):
        prompt_embeds, _, pooled, _ = encode_prompt(pipe, prompts, arguments)
        return {"encoder_hidden_states": prompt_embeds, "pooled_projections": pooled}

    def predict(self, pipe, sample, timestep, conditioning):
        return pipe.transformer(hidden_states=sample, timestep=timestep.expand(sample.shape[0]), **conditioning, return_dict=False)[0]

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        options = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            patch = pipe.transformer.config.patch_size
            options["mu"] = resolution_shift(scheduler, (sample.shape[2] // patch) * (sample.shape[3] // patch), max_shift=1.16)
        scheduler.set_timesteps(num_inference_steps, device=sample.device, **options)


SD3_MEDIUM = PublishedDenoiser(
    "SD3-medium", "SD3Transformer2DModel",
    {"num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536, "pos_embed_max_size": 192},
    333, "stable-diffusion-3-medium-diffusers transformer/config.json; text: 77 CLIP + 256 T5 tokens",
)
SD3_5_LARGE = PublishedDenoiser(
    "SD3.5 Large", "SD3Transformer2DModel",
    {"num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432, "pos_embed_max_size": 192, "qk_norm": "rms_norm"},
    333, "stable-diffusion-3.5-large transformer/config.json; text: 77 CLIP + 256 T5 tokens",
)

FAMILY = Family(
    name="sd3",
    denoisers=("SD3Transformer2DModel",),
    pipelines=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
    attention=(AttentionRule("Attention", JOINT, when="add_q_proj"),),
    # The pooled CLIP vectors (pooled_projections) join the timestep embedding of every block.
    pooled="time_text_embed.text_embedder",
    tiny={"sd3": TinyPipeline("StableDiffusion3Pipeline", _sd3)},
    published=(SD3_MEDIUM, SD3_5_LARGE),
    inversion=_SD3Inversion(),
)
