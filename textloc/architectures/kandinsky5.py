"""Kandinsky 5 (text-to-image): a DiT whose text first runs through text blocks of its own, then
reaches the image through the cross-attention of every visual block
(``diffusers/models/transformers/transformer_kandinsky.py``).

How text enters: Qwen2.5-VL's tokens (``encoder_hidden_states``) are embedded and rewritten by
``text_transformer_blocks``, text-only self-attention whose inputs and gates are modulated by the
time embedding (``Kandinsky5TransformerEncoderBlock.forward``: ``self.text_modulation(time_embed)``):
their K/V depend on the step, not on the prompt alone. Each ``visual_transformer_blocks.N`` then
reads that text through its ``cross_attention`` (``encoder_hidden_states=text_embed``), whose K/V
are as step-dependent. Both are ``joint`` units (a text stream rewritten by time-modulated blocks,
recorded per step), never ``cross`` or ``refiner`` (cached once per prompt, which would be wrong).
The projections are ``to_query``/``to_key``/``to_value``/``out_layer``; no mask reaches an
attention. CLIP's pooled vector joins the time embedding through ``pooled_text_embeddings``
(``time_embed + self.pooled_text_embeddings(pooled_text_embed)``): that module's output is the
pooled unit.

CFG: two plain denoiser calls a step, the conditional one first, with no ``cache_context``
(``pipeline_kandinsky_t2i.py``: ``self.transformer(encoder_hidden_states=prompt_embeds_qwen, ...)``,
then ``negative_prompt_embeds_qwen`` when ``self.guidance_scale > 1.0``). The pipeline has no
``do_classifier_free_guidance`` and passes no CFG flag to ``encode_prompt``: the spec reads
``guidance_scale`` as the loop does (above 1 the pipeline always encodes a negative prompt, ""
by default). The denoiser gets the scheduler's timestep and channels-last latents
``(batch, 1, height, width, channels)``.

Each ``encode_prompt`` call pads its text to its longest prompt and the transformer masks nothing,
so in a call of prompts of different token lengths the shorter rows attend to padding and are not
their own images: textloc refuses such a call in one line, as it does a source of another length.

The tiny pipeline: a stock ``Kandinsky5T2IPipeline`` of 2 text and 2 visual blocks of 2 heads, a
2-layer Qwen2.5-VL behind a byte-level tokenizer whose vocabulary holds the words of the
pipeline's system prompt whole (so the 40 tokens it drops are the real template's), a 2-layer
CLIP, and an 8x autoencoder (the pipeline fixes its scale factor at 8).
"""

from __future__ import annotations

import re
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import CapturedInversion, vae_decoding, vae_encoding
from textloc.architectures.qwenimage import qwen25_vl_encoder, qwen_tokenizer
from textloc.architectures.spec import AttentionRule, Family, Guidance, Projection, PublishedDenoiser, TextRoute, TinyPipeline

# Kandinsky5T2IPipeline.prompt_template (set in its __init__): the 40 tokens before the prompt are dropped.
TEMPLATE = (
    "<|im_start|>system\nYou are a prompt engineer. Describe the image by detailing the color, shape, size, "
    "texture, quantity, text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>"
)
# _encode_prompt_clip pads CLIP's tokens to 77, whatever its tokenizer's own length.
_CLIP_LENGTH = 77

# Text-only K/V from a text stream the timestep modulates (see above); a LoRA on the layer trains
# its four projections, by their own names.
_TEXT = TextRoute(
    "joint", Projection("to_key"), Projection("to_value"), lora_targets=("to_query", "to_key", "to_value", "out_layer"),
)


def _guidance_on(pipe: Any) -> bool:
    """Whether the running call makes its unconditional pass: the loop's own test is
    ``self.guidance_scale > 1.0 and negative_prompt_embeds_qwen is not None``, and above 1 the
    pipeline always has negative embeddings (it encodes "" when given none)."""
    return pipe.guidance_scale > 1.0


def _check_text(encoded: tuple) -> None:
    """Refuse a call whose prompts have different token lengths: ``encode_prompt`` returns the
    Qwen embeddings padded to the longest, CLIP's pooled vectors and each prompt's cumulative
    length, and the transformer attends to the padding."""
    lengths = encoded[2].diff()
    if (lengths != lengths[0]).any():
        raise ValueError(
            f"Kandinsky 5 pads a call's prompts ({lengths.tolist()} text tokens) to the longest and masks nothing, so a "
            "shorter row is not its own image: textloc runs it only on prompts of one token length (run others one at "
            "a time; a source prompt must have the token length of the prompt it patches)."
        )


def _kandinsky5(seed: int) -> dict[str, Any]:
    """Keyword arguments of ``Kandinsky5T2IPipeline``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Kandinsky5Transformer3DModel

    system = TEMPLATE.split("<|im_end|>")[0].removeprefix("<|im_start|>")
    tokenizer = qwen_tokenizer(re.findall(r" ?[A-Za-z]+", system) + ["user"])
    clip_tokenizer = parts.clip_tokenizer()
    latent_channels = 4
    transformer = parts.init(
        seed,
        Kandinsky5Transformer3DModel,
        in_visual_dim=latent_channels,
        out_visual_dim=latent_channels,
        in_text_dim=parts.TEXT_WIDTH,
        in_text_dim2=parts.TEXT_WIDTH,
        time_dim=32,
        patch_size=(1, 2, 2),  # the pipeline's rope positions assume 2x2 patches
        model_dim=32,
        ff_dim=64,
        num_text_blocks=2,
        num_visual_blocks=2,
        axes_dims=(4, 6, 6),  # sums to the head size, 16: 2 heads
    )
    # Every modulation starts at zero (Kandinsky5Modulation.__init__): gates of 0 would leave the
    # random model blind to its text. Drawn like any linear layer, from the same seeded RNG.
    for module in transformer.modules():
        if type(module).__name__ == "Kandinsky5Modulation":
            module.out_layer.reset_parameters()
    # Three downsamples: the pipeline takes its VAE to downsample 8x, whatever it is. FLUX's scaling
    # and shift, as the real one (whose shift the pipeline does not apply).
    vae = parts.autoencoder_kl(
        seed, latent_channels, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=qwen25_vl_encoder(seed, tokenizer),
        tokenizer=tokenizer,
        text_encoder_2=parts.clip_text_encoder(seed, clip_tokenizer, parts.TEXT_WIDTH, length=_CLIP_LENGTH),
        tokenizer_2=clip_tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def _small_sizes(pipe: Any) -> None:
    # The pipeline snaps every size to the nearest aspect ratio of its list (1024x1024 its one
    # square): the tiny one's square is the small size.
    pipe.resolutions = [(parts.IMAGE_SIZE, parts.IMAGE_SIZE)]


class _Kandinsky5Inversion(CapturedInversion):
    """Flow inversion of Kandinsky 5 (text to image), as ``Kandinsky5T2IPipeline.__call__`` samples:
    the VAE's latents times ``scaling_factor``, unshifted (it decodes ``latents / scaling_factor``,
    whatever shift its VAE's config names), channels last with a frame axis, ``(batch, 1, height,
    width, channels)``, noise in the transformer's dtype, every size snapped to its list of
    resolutions; the scheduler's own timesteps (its static shift); the denoiser takes ``t`` and
    predicts the velocity (from the capture)."""

    def size_multiple(self, pipe: Any) -> int:
        return pipe.vae_scale_factor_spatial * 2  # its rotary positions count 2x2 latent patches

    def generated_size(self, pipe: Any, height: int, width: int) -> tuple[int, int]:
        import numpy as np

        # __call__ runs a (width, height) not in its resolutions at the one of the nearest aspect ratio.
        if (width, height) not in pipe.resolutions:
            width, height = pipe.resolutions[np.argmin([abs(w / h - width / height) for w, h in pipe.resolutions])]
        return height, width

    def encode_image(self, pipe, pixels, generators=None):
        latents = vae_encoding(pipe.vae, pixels, generators) * pipe.vae.config.scaling_factor
        return latents.permute(0, 2, 3, 1)[:, None]

    def decode_sample(self, pipe, sample, height, width):
        return vae_decoding(pipe.vae, sample[:, 0].permute(0, 3, 1, 2) / pipe.vae.config.scaling_factor)


KANDINSKY_5_T2I_LITE = PublishedDenoiser(
    "Kandinsky 5.0 T2I Lite", "Kandinsky5Transformer3DModel",
    {
        "in_visual_dim": 16, "out_visual_dim": 16, "model_dim": 2560, "ff_dim": 10240, "num_visual_blocks": 50,
        "axes_dims": (32, 48, 48),
    },
    512, "inferred: 2 text and 50 visual blocks 2560 wide (a port's reading of the checkpoint) on Qwen2.5-VL-7B's "
    "3584-wide text, the rest diffusers' class defaults; text: the pipeline's max_sequence_length (prompts pad to the longest)",
)

FAMILY = Family(
    name="kandinsky5",
    denoisers=("Kandinsky5Transformer3DModel",),
    pipelines=("Kandinsky5T2IPipeline",),
    attention=(
        AttentionRule("Kandinsky5Attention", _TEXT, where="text_transformer_blocks.*.self_attention"),
        AttentionRule("Kandinsky5Attention", _TEXT, where="visual_transformer_blocks.*.cross_attention"),
    ),
    guidance=Guidance(call_order=("cond", "uncond"), enabled=_guidance_on),
    check_text=_check_text,
    refuses={
        "train_lora": "its transformer masks no padding, so a training batch of captions of different token lengths "
        "would condition the shorter ones on padding (the objective could encode its images: as its inversion does)",
    },
    inversion=_Kandinsky5Inversion(),
    pooled="pooled_text_embeddings",
    # Its image pipelines return KandinskyImagePipelineOutput(image=...), where every other family's
    # output has images.
    image_outputs={"KandinskyImagePipelineOutput": "image"},
    tiny={"kandinsky5": TinyPipeline("Kandinsky5T2IPipeline", _kandinsky5, {}, _small_sizes)},
    published=(KANDINSKY_5_T2I_LITE,),
)
