"""GLM-Image: an autoregressive model (GLM-4-9B with a visual vocabulary) draws the image's prior
tokens from the whole prompt; a single-stream DiT then decodes them, reading as its only text the
prompt's quoted strings (``pipeline_glm_image.py``: ``get_glyph_texts``), encoded by ByT5 (its
"glyph encoder"). textloc serves the DiT's text path; the autoregressive stage is out of its scope
(its layers are not listed, recorded or patched: a patched run keeps its own prompt's prior tokens).

How text enters the DiT (``transformer_glm_image.py``): every ``transformer_blocks.N.attn1`` runs one
attention over ``cat([text, image])`` through shared ``to_q``/``to_k``/``to_v`` (text first; the
image alone gets RoPE). Each block modulates the text stream by the timestep: step-dependent K/V.
The glyph tokens of a prompt's quoted strings are concatenated (a prompt with none encodes ``""``,
one token), and a call's rows are left-padded with zeros to the longest, with no mask: a shorter
row attends to that padding and is not its own image, so textloc refuses a call whose prompts'
glyph texts have different token lengths (as it does a source of another length).

CFG: two plain denoiser calls a step, the conditional one first, with no ``cache_context``; the
unconditional one reads the glyphs of ``""`` and drops the prior tokens; on while ``guidance_scale`` > 1
(``do_classifier_free_guidance``). The denoiser gets the scheduler's timestep minus one.

The autoregressive stage samples the prior tokens of a whole batch in one ``generate`` call (its RNG
seeded from the first generator's ``initial_seed()``), so a row's tokens depend on the other rows:
while textloc runs the pipeline it draws them one prompt at a time, with the generator the pipeline
hands that stage, as a call with that prompt alone draws them (``Family.wraps``). With one
generator per row the pipeline seeds that stage from the first, and so does textloc. Image-
conditioned generation (``image=``: its condition images' K/V are written by extra denoiser calls
before the loop) is refused.

The tiny pipeline: a stock ``GlmImagePipeline`` of 2 blocks of 2 heads, a byte-level T5 for the
glyphs, an 8x autoencoder (with the DiT's 2x2 patches, the 16x of the real model, so the prior
tokens, drawn at 32x and upsampled 2x, cover the image), and a 2-layer
``GlmImageForConditionalGeneration`` with a 64-code visual vocabulary behind a character-level
tokenizer; its processor previews the image in 2x2 tokens instead of 16x16 (5 autoregressive steps
instead of 258), nothing else differs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.spec import TEXT_FIRST, AttentionRule, Family, Guidance, PublishedDenoiser, TinyPipeline

_CODES = 64  # the tiny visual vocabulary: prior token ids 0..63
_SPECIALS = ("<|image_start|>", "<|image_end|>", "<sop>", "<eop>", "[gMASK]", "<|user|>", "<|assistant|>", "<|image|>", "<|endoftext|>")
_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% else %}<|image|>{% endif %}"
    "{% endfor %}{% endfor %}<|assistant|>\n"
)


def _text_length(args: tuple, kwargs: Mapping[str, Any]) -> int:
    caches = kwargs.get("kv_caches")
    if caches is not None and any(cache.mode is not None for cache in caches.caches):
        raise _image_conditioned()
    return kwargs["encoder_hidden_states"].shape[1]


def _image_conditioned() -> ValueError:
    return ValueError(
        "GLM-Image's image-conditioned generation (image=) runs extra denoiser calls that write its condition images' "
        "K/V before the loop: textloc serves its text-to-image generation only."
    )


def _check_text(encoded: tuple) -> None:
    """Refuse a call whose prompts' glyph texts have different token lengths: ``encode_prompt``
    left-pads the shorter rows with zeros, which the DiT attends to (no mask)."""
    for embeds in encoded:
        if embeds is None or embeds.shape[0] < 2:
            continue
        real = embeds.abs().sum(-1) != 0  # padding rows are exactly zero; a T5 state never is
        lengths = embeds.shape[1] - real.int().argmax(1)
        if (lengths != lengths[0]).any():
            raise ValueError(
                f"GLM-Image left-pads a call's glyph texts ({lengths.tolist()} tokens: the prompts' quoted strings) to the "
                "longest and masks nothing, so a shorter row is not its own image: textloc runs it only on prompts of one "
                "token length (run others one at a time; a source prompt must have the token length of the prompt it patches)."
            )


def _prior_tokens_per_prompt(pipe: Any, generate_prior_tokens: Callable[..., Any]) -> Callable[..., Any]:
    """The autoregressive stage, one prompt at a time (each prompt once), with the generator the
    pipeline hands it: row ``i`` gets the prior tokens a call with its prompt alone gets."""
    import torch

    @functools.wraps(generate_prior_tokens)
    def per_prompt(prompt: str | list[str], height: int, width: int, image: Any = None, device: Any = None, generator: Any = None) -> Any:
        if image is not None:
            raise _image_conditioned()
        if isinstance(prompt, str):
            return generate_prior_tokens(prompt=prompt, height=height, width=width, image=None, device=device, generator=generator)
        drawn = {
            text: generate_prior_tokens(prompt=text, height=height, width=width, image=None, device=device, generator=generator)[0]
            for text in dict.fromkeys(prompt)
        }
        return torch.cat([drawn[text] for text in prompt]), None, None

    return per_prompt


def _ar_tokenizer() -> Any:
    """One token per character, GLM-Image's markers one token each, padded on the left; ids
    0..63 are the visual codes, which only the model writes."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<|code_{code}|>": code for code in range(_CODES)}
    for token in (*_SPECIALS, *parts.CHARACTERS, "Ġ", "Ċ"):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in _SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|image_end|>", bos_token="<|image_start|>",
        extra_special_tokens={"image_token": "<|image|>", "grid_bos_token": "<sop>", "grid_eos_token": "<eop>"},
        padding_side="left",
    )


def _tiny_processor(tokenizer: Any) -> Any:
    from transformers import GlmImageProcessor
    from transformers.models.glm_image.image_processing_pil_glm_image import GlmImageImageProcessorPil

    class TinyGlmImageProcessor(GlmImageProcessor):
        """GLM-Image's processor, previewing the image in 2x2 tokens (the real one: 16x16)."""

        def _get_target_shape(self, height: int, width: int) -> tuple[int, int, int, int]:
            token_h, token_w, _, _ = super()._get_target_shape(height=height, width=width)
            return token_h, token_w, 2, 2

    return TinyGlmImageProcessor(image_processor=GlmImageImageProcessorPil(), tokenizer=tokenizer, chat_template=_CHAT_TEMPLATE)


def _ar_model(seed: int, tokenizer: Any) -> Any:
    from transformers import GlmImageConfig, GlmImageForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = GlmImageConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=parts.TEXT_WIDTH, intermediate_size=2 * parts.TEXT_WIDTH, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
            # The end-of-image token lies outside the visual vocabulary the model writes: a random
            # model never ends an image early (the pipeline reads a fixed number of tokens).
            eos_token_id=ids("<|image_end|>"), vision_vocab_size=_CODES, initializer_range=1.0,
            # Multimodal RoPE over half of each 16-wide head: 4 frequencies, split (t, h, w).
            rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1], partial_rotary_factor=0.5),
        ),
        vision_config=dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, patch_size=16, image_size=64),
        vq_config=dict(embed_dim=8, num_embeddings=_CODES, latent_channels=16),
        image_token_id=ids("<|image|>"), image_start_token_id=ids("<|image_start|>"), image_end_token_id=ids("<|image_end|>"),
    )
    return parts.init(seed, GlmImageForConditionalGeneration, config)


def _glm_image(seed: int) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, GlmImageTransformer2DModel

    glyph_tokenizer = parts.t5_tokenizer()
    ar_tokenizer = _ar_tokenizer()
    latent_channels = 4
    transformer = parts.init(
        seed,
        GlmImageTransformer2DModel,
        patch_size=2,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        text_embed_dim=parts.TEXT_WIDTH,
        time_embed_dim=32,
        condition_dim=16,
        prior_vq_quantizer_codebook_size=_CODES,
    )
    # 8x, as the pipeline's latents and prior tokens need (see above): four blocks.
    vae = parts.autoencoder_kl(
        seed, latent_channels, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), latents_mean=[0.0] * latent_channels, latents_std=[1.0] * latent_channels,
    )
    return dict(
        tokenizer=glyph_tokenizer,
        processor=_tiny_processor(ar_tokenizer),
        text_encoder=parts.t5_encoder(seed, glyph_tokenizer),
        vision_language_encoder=_ar_model(seed, ar_tokenizer),
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(
            base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear",
        ),
    )


GLM_IMAGE = PublishedDenoiser(
    "GLM-Image", "GlmImageTransformer2DModel", {"attention_head_dim": 128, "num_attention_heads": 32}, 2048,
    "GLM-Image transformer/config.json, as mirrored on the Hub (xcreates/GLM-Image, Intel/GLM-Image-int4-AutoRound); "
    "text: at most 2048 ByT5 tokens of the prompt's quoted strings (max_sequence_length)",
)

FAMILY = Family(
    name="glm-image",
    denoisers=("GlmImageTransformer2DModel",),
    pipelines=("GlmImagePipeline",),
    attention=(AttentionRule("Attention", TEXT_FIRST, where="transformer_blocks.*"),),
    guidance=Guidance(call_order=("cond", "uncond")),
    text_length=_text_length,
    check_text=_check_text,
    wraps={"generate_prior_tokens": _prior_tokens_per_prompt},
    refuses=dict.fromkeys(
        ("train_lora", "denoiser_inputs"),
        "its DiT also reads the autoregressive stage's prior tokens, takes the timestep minus one and latents "
        "normalised by the VAE's per-channel mean and std, none of which the objective makes",
    ),
    tiny={"glm-image": TinyPipeline("GlmImagePipeline", _glm_image)},
    published=(GLM_IMAGE,),
)
