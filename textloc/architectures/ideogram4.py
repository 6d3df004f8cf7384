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
from textloc.architectures.inversion import CapturedInversion, vae_decoding, vae_encoding
from textloc.architectures.spec import TEXT_FIRST, AttentionRule, Family, Guidance, PublishedDenoiser, TinyPipeline, Training
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


def _ahead_of_image(kwargs: Mapping[str, Any]) -> int:
    # Every row's packed sequence holds max_sequence_length tokens (padding and text) before its image.
    return int((kwargs["indicator"][0] != _IMAGE_TOKEN).sum())


def _text_start(args: tuple, kwargs: Mapping[str, Any]) -> int:
    # The image starts at max_sequence_length in every row; the text ends there.
    return _ahead_of_image(kwargs) - int(_text_lengths(kwargs)[0])


def _reversed_time(scheduler: Any, timestep: Any) -> Any:
    # Ideogram4Pipeline hands its denoiser 1 - t / num_train_timesteps (0 is noise, 1 the image).
    return 1 - timestep / scheduler.config.num_train_timesteps


# Ideogram4Pipeline.__call__: the transformer is handed [zeros where the text sits, latents], at the
# reversed time, its output read after the text, and the scheduler stepped with the negated velocity.
TRAINING = Training(timestep=_reversed_time, prediction_sign=-1.0, sample_start=_ahead_of_image)


def _bn_std(pipe: Any, like: Any) -> tuple[Any, Any]:
    import torch

    mean = pipe.vae.bn.running_mean.view(1, 1, -1).to(like)
    return mean, torch.sqrt(pipe.vae.bn.running_var + pipe.vae.config.batch_norm_eps).view(1, 1, -1).to(like)


def _encode(pipe: Any, pixels: Any, generators: Any = None) -> Any:
    """The latents the pipeline samples, for ``pixels``: the VAE's latents in ``patch_size`` x
    ``patch_size`` tokens, each token's channels in (row, column, channel) order, normalised by the
    VAE's batch-norm statistics (the inverse of what its ``__call__`` decodes)."""
    latents = vae_encoding(pipe.vae, pixels, generators)
    batch, channels, height, width = latents.shape
    patch = pipe.patch_size
    patches = latents.view(batch, channels, height // patch, patch, width // patch, patch).permute(0, 2, 4, 3, 5, 1)
    tokens = patches.reshape(batch, (height // patch) * (width // patch), patch * patch * channels)
    mean, std = _bn_std(pipe, tokens)
    return (tokens - mean) / std


class _Ideogram4Inversion(CapturedInversion):
    """Flow inversion of Ideogram 4, as ``Ideogram4Pipeline.__call__`` samples: its batch-norm
    normalised 2x2 tokens (:func:`_encode`), float32 noise, its resolution-aware logit-normal sigmas;
    the reversed time, the text's zeros ahead of the latents and the negated velocity are its
    :data:`TRAINING`'s. Only the conditional transformer is inverted: its CFG's second model reads no
    text, and a regeneration at ``guidance_scale=1`` weighs it by 0."""

    def size_multiple(self, pipe: Any) -> int:
        return pipe.vae_scale_factor * pipe.patch_size  # its check_inputs

    def encode_image(self, pipe, pixels, generators=None):
        return _encode(pipe, pixels, generators)

    def decode_sample(self, pipe, sample, height, width):
        patch, side = pipe.patch_size, pipe.vae_scale_factor * pipe.patch_size
        mean, std = _bn_std(pipe, sample)
        patches = (sample * std + mean).view(sample.shape[0], height // side, width // side, patch, patch, -1)
        latents = patches.permute(0, 5, 1, 3, 2, 4).reshape(sample.shape[0], -1, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        return vae_decoding(pipe.vae, latents)

    def latents_dtype(self, pipe: Any) -> Any:
        import torch

        return torch.float32

    def conditioning(self, pipe, prompts, arguments, height, width):
        import inspect

        # The schedule below is the one of the default mu and std (set_flow_timesteps sees no call arguments).
        defaults = inspect.signature(pipe.__call__).parameters
        if (arguments["mu"], arguments["std"]) != (defaults["mu"].default, defaults["std"].default):
            raise ValueError("invert follows Ideogram 4's default schedule: call it without mu= and std=.")
        return super().conditioning(pipe, prompts, arguments, height, width)

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        import inspect

        from diffusers.pipelines.ideogram4.pipeline_ideogram4 import _logit_normal_sigmas, _resolution_aware_mu

        # Its logit-normal sigmas, their mean shifted by the image's pixel count (its token count
        # times the pixels of a token), at the pipeline's default mu and std.
        defaults = inspect.signature(pipe.__call__).parameters
        pixels = sample.shape[1] * (pipe.vae_scale_factor * pipe.patch_size) ** 2
        mu = _resolution_aware_mu(height=pixels, width=1, base_mu=defaults["mu"].default)
        sigmas = _logit_normal_sigmas(num_inference_steps, mu, std=defaults["std"].default, device=sample.device)
        scheduler.set_timesteps(sigmas=sigmas.tolist(), device=sample.device)


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
    training=TRAINING,
    inversion=_Ideogram4Inversion(),
    tiny={
        "ideogram4": TinyPipeline(
            "Ideogram4Pipeline", _ideogram4,
            # A constant guidance_scale (set by the tests) excludes the default per-step schedule.
            {"guidance_schedule": None, "max_sequence_length": MAX_SEQUENCE_LENGTH},
        ),
    },
    published=(IDEOGRAM_4,),
)
