"""ERNIE-Image: a single-stream DiT (``transformer_ernie_image.py``) whose every layer runs one
``ErnieImageAttention`` over ``cat([image, text])`` through shared ``to_q``/``to_k``/``to_v``: the text
comes **after** the image. Each row's text is its prompt's own tokens (Ministral 3's
``hidden_states[-2]``, unpadded per prompt), the rows zero-padded to the call's longest, with a
boolean key mask over ``[image, text]`` (``attention_mask``, ``(batch, 1, 1, tokens)``) that travels
with a patched row's text: a call's text region is its longest prompt (``text_bth``). One adaLN,
shared by every layer, modulates image and text alike by the timestep: step-dependent K/V.

The image's RoPE places it after its own row's text (axis 0 is ``text_lens``), so a row patched
from a source of another length reads the source's text K/V and mask while its image keeps its
own positions. As in Qwen-Image, a call pads its text to its longest prompt: a source longer than
the run's text does not fit and is refused (batch the prompt with one as long).

CFG: one batch ``[uncond, cond]`` (the negative prompt, ``""`` by default, encoded alike), on while
``guidance_scale`` > 1 (``do_classifier_free_guidance``). The denoiser takes the scheduler's
timestep (0..1000) and the text as ``text_bth`` with ``text_lens``. The pipeline rewrites each
prompt with its prompt enhancer (``use_pe``, on by default where the checkpoint ships one: a
sampled LLM rewording) before encoding it; textloc calls it with the rewrite off (its
``call_defaults``), so the text patched is the prompt given.

The tiny pipeline: a stock ``ErnieImagePipeline`` of 2 layers of 2 heads (48 wide, so its text
projection from the encoder's 32 is there, as in the real model), FLUX.2's tiny 2x2-patchified
autoencoder, a 2-layer ``Mistral3Model`` (Ministral 3 text, a tiny Pixtral tower it never runs)
and a 2-layer ``Ministral3ForCausalLM`` prompt enhancer writing 8 tokens, behind a character-level
tokenizer. Its modulation and output layers, which the class zero-initialises (so that no text
would reach a random model's image), are drawn at random.
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.flux2 import batch_norm_latents
from textloc.architectures.inversion import CapturedInversion, vae_decoding
from textloc.architectures.spec import TEXT_LAST, AttentionRule, DenoiserSignature, Family, PublishedDenoiser, TinyPipeline, Training

_LATENT_CHANNELS = 4  # patchified 2x2 into the transformer's 16 input channels
_REWRITE_TOKENS = 8  # what the tiny prompt enhancer writes (its tokenizer's model_max_length)
# The enhancer's chat template: the user's JSON (prompt, width, height), then "Output:" to complete.
_PE_TEMPLATE = "{{ bos_token }}{% for message in messages %}[INST]{{ message['content'] }}[/INST]{% endfor %}Output:"


def _rope(length: int) -> dict[str, Any]:
    """Ministral 3's YaRN RoPE (16x over its original context), for a context of ``length`` tokens."""
    return dict(
        rope_type="yarn", rope_theta=1e6, factor=16.0, original_max_position_embeddings=length // 16, beta_fast=32.0, beta_slow=1.0,
        mscale_all_dim=1.0, mscale=1.0, llama_4_scaling_beta=0.1,
    )


def _tokenizer(length: int, chat_template: str | None = None) -> Any:
    """Sentencepiece-style BPE with no merges: one token per character, spaces as "▁"."""
    from transformers import LlamaTokenizer

    specials = ["[INST]", "[/INST]", "[IMG]"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "▁": 4}
    for token in ["{", "}", '"', ":", ",", *specials, *parts.CHARACTERS]:
        vocab.setdefault(token, len(vocab))
    return LlamaTokenizer(
        vocab=vocab, merges=[], pad_token="<pad>", additional_special_tokens=specials, model_max_length=length,
        chat_template=chat_template,
    )


def _text_encoder(seed: int, tokenizer: Any) -> Any:
    from transformers import Ministral3Config, Mistral3Config, Mistral3Model, PixtralVisionConfig

    # The pipeline reads hidden_states[-2]: the first layer's output.
    length = 2 * parts.TEXT_LENGTH
    text_config = parts.decoder_config(Ministral3Config, tokenizer, 2, length, bos_token_id=tokenizer.bos_token_id, rope_parameters=_rope(length))
    vision_config = PixtralVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=8, image_size=parts.IMAGE_SIZE,
        patch_size=8,
    )
    config = Mistral3Config(
        vision_config=vision_config, text_config=text_config, image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=2,
    )
    return parts.init(seed, Mistral3Model, config)


def _prompt_enhancer(seed: int, tokenizer: Any) -> Any:
    from transformers import Ministral3Config, Ministral3ForCausalLM

    length = 4 * parts.TEXT_LENGTH
    config = parts.decoder_config(Ministral3Config, tokenizer, 2, length, bos_token_id=tokenizer.bos_token_id, rope_parameters=_rope(length))
    return parts.init(seed, Ministral3ForCausalLM, config)


def _ernie_image(seed: int) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKLFlux2, ErnieImageTransformer2DModel, FlowMatchEulerDiscreteScheduler

    tokenizer = _tokenizer(parts.TEXT_LENGTH)
    pe_tokenizer = _tokenizer(_REWRITE_TOKENS, _PE_TEMPLATE)
    transformer = parts.init(
        seed,
        ErnieImageTransformer2DModel,
        hidden_size=48,
        num_attention_heads=2,
        num_layers=2,
        ffn_hidden_size=96,
        in_channels=4 * _LATENT_CHANNELS,
        out_channels=4 * _LATENT_CHANNELS,
        patch_size=1,
        text_in_dim=parts.TEXT_WIDTH,
        rope_axes_dim=(8, 8, 8),  # sums to the head size, 24
    )
    drawn = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (transformer.adaLN_modulation[-1], transformer.final_linear):
            layer.weight.normal_(0.0, 0.1, generator=drawn)
            layer.bias.normal_(0.0, 0.1, generator=drawn)
    # Two blocks: latents are half the image size, then 2x2-patchified. The BatchNorm statistics the
    # pipeline denormalises with stay at their init (mean 0, var 1).
    vae = parts.autoencoder_kl(seed, _LATENT_CHANNELS, AutoencoderKLFlux2, mid_block_add_attention=False)
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=_text_encoder(seed, tokenizer),
        tokenizer=tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=4.0),
        pe=_prompt_enhancer(seed, pe_tokenizer),
        pe_tokenizer=pe_tokenizer,
    )


# ErnieImagePipeline.__call__ decodes latents * sqrt(running_var + 1e-5) + running_mean, then unpatchifies:
# the pipeline hard-codes this epsilon rather than reading the VAE config's batch_norm_eps, which differs on the Hub.
_BATCH_NORM_EPS = 1e-5


def _encode(pipe: Any, pixels: Any, generators: Any) -> Any:
    """The latents the pipeline samples (B x 4C x h x w, not packed into tokens), for ``pixels``."""
    return batch_norm_latents(pipe, pixels, generators, _BATCH_NORM_EPS)


class _ErnieImageInversion(CapturedInversion):
    """Flow inversion of ERNIE-Image, as ``ErnieImagePipeline.__call__`` samples: the VAE's latents
    patchified 2x2 into channels and batch-norm normalised (its :data:`Training` encoding), not packed
    into tokens, its noise drawn in the transformer's dtype; sigmas evenly spaced from 1 (the
    scheduler's own shift, no ``mu``); the denoiser takes ``t`` and predicts the velocity."""

    def size_multiple(self, pipe: Any) -> int:
        return pipe.vae_scale_factor  # its check_inputs; the VAE's factor times the 2x2 patchify

    def encode_image(self, pipe, pixels, generators=None):
        return _encode(pipe, pixels, generators)

    def decode_sample(self, pipe, sample, height, width):
        import torch

        mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1).to(sample)
        std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + _BATCH_NORM_EPS).to(sample)
        return vae_decoding(pipe.vae, pipe._unpatchify_latents(sample * std + mean))

    def latents_dtype(self, pipe: Any) -> Any:
        return pipe.transformer.dtype

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        import torch

        scheduler.set_timesteps(sigmas=torch.linspace(1.0, 0.0, num_inference_steps + 1)[:-1], device=sample.device)


ERNIE_IMAGE = PublishedDenoiser(
    "ERNIE-Image", "ErnieImageTransformer2DModel",
    {"hidden_size": 4096, "num_attention_heads": 32, "num_layers": 36, "ffn_hidden_size": 12288, "text_in_dim": 3072}, 256,
    "baidu/ERNIE-Image transformer/config.json, as duplicated on the Hub (Deepdive404/ERNIE-Image; ERNIE-Image-Turbo's "
    "is the same); text: each call's longest prompt, unpadded, with no fixed length: 256 tokens is inferred",
)

FAMILY = Family(
    name="ernie-image",
    denoisers=("ErnieImageTransformer2DModel",),
    pipelines=("ErnieImagePipeline",),
    attention=(AttentionRule("ErnieImageAttention", TEXT_LAST),),
    signature=DenoiserSignature(text="text_bth"),
    # The denoiser takes the scheduler's timestep (0..1000) and predicts the velocity, as the objective's defaults.
    training=Training(encode=_encode),
    inversion=_ErnieImageInversion(),
    call_defaults={"use_pe": False},
    tiny={"ernie-image": TinyPipeline("ErnieImagePipeline", _ernie_image)},
    published=(ERNIE_IMAGE,),
)
