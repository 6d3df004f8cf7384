"""Lumina Image 2.0: a single-stream DiT. Its text first runs through context-refiner blocks
(text-only self-attention, the prompt alone: step-independent), its latents through noise-refiner
blocks (image only); then each main layer reads one sequence per row, ``[text[:c], image]``, through
one set of projections, ``c`` that row's unpadded prompt length (``encoder_attention_mask.sum()``).
All three are the same ``Attention`` class: only their module paths tell them apart. K/V heads are
grouped (24 query heads share 8 in the real model).

CFG: two plain denoiser calls a step, the conditional one first (``pipeline_lumina2.py``), with no
``cache_context``; past ``cfg_trunc_ratio`` of the schedule, the conditional one alone. The denoiser
takes ``1 - t/1000`` (0 is noise) and predicts the negated velocity (the pipeline steps with ``-pred``).

A batch whose prompts differ in length packs rows whose image starts at different places: textloc
patches Lumina 2's main layers one prompt length at a time and refuses such a batch in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import CapturedInversion, set_shifted_linspace_timesteps
from textloc.architectures.spec import REFINER, TEXT_FIRST, AttentionRule, Family, Guidance, PublishedDenoiser, TinyPipeline, Training

# The tiny pipeline's system prompt (the stock one is ~170 characters): the text is
# "<bos> Draw. <Prompt Start> {prompt}", 9 tokens ahead of the prompt's 48.
_SYSTEM_PROMPT = "Draw."
_TEXT_LENGTH = parts.TEXT_LENGTH + 1 + len(_SYSTEM_PROMPT) + 3


def _text_length(args: tuple, kwargs: Mapping[str, Any]) -> int:
    lengths = kwargs["encoder_attention_mask"].sum(1)
    if (lengths != lengths[0]).any():
        raise ValueError(
            f"Lumina 2 packs each row as [its own {lengths.tolist()} text tokens, image]: textloc patches its "
            "main layers only in batches whose prompts have one token length; run the prompts one at a time."
        )
    return int(lengths[0])


def reversed_time(scheduler: Any, timestep: Any) -> Any:
    """The time Lumina2Pipeline (and Lumina-Next's LuminaPipeline) hands its denoiser at scheduler
    timestep ``timestep``: ``1 - t / num_train_timesteps`` (0 is noise, 1 the image); both step
    their scheduler with the negated prediction."""
    return 1 - timestep / scheduler.config.num_train_timesteps


def _lumina2(seed: int) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Transformer2DModel
    from transformers import AddedToken

    tokenizer = parts.gemma_tokenizer(_TEXT_LENGTH)
    tokenizer.add_tokens([AddedToken("<Prompt Start>", special=False, normalized=False)])
    latent_size = parts.IMAGE_SIZE // 8  # the pipeline takes its VAE to downsample 8x, whatever it is
    transformer = parts.init(
        seed,
        Lumina2Transformer2DModel,
        sample_size=latent_size,
        patch_size=1,
        in_channels=4,
        hidden_size=32,
        num_layers=2,
        num_refiner_layers=1,
        num_attention_heads=4,
        num_kv_heads=2,  # grouped K/V heads, as the real model's 24 / 8
        multiple_of=16,
        norm_eps=1e-5,
        axes_dim_rope=(4, 2, 2),  # sums to the head size, 8
        axes_lens=(_TEXT_LENGTH + 1, latent_size, latent_size),
        cap_feat_dim=parts.TEXT_WIDTH,
    )
    vae = parts.autoencoder_kl(
        seed, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159,
    )
    return dict(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=6.0),
        vae=vae,
        text_encoder=parts.gemma_encoder(seed, tokenizer, _TEXT_LENGTH),
        tokenizer=tokenizer,
    )


class _Lumina2Inversion(CapturedInversion):
    """Flow inversion of Lumina 2, as ``Lumina2Pipeline.__call__`` samples: the VAE's latents, scaled
    and shifted, not packed, its noise drawn in the prompt embeddings' dtype; the reversed time and
    negated velocity are its :class:`Training`'s."""

    def size_multiple(self, pipe: Any) -> int:
        # prepare_latents rounds the latent sides down to even (the transformer's 2x2 patches).
        return pipe.vae_scale_factor * 2

    def latents_dtype(self, pipe: Any) -> Any:
        return pipe.text_encoder.dtype

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        # The pipeline's linspace sigmas and its mu of "image_seq_len = latents.shape[1]": of its
        # unpacked latents' channels, which this sample's second axis is too.
        set_shifted_linspace_timesteps(scheduler, num_inference_steps, sample)


LUMINA_IMAGE_2 = PublishedDenoiser(
    "Lumina-Image 2.0", "Lumina2Transformer2DModel", {"cap_feat_dim": 2304}, 256,
    "Lumina-Image-2.0 transformer/config.json (cap_feat_dim: Gemma-2-2B's width; the rest: diffusers' class defaults)",
)

FAMILY = Family(
    name="lumina2",
    denoisers=("Lumina2Transformer2DModel",),
    pipelines=("Lumina2Pipeline",),
    attention=(
        AttentionRule("Attention", REFINER, where="context_refiner.*"),
        AttentionRule("Attention", TEXT_FIRST, where="layers.*"),
    ),
    guidance=Guidance(call_order=("cond", "uncond")),
    text_length=_text_length,
    training=Training(timestep=reversed_time, prediction_sign=-1.0),
    inversion=_Lumina2Inversion(),
    tiny={"lumina2": TinyPipeline("Lumina2Pipeline", _lumina2, {"system_prompt": _SYSTEM_PROMPT, "max_sequence_length": _TEXT_LENGTH})},
    published=(LUMINA_IMAGE_2,),
)
