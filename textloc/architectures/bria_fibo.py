"""Bria FIBO (``transformer_bria_fibo.py``): FLUX.1's double-stream joint blocks (``BriaFiboAttention``)
then single-stream blocks (a diffusers ``Attention`` reading ``[text, image]``, the text first),
trained on structured (JSON) prompts, which it reads, like any text, through an LLM (SmolLM3).

How text enters: ``encoder_hidden_states`` is the LLM's last two hidden states side by side
(``context_embedder`` maps them to the model's width), and the pipeline also hands the transformer
``text_encoder_layers``: one LLM hidden state per block (the last ``num_layers +
num_single_layers`` of them, the last repeated where the LLM has fewer). Before each block the text
stream's second half of channels is replaced by that block's own layer, projected
(``caption_projection[i]``): ``[stream[..., :width / 2], projection_i(layer_i)]``. Each block then
reads this text through its own projections, modulated by the timestep, so every layer's text K/V
still carry all the text that reaches its attention, and depend on the step: ``joint`` and
``single`` units, as FLUX.1's. (The per-block layers are not units of their own: they reach the
attention only through these K/V.)

The text mask: each ``encode_prompt`` call pads its prompts to the longest (the LLM's own padding
and mask, then zeros after the LLM to the longer of the prompt and negative prompt), and the
transformer gets a bool key mask ``(batch, 1, 1, text + image)``, text first, as the
``attention_mask`` of every block, unless nothing is padded (``None``). The text has no RoPE
position (all-zero ids) and the LLM's rotary positions are relative, so a row is its own image
whatever its batch, and a source of another length is patched with its own mask (the engine makes
one where the run has none).

CFG: one batch ``[uncond, cond]`` while ``guidance_scale`` > 1; the pipeline has no
``do_classifier_free_guidance`` and passes ``guidance_scale`` itself to ``encode_prompt``, so the
spec states the test its loop makes. The unconditional text is the LLM's encoding of the negative
prompt (``""``: its one beginning-of-text token, id 128000). The transformer takes the scheduler's
timestep as it is and its output is stepped as it is.

``do_patching=True`` (2x2-packed latent tokens) changes the image's tokens only: the text units are
the same. Not served: the image-conditioned ``BriaFiboEditPipeline`` (no spec names it), image
inversion and ``train_lora`` (a video autoencoder's 5-D latents, normalised by
``latents_mean``/``latents_std``, which the spec does not state yet).

The tiny pipeline: a stock ``BriaFiboPipeline`` of 2 double- and 2 single-stream blocks of 2 heads,
a 4-layer SmolLM3 (5 hidden states: the blocks read the last 4) behind Qwen-Image's byte-level
tokenizer (its vocabulary holds id 128000, which the pipeline encodes an empty prompt as), and a
Wan 2.2-style autoencoder of 2x2 patches and three downsamples (16x, the pipeline's fixed
``vae_scale_factor``), so a 32-pixel image is 2 x 2 latent tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.qwenimage import qwen_tokenizer
from textloc.architectures.spec import JOINT, TEXT_FIRST, AttentionRule, Family, Guidance, PublishedDenoiser, TinyPipeline

#: The LLM's vocabulary: the pipeline encodes an empty prompt as token 128000, SmolLM3's <|begin_of_text|>.
_VOCABULARY = 128256
_LLM_LAYERS = 4
_LATENT_CHANNELS = 4

# The key mask over [text, image] every block takes as attention_mask, None where nothing is padded.
_MASK = dict(text_mask="attention_mask", mask_text_at="first", key_mask_dims=4)


def _guidance_on(pipe: Any) -> bool:
    """The loop's own test: ``guidance_scale > 1`` (it has no ``do_classifier_free_guidance``)."""
    return pipe.guidance_scale > 1


def _fibo(seed: int) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, BriaFiboTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import SmolLM3Config, SmolLM3Model

    tokenizer = qwen_tokenizer([])
    llm = parts.decoder_config(
        SmolLM3Config, tokenizer, _LLM_LAYERS, vocab_size=_VOCABULARY, bos_token_id=128000,
        no_rope_layers=[1, 1, 1, 0], layer_types=["full_attention"] * _LLM_LAYERS,  # SmolLM3's every fourth layer has no RoPE
    )
    transformer = parts.init(
        seed, BriaFiboTransformer2DModel, in_channels=_LATENT_CHANNELS, num_layers=2, num_single_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=2 * parts.TEXT_WIDTH,
        text_encoder_dim=parts.TEXT_WIDTH, axes_dims_rope=(4, 6, 6),
    )
    # Wan 2.2's layout in small: 2x2 patches (12 input channels) and three spatial downsamples, residual.
    vae = parts.init(
        seed, AutoencoderKLWan, base_dim=8, z_dim=_LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, False, False], latents_mean=[0.0] * _LATENT_CHANNELS, latents_std=[1.0] * _LATENT_CHANNELS,
        in_channels=12, out_channels=12, patch_size=2, is_residual=True,
    )
    return dict(
        transformer=transformer,
        # FIBO's pipeline always shifts by resolution (calculate_shift on the scheduler's config).
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        vae=vae,
        text_encoder=parts.init(seed, SmolLM3Model, llm),  # the pipeline reads its hidden states only: no LM head
        tokenizer=tokenizer,
    )


FIBO = PublishedDenoiser(
    "Bria FIBO", "BriaFiboTransformer2DModel", {}, 2048,
    "inferred: diffusers' class defaults (FLUX.1's 19 double- and 38 single-stream blocks 3072 wide, on SmolLM3-3B's "
    "2048-wide states), not the published config.json, which was not read here: they make more than the 8B parameters "
    "diffusers' docs state; text: an assumed 2048 tokens (a JSON caption runs to 1,000+ words; the pipeline pads to the "
    "call's longest, at most max_sequence_length 3000)",
)

FAMILY = Family(
    name="bria-fibo",
    denoisers=("BriaFiboTransformer2DModel",),
    pipelines=("BriaFiboPipeline",),
    attention=(
        AttentionRule("BriaFiboAttention", dataclasses.replace(JOINT, **_MASK), when="add_q_proj"),
        AttentionRule("Attention", dataclasses.replace(TEXT_FIRST, **_MASK), where="single_transformer_blocks.*"),
    ),
    guidance=Guidance(enabled=_guidance_on),
    refuses={"train_lora": "its video autoencoder takes 5-D latents the objective does not make"},
    tiny={"bria-fibo": TinyPipeline("BriaFiboPipeline", _fibo)},
    published=(FIBO,),
)
