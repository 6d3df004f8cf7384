"""Qwen-Image 2.1: a single-stream DiT of block-causal attention. Each block runs one attention over
``[text, image]`` through shared ``to_q``/``to_k``/``to_v``: the text first, each text token
attending only to the text before it, the image to all the text and itself. With the transformer's
``causal_condition`` (its published config) the text is modulated as at t = 0, so at every layer
its K/V depend on the prompt alone, never on the step or the image: a ``prefix`` layer,
step-independent (recorded once, a prompt injected directly). A call's text is Qwen3-VL's, padded to
its longest prompt (the padding masked as keys); the image's rotary positions start after the
padded text, so a shorter prompt's image changes with the prompts it is batched with: textloc runs
it on prompts of one token length (the mask then ``None``), from sources of that length, and refuses
anything else in one line.

The pipeline caches that text K/V at step 0 (``use_kv_cache=True``, its default): its later calls
hold the image tokens alone and read the step-0 K/V from the cache, so a patch or a record could
not act at those steps (nor a step window end before the last). textloc calls the pipeline with
``use_kv_cache=False``, where every step computes the same text K/V again (the images equal the
cached run's up to rounding), and refuses a hooked call that passes a KV cache.

CFG: true CFG only (``true_cfg_scale`` > 1 and a negative prompt, off by default: the model is
sampled without guidance): a conditional then an unconditional pass, inside
``cache_context("cond")`` and ``cache_context("uncond")``; each pass pads its own text. The
pipeline encodes a negative prompt once, not per prompt: with CFG, a batch of prompts needs a list
of negative prompts as long. The denoiser gets ``t / 1000`` and predicts every token of the
sequence, text included; the pipeline keeps the image's. Image-conditioned calls (condition-image
tokens inside the text) are refused. Qwen-Image-2.1-Turbo's denoiser is the same class (served where
it runs in this pipeline); diffusers ships Turbo as modular blocks, which are no plain pipeline call.

The tiny pipeline: a stock ``QwenImage21Pipeline`` with 2 blocks of 2 heads, a 2-layer Qwen3-VL
behind Qwen-Image's tiny byte-level tokenizer (the system prompt's words whole, so the dropped
system turn is the real template's), a text-only Qwen3-VL processor (its video processor needs
torchvision), and a 16x RGBA autoencoder of 5 blocks.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import CapturedInversion, resolution_shift
from textloc.architectures.qwenimage import decoded_frame, normalised_frame, qwen_tokenizer
from textloc.architectures.spec import PREFIX, AttentionRule, Family, PublishedDenoiser, TinyPipeline, Training

# QwenImage21Pipeline.sys_prompt: its system turn is dropped from the text the denoiser reads.
SYSTEM_PROMPT = "Comprehend and analyze the provided prompt."
# Qwen3-VL's chat template, for a turn whose content is a string or a list of text items.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _text_length(args: tuple, kwargs: Mapping[str, Any]) -> int:
    if kwargs.get("kv_cache") is not None:
        raise ValueError(
            "QwenImage21Pipeline computes its text K/V once, at step 0, and reuses them (use_kv_cache=True): "
            "textloc records and patches them at every step; call the pipeline with use_kv_cache=False."
        )
    text = kwargs["encoder_hidden_states"]
    if kwargs.get("encoder_hidden_states_mask") is not None:
        lengths = kwargs["encoder_hidden_states_mask"].sum(1).tolist()
        raise ValueError(
            f"Qwen-Image 2.1 pads a call's prompts ({lengths} text tokens) to the longest and places the image after the "
            "padding, so a shorter row is not its own image: textloc runs it only on prompts of one token length (run "
            "others one at a time; a source prompt must have the token length of the prompt it patches)."
        )
    if bool(kwargs["img_mask"][:, : text.shape[1]].any()):
        raise ValueError(
            "This Qwen-Image 2.1 call interleaves condition-image tokens with its text: textloc patches its "
            "text-to-image calls only (no image=)."
        )
    return text.shape[1]


def _check_run(pipe: Any) -> None:
    if not pipe.transformer.config.causal_condition:
        raise ValueError(
            "This Qwen-Image 2.1 transformer has causal_condition=False: its text is modulated by the step, which its "
            "spec (prefix layers, step-independent) does not follow; textloc serves causal_condition=True, as published."
        )


@functools.cache
def _text_only_processor_class() -> type:
    from transformers import Qwen3VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class TextOnlyQwen3VLProcessor(Qwen3VLProcessor):
        """Qwen3-VL's processor with its tokenizer alone: text-to-image passes no image or video,
        and its video processor cannot be built without torchvision."""

        def __init__(self, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any):
            ids = tokenizer.convert_tokens_to_ids
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id, self.video_token_id = ids(self.image_token), ids(self.video_token)
            ProcessorMixin.__init__(self, tokenizer, chat_template=chat_template, **kwargs)
            self.vision_start_token, self.vision_end_token = "<|vision_start|>", "<|vision_end|>"
            self.vision_start_token_id, self.vision_end_token_id = ids(self.vision_start_token), ids(self.vision_end_token)

    return TextOnlyQwen3VLProcessor


def _qwen3_vl_encoder(seed: int, tokenizer: Any, layers: int = 2) -> Any:
    """A tiny Qwen3-VL (its vision tower built, never run) of ``layers`` text layers."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=parts.TEXT_WIDTH,
            intermediate_size=2 * parts.TEXT_WIDTH,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=parts.TEXT_WIDTH // 2,
            max_position_embeddings=2048,
            # Sections of the half head size, interleaved over (time, height, width) as in Qwen3-VL.
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
            bos_token_id=None,
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            depth=1, hidden_size=16, intermediate_size=16, num_heads=2, patch_size=2, temporal_patch_size=1,
            spatial_merge_size=1, out_hidden_size=parts.TEXT_WIDTH, num_position_embeddings=16, deepstack_visual_indexes=[],
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return parts.init(seed, Qwen3VLForConditionalGeneration, config)


def _qwen_image21(seed: int) -> dict[str, Any]:
    """Keyword arguments of ``QwenImage21Pipeline``."""
    from diffusers import AutoencoderKLQwenImage21, FlowMatchEulerDiscreteScheduler, QwenImage21Transformer2DModel

    z_dim = 4
    words = re.findall(r" ?[A-Za-z]+", SYSTEM_PROMPT) + ["system", "user", "assistant"]
    tokenizer = qwen_tokenizer(words, chat_template=CHAT_TEMPLATE)
    transformer = parts.init(
        seed,
        QwenImage21Transformer2DModel,
        patch_size=1,  # the pipeline packs latents unpatched
        in_channels=z_dim,
        out_channels=z_dim,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        context_in_dim=parts.TEXT_WIDTH,
        mlp_ratio=2,
        axes_dims_rope=(4, 6, 6),  # sums to the head size
    )
    # The pipeline fixes its VAE's scale at 16: 4 downsampling blocks, 32 px -> 2x2 latents. RGBA, as
    # the real one; latents_mean/std: identity normalisation.
    vae = parts.init(
        seed,
        AutoencoderKLQwenImage21,
        base_dim=8,
        decoder_base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 1, 1, 1, 1],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False] * 4,
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )
    # Qwen-Image 2.1's scheduler config as copies of it give (dynamic exponential shift from `mu`, terminal sigma 0.02).
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192,
        shift_terminal=0.02, time_shift_type="exponential",
    )
    return dict(
        scheduler=scheduler,
        vae=vae,
        text_encoder=_qwen3_vl_encoder(seed, tokenizer),
        processor=_text_only_processor_class()(tokenizer, chat_template=CHAT_TEMPLATE),
        transformer=transformer,
    )


def _image_tokens(output: Any, sample: Any) -> Any:
    # The denoiser predicts every token of [text, image]; the pipeline keeps the image's, the last.
    return output[:, -sample.shape[1]:]


class _QwenImage21Inversion(CapturedInversion):
    """Flow inversion of Qwen-Image 2.1, as ``QwenImage21Pipeline.__call__`` samples (text to image):
    its RGBA video autoencoder's one-frame latents of the image, opaque, normalised by its per-channel
    mean and std and flattened into tokens (unpatched), its noise drawn in the prompt embeddings'
    dtype; its configured ``sample_sigmas`` or linspace sigmas, shifted by the token count; ``t /
    1000``, the velocity as it is, the image's tokens of the prediction (its :class:`Training`)."""

    def size_multiple(self, pipe: Any) -> int:
        return pipe.vae_scale_factor * 2  # its check_inputs

    def encode_image(self, pipe, pixels, generators=None):
        import torch

        if pipe.vae.config.in_channels == 4:  # RGBA: the image opaque, as the pipeline makes its condition images
            pixels = torch.cat([pixels, torch.ones_like(pixels[:, :1])], dim=1)
        latents = normalised_frame(pipe, pixels, generators)
        return pipe._pack_latents(latents, *latents.shape)

    def decode_sample(self, pipe, sample, height, width):
        return decoded_frame(pipe, pipe._unpack_latents(sample, height, width, pipe.vae_scale_factor))[:, :3]

    def latents_dtype(self, pipe: Any) -> Any:
        return pipe.text_encoder.dtype

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        import numpy as np

        sigmas = pipe.config.sample_sigmas
        if sigmas is None:
            sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = resolution_shift(scheduler, sample.shape[1], max_shift=1.15)
        scheduler.set_timesteps(len(sigmas), device=sample.device, sigmas=sigmas, mu=mu)


QWEN_IMAGE_21 = PublishedDenoiser(
    "Qwen-Image-2.1", "QwenImage21Transformer2DModel", {}, 512,
    "diffusers' class defaults (32 blocks of 32 heads of 128, context 4096, causal_condition), the values of the "
    "transformer config third-party conversions copy (not read from Qwen/Qwen-Image-2.1 itself: inferred); text: "
    "inferred, the pipeline feeds each prompt's own length with no maximum (512 as for Qwen-Image)",
)

FAMILY = Family(
    name="qwenimage21",
    denoisers=("QwenImage21Transformer2DModel",),
    pipelines=("QwenImage21Pipeline",),
    attention=(AttentionRule("QwenImage21Attention", PREFIX),),
    text_length=_text_length,
    check_run=_check_run,
    refuses={
        "train_lora": "it pads a call's prompts to the longest and places the image after the padding, so a training batch "
        "of captions of different token lengths would not be their own images (the objective could encode its images: "
        "as its inversion does)",
    },
    training=Training(prediction=_image_tokens),
    inversion=_QwenImage21Inversion(),
    call_defaults={"use_kv_cache": False},
    # At its default guidance (none): the pipeline encodes one negative prompt for a whole batch of prompts.
    tiny={"qwenimage21": TinyPipeline("QwenImage21Pipeline", _qwen_image21)},
    published=(QWEN_IMAGE_21,),
)
