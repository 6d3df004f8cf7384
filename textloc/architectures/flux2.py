"""FLUX.2 (dev and Klein): double-stream joint blocks (``Flux2Attention``), then single-stream blocks
(``Flux2ParallelSelfAttention``) whose one fused ``to_qkv_mlp_proj`` makes Q, K, V and the MLP's
input for ``[text, image]`` tokens: K and V are its second and third ``inner_dim`` column blocks.
Every block modulates the text by the timestep, so its K/V depend on the step.

CFG: FLUX.2 dev is guidance-distilled (one call a step, the guidance scale in an embedding);
Klein base runs a conditional then an unconditional call, inside ``cache_context("cond")`` and
``cache_context("uncond")``. The timestep is ``timestep`` (t / 1000); no pooled text vector. The
sampler's latents are the VAE's, patchified 2x2, normalised by its batch-norm statistics, as tokens.

The tiny pipelines: stock ``Flux2Pipeline`` and ``Flux2KleinPipeline`` with 2 double and 2 single
blocks of 2 heads, and 3-layer Mistral-3 / Qwen3 text encoders read at layers (1, 2, 3) (the real
pipelines read (10, 20, 30) / (9, 18, 27)). FLUX.2 dev takes a ``PixtralProcessor``, which needs
torchvision; the pipeline only calls its ``apply_chat_template``, so a character-level
``LlamaTokenizer`` with Mistral's ``[INST]`` template stands in. Both chat templates leave out the
real ones' system message and role words, which would push a prompt out of a 48-token window.
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import Inversion, encode_prompt, vae_decoding, vae_encoding
from textloc.architectures.spec import (
    JOINT, AttentionRule, Family, Guidance, Projection, PublishedDenoiser, TextRoute, TinyPipeline,
)

# Text-encoder hidden states the pipeline stacks into the prompt embedding (index 0 = embeddings).
TEXT_ENCODER_OUT_LAYERS = (1, 2, 3)
_TEXT_LAYERS = max(TEXT_ENCODER_OUT_LAYERS)
JOINT_ATTENTION_DIM = len(TEXT_ENCODER_OUT_LAYERS) * parts.TEXT_WIDTH
# The FLUX.2 VAE's latents are patchified 2x2 before packing: transformer in_channels = 4 * latent.
LATENT_CHANNELS = 4

_MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST]"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}[/INST]{% endif %}{% endfor %}"
)
_QWEN_TEMPLATE = "{% for message in messages %}<|im_start|>{{ message['content'] }}<|im_end|>{% endfor %}"


# --- text encoders -------------------------------------------------------------------------


def _mistral_tokenizer() -> Any:
    """Sentencepiece-style BPE with no merges: one token per character, spaces as "▁"."""
    from transformers import LlamaTokenizer

    specials = ["[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "▁": 4}
    for token in specials + parts.CHARACTERS:
        vocab.setdefault(token, len(vocab))
    return LlamaTokenizer(
        vocab=vocab,
        merges=[],
        pad_token="<pad>",
        additional_special_tokens=specials,
        model_max_length=parts.TEXT_LENGTH,
        chat_template=_MISTRAL_TEMPLATE,
    )


def _mistral3_encoder(seed: int, tokenizer: Any) -> Any:
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig

    # Mistral-Small-3.x: a Mistral decoder plus a Pixtral vision tower (used only for caption
    # upsampling with images, never by text-to-image), both tiny.
    text_config = parts.decoder_config(
        MistralConfig, tokenizer, _TEXT_LAYERS, 2 * parts.TEXT_LENGTH, sliding_window=None, bos_token_id=tokenizer.bos_token_id,
    )
    vision_config = PixtralVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        head_dim=8,
        image_size=parts.IMAGE_SIZE,
        patch_size=8,
    )
    config = Mistral3Config(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
    )
    return parts.init(seed, Mistral3ForConditionalGeneration, config)


def _qwen_tokenizer() -> Any:
    """Byte-level BPE with no merges: one token per character ("Ġ" is the space byte, "Ċ" newline)."""
    from transformers import Qwen2TokenizerFast

    specials = ["<|im_start|>", "<|im_end|>"]
    vocab = {"<|endoftext|>": 0, "Ġ": 1, "Ċ": 2}
    for token in specials + parts.CHARACTERS:
        vocab.setdefault(token, len(vocab))
    return Qwen2TokenizerFast(
        vocab=vocab,
        merges=[],
        additional_special_tokens=specials,
        model_max_length=parts.TEXT_LENGTH,
        chat_template=_QWEN_TEMPLATE,
    )


def _qwen3_encoder(seed: int, tokenizer: Any) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = parts.decoder_config(Qwen3Config, tokenizer, _TEXT_LAYERS, 2 * parts.TEXT_LENGTH)
    return parts.init(seed, Qwen3ForCausalLM, config)


# --- denoiser, VAE, scheduler --------------------------------------------------------------


def _flux2_transformer(seed: int, guidance_embeds: bool) -> Any:
    from diffusers import Flux2Transformer2DModel

    # 2 heads x 16; the four RoPE axes (T, H, W, L) must add up to the head size.
    return parts.init(
        seed,
        Flux2Transformer2DModel,
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=JOINT_ATTENTION_DIM,
        timestep_guidance_channels=32,
        mlp_ratio=3.0,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )


def _flux2_vae(seed: int) -> Any:
    from diffusers import AutoencoderKLFlux2

    # Two blocks: latents are half the image size, then 2x2-patchified into 4 * LATENT_CHANNELS.
    # The BatchNorm statistics the pipelines (de)normalise with stay at their init (mean 0, var 1).
    return parts.autoencoder_kl(seed, LATENT_CHANNELS, AutoencoderKLFlux2, mid_block_add_attention=False)


def _scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    # Both pipelines pass `mu` (compute_empirical_mu) to set_timesteps, as for FLUX.2's dynamic shift.
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)


# --- pipelines -----------------------------------------------------------------------------


def flux2_components(seed: int) -> dict[str, Any]:
    """Keyword arguments of ``Flux2Pipeline`` (FLUX.2 dev, guidance-distilled)."""
    tokenizer = _mistral_tokenizer()
    return dict(
        scheduler=_scheduler(),
        vae=_flux2_vae(seed),
        text_encoder=_mistral3_encoder(seed, tokenizer),
        tokenizer=tokenizer,
        transformer=_flux2_transformer(seed, guidance_embeds=True),
    )


def flux2_klein_components(seed: int) -> dict[str, Any]:
    """Keyword arguments of ``Flux2KleinPipeline`` (FLUX.2 Klein base: true CFG)."""
    tokenizer = _qwen_tokenizer()
    return dict(
        scheduler=_scheduler(),
        vae=_flux2_vae(seed),
        text_encoder=_qwen3_encoder(seed, tokenizer),
        tokenizer=tokenizer,
        transformer=_flux2_transformer(seed, guidance_embeds=False),
        is_distilled=False,
    )

_CALL = {"text_encoder_out_layers": TEXT_ENCODER_OUT_LAYERS}

# The single-stream blocks' fused projection: [Q | K | V | MLP in]. A LoRA on it trains the MLP's
# input columns too: the block has no attention-only projection.
_FUSED_SINGLE = TextRoute(
    "single", Projection("to_qkv_mlp_proj", block=1), Projection("to_qkv_mlp_proj", block=2), "first",
    lora_targets=("to_qkv_mlp_proj",),
)

def batch_norm_latents(pipe: Any, pixels: Any, generators: Any, eps: float) -> Any:
    """The VAE's latents of ``pixels``, patchified 2x2 into channels and normalised by the VAE's
    batch-norm statistics (``eps``: the one the pipeline adds to their variance): what a pipeline of
    this VAE (FLUX.2, ERNIE-Image) decodes as ``latents * std + mean``, unpatchified."""
    import torch

    latents = pipe._patchify_latents(vae_encoding(pipe.vae, pixels, generators))
    mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1).to(latents)
    std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + eps).to(latents)
    return (latents - mean) / std


def _encode(pipe: Any, pixels: Any, generators: Any) -> Any:
    """The latents the pipeline samples, for ``pixels``: batch-norm normalised, packed into tokens
    (its ``_encode_vae_image`` for image conditioning, and the inverse of what it decodes)."""
    return pipe._pack_latents(batch_norm_latents(pipe, pixels, generators, pipe.vae.config.batch_norm_eps))


def _patches(pipe: Any, sample: Any, height: int, width: int) -> Any:
    """Tokens B x hw x C (``_pack_latents``) back to the 2x2 patches B x C x h x w of an image of
    ``height`` x ``width`` pixels."""
    side = pipe.vae_scale_factor * 2
    return sample.permute(0, 2, 1).reshape(*sample.shape[::2], height // side, width // side)


class _Flux2Inversion(Inversion):
    """Flow inversion of FLUX.2, as ``Flux2Pipeline.__call__`` and ``Flux2KleinPipeline.__call__``
    sample (text to image, no reference images): the batch-norm normalised 2x2 patches as tokens,
    the time ``t / 1000``, dev's distilled guidance as an input (Klein passes none)."""

    flow = True

    def size_multiple(self, pipe: Any) -> int:
        # prepare_latents rounds the latent sides down to even: the VAE's latents are patchified 2x2.
        return pipe.vae_scale_factor * 2

    def encode_image(self, pipe, pixels, generators=None):
        return _encode(pipe, pixels, generators)

    def decode_sample(self, pipe, sample, height, width):
        import torch

        patches = _patches(pipe, sample, height, width)
        mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1).to(patches)
        std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(patches)
        return vae_decoding(pipe.vae, pipe._unpatchify_latents(patches * std + mean))

    def latents_argument(self, pipe, sample, height, width):
        return _patches(pipe, sample, height, width)

    def latents_dtype(self, pipe):
        return pipe.text_encoder.dtype  # the pipeline draws its noise in the prompt embeddings' dtype

    def conditioning(self, pipe, prompts, arguments, height, width):
        import torch

        side = pipe.vae_scale_factor * 2
        prompt_embeds, text_ids = encode_prompt(pipe, prompts, arguments)
        patches = torch.empty(len(prompts), 1, height // side, width // side)  # _prepare_latent_ids reads the shape alone
        guidance = None
        if pipe.transformer.config.guidance_embeds:  # dev: the distilled scale is an input, not CFG
            guidance = torch.full([len(prompts)], arguments["guidance_scale"], device=prompt_embeds.device, dtype=torch.float32)
        return {
            "encoder_hidden_states": prompt_embeds,
            "txt_ids": text_ids,
            "img_ids": pipe._prepare_latent_ids(patches).to(prompt_embeds.device),
            "guidance": guidance,
        }

    def predict(self, pipe, sample, timestep, conditioning):
        timestep = timestep.expand(sample.shape[0]).to(sample.dtype) / 1000
        return pipe.transformer(hidden_states=sample, timestep=timestep, **conditioning, return_dict=False)[0]

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        import numpy as np
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        sigmas = None if scheduler.config.get("use_flow_sigmas") else np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = compute_empirical_mu(image_seq_len=sample.shape[1], num_steps=num_inference_steps)
        scheduler.set_timesteps(num_inference_steps, device=sample.device, sigmas=sigmas, mu=mu)


FLUX_2_DEV = PublishedDenoiser(
    "FLUX.2-dev", "Flux2Transformer2DModel", {}, 512, "diffusers' class defaults, which are FLUX.2-dev's",
)

FAMILY = Family(
    name="flux2",
    denoisers=("Flux2Transformer2DModel",),
    pipelines=("Flux2Pipeline", "Flux2KleinPipeline"),
    attention=(
        AttentionRule("Flux2Attention", JOINT, when="add_q_proj"),
        AttentionRule("Flux2ParallelSelfAttention", _FUSED_SINGLE),
    ),
    # Klein's passes run in contexts; dev's one pass a step, in none, is conditional.
    guidance=Guidance(distilled=True),
    # Training encodes as inversion does (its default): no Training to state.
    inversion=_Flux2Inversion(),
    tiny={
        "flux2": TinyPipeline("Flux2Pipeline", flux2_components, _CALL),
        "flux2-klein": TinyPipeline("Flux2KleinPipeline", flux2_klein_components, _CALL),
    },
    published=(FLUX_2_DEV,),
)
