"""HiDream-I1: a DiT of double-stream blocks, whose text stream has projections of its own
(``to_k_t``/``to_v_t``, joint), then single-stream blocks that read ``[image, text]`` through one
set: text **after** the image. Its text is T5's tokens, then two Llama layers' (the last, and one
per block): ``encoder_hidden_states_t5`` plus twice ``encoder_hidden_states_llama3``'s tokens, with
no mask. Every block modulates the text by the timestep and the pooled CLIP vectors: step-dependent.

CFG: one batch ``[uncond, cond]``, from the pipeline's ``do_classifier_free_guidance``. The
denoiser takes ``timesteps=`` (0..1000) and the pipeline negates its prediction.

The tiny pipeline: a stock ``HiDreamImagePipeline`` of 2 double and 2 single blocks of 2 heads with
mixture-of-experts feed-forwards, two CLIPs (pooled vectors), a byte-level T5 and a 2-layer Llama
behind a byte-level tokenizer with Llama 3's ``<|begin_of_text|>``, and a VAE that does not
downsample. The pipeline rescales every size to ``default_sample_size`` (fixed by its constructor
at 128): the tiny one's is set to 32 px, whose 32x32 latents make 16 image tokens in 8x8 patches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import CapturedInversion
from textloc.architectures.spec import TEXT_LAST, AttentionRule, DenoiserSignature, Family, Projection, PublishedDenoiser, TextRoute, TinyPipeline, Training

PATCH_SIZE = 8
_LATENT_SIDE = 128  # the largest latent side the tiny transformer's positions cover
LLAMA_LAYERS = [0, 1, 1, 1]  # one Llama hidden state per block: 2 double + 2 single (the real: 16 + 32 of 32 layers)
CLIP_WIDTHS = (parts.TEXT_WIDTH, parts.TEXT_WIDTH // 2)  # pooled: 32 + 16 = 48 (the real: 768 + 1280)


def llama3_tokenizer() -> Any:
    """Llama 3's byte-level BPE with no merges (one token per byte), ``<|begin_of_text|>`` first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    vocab = {bos: 0, eos: 1}
    for char in parts.byte_characters().values():
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 0)]
    )
    # The pipeline sets pad_token = eos_token itself (pipeline __init__).
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, model_max_length=parts.TEXT_LENGTH
    )


def _llama_encoder(seed: int, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    # One layer per listed index: the pipeline stacks hidden_states[1:]. It asks for
    # output_attentions=True, which sdpa cannot return.
    config = parts.decoder_config(
        LlamaConfig, tokenizer, max(LLAMA_LAYERS) + 1, 2 * parts.TEXT_LENGTH,
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.eos_token_id, attn_implementation="eager",
    )
    return parts.init(seed, LlamaForCausalLM, config)


def _hidream(seed: int) -> dict[str, Any]:
    """Keyword arguments of ``HiDreamImagePipeline``."""
    from diffusers import HiDreamImageTransformer2DModel, UniPCMultistepScheduler
    from transformers import CLIPTextModelWithProjection

    latent_channels = 4
    clip_tokenizer, clip_tokenizer_2 = parts.clip_tokenizer(), parts.clip_tokenizer()
    t5_tokenizer = parts.t5_tokenizer()
    llama_tokenizer = llama3_tokenizer()
    transformer = parts.init(
        seed,
        HiDreamImageTransformer2DModel,
        patch_size=PATCH_SIZE,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        caption_channels=[parts.TEXT_WIDTH, parts.TEXT_WIDTH],  # [T5 width, Llama width]
        text_emb_dim=sum(CLIP_WIDTHS),
        num_routed_experts=4,
        num_activated_experts=2,
        axes_dims_rope=(8, 4, 4),  # sums to the head size: RoPE on all of it
        max_resolution=(_LATENT_SIDE, _LATENT_SIDE),  # in latents (vae_scale_factor 1)
        llama_layers=LLAMA_LAYERS,
    )
    # One block: vae_scale_factor = 2 ** (len(block_out_channels) - 1) = 1. No mid-block attention
    # (it would attend over 128 x 128 positions). The pipeline uses shift_factor: it must be set.
    vae = parts.autoencoder_kl(
        seed,
        latent_channels,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        mid_block_add_attention=False,
        sample_size=parts.IMAGE_SIZE,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    return dict(
        # HiDream-I1-Full's scheduler (dev / fast ship FlowMatchEulerDiscreteScheduler).
        scheduler=UniPCMultistepScheduler(
            flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction", num_train_timesteps=1000
        ),
        vae=vae,
        text_encoder=parts.clip_text_encoder(seed, clip_tokenizer, CLIP_WIDTHS[0], CLIPTextModelWithProjection),
        tokenizer=clip_tokenizer,
        text_encoder_2=parts.clip_text_encoder(seed, clip_tokenizer_2, CLIP_WIDTHS[1], CLIPTextModelWithProjection),
        tokenizer_2=clip_tokenizer_2,
        text_encoder_3=parts.t5_encoder(seed, t5_tokenizer),
        tokenizer_3=t5_tokenizer,
        text_encoder_4=_llama_encoder(seed, llama_tokenizer),
        tokenizer_4=llama_tokenizer,
        transformer=transformer,
    )


def _text_length(args: tuple, kwargs: Mapping[str, Any]) -> int:
    # T5's tokens, the last Llama layer's and the block's own Llama layer's.
    return kwargs["encoder_hidden_states_t5"].shape[1] + 2 * kwargs["encoder_hidden_states_llama3"].shape[2]


def _unpatchified(output: Any, sample: Any) -> Any:
    """The transformer's prediction in its sample's layout: in training mode (its trainer's layout;
    eval mode's experts run under no_grad) it returns its p x p patches as B x C x tokens x p²."""
    if output.shape == sample.shape:
        return output
    batch, channels, height, width = sample.shape
    patch = math.isqrt(output.shape[-1])
    patches = output.reshape(batch, channels, height // patch, width // patch, patch, patch)
    return patches.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, height, width)


def _small(pipe: Any) -> None:
    pipe.default_sample_size = parts.IMAGE_SIZE // pipe.vae_scale_factor


class _HiDreamInversion(CapturedInversion):
    """Flow inversion of HiDream-I1, as ``HiDreamImagePipeline.__call__`` samples: the VAE's latents,
    scaled and shifted, not packed (the transformer patchifies them), its noise drawn in the pooled
    CLIP vectors' dtype, every size rescaled to the default area; the negated velocity is its
    :class:`Training`'s. A scheduler other than FlowMatchEuler (I1-Full's UniPC, of flow sigmas) is
    inverted and sampled with FlowMatchEuler of its config, as Sana's DPM-Solver is."""

    def size_multiple(self, pipe: Any) -> int:
        # __call__ rounds sizes to 2 latents; the transformer's patches must tile them (the real ones are 2x2).
        return pipe.vae_scale_factor * math.lcm(2, pipe.transformer.config.patch_size)

    def generated_size(self, pipe: Any, height: int, width: int) -> tuple[int, int]:
        # __call__ scales every requested size to the area of its default_sample_size, rounded down to its division.
        division = pipe.vae_scale_factor * 2
        scale = math.sqrt((pipe.default_sample_size * pipe.vae_scale_factor) ** 2 / (width * height))
        return int(height * scale // division * division), int(width * scale // division * division)

    def latents_dtype(self, pipe: Any) -> Any:
        return pipe.text_encoder.dtype

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        from diffusers.pipelines.hidream_image.pipeline_hidream_image import calculate_shift

        # mu from the transformer's largest sequence, with FLUX's defaults, not the scheduler's config.
        scheduler.set_timesteps(num_inference_steps, device=sample.device, mu=calculate_shift(pipe.transformer.max_seq))


# Double-stream blocks: the text stream's own K/V projections; a LoRA trains the image stream.
_TEXT_STREAM = TextRoute("joint", Projection("to_k_t"), Projection("to_v_t"), lora_targets=("to_q", "to_k", "to_v", "to_out"))

HIDREAM_I1 = PublishedDenoiser(
    "HiDream-I1", "HiDreamImageTransformer2DModel",
    {
        "in_channels": 16, "out_channels": 16, "patch_size": 2, "axes_dims_rope": (64, 32, 32),
        "caption_channels": (4096, 4096), "llama_layers": (*range(32), *(31,) * 16),
    },
    256, "HiDream-I1 transformer/config.json; text: 128 T5 + 128 Llama-3.1 tokens",
)

FAMILY = Family(
    name="hidream",
    denoisers=("HiDreamImageTransformer2DModel",),
    pipelines=("HiDreamImagePipeline",),
    attention=(
        AttentionRule("HiDreamAttention", TEXT_LAST, when="single"),
        AttentionRule("HiDreamAttention", _TEXT_STREAM),
    ),
    signature=DenoiserSignature(timestep="timesteps"),
    text_length=_text_length,
    # The pooled CLIP-L and CLIP-G vectors (pooled_embeds) join the timestep embedding.
    pooled="p_embedder",
    # HiDreamImagePipeline steps its scheduler with the negated prediction.
    training=Training(prediction_sign=-1.0, prediction=_unpatchified),
    inversion=_HiDreamInversion(),
    tiny={"hidream": TinyPipeline("HiDreamImagePipeline", _hidream, {"guidance_scale": 5.0}, _small)},
    published=(HIDREAM_I1,),
)
