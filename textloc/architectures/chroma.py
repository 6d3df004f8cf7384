"""Chroma: FLUX.1-schnell without CLIP or the pooled vector (one T5), its modulation from a
timestep-only approximator; FLUX's double-stream joint blocks and single-stream ``[text, image]``
blocks (``FluxAttention``), with a 0/1 text mask over the joint sequence.

CFG: two plain denoiser calls a step, the conditional one first, with no ``cache_context`` and no
other label (``pipeline_chroma.py``: ``transformer(cond)``, then ``transformer(uncond)`` when its
``do_classifier_free_guidance`` property is true): the branch is the call's place in the step.
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.flux import FLUX_ATTENTION, TINY_TRANSFORMER, FluxInversion, tiny_vae
from textloc.architectures.inversion import encode_prompt, set_shifted_linspace_timesteps
from textloc.architectures.spec import Family, Guidance, PublishedDenoiser, TinyPipeline


def _chroma(seed: int) -> dict[str, Any]:
    from diffusers import ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    tokenizer = parts.t5_tokenizer()
    # The approximator maps (timestep, guidance 0, layer index) to every block's modulation: its
    # input width is 4x its Timesteps width.
    transformer = parts.init(
        seed, ChromaTransformer2DModel, **TINY_TRANSFORMER,
        approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=2,
    )
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=tiny_vae(seed),
        text_encoder=parts.t5_encoder(seed, tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
        image_encoder=None,
        feature_extractor=None,
    )


class _ChromaInversion(FluxInversion):
    """FLUX.1's latents, as ``ChromaPipeline.__call__`` conditions the transformer: T5 alone, its
    padding mask extended over the image tokens, no pooled vector and no guidance input."""

    def latents_dtype(self, pipe):
        return pipe.text_encoder.dtype  # the pipeline draws its noise in the prompt embeddings' dtype

    def conditioning(self, pipe, prompts, arguments, height, width):
        prompt_embeds, text_ids, mask, *_ = encode_prompt(pipe, prompts, arguments)
        tokens_high, tokens_wide = height // (pipe.vae_scale_factor * 2), width // (pipe.vae_scale_factor * 2)
        options = {"device": prompt_embeds.device, "dtype": prompt_embeds.dtype}
        image_ids = pipe._prepare_latent_image_ids(len(prompts), tokens_high, tokens_wide, **options)
        mask = pipe._prepare_attention_mask(len(prompts), tokens_high * tokens_wide, prompt_embeds.dtype, mask)
        return {"encoder_hidden_states": prompt_embeds, "txt_ids": text_ids, "img_ids": image_ids, "attention_mask": mask}

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        set_shifted_linspace_timesteps(scheduler, num_inference_steps, sample)


CHROMA_1_HD = PublishedDenoiser(
    "Chroma1-HD", "ChromaTransformer2DModel", {}, 512, "diffusers' class defaults, which are Chroma's",
)

FAMILY = Family(
    name="chroma",
    denoisers=("ChromaTransformer2DModel",),
    pipelines=("ChromaPipeline", "ChromaImg2ImgPipeline"),
    attention=FLUX_ATTENTION,
    guidance=Guidance(call_order=("cond", "uncond")),
    tiny={"chroma": TinyPipeline("ChromaPipeline", _chroma)},
    published=(CHROMA_1_HD,),
    inversion=_ChromaInversion(),
)
