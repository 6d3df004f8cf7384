"""Ideogram 4: a single-stream DiT (``transformer_ideogram4.py``) whose every layer runs one
``Ideogram4Attention`` over a packed sequence ``[left padding, text, image]`` per row, through shared
``to_q``/``to_k``/``to_v``: the text **first**, ending where the image begins. Each row's text is its
prompt's own tokens (Qwen3-VL's, 13 decoder layers' hidden states concatenated), left-padded to
``max_sequence_length`` (2048 by default), so its start depends on its length. A square segment mask
(``attention_mask``, ``(batch, 1, L, L)``) keeps the padding apart from text and image; one adaLN
per block modulates text and image alike by the timestep: step-dependent K/V.

textloc's text units are the prompt's own tokens (``Family.text_start``: after the padding), not
the padding, which the image never reads. The RoPE positions of the text count from its first
token (``0..n-1``) at whatever offset the padding puts it, and the mask follows that offset, so a
row patched from a source of another length would read the source's K/V at the row's own
positions and mask: textloc runs Ideogram 4 only on prompts of one token length, from sources of
that length, and refuses anything else in one line. The mask is the family's layout, not the
text's (``mask_text_at=None``): it is neither recorded nor swapped.

CFG is asymmetric: each step runs ``transformer`` on the prompt, then a second model,
``unconditional_transformer``, on the image alone (no text at all), and blends the two. The
denoiser textloc hooks is ``transformer``, whose every call is conditional (``Guidance.distilled``);
the unconditional model reads no text, so there is nothing of it to record or patch. The denoiser
takes ``1 - t/1000`` (0 is noise, 1 the image) and the pipeline steps with the negated prediction.
Prompt upsampling (``prompt_upsampling``, off by default) rewrites the prompt with a sampled LLM
caption before it is encoded.

The tiny pipeline: a stock ``Ideogram4Pipeline`` of two transformers (conditional and
unconditional) of 2 layers of 2 heads, FLUX.2's tiny 2x2-patchified autoencoder, and a
``Qwen3VLModel`` of 36 layers of width 32 (the pipeline taps layers 0, 3, ..., 33, 35, so it needs
all 36) behind a character-level tokenizer with Qwen's chat template (19 tokens around the prompt).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.spec import TEXT_FIRST, AttentionRule, Family, Guidance, PublishedDenoiser, TinyPipeline
from textloc.architectures.z_image import CHARACTERS

# transformer_ideogram4.py's per-token roles.
_TEXT_TOKEN, _IMAGE_TOKEN = 3, 2
# Qwen3-VL's template for one user turn (its content a list of parts) plus the generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_SEQUENCE_LENGTH = parts.TEXT_LENGTH + 6 + 13  # <|im_start|> user \n ... <|im_end|> \n <|im_start|> assistant \n
_TAPPED_LAYERS = 36  # pipeline_ideogram4.QWEN3_VL_ACTIVATION_LAYERS ends at 35: 13 layers' states
_LATENT_CHANNELS = 4  # patchified 2x2 into the transformer's 16 input channels


def _text_lengths(kwargs: Mapping[str, Any]) -> Any:
    return (kwargs["indicator"] == _TEXT_TOKEN).sum(1)


def _text_length(args: tuple, kwargs: Mapping[str, Any]) -> int:
    lengths = _text_lengths(kwargs)
    if (lengths != lengths[0]).any():
        raise ValueError(
            f"Ideogram 4 left-pads each row's own {lengths.tolist()} text tokens ahead of its image, with positions and "
            "mask that follow them: textloc patches it only in batches whose prompts have one token length; run the "
            "prompts one at a time (a source prompt must have the token length of the prompt it patches)."
        )
    return int(lengths[0])


def _text_start(args: tuple, kwargs: Mapping[str, Any]) -> int:
    # The image starts at max_sequence_length in every row; the text ends there.
    ahead_of_image = int((kwargs["indicator"][0] != _IMAGE_TOKEN).sum())
    return ahead_of_image - int(_text_lengths(kwargs)[0])


def _qwen_tokenizer() -> Any:
    """Qwen's byte-level BPE with no merges: one token per character, chat markers one token each."""
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for char in CHARACTERS:
        vocab.setdefault(char, len(vocab))
    return Qwen2Tokenizer(
        vocab=vocab, merges=[], model_max_length=MAX_SEQUENCE_LENGTH, chat_template=CHAT_TEMPLATE,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )


def qwen3_vl_encoder(seed: int, tokenizer: Any, layers: int, length: int) -> Any:
    """A tiny Qwen3-VL (its vision tower built, never run) of ``layers`` text layers, for ``length`` tokens."""
    from transformers import Qwen3VLConfig, Qwen3VLModel

    text_config = parts.decoder_config(
        dict, tokenizer, layers, length,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    )
    # The vision tower is built but never run (text-to-image passes no pixels).
    vision_config = dict(
        depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=parts.TEXT_WIDTH, patch_size=2,
        temporal_patch_size=1, spatial_merge_size=1, num_position_embeddings=16, deepstack_visual_indexes=[],
    )
    return parts.init(seed, Qwen3VLModel, Qwen3VLConfig(text_config=text_config, vision_config=vision_config))


def _transformer(seed: int) -> Any:
    from diffusers import Ideogram4Transformer2DModel

    return parts.init(
        seed,
        Ideogram4Transformer2DModel,
        in_channels=4 * _LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        intermediate_size=64,
        adaln_dim=16,
        llm_features_dim=13 * parts.TEXT_WIDTH,
        mrope_section=(4, 2, 2),  # interleaved over the 8 frequencies of a 16-wide head
    )


def _ideogram4(seed: int) -> dict[str, Any]:
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler

    tokenizer = _qwen_tokenizer()
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(),  # the pipeline sets its own logit-normal sigmas
        # Two blocks: latents are half the image size, then 2x2-patchified. The BatchNorm statistics the
        # pipeline denormalises with stay at their init (mean 0, var 1).
        vae=parts.autoencoder_kl(seed, _LATENT_CHANNELS, AutoencoderKLFlux2, mid_block_add_attention=False),
        text_encoder=qwen3_vl_encoder(seed, tokenizer, _TAPPED_LAYERS, MAX_SEQUENCE_LENGTH),
        tokenizer=tokenizer,
        transformer=_transformer(seed),
        unconditional_transformer=_transformer(seed + 1),
    )


IDEOGRAM_4 = PublishedDenoiser(
    "Ideogram 4", "Ideogram4Transformer2DModel", {}, 2048,
    "diffusers' class defaults, its docstring's (inferred: not read from a published config.json; they agree with "
    "Qwen3-VL-8B's 13 tapped layers x 4096 = llm_features_dim and FLUX.2's 32-channel VAE x 2x2 = in_channels); its "
    "unconditional_transformer, a second model of the same class, reads no text; text: the pipeline's "
    "max_sequence_length, which it left-pads every prompt to (a cache holds the prompt's own tokens only)",
)

FAMILY = Family(
    name="ideogram4",
    denoisers=("Ideogram4Transformer2DModel",),
    pipelines=("Ideogram4Pipeline",),
    attention=(AttentionRule("Ideogram4Attention", dataclasses.replace(TEXT_FIRST, mask_text_at=None)),),
    # The unconditional pass runs unconditional_transformer, which reads no text: every call of the
    # hooked transformer is conditional.
    guidance=Guidance(distilled=True),
    text_length=_text_length,
    text_start=_text_start,
    refuses={
        **dict.fromkeys(("train_lora", "denoiser_inputs"), "its denoiser takes 1 - t/1000 (0 is noise) and predicts the negated velocity"),
    },
    tiny={
        "ideogram4": TinyPipeline(
            "Ideogram4Pipeline", _ideogram4,
            # A constant guidance_scale (set by the tests) excludes the default per-step schedule.
            {"guidance_schedule": None, "max_sequence_length": MAX_SEQUENCE_LENGTH},
        ),
    },
    published=(IDEOGRAM_4,),
)
