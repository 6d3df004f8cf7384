"""Bria 3.2 (``transformer_bria.py``): FLUX.1's layout, double-stream joint blocks then single-stream
blocks whose one set of projections reads ``[text, image]``, under ``BriaAttention``: the same facts
as FLUX.1's attention (:func:`textloc.architectures.flux.flux_style_attention`), read through the
same attributes (``add_q_proj`` on the double-stream attentions, ``pre_only`` on the single-stream
ones). No pooled vector (``pooled_projections`` is taken and never read) and no guidance embedding.

Where it differs from FLUX.1 (``pipeline_bria.py``):

- CFG is real, not distilled: one batch ``[uncond, cond]`` (``torch.cat([negative_prompt_embeds,
  prompt_embeds])``), on while ``guidance_scale`` > 1 (``do_classifier_free_guidance``). With no
  negative prompt (or ``""``) the unconditional text is zeros.
- The text is T5's alone, each prompt encoded by itself and padded with zero embeddings to
  ``max_sequence_length`` (128), with no mask: a row is the same whatever its batch, and every
  source has the run's text length.
- The denoiser takes the scheduler's timestep as it is (1000 is noise), not ``t / 1000``, and its
  output is stepped as it is (the velocity, with its ``FlowMatchEulerDiscreteScheduler``).
- ``vae_scale_factor`` counts the 2x2 packing: ``2 ** len(block_out_channels)``, 16 for an 8x VAE.
  Its VAE is SDXL's (4 latent channels, no shift: the pipeline sets ``shift_factor`` 0 and runs
  it in float32). With dynamic shifting (Bria 3.2's scheduler config) the pipeline samples FLUX's
  shifted linspace; without, the training sigmas at evenly spaced indices (``get_original_sigmas``).

The tiny pipeline: a stock ``BriaPipeline`` of FLUX.1's tiny layout (two double- and two
single-stream blocks of 2 heads), a tiny autoencoder with no shift, Bria 3.2's scheduler config
and a 2-layer byte-level T5.
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.flux import TINY_TRANSFORMER, FluxInversion, flux_style_attention
from textloc.architectures.inversion import encode_prompt
from textloc.architectures.spec import Family, PublishedDenoiser, TinyPipeline


def _bria(seed: int) -> dict[str, Any]:
    from diffusers import BriaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    tokenizer = parts.t5_tokenizer()
    return dict(
        transformer=parts.init(seed, BriaTransformer2DModel, **TINY_TRANSFORMER),
        # Bria 3.2's scheduler config.
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
        ),
        vae=parts.autoencoder_kl(seed, scaling_factor=0.13025),  # SDXL's scaling, no shift
        text_encoder=parts.t5_encoder(seed, tokenizer),
        tokenizer=tokenizer,
    )


class BriaInversion(FluxInversion):
    """FLUX.1's flow inversion (2x2-packed latent tokens, the same VAE scaling), with Bria's text
    (T5 alone), its timestep as the scheduler's and its own sigma schedule."""

    def size_multiple(self, pipe: Any) -> int:
        # The pipeline's vae_scale_factor already counts the packing.
        return pipe.vae_scale_factor

    def conditioning(self, pipe, prompts, arguments, height, width):
        prompt_embeds, _, text_ids = encode_prompt(pipe, prompts, arguments)
        tokens = height // pipe.vae_scale_factor, width // pipe.vae_scale_factor
        image_ids = pipe._prepare_latent_image_ids(len(prompts), *tokens, prompt_embeds.device, prompt_embeds.dtype)
        return {"encoder_hidden_states": prompt_embeds, "txt_ids": text_ids, "img_ids": image_ids}

    def predict(self, pipe, sample, timestep, conditioning):
        timestep = timestep.expand(sample.shape[0]).to(sample.dtype)
        return pipe.transformer(hidden_states=sample, timestep=timestep, **conditioning, return_dict=False)[0]

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        if scheduler.config.get("use_dynamic_shifting", False):
            super().set_flow_timesteps(pipe, scheduler, num_inference_steps, sample)
            return
        from diffusers.pipelines.bria.pipeline_bria import get_original_sigmas

        sigmas = get_original_sigmas(scheduler.config.num_train_timesteps, num_inference_steps)
        scheduler.set_timesteps(device=sample.device, sigmas=sigmas)


BRIA_3_2 = PublishedDenoiser(
    "Bria 3.2", "BriaTransformer2DModel",
    {"attention_head_dim": 96, "axes_dims_rope": (0, 48, 48), "in_channels": 16, "num_layers": 8, "num_single_layers": 28},
    128,
    "BRIA-3.2 transformer/config.json (the copy in Bria-AI/BRIA-3.2 on GitHub; the rest: diffusers' class defaults); "
    "text: the pipeline's max_sequence_length, which every prompt is zero-padded to",
)

FAMILY = Family(
    name="bria",
    denoisers=("BriaTransformer2DModel",),
    pipelines=("BriaPipeline",),
    attention=flux_style_attention("BriaAttention"),
    tiny={"bria": TinyPipeline("BriaPipeline", _bria)},
    published=(BRIA_3_2,),
    inversion=BriaInversion(),
)
