"""Krea 2: a single-stream DiT (``transformer_krea2.py``). Its text is a stack of Qwen3-VL hidden
states (12 tapped layers per token), which a text-fusion stage turns into one sequence, from the
prompt alone (no timestep): two ``layerwise_blocks`` attend across each token's tapped layers, one
token at a time (their batch is every token of every row: they are not attention over the prompt,
and are listed as self-attention), a linear projector collapses that axis, and two
``refiner_blocks`` attend across the tokens: a text-only attention, step-independent (``refiner``).
Every ``transformer_blocks.N.attn`` then reads ``cat([text, image])`` through shared
``to_q``/``to_k``/``to_v``: the text **first**, modulated by the timestep: step-dependent K/V. K/V
heads are grouped (48 query heads share 12 in the real model).

The text is fixed-length: each prompt is laid out as ``[prompt, padding, template suffix]`` and
padded to ``max_sequence_length`` (512), with a ``(batch, text)`` keep-mask the transformer turns
into key masks: ``(batch, 1, 1, text)`` for the refiner, ``(batch, 1, 1, text + image)`` with the
text first for the main layers (``mask_text_at="first"``), whose text part travels with a patched
row's K/V. The main layers' text has no position (its RoPE ids are all zero), so a source of another
prompt length, padded alike, is its own text wherever the row's tokens were.

CFG: two plain denoiser calls a step, the conditional one first, with no ``cache_context``; on while
``guidance_scale`` > 0 (``do_classifier_free_guidance``; the distilled turbo checkpoint runs at 0).
The unconditional call encodes the negative prompt (``""`` by default) alike. The denoiser takes
``t / 1000`` (1 is noise) and predicts the velocity, stepped as it is.

The tiny pipeline: a stock ``Krea2Pipeline`` of 2 layers of 4 query heads sharing 2 K/V heads, one
layerwise and one refiner text block (grouped alike), Qwen-Image's tiny video autoencoder (Krea 2
decodes with Qwen-Image's), a 2-layer ``Qwen3VLModel`` whose two layers' states are the tapped
stack (``text_encoder_select_layers=(1, 2)``; the real pipeline taps 12 of 36) behind Qwen-Image's
tiny tokenizer, which drops the same 34 system-prompt tokens as the real one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.ideogram4 import qwen3_vl_encoder
from textloc.architectures.inversion import CapturedInversion
from textloc.architectures.qwenimage import _qwen_image_vae, decoded_frame, normalised_frame, system_prompt_tokenizer
from textloc.architectures.spec import REFINER, TEXT_FIRST, AttentionRule, Family, Guidance, PublishedDenoiser, TinyPipeline, Training

# The pipeline appends 5 template tokens after the padding (<|im_end|> \n <|im_start|> assistant \n):
# max_sequence_length counts them.
MAX_SEQUENCE_LENGTH = parts.TEXT_LENGTH + 5
_LATENT_CHANNELS = 4  # packed 2x2 into the transformer's 16 input channels


def _krea2(seed: int) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, Krea2Transformer2DModel

    tokenizer = system_prompt_tokenizer()
    transformer = parts.init(
        seed,
        Krea2Transformer2DModel,
        in_channels=4 * _LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=12,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        timestep_embed_dim=32,
        text_hidden_dim=parts.TEXT_WIDTH,
        num_text_layers=2,
        text_num_attention_heads=4,
        text_num_key_value_heads=2,
        text_intermediate_size=64,
        num_layerwise_text_blocks=1,
        num_refiner_text_blocks=1,
        axes_dims_rope=(4, 4, 4),  # sums to the head size
    )
    return dict(
        # Krea 2's scheduler config: the resolution-aware exponential time shift (the pipeline's docstring).
        scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=6400,
        ),
        vae=_qwen_image_vae(seed, _LATENT_CHANNELS),
        text_encoder=qwen3_vl_encoder(seed, tokenizer, 2, 4 * parts.TEXT_LENGTH),
        tokenizer=tokenizer,
        transformer=transformer,
        text_encoder_select_layers=(1, 2),  # hidden_states[0] is the embeddings
    )


class _Krea2Inversion(CapturedInversion):
    """Flow inversion of Krea 2, as ``Krea2Pipeline.__call__`` samples: Qwen-Image's normalised
    one-frame latents (its video autoencoder's) packed into tokens of its ``patch_size``, taken packed
    by ``prepare_latents``, its noise drawn in the prompt embeddings' dtype; linspace sigmas shifted by
    the token count with its own default ``max_image_seq_len`` (6400), or by 1.15 when distilled; the
    denoiser takes ``t / 1000`` and predicts the velocity (from the capture)."""

    def size_multiple(self, pipe: Any) -> int:
        return pipe.vae_scale_factor * pipe.patch_size  # its __call__ rounds other sizes up

    def encode_image(self, pipe, pixels, generators=None):
        latents = normalised_frame(pipe, pixels, generators)
        return pipe._pack_latents(latents, *latents.shape)

    def decode_sample(self, pipe, sample, height, width):
        return decoded_frame(pipe, pipe._unpack_latents(sample, height, width))

    def latents_dtype(self, pipe: Any) -> Any:
        return pipe.text_encoder.dtype

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        import numpy as np
        from diffusers.pipelines.krea2.pipeline_krea2 import calculate_shift

        config = scheduler.config
        mu = 1.15 if pipe.config.is_distilled else calculate_shift(
            sample.shape[1], config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 6400),
            config.get("base_shift", 0.5), config.get("max_shift", 1.15),
        )
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        scheduler.set_timesteps(num_inference_steps, device=sample.device, sigmas=sigmas, mu=mu)


KREA_2 = PublishedDenoiser(
    "Krea 2", "Krea2Transformer2DModel", {}, 512,
    "diffusers' class defaults, its docstring's (inferred: not read from a published config.json; they agree with "
    "the pipeline's Qwen3-VL-4B, 2560 wide, and its 12 tapped layers); text: the pipeline's max_sequence_length, "
    "which every prompt is padded to",
)

FAMILY = Family(
    name="krea2",
    denoisers=("Krea2Transformer2DModel",),
    pipelines=("Krea2Pipeline",),
    attention=(
        AttentionRule("Krea2Attention", None, where="text_fusion.layerwise_blocks.*"),
        AttentionRule("Krea2Attention", REFINER, where="text_fusion.refiner_blocks.*"),
        AttentionRule("Krea2Attention", dataclasses.replace(TEXT_FIRST, mask_text_at="first"), where="transformer_blocks.*"),
    ),
    guidance=Guidance(call_order=("cond", "uncond")),
    # CFG runs at any guidance_scale above 0; the objective encodes as inversion does (its default).
    training=Training(unguided_scale=0.0),
    inversion=_Krea2Inversion(),
    tiny={"krea2": TinyPipeline("Krea2Pipeline", _krea2, {"max_sequence_length": MAX_SEQUENCE_LENGTH})},
    published=(KREA_2,),
)
