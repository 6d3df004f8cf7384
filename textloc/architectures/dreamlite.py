"""DreamLite: a U-Net (``unet_dreamlite.py``, ``DreamLiteUNetModel``, a ``UNet2DConditionModel`` with
depthwise-separable convolutions and grouped-query attention) whose ``attn2`` layers cross-attend to
Qwen3-VL's last hidden states of the prompt, through ``to_k``/``to_v`` of ``encoder_hid_proj``'s
projection of them (the prompt alone: step-independent, ``cross``). Some blocks have no ``attn1``
(``...NoSelfAttn...``): their only attention reads the text.

``encode_prompt`` wraps ``"[Generate]: " + prompt`` in a chat template, drops the template's system
prefix from the hidden states, and pads each call's rows to the longest (here: the prompt, or the
empty negative prompt) with zeros; ``encoder_attention_mask`` marks the padding (the U-Net turns it
into an additive bias over the text keys, the ``attention_mask`` of each ``attn2``). A shorter
source is patched with its mask; a longer one does not fit and is refused.

The pipeline takes one prompt per call (``check_inputs`` refuses a list; ``batch_size`` is fixed at
1, and ``num_images_per_prompt`` > 1 fails in the U-Net's size embedding, whose ``time_ids`` have two
rows): textloc hands it a one-prompt batch as that prompt (``Family.one_prompt``) and refuses a
batch of several in one line.

CFG: always on (no ``do_classifier_free_guidance``: ``__call__`` never tests ``guidance_scale``), one
batch ``[uncond, cond]`` (``encode_prompt(prompts=[negative_prompt, prompt])``, ``noise_pred.chunk(2)``
read as uncond, cond). With ``image=`` (instruction editing) it runs three rows, ``[uncond, image,
text]``, which no two-branch split tells apart: refused as an odd batch. The denoiser takes the
scheduler's ``t`` (1000 is noise) and predicts the flow velocity, on the latents side by side with a
reference image's (zeros in text-to-image) along the width, the right half of its output dropped:
the denoising objective and inversion, which take the sample as the latents alone, do not build
that input, so ``train_lora``, ``denoiser_inputs`` and ``edit_image`` refuse it.

``DreamLiteMobilePipeline`` (the ``dreamlite-mobile`` family, told by its pipeline class) is the
guidance-distilled variant: one conditional row a call, no negative prompt.

The tiny pipeline: a stock ``DreamLitePipeline`` of a two-level ``DreamLiteUNetModel`` (one
cross-only block each way, 7 text layers, two K/V heads for four query heads), a 2-layer
``Qwen3VLForConditionalGeneration`` (its vision tower built, never run) behind a character-level
tokenizer with the chat markers, and a two-block ``AutoencoderTiny``.
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.spec import UNET_ATTENTION, UNET_SIGNATURE, Family, Guidance, PublishedDenoiser, TinyPipeline
from textloc.architectures.z_image import CHARACTERS

# The chat template's system prefix, in characters, is the tiny tokenizer's whole prompt window and more.
_TEXT_POSITIONS = 512
_LATENT_SIDE_BY_SIDE = (
    "its U-Net takes the noisy latents side by side with a reference image's latents (zeros in text-to-image) along "
    "the width and predicts both halves, an input the denoising objective and inversion do not build"
)


def _tokenizer() -> Any:
    """Qwen's byte-level BPE with no merges: one token per character, chat markers one token each."""
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for char in CHARACTERS:
        vocab.setdefault(char, len(vocab))
    return Qwen2Tokenizer(
        vocab=vocab, merges=[], model_max_length=_TEXT_POSITIONS, additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )


def _text_encoder(seed: int, tokenizer: Any) -> Any:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    text_config = parts.decoder_config(
        dict, tokenizer, 2, _TEXT_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    )
    # The vision tower is built but never run (text-to-image passes no pixels).
    vision_config = dict(
        depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=parts.TEXT_WIDTH, patch_size=2,
        temporal_patch_size=1, spatial_merge_size=1, num_position_embeddings=16, deepstack_visual_indexes=[],
    )
    return parts.init(seed, Qwen3VLForConditionalGeneration, Qwen3VLConfig(text_config=text_config, vision_config=vision_config))


def _unet(seed: int) -> Any:
    from diffusers import DreamLiteUNetModel

    return parts.init(
        seed,
        DreamLiteUNetModel,
        sample_size=parts.LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        # DreamLite's layout in small: a cross-only block (no attn1) at the highest resolution, both below.
        down_block_types=("DreamLiteCrossAttnNoSelfAttnDownBlock2D", "DreamLiteCrossAttnDownBlock2D"),
        up_block_types=("DreamLiteCrossAttnUpBlock2D", "DreamLiteCrossAttnNoSelfAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=4,  # heads, as in UNet2DConditionModel
        num_kv_heads=2,  # grouped K/V heads (the real model: one), so that a head patch is a part of a layer
        ff_mult=2,
        cross_attention_dim=parts.TEXT_WIDTH,
        encoder_hid_dim=parts.TEXT_WIDTH,
        encoder_hid_dim_type="text_proj_rms",
        # The image size (time_ids: width, height) joins the timestep embedding.
        addition_embed_type="time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16,
    )


def _dreamlite(seed: int) -> dict[str, Any]:
    from diffusers import AutoencoderTiny, FlowMatchEulerDiscreteScheduler

    tokenizer = _tokenizer()
    vae = parts.init(
        seed, AutoencoderTiny, encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4,
    )
    return dict(
        text_encoder=_text_encoder(seed, tokenizer),
        tokenizer=tokenizer,
        processor=None,  # Qwen3-VL's image processor: instruction editing only
        vae=vae,
        unet=_unet(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


def _template_prefix(pipe: Any) -> None:
    # The pipeline drops a fixed 34 tokens, the real tokenizer's count for the template's system prefix;
    # the character-level one spells that prefix in more, all of which must go.
    prefix = pipe.prompt_template_encode_generate.split("{}")[0]
    pipe.prompt_template_encode_generate_start_idx = len(pipe.tokenizer(prefix).input_ids)


# Every DreamLite pipeline runs CFG, whatever its guidance_scale: its loop never tests it.
def _always(pipe: Any) -> bool:
    return True


DREAMLITE_BASE = PublishedDenoiser(
    "DreamLite base", "DreamLiteUNetModel",
    {"addition_embed_type": "time", "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 512, "sample_size": 128},
    200,
    "carlofkl/DreamLite-base unet/config.json as inferred (not read from the published file): diffusers' class "
    "defaults (320/640/1280 blocks, cross-only blocks at the two highest resolutions, one K/V head, 2048-wide "
    "cross-attention: Qwen3-VL-2B's hidden size, read without encoder_hid_proj), the image size embedded as time ids "
    "(addition_embed_type 'time', 2 x 256 wide; the pipeline's default_sample_size, 128); text: the pipeline's "
    "max_sequence_length, 200 (each call pads to its longest prompt)",
)

FAMILY = Family(
    name="dreamlite",
    denoisers=("DreamLiteUNetModel",),
    pipelines=("DreamLitePipeline",),
    attention=UNET_ATTENTION,
    signature=UNET_SIGNATURE,
    guidance=Guidance(batch_order=("uncond", "cond"), enabled=_always),
    one_prompt=True,
    refuses=dict.fromkeys(("train_lora", "denoiser_inputs"), _LATENT_SIDE_BY_SIDE),
    tiny={"dreamlite": TinyPipeline("DreamLitePipeline", _dreamlite, adjust=_template_prefix)},
    published=(DREAMLITE_BASE,),
)

MOBILE = Family(
    name="dreamlite-mobile",
    denoisers=(),  # DreamLite's: a DreamLiteUNetModel of its own is DreamLite's
    pipelines=("DreamLiteMobilePipeline",),
    attention=UNET_ATTENTION,
    signature=UNET_SIGNATURE,
    # CFG distilled away: one conditional row a call (encode_prompt(prompts=[prompt])).
    guidance=Guidance(distilled=True),
    one_prompt=True,
    refuses=FAMILY.refuses,
)
