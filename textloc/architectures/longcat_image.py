"""LongCat-Image: FLUX.1's layout (``transformer_longcat_image.py``): double-stream blocks whose text
stream has its own projections (``add_k_proj``/``add_v_proj``: joint attention, the text first in
``cat([encoder_query, query])``), then single-stream blocks whose one set of projections reads
``cat([encoder_hidden_states, hidden_states])``: the text first. Both are ``LongCatImageAttention``:
a joint one has ``add_q_proj``, a single-stream one is ``pre_only``. The text is Qwen2.5-VL's last
hidden state of the prompt's tokens alone (the chat template around them is measured with the
tokenizer and sliced off), always padded to ``tokenizer_max_length`` (512) tokens; the denoiser gets
no text mask, so every call holds that many text tokens. No pooled vector: the timestep embedding
reads the timestep alone (``pooled_projection_dim`` is a config field no module uses), and there is
no guidance embedding.

CFG: a conditional then, when ``guidance_scale`` > 1, an unconditional pass, inside
``cache_context("cond")`` and ``cache_context("uncond")`` (``pipeline_longcat_image.py``), each with
its own text (the empty prompt by default). The denoiser gets ``t / 1000``.

The pipeline rewrites the prompt with its text encoder (``enable_prompt_rewrite``, on by default)
before encoding it; textloc calls it with the rewrite off (its spec's ``call_defaults``),
so the text it records and patches is the prompt as given.

The tiny pipeline: a stock ``LongCatImagePipeline`` of 2 double- and 2 single-stream blocks of 2
heads, a 2-layer Qwen2.5-VL behind Qwen-Image's tiny tokenizer, FLUX's autoencoder in small with the
16 latent channels the pipeline draws, its text length (fixed by the constructor) cut to 48, and no
prompt rewriter (``text_processor``: a Qwen2-VL processor needs torchvision for its video part).
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.flux import TINY_TRANSFORMER, CapturedFluxInversion, flux_style_attention
from textloc.architectures.qwenimage import qwen25_vl_encoder, system_prompt_tokenizer
from textloc.architectures.spec import Family, PublishedDenoiser, TinyPipeline

# LongCatImagePipeline draws 16 latent channels whatever its VAE (num_channels_latents = 16) and
# packs 2x2 of them into one token.
_LATENT_CHANNELS = 16


def _longcat_image(seed: int) -> dict[str, Any]:
    """Keyword arguments of ``LongCatImagePipeline``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LongCatImageTransformer2DModel

    # The pipeline measures its template's prefix and suffix with this tokenizer and cuts exactly
    # those tokens off, so any vocabulary keeps the prompt's tokens alone.
    tokenizer = system_prompt_tokenizer()
    transformer = parts.init(seed, LongCatImageTransformer2DModel, **{**TINY_TRANSFORMER, "in_channels": 4 * _LATENT_CHANNELS})
    # FLUX.1's autoencoder (16 channels, its scaling and shift), two blocks: 32 px -> 16x16 latents.
    vae = parts.autoencoder_kl(
        seed, latent_channels=_LATENT_CHANNELS, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=0.3611, shift_factor=0.1159,
    )
    return dict(
        # The pipeline passes a resolution-dependent mu, as FLUX.1-dev's scheduler takes it.
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        vae=vae,
        text_encoder=qwen25_vl_encoder(seed, tokenizer),
        tokenizer=tokenizer,
        text_processor=None,  # only the prompt rewrite uses it, and textloc turns that off
        transformer=transformer,
    )


def _short_text(pipe: Any) -> None:
    # Also where the image's rotary positions start, past the text's.
    pipe.tokenizer_max_length = parts.TEXT_LENGTH


LONGCAT_IMAGE = PublishedDenoiser(
    "LongCat-Image", "LongCatImageTransformer2DModel", {"num_layers": 10, "num_single_layers": 20}, 512,
    "inferred: 10 double- and 20 single-stream blocks (a port's reading of the checkpoint; 6.27B parameters, as published), "
    "the rest diffusers' class defaults; text: the pipeline's tokenizer_max_length",
)

FAMILY = Family(
    name="longcat-image",
    denoisers=("LongCatImageTransformer2DModel",),
    pipelines=("LongCatImagePipeline",),
    attention=flux_style_attention("LongCatImageAttention"),
    # Its pipeline rewrites the prompt with its text encoder, an LLM, by default: the text it encodes
    # would not be the prompt given, nor would two prompts differ only where they do as given.
    call_defaults={"enable_prompt_rewrite": False},
    # CFG passes in cache_context("cond") and cache_context("uncond"): the default Guidance's contexts.
    tiny={"longcat-image": TinyPipeline("LongCatImagePipeline", _longcat_image, {}, _short_text)},
    # It samples FLUX.1's packed latents as FluxPipeline does (its prepare_latents, sigmas and mu; t / 1000).
    inversion=CapturedFluxInversion(),
    published=(LONGCAT_IMAGE,),
)
