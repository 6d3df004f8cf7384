"""CogView4: a single-stream DiT whose every block runs one attention over ``[text, image]`` through
shared ``to_q``/``to_k``/``to_v`` (the text stream modulated by the timestep: step-dependent K/V).
GLM-4's text is left-padded to a multiple of 16 with no mask, so the prompt sits at the end of the
text segment and a call's text length depends on its prompts.

CFG: a conditional then an unconditional pass, inside ``cache_context("cond")`` and
``cache_context("uncond")``, each with its own text length.

The tiny pipeline: a stock ``CogView4Pipeline`` of 2 blocks of 2 heads, a 2-layer ``GlmModel`` and
a character-level byte-level tokenizer that, like GLM-4's, puts ``[gMASK] <sop>`` first and pads on
the left.
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import CapturedInversion
from textloc.architectures.spec import TEXT_FIRST, AttentionRule, Family, PublishedDenoiser, TinyPipeline

_PREFIX = 2  # [gMASK] <sop>
_TEXT_LENGTH = parts.TEXT_LENGTH + _PREFIX


def _glm_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "[gMASK]": 1, "<sop>": 2}
    for char in [*parts.CHARACTERS, "Ġ", "Ċ"]:
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="[gMASK] <sop> $A", special_tokens=[("[gMASK]", 1), ("<sop>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|endoftext|>",
        additional_special_tokens=["[gMASK]", "<sop>"], padding_side="left", model_max_length=_TEXT_LENGTH,
    )


def _glm_encoder(seed: int, tokenizer: Any) -> Any:
    from transformers import GlmConfig, GlmModel

    # The pipeline reads hidden_states[-2]: the first layer's output; the text is left-padded to a multiple of 16.
    config = parts.decoder_config(GlmConfig, tokenizer, 2, -(-_TEXT_LENGTH // 16) * 16, bos_token_id=None)
    return parts.init(seed, GlmModel, config)


def _cogview4(seed: int) -> dict[str, Any]:
    from diffusers import CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler

    tokenizer = _glm_tokenizer()
    transformer = parts.init(
        seed,
        CogView4Transformer2DModel,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        text_embed_dim=parts.TEXT_WIDTH,
        time_embed_dim=32,
        condition_dim=16,
        pos_embed_max_size=parts.LATENT_SIZE,
        sample_size=parts.LATENT_SIZE,
        rope_axes_dim=(parts.LATENT_SIZE, parts.LATENT_SIZE),
    )
    return dict(
        tokenizer=tokenizer,
        text_encoder=_glm_encoder(seed, tokenizer),
        # CogView4 divides latents by scaling_factor only (no shift).
        vae=parts.autoencoder_kl(seed, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.0),
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(
            base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear",
        ),
    )


class _CogView4Inversion(CapturedInversion):
    """Flow inversion of CogView4, as ``CogView4Pipeline.__call__`` samples: the VAE's latents divided
    by nothing but ``scaling_factor`` (the default encoding: the VAE has no shift), not packed, its
    noise drawn in float32; the denoiser takes ``t`` (read from the capture)."""

    def size_multiple(self, pipe: Any) -> int:
        import math

        # check_inputs takes multiples of 16; the transformer's patches tile the latents.
        return math.lcm(16, pipe.vae_scale_factor * pipe.transformer.config.patch_size)

    def latents_dtype(self, pipe: Any) -> Any:
        import torch

        return torch.float32

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        import numpy as np
        from diffusers.pipelines.cogview4.pipeline_cogview4 import calculate_shift

        # Integer timesteps from num_train_timesteps down to 1, their sigmas t / num_train_timesteps,
        # shifted by CogView4's own mu of the image's patch count.
        config = scheduler.config
        timesteps = np.linspace(config.num_train_timesteps, 1.0, num_inference_steps).astype(np.int64).astype(np.float32)
        patches = sample.shape[2] * sample.shape[3] // pipe.transformer.config.patch_size**2
        mu = calculate_shift(patches, config.get("base_image_seq_len", 256), config.get("base_shift", 0.25), config.get("max_shift", 0.75))
        scheduler.set_timesteps(timesteps=timesteps, sigmas=timesteps / config.num_train_timesteps, device=sample.device, mu=mu)


COGVIEW4_6B = PublishedDenoiser(
    "CogView4-6B", "CogView4Transformer2DModel", {"num_layers": 28, "attention_head_dim": 128, "num_attention_heads": 32}, 1024,
    "CogView4-6B transformer/config.json; text: at most 1024 GLM-4 tokens (padded to a multiple of 16)",
)

FAMILY = Family(
    name="cogview4",
    denoisers=("CogView4Transformer2DModel",),
    pipelines=("CogView4Pipeline",),
    attention=(AttentionRule("Attention", TEXT_FIRST, where="transformer_blocks.*"),),
    tiny={"cogview4": TinyPipeline("CogView4Pipeline", _cogview4, {"max_sequence_length": _TEXT_LENGTH})},
    published=(COGVIEW4_6B,),
    inversion=_CogView4Inversion(),
)
