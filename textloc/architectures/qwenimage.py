"""Qwen-Image: an MMDiT of double-stream blocks whose text stream has its own projections
(``add_k_proj``/``add_v_proj``, joint attention), rewritten by every block, so its K/V depend on
the step. The text is Qwen2.5-VL's, padded per call to the call's longest prompt, with a
``(batch, text)`` keep-mask the attention takes as ``encoder_hidden_states_mask``: ``None`` when no
token is padding (a single prompt). The engine treats ``None`` as all-valid and swaps a patched
row's mask for its source's, so a source of another length or padding is patched with its own mask.

CFG: true CFG only (``true_cfg_scale`` > 1 and a negative prompt): a conditional then an
unconditional pass, inside ``cache_context("cond")`` and ``cache_context("uncond")``; each pass pads
its own text. The denoiser gets ``t / 1000``.

The tiny pipeline: a stock ``QwenImagePipeline`` with 2 double-stream blocks of 2 heads, a 2-layer
Qwen2.5-VL behind a byte-level tokenizer whose vocabulary holds the words of the pipeline's system
prompt whole (so the 34 tokens it drops are the real template's) and one token per byte otherwise.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import (
    Inversion, encode_prompt, set_shifted_linspace_timesteps, vae_decoding, vae_encoding,
)
from textloc.architectures.spec import JOINT, AttentionRule, Family, PublishedDenoiser, TinyPipeline

# QwenImagePipeline.prompt_template_encode (set in its __init__): 34 tokens up to the prompt are dropped.
TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
TEMPLATE_SUFFIX = 5  # <|im_end|> \n <|im_start|> assistant \n, kept after the prompt
# The pipeline slices the text it hands the transformer (after the drop) to max_sequence_length.
MAX_SEQUENCE_LENGTH = parts.TEXT_LENGTH + TEMPLATE_SUFFIX

_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]



def qwen_tokenizer(words: list[str], chat_template: str | None = None, length: int = 2048) -> Any:
    """Qwen's byte-level BPE (its pre-tokenizer: a word with its leading space is one piece) with a
    vocabulary of the 256 byte characters plus ``words``, no merges, and ``ignore_merges``: a piece
    that is a whole vocabulary word is one token, any other piece one token per byte. Unlike merges
    (which would also build prefixes such as " re" or " c" inside prompt words), only whole words
    match: " the" is one token, " there" five."""
    from tokenizers.models import BPE
    from transformers import Qwen2Tokenizer

    byte_chars = parts.byte_characters()
    vocab: dict[str, int] = {_SPECIAL_TOKENS[0]: 0}
    for char in byte_chars.values():
        vocab[char] = len(vocab)
    for word in words:
        vocab.setdefault("".join(byte_chars[b] for b in word.encode()), len(vocab))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=length, chat_template=chat_template)
    tokenizer.backend_tokenizer.model = BPE(
        vocab=vocab,
        merges=[],
        ignore_merges=True,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        byte_fallback=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": _SPECIAL_TOKENS[1:]})
    return tokenizer


def system_prompt_tokenizer() -> Any:
    """The byte-level tokenizer that splits the Qwen-Image (and HunyuanImage) system prompt as the real one does."""
    system = TEMPLATE.split("<|im_end|>")[0].removeprefix("<|im_start|>")
    return qwen_tokenizer(re.findall(r" ?[A-Za-z]+", system) + ["user", "assistant"])


def qwen25_vl_encoder(seed: int, tokenizer: Any, layers: int = 2) -> Any:
    """A tiny Qwen2.5-VL (its vision tower built, never run) of ``layers`` text layers."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        # Qwen-Image reads hidden_states[-1], HunyuanImage hidden_states[-3].
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=parts.TEXT_WIDTH,
            intermediate_size=2 * parts.TEXT_WIDTH,
            num_hidden_layers=layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            bos_token_id=None,
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        ),
        # The vision tower is built but never run (text-to-image passes no pixels).
        vision_config=dict(
            depth=1,
            hidden_size=16,
            intermediate_size=16,
            num_heads=2,
            out_hidden_size=parts.TEXT_WIDTH,
            patch_size=2,
            temporal_patch_size=1,
            spatial_merge_size=1,
            window_size=4,
            fullatt_block_indexes=[0],
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return parts.init(seed, Qwen2_5_VLForConditionalGeneration, config)


def _qwen_image_vae(seed: int, z_dim: int) -> Any:
    from diffusers import AutoencoderKLQwenImage

    # One spatial downsample: vae_scale_factor = 2 ** len(temperal_downsample) = 2, 32 px -> 16x16
    # latents -> 8x8 packed 2x2 tokens. latents_mean/std: identity normalisation.
    return parts.init(
        seed,
        AutoencoderKLQwenImage,
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 2],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False],
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )


def _scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    # Qwen-Image's scheduler config (dynamic exponential shift from `mu`, terminal sigma 0.02).
    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )


def _qwen_image(seed: int) -> dict[str, Any]:
    """Keyword arguments of ``QwenImagePipeline``."""
    from diffusers import QwenImageTransformer2DModel

    z_dim = 4
    tokenizer = system_prompt_tokenizer()
    transformer = parts.init(
        seed,
        QwenImageTransformer2DModel,
        patch_size=2,
        in_channels=4 * z_dim,  # the pipeline packs 2x2 latent patches
        out_channels=z_dim,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=parts.TEXT_WIDTH,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),  # sums to the head size
    )
    return dict(
        scheduler=_scheduler(),
        vae=_qwen_image_vae(seed, z_dim),
        text_encoder=qwen25_vl_encoder(seed, tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    )


def _mean_std(pipe: Any, like: Any) -> tuple[Any, Any]:
    import torch

    config = pipe.vae.config
    shape = (1, config.z_dim, 1, 1, 1)
    mean = torch.tensor(config.latents_mean).view(shape).to(like.device, like.dtype)
    return mean, torch.tensor(config.latents_std).view(shape).to(like.device, like.dtype)


def normalised_frame(pipe: Any, pixels: Any, generators: Any = None) -> Any:
    """The video autoencoder's latents of ``pixels`` as one frame, normalised by its per-channel mean
    and std (a pipeline of it, Qwen-Image or NucleusMoE-Image, decodes ``latents * std + mean``):
    B x C x h x w, before packing."""
    latents = vae_encoding(pipe.vae, pixels[:, :, None], generators)  # one frame: B x C x 1 x h x w
    mean, std = _mean_std(pipe, latents)
    return ((latents - mean) / std)[:, :, 0]


def decoded_frame(pipe: Any, latents: Any) -> Any:
    """Pixels of one frame's normalised latents (B x C x 1 x h x w), as a pipeline of the video
    autoencoder decodes them: ``latents * std + mean``, then the frame of its decoding."""
    mean, std = _mean_std(pipe, latents)
    return vae_decoding(pipe.vae, latents * std + mean)[:, :, 0]


class _QwenImageInversion(Inversion):
    """Flow inversion of Qwen-Image, as ``QwenImagePipeline.__call__`` samples: a video autoencoder
    (one frame) whose latents are normalised by its per-channel mean and std, packed 2x2 into tokens."""

    flow = True

    def size_multiple(self, pipe: Any) -> int:
        # Latents are packed 2x2 into tokens (the pipeline resizes other sizes behind the caller's back).
        return pipe.vae_scale_factor * 2

    def encode_image(self, pipe, pixels, generators=None):
        latents = normalised_frame(pipe, pixels, generators)
        return pipe._pack_latents(latents, *latents.shape)

    def decode_sample(self, pipe, sample, height, width):
        return decoded_frame(pipe, pipe._unpack_latents(sample, height, width, pipe.vae_scale_factor))

    def latents_dtype(self, pipe):
        return pipe.text_encoder.dtype  # the pipeline draws its noise in the prompt embeddings' dtype

    def conditioning(self, pipe, prompts, arguments, height, width):
        import torch

        prompt_embeds, mask = encode_prompt(pipe, prompts, arguments)
        guidance = None
        if pipe.transformer.config.guidance_embeds:
            # A guidance-distilled checkpoint takes the scale as an input, not as CFG: the regeneration's.
            guidance = torch.full([len(prompts)], arguments["guidance_scale"], device=prompt_embeds.device, dtype=torch.float32)
        image_shape = (1, height // pipe.vae_scale_factor // 2, width // pipe.vae_scale_factor // 2)
        return {
            "encoder_hidden_states": prompt_embeds,
            "encoder_hidden_states_mask": mask,
            "guidance": guidance,
            "img_shapes": [[image_shape]] * len(prompts),
        }

    def predict(self, pipe, sample, timestep, conditioning):
        timestep = timestep.expand(sample.shape[0]).to(sample.dtype) / 1000
        return pipe.transformer(hidden_states=sample, timestep=timestep, **conditioning, return_dict=False)[0]

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        set_shifted_linspace_timesteps(scheduler, num_inference_steps, sample)


# Its text keep-mask reaches the attention as encoder_hidden_states_mask, None when nothing is padded.
_QWEN_JOINT = dataclasses.replace(JOINT, text_mask="encoder_hidden_states_mask")

QWEN_IMAGE = PublishedDenoiser(
    "Qwen-Image", "QwenImageTransformer2DModel", {}, 512,
    "diffusers' class defaults, which are Qwen-Image's; text: its pipeline's max_sequence_length (prompts pad to the longest)",
)

FAMILY = Family(
    name="qwenimage",
    denoisers=("QwenImageTransformer2DModel",),
    pipelines=("QwenImagePipeline", "QwenImageImg2ImgPipeline"),
    attention=(AttentionRule("Attention", _QWEN_JOINT, when="add_q_proj"),),
    tiny={
        "qwenimage": TinyPipeline(
            "QwenImagePipeline", _qwen_image,
            # guidance_scale is for guidance-distilled checkpoints only; CFG is true CFG.
            {"guidance_scale": None, "true_cfg_scale": 4.0, "negative_prompt": " ", "max_sequence_length": MAX_SEQUENCE_LENGTH},
        ),
    },
    published=(QWEN_IMAGE,),
    inversion=_QwenImageInversion(),
)
