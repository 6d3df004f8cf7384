"""Lumina-Next: a DiT (``lumina_nextdit2d.py``) whose every block mixes two attentions over the same
image queries, in ``LuminaAttnProcessor2_0``: ``attn1`` over the image itself and ``attn2`` over
Gemma's hidden states of the prompt, through ``to_k``/``to_v`` of the RMS-normed text (the prompt
alone: step-independent, ``cross``), with the padded tokens masked by ``encoder_mask`` (a
``(batch, text)`` keep-mask, its ``attention_mask``). Each head's cross term is gated by
``tanh(gate)`` and added to the self-attention's output before ``attn2.to_out``, which both share.
The prompt also reaches every block as a pooled vector: the masked mean of its hidden states, read
by ``time_caption_embed.caption_embedder`` into the timestep embedding (the ``pooled`` unit).
K/V heads are grouped (32 query heads share 8 in the real model).

The text is padded to a call's longest prompt, rounded up to a multiple of 8 (``padding=True,
pad_to_multiple_of=8``, at most the pipeline's ``max_sequence_length`` attribute, 256; its call
argument of that name is not read), and the negative prompt to the same length.

CFG: one batch ``[cond, uncond]`` (``torch.cat([prompt_embeds, negative_prompt_embeds])``, the
first half read as the conditional prediction), on while ``do_classifier_free_guidance``
(``guidance_scale`` > 1); the guidance mixes only the first 3 of the 4 latent channels, the fourth
keeps the conditional prediction. The denoiser takes ``1 - t/1000`` (0 is noise), predicts the
negated velocity (the pipeline steps with ``-pred``) and a variance, which the pipeline drops.

The tiny pipeline: a stock ``LuminaPipeline`` of 2 blocks of 4 query heads sharing 2 K/V heads, a
2-layer ``GemmaModel`` (the pipeline reads its second-to-last hidden states) behind a
character-level Gemma tokenizer, and an autoencoder that downsamples 8x (the pipeline assumes 8).
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import Inversion, encode_prompt
from textloc.architectures.lumina2 import reversed_time
from textloc.architectures.spec import CAPTION_AS_GIVEN, CROSS, AttentionRule, Family, Guidance, PublishedDenoiser, TinyPipeline, Training

_LATENT_SIZE = parts.IMAGE_SIZE // 8  # the pipeline's vae_scale_factor is 8, whatever its VAE


def _gemma_encoder(seed: int, tokenizer: Any) -> Any:
    from transformers import GemmaConfig, GemmaModel

    config = parts.decoder_config(GemmaConfig, tokenizer, 2, parts.TEXT_LENGTH, bos_token_id=tokenizer.bos_token_id)
    return parts.init(seed, GemmaModel, config)


def _lumina_next(seed: int) -> dict[str, Any]:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, LuminaNextDiT2DModel

    tokenizer = parts.gemma_tokenizer()
    transformer = parts.init(
        seed,
        LuminaNextDiT2DModel,
        sample_size=_LATENT_SIZE,
        patch_size=1,
        in_channels=4,
        hidden_size=32,
        num_layers=2,
        num_attention_heads=4,
        num_kv_heads=2,  # grouped K/V heads, as the real model's 32 / 8
        multiple_of=16,
        cross_attention_dim=parts.TEXT_WIDTH,
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Each block's cross-attention gates start at zero (tanh(0): no text at all) and its pad
        # token uninitialised (torch.empty; the forward pass never reads it): drawn here, so that
        # the prompt reaches the image and the same seed gives the same weights.
        for block in transformer.layers:
            block.gate.copy_(torch.randn(block.gate.shape, generator=generator))
        transformer.pad_token.copy_(torch.randn(transformer.pad_token.shape, generator=generator))
    vae = parts.autoencoder_kl(
        seed, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), scaling_factor=0.13025,  # SDXL's VAE, as Lumina-Next's: no shift
    )
    return dict(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=_gemma_encoder(seed, tokenizer),
        tokenizer=tokenizer,
    )


class _LuminaNextInversion(Inversion):
    """Flow inversion of Lumina-Next, as ``LuminaPipeline.__call__`` calls its denoiser: the masked
    prompt, the RoPE table of the image's size at each time, proportional attention, the reversed time."""

    flow = True

    def size_multiple(self, pipe: Any) -> int:
        return pipe.vae_scale_factor * pipe.transformer.config.patch_size

    def conditioning(self, pipe, prompts, arguments, height, width):
        import math

        prompt_embeds, mask, _, _ = encode_prompt(pipe, prompts, arguments)
        kwargs = {}
        if arguments.get("proportional_attn", True):
            kwargs["base_sequence_length"] = (pipe.default_image_size // 16) ** 2
        return {
            "encoder_hidden_states": prompt_embeds,
            "encoder_mask": mask,
            "cross_attention_kwargs": kwargs,
            # Not the denoiser's: what predict() builds its RoPE table from, as the pipeline does.
            "rope_scaling": (math.sqrt(width * height / pipe.default_image_size**2), arguments.get("scaling_watershed", 1.0)),
        }

    def predict(self, pipe, sample, timestep, conditioning):
        from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

        conditioning = dict(conditioning)
        scaling, watershed = conditioning.pop("rope_scaling")
        time = reversed_time(pipe.scheduler, timestep.expand(sample.shape[0]))
        # Below the watershed time the table is stretched linearly, above it by NTK scaling.
        linear, ntk = (scaling, 1.0) if time[0] < watershed else (1.0, scaling)
        rope = get_2d_rotary_pos_embed_lumina(pipe.transformer.head_dim, 384, 384, linear_factor=linear, ntk_factor=ntk)
        output = pipe.transformer(hidden_states=sample, timestep=time, image_rotary_emb=rope, **conditioning, return_dict=False)[0]
        return output.chunk(2, dim=1)[0]  # as the pipeline: the predicted variance dropped


def _text_length(pipe: Any) -> None:
    # The pipeline pads each call's prompts to at most its own max_sequence_length attribute (256).
    pipe.max_sequence_length = parts.TEXT_LENGTH


LUMINA_NEXT_SFT = PublishedDenoiser(
    "Lumina-Next-SFT", "LuminaNextDiT2DModel",
    {"num_kv_heads": 8, "hidden_size": 2304, "num_layers": 24, "num_attention_heads": 32, "cross_attention_dim": 2048},
    256,
    "Lumina-Next-SFT-diffusers transformer/config.json as recalled from its model card (inferred: not read from the "
    "published file; the 2B Next-DiT: 24 layers of 32 x 72 with 8 K/V heads, Gemma-2B's 2048-wide text; the rest: "
    "diffusers' class defaults); text: at most the pipeline's max_sequence_length, 256 (each call pads to its longest prompt)",
)

FAMILY = Family(
    name="lumina-next",
    denoisers=("LuminaNextDiT2DModel",),
    pipelines=("LuminaPipeline",),
    attention=(AttentionRule("Attention", CROSS, when="is_cross_attention"),),
    guidance=Guidance(batch_order=("cond", "uncond")),
    pooled="time_caption_embed.caption_embedder",
    # clean_caption=True by default: the caption would be lowercased and stripped before encoding.
    call_defaults=CAPTION_AS_GIVEN,
    training=Training(timestep=reversed_time, prediction_sign=-1.0),
    inversion=_LuminaNextInversion(),
    tiny={"lumina-next": TinyPipeline("LuminaPipeline", _lumina_next, adjust=_text_length)},
    published=(LUMINA_NEXT_SFT,),
)
