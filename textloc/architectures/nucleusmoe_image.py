"""NucleusMoE-Image: a single-stream DiT of image tokens with Mixture-of-Experts MLPs, whose text
reaches every block as keys and values only. Each block projects the (RMS-normed) Qwen3-VL text
through its own ``encoder_proj`` and its attention's ``add_k_proj``/``add_v_proj`` (K then normed
and rotated); its image queries attend to ``[image, text]`` keys, the text last. No text query, no
text stream: the text K/V depend on the prompt alone, never on the step or the image (the text's
rotary positions, applied after the projection, follow the image size): ``added_kv`` layers,
step-independent (recorded once, a prompt injected directly). The MoE routes each row's own image
tokens (expert choice within a row), so rows stay independent.

A call's text is padded to its longest prompt, rounded up to a multiple of 8, with a ``(batch,
text)`` keep-mask that the pipeline drops (``None``) when no token is padding, and that the
transformer turns into an ``attention_mask`` over ``[image, text]``: the engine records and swaps
its text part (``mask_text_at="last"``), so a source of another length or padding is patched with
its own mask. The text's rotary positions are its token indices from past the image's, so a row's
tokens sit where they would alone, whatever the batch pads to.

CFG: while ``guidance_scale`` > 1 (its default: 4), two plain denoiser calls a step, the
conditional one first, with no ``cache_context``, no ``do_classifier_free_guidance`` and no flag to
``encode_prompt`` (``pipeline_nucleusmoe_image.py``: ``do_cfg = guidance_scale > 1``): the branch is
the call's place in the step, and CFG on is the test its loop makes. Each pass pads its own text.
The denoiser gets ``t / 1000``, and the pipeline steps with the negated prediction.

The tiny pipeline: a stock ``NucleusMoEImagePipeline`` with 2 blocks of 4 query heads over 2 K/V heads (the second MoE, of
4 experts), an 8-layer Qwen3-VL (the pipeline reads its hidden state 8 from the last) behind
Qwen-Image's byte-level tokenizer with the pipeline's system prompt's words whole, and Qwen-Image's
tiny autoencoder.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import CapturedInversion, set_shifted_linspace_timesteps
from textloc.architectures.qwenimage import _qwen_image_vae, decoded_frame, normalised_frame, qwen_tokenizer
from textloc.architectures.qwenimage21 import CHAT_TEMPLATE, _qwen3_vl_encoder, _text_only_processor_class
from textloc.architectures.spec import ADDED_KV, AttentionRule, Family, Guidance, PublishedDenoiser, TinyPipeline, Training

# pipeline_nucleusmoe_image.DEFAULT_SYSTEM_PROMPT: its words are whole tokens of the tiny tokenizer.
SYSTEM_PROMPT = (
    "You are an image generation assistant. Follow the user's prompt literally. Pay careful attention to spatial "
    "layout: objects described as on the left must appear on the left, on the right on the right. Match exact object "
    "counts and assign colors to the correct objects."
)
# The pipeline reads hidden_states[-8] of its text encoder (default_return_index).
ENCODER_LAYERS = 8
# Truncation cuts the system turn and the prompt alike (nothing is dropped): room for both.
MAX_SEQUENCE_LENGTH = 128

# Its text keep-mask reaches the attention as the text part of an [image, text] attention_mask, None when nothing is padded.
_NUCLEUS_ADDED_KV = dataclasses.replace(ADDED_KV, text_mask="attention_mask", mask_text_at="last")


def _guidance_on(pipe: Any) -> bool:
    # NucleusMoEImagePipeline.__call__: do_cfg = guidance_scale > 1, with nothing else to read.
    return pipe.guidance_scale > 1


def _encode(pipe: Any, pixels: Any, generators: Any) -> Any:
    """The latents the pipeline samples, for ``pixels``: Qwen-Image's normalised one-frame latents,
    packed into tokens of ``patch_size`` x ``patch_size`` (the inverse of what it decodes)."""
    latents = normalised_frame(pipe, pixels, generators)
    return pipe._pack_latents(latents, *latents.shape, pipe.transformer.config.patch_size)


def _nucleusmoe_image(seed: int) -> dict[str, Any]:
    """Keyword arguments of ``NucleusMoEImagePipeline``."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, NucleusMoEImageTransformer2DModel

    z_dim = 4
    words = re.findall(r" ?[A-Za-z]+", SYSTEM_PROMPT) + ["'s", "system", "user", "assistant"]
    tokenizer = qwen_tokenizer(words, chat_template=CHAT_TEMPLATE)
    transformer = parts.init(
        seed,
        NucleusMoEImageTransformer2DModel,
        patch_size=2,
        in_channels=4 * z_dim,  # the pipeline packs 2x2 latent patches
        out_channels=z_dim,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: 2 text K/V heads, each read by 2 query heads
        joint_attention_dim=parts.TEXT_WIDTH,
        axes_dims_rope=(2, 2, 4),  # sums to the head size
        mlp_ratio=6.0,  # the dense MLP's width is rounded down to a multiple of 128: 128, not 0
        dense_moe_strategy="leave_first_block_dense",
        num_experts=4,
        moe_intermediate_dim=32,
        capacity_factors=2.0,
    )
    # The packed experts' weights are allocated with torch.empty and left to a checkpoint: seeded here.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in transformer.named_parameters():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                weight.copy_(torch.randn(weight.shape, generator=generator) * weight.shape[1] ** -0.5)
    encoder = _qwen3_vl_encoder(seed, tokenizer, layers=ENCODER_LAYERS)
    return dict(
        # Dynamic shift from `mu`, with the values the pipeline falls back on (its published scheduler
        # config not read). Qwen-Image's terminal shift would stretch its 2-step schedule to NaN.
        scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
        ),
        vae=_qwen_image_vae(seed, z_dim),
        text_encoder=encoder,
        processor=_text_only_processor_class()(tokenizer, chat_template=CHAT_TEMPLATE),
        transformer=transformer,
    )


class _NucleusMoEImageInversion(CapturedInversion):
    """Flow inversion of NucleusMoE-Image, as ``NucleusMoEImagePipeline.__call__`` samples: Qwen-Image's
    normalised one-frame latents packed into tokens of ``patch_size`` x ``patch_size`` (its
    :data:`Training` encoding), taken packed by ``prepare_latents``, its noise drawn in the prompt
    embeddings' dtype; linspace sigmas shifted by the token count; ``t / 1000`` and the negated
    velocity (its ``Training``)."""

    def size_multiple(self, pipe: Any) -> int:
        return pipe.vae_scale_factor * pipe.transformer.config.patch_size

    def encode_image(self, pipe, pixels, generators=None):
        return _encode(pipe, pixels, generators)

    def decode_sample(self, pipe, sample, height, width):
        patch = pipe.transformer.config.patch_size
        return decoded_frame(pipe, pipe._unpack_latents(sample, height, width, patch, pipe.vae_scale_factor))

    def latents_dtype(self, pipe: Any) -> Any:
        return pipe.text_encoder.dtype

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        set_shifted_linspace_timesteps(scheduler, num_inference_steps, sample)


NUCLEUSMOE_IMAGE = PublishedDenoiser(
    "NucleusMoE-Image", "NucleusMoEImageTransformer2DModel", {"out_channels": 16}, 1024,
    "inferred: diffusers' class defaults (24 blocks of 16 heads of 128, 128 experts, text width 3584) with 16 "
    "latent channels out, not read from NucleusAI/NucleusMoE-Image's config; text: its pipeline's "
    "default_max_sequence_length (prompts pad to the longest, a multiple of 8)",
)

FAMILY = Family(
    name="nucleusmoe-image",
    denoisers=("NucleusMoEImageTransformer2DModel",),
    pipelines=("NucleusMoEImagePipeline",),
    attention=(AttentionRule("Attention", _NUCLEUS_ADDED_KV, when="add_k_proj"),),
    guidance=Guidance(call_order=("cond", "uncond"), enabled=_guidance_on),
    # NucleusMoEImagePipeline.__call__ hands its denoiser t / 1000 and steps with the negated prediction.
    training=Training(encode=_encode, prediction_sign=-1.0),
    inversion=_NucleusMoEImageInversion(),
    tiny={"nucleusmoe-image": TinyPipeline("NucleusMoEImagePipeline", _nucleusmoe_image, {"max_sequence_length": MAX_SEQUENCE_LENGTH})},
    published=(NUCLEUSMOE_IMAGE,),
)
