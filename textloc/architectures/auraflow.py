"""AuraFlow: an MMDiT (``auraflow_transformer_2d.py``). Its ``joint_transformer_blocks`` give text
and image their own projections (``AuraFlowAttnProcessor2_0`` reads the text stream through
``add_k_proj``/``add_v_proj``: ``joint``); its ``single_transformer_blocks`` then run one attention
over ``cat([text, image])`` through shared ``to_q``/``to_k``/``to_v``, the text **first**: both
modulated by the timestep, so their K/V depend on the step.

The transformer prepends 8 learned register tokens to the projected prompt before the first block
(``register_tokens``, "prevents artifacts in the attention maps"): from the first block on they
attend to the prompt, so the text stream it patches is ``[8 registers, prompt]``, and the text of a
single-stream sequence is that many tokens longer than the prompt embeddings it is called with.

The prompt is UMT5's, padded to ``max_sequence_length`` (256) with its padding embeddings zeroed and
no attention mask in the transformer: every prompt, negative prompt and source has that one length.

CFG: one batch ``[uncond, cond]`` (``torch.cat([negative_prompt_embeds, prompt_embeds])``), on
while ``guidance_scale`` > 1, a local of ``__call__`` that the pipeline passes to its
``encode_prompt`` as ``do_classifier_free_guidance``. The denoiser takes ``t / 1000`` (1 is noise)
and predicts the velocity, stepped as it is; latents decode as ``latents / scaling_factor`` (SDXL's
VAE, no shift).

The tiny pipeline: a stock ``AuraFlowPipeline`` of 2 joint and 2 single blocks of 2 heads, a 2-layer
``UMT5EncoderModel`` behind a byte-level T5 tokenizer, a two-block KL autoencoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import Inversion, encode_prompt
from textloc.architectures.spec import JOINT, TEXT_FIRST, AttentionRule, Family, PublishedDenoiser, TinyPipeline

#: The register tokens AuraFlowTransformer2DModel prepends to the text (``torch.randn(1, 8, inner_dim)``
#: in its ``__init__``: a fixed count, not a config value).
REGISTER_TOKENS = 8


def _text_length(args: tuple, kwargs: Mapping[str, Any]) -> int:
    # The single blocks' sequence is [registers, prompt, image]: the text is the registers and the prompt.
    return REGISTER_TOKENS + kwargs["encoder_hidden_states"].shape[1]


def _umt5_encoder(seed: int, tokenizer: Any) -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=parts.TEXT_WIDTH,
        d_kv=parts.TEXT_WIDTH // 2,
        d_ff=2 * parts.TEXT_WIDTH,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return parts.init(seed, UMT5EncoderModel, config)


def _auraflow(seed: int) -> dict[str, Any]:
    import torch
    from diffusers import AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from diffusers.models.normalization import AdaLayerNormZero

    tokenizer = parts.t5_tokenizer()
    inner_dim = 32
    transformer = parts.init(
        seed,
        AuraFlowTransformer2DModel,
        sample_size=parts.LATENT_SIZE,
        patch_size=2,
        in_channels=4,
        num_mmdit_layers=2,
        num_single_dit_layers=2,
        attention_head_dim=inner_dim // 2,
        num_attention_heads=2,
        joint_attention_dim=parts.TEXT_WIDTH,
        caption_projection_dim=inner_dim,  # the joint blocks' text width: the transformer's own
        out_channels=4,
        pos_embed_max_size=(parts.LATENT_SIZE // 2) ** 2,  # a square grid of patches
    )
    # Each block adds its attention to the residual only through its MLP's input, both gated by the
    # timestep (AdaLN-Zero): randomly initialised, a 32-wide model's gates are ~0.04, and the prompt
    # moves the latents by 1e-4. Scaled 25x, its gates are of order 1, as a trained model's are.
    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, AdaLayerNormZero):
                module.linear.weight.mul_(25.0)
    return dict(
        tokenizer=tokenizer,
        text_encoder=_umt5_encoder(seed, tokenizer),
        # SDXL's VAE: scaling 0.13025, no shift.
        vae=parts.autoencoder_kl(seed, scaling_factor=0.13025),
        transformer=transformer,
        # AuraFlow's scheduler config shifts its flow by 1.73 (inferred: not read from the published file).
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.73),
    )


class _AuraFlowInversion(Inversion):
    """Flow inversion of AuraFlow: latents as the VAE scales them, the prompt's padded UMT5 states."""

    flow = True

    def size_multiple(self, pipe: Any) -> int:
        return pipe.vae_scale_factor * pipe.transformer.config.patch_size  # the pipeline's own check

    def conditioning(self, pipe, prompts, arguments, height, width):
        prompt_embeds, _, _, _ = encode_prompt(pipe, prompts, arguments)
        return {"encoder_hidden_states": prompt_embeds}

    def predict(self, pipe, sample, timestep, conditioning):
        # The pipeline hands its transformer t / 1000, in the latents' dtype.
        timestep = (timestep / 1000).expand(sample.shape[0]).to(sample.dtype)
        return pipe.transformer(sample, timestep=timestep, **conditioning, return_dict=False)[0]


AURAFLOW_V0_3 = PublishedDenoiser(
    "AuraFlow v0.3", "AuraFlowTransformer2DModel", {"pos_embed_max_size": 9216}, REGISTER_TOKENS + 256,
    "diffusers' class defaults, its docstring's (4 joint + 32 single layers of 12 x 256; inferred: not read from a "
    "published config.json), pos_embed_max_size 9216 (inferred: a 96 x 96 patch grid, 1536 px; it sets no text "
    "shape); text: the pipeline's max_sequence_length, 256, plus the 8 register tokens the transformer prepends",
)

FAMILY = Family(
    name="auraflow",
    denoisers=("AuraFlowTransformer2DModel",),
    pipelines=("AuraFlowPipeline",),
    attention=(
        AttentionRule("Attention", JOINT, where="joint_transformer_blocks.*"),
        AttentionRule("Attention", TEXT_FIRST, where="single_transformer_blocks.*"),
    ),
    text_length=_text_length,
    tiny={"auraflow": TinyPipeline("AuraFlowPipeline", _auraflow)},
    published=(AURAFLOW_V0_3,),
    inversion=_AuraFlowInversion(),
)
