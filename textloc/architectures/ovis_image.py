"""Ovis-Image: FLUX.1's layout without CLIP, the pooled vector or a guidance embedding
(``transformer_ovis_image.py``). Double-stream blocks run one ``OvisImageAttention`` whose text
stream has its own ``add_k_proj``/``add_v_proj`` (joint: text K/V first, then the image's); the
single-stream blocks' ``OvisImageAttention`` (``pre_only``) reads ``cat([text, image])`` through
one set of ``to_q``/``to_k``/``to_v`` (text first). Every block modulates the text by the timestep,
so its K/V depend on the step. The timestep embedding reads the timestep alone: no pooled unit.

The text: Qwen3's last hidden state of ``<|im_start|>user\\n{system prompt}{prompt}<|im_end|>...``,
padded to ``max_sequence_length + 28`` tokens, the padding zeroed, the first 28
(``user_prompt_begin_id``) dropped: every call's text is ``max_sequence_length`` tokens, and no
text mask reaches the attention (its blocks pass none: the zeroed padding is attended).

CFG (``pipeline_ovis_image.py``): on when ``guidance_scale`` > 1; a conditional pass inside
``cache_context("cond")``, then an unconditional one inside ``cache_context("uncond")``, both with
``timestep / 1000``.

The tiny pipeline: a stock ``OvisImagePipeline`` with FLUX.1's tiny transformer layout (2 double and
2 single blocks of 2 heads), a 2-layer Qwen3 and a byte-level tokenizer whose vocabulary holds the
words of the pipeline's system prompt whole, with Qwen3's chat template (``enable_thinking=False``:
an empty ``<think>`` block closes it). Split by Qwen's pre-tokenizer into whole words, the template
and system prompt make 29 tokens, so the pipeline's 28-token drop keeps the system prompt's
closing ``:`` (inferred from the pre-tokenizer: the real vocabulary was not at hand to check).
"""

from __future__ import annotations

import re
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.flux import TINY_TRANSFORMER, CapturedFluxInversion, flux_style_attention, tiny_vae
from textloc.architectures.qwenimage import qwen_tokenizer
from textloc.architectures.spec import Family, PublishedDenoiser, TinyPipeline

# OvisImagePipeline.system_prompt and user_prompt_begin_id (set in its __init__).
SYSTEM_PROMPT = (
    "Describe the image by detailing the color, quantity, text, shape, size, texture, spatial relationships of the "
    "objects and background: "
)
USER_PROMPT_BEGIN = 28
# Qwen3's chat template for one user turn and the generation prompt, with thinking switched off.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
TEMPLATE_SUFFIX = 9  # <|im_end|> \n <|im_start|> assistant \n <think> \n\n </think> \n\n
# The text the transformer gets: the ':' the drop keeps, the prompt, the template's end.
MAX_SEQUENCE_LENGTH = 1 + parts.TEXT_LENGTH + TEMPLATE_SUFFIX


def _tokenizer() -> Any:
    """Qwen's byte-level BPE, the system prompt's words (and the template's) one token each."""
    words = re.findall(r" ?[A-Za-z]+", SYSTEM_PROMPT) + ["user", "assistant", "\n\n"]
    tokenizer = qwen_tokenizer(words, CHAT_TEMPLATE)
    tokenizer.add_tokens(["<think>", "</think>"], special_tokens=True)
    return tokenizer


def _qwen3_encoder(seed: int, tokenizer: Any) -> Any:
    from transformers import Qwen3Config, Qwen3Model

    # The pipeline tokenizes to max_sequence_length + USER_PROMPT_BEGIN and reads last_hidden_state.
    config = parts.decoder_config(Qwen3Config, tokenizer, 2, MAX_SEQUENCE_LENGTH + USER_PROMPT_BEGIN)
    return parts.init(seed, Qwen3Model, config)


def _ovis_image(seed: int) -> dict[str, Any]:
    """Keyword arguments of ``OvisImagePipeline``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, OvisImageTransformer2DModel

    tokenizer = _tokenizer()
    # Its out_channels defaults to 64 whatever in_channels is; the prediction is stepped as the packed latents.
    transformer = parts.init(seed, OvisImageTransformer2DModel, **TINY_TRANSFORMER, out_channels=TINY_TRANSFORMER["in_channels"])
    return dict(
        # The pipeline passes `mu` (calculate_shift) to set_timesteps: a dynamic shift.
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=tiny_vae(seed),  # FLUX.1's autoencoder, its scaling and shift
        text_encoder=_qwen3_encoder(seed, tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    )


OVIS_IMAGE_7B = PublishedDenoiser(
    "Ovis-Image-7B", "OvisImageTransformer2DModel", {}, 256,
    "inferred: diffusers' class defaults (6 double- and 27 single-stream blocks 3072 wide on Qwen3's 2048-wide text), "
    "which match the 7B name; text: its pipeline's max_sequence_length",
)

FAMILY = Family(
    name="ovis-image",
    denoisers=("OvisImageTransformer2DModel",),
    pipelines=("OvisImagePipeline",),
    attention=flux_style_attention("OvisImageAttention"),
    # Both passes run in cache_context("cond") / ("uncond"): the default Guidance's contexts.
    tiny={"ovis-image": TinyPipeline("OvisImagePipeline", _ovis_image, {"max_sequence_length": MAX_SEQUENCE_LENGTH})},
    # It samples FLUX.1's packed latents as FluxPipeline does (its prepare_latents, sigmas and mu; t / 1000).
    inversion=CapturedFluxInversion(),
    published=(OVIS_IMAGE_7B,),
)
