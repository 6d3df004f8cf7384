"""PRX (``transformer_prx.py``): a DiT of image tokens whose every block's image queries attend to
``[text, image]`` keys, the text's from a projection of its own. No text stream, no text query.

How text enters: T5Gemma's encoder states go through ``txt_in`` once per call, from the prompt alone;
each ``blocks.N.attention`` (``PRXAttention``) makes the text's keys and values with one fused
``txt_kv_proj`` (keys its first ``inner_dim`` columns, values the next; K then RMS-normed) and
concatenates them ahead of the image's. The text K/V depend on the prompt alone, never on the step
or the image: ``added_kv`` layers, step-independent (recorded once, a prompt injected directly).
The text has no rotary position. The text mask: ``encode_prompt`` pads every prompt to
``tokenizer_max_length`` (the tokenizer's ``model_max_length`` by default) and hands the transformer
the tokenizer's ``(batch, text)`` keep-mask, which every block passes its attention as
``attention_mask``: a source of another length is patched with its own mask.

CFG: one batch ``[uncond, cond]`` (``torch.cat([uncond_text_embeddings, text_embeddings])``), on
while ``guidance_scale`` > 1 (``do_classifier_free_guidance``); the negative prompt is ``""`` by
default. Under CFG the pipeline hands its transformer one timestep per half (``t.view(1).repeat(2)``),
which fails on any batch of more than one image a half: textloc refuses such a call in one line
(``check_text``), and batches PRX prompts only unguided (``guidance_scale=1``). The transformer takes ``t / num_train_timesteps`` and predicts the velocity, stepped as it
is; the VAE's latents are decoded as ``latents / scaling_factor + shift_factor``.

The pipeline cleans every prompt before tokenizing it, fully (DeepFloyd's cleaning: lowercased,
punctuation and URLs stripped) unless ``skip_text_cleaning``, then lightly (``ftfy.fix_text`` and
HTML unescaping): textloc sets ``skip_text_cleaning=True`` and ``use_resolution_binning=False``.
Both cleanings call ``ftfy``, which diffusers imports only where it is installed: without it every
call with a prompt fails in the pipeline itself (``NameError``). ``PRXPixelPipeline`` (pixel space,
x-prediction, its transformer's ``img_in`` a ``bottleneck_size`` projection) has no spec: a
transformer with a bottleneck is of no family, and refused.

The tiny pipeline: a stock ``PRXPipeline`` of 2 blocks of 2 heads on 2x2 patches, a 2-layer
T5Gemma encoder behind Gemma's character-level tokenizer, and FLUX.1's tiny autoencoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.flux import tiny_vae
from textloc.architectures.inversion import Inversion, encode_prompt
from textloc.architectures.spec import SIZE_AS_ASKED, AttentionRule, Family, Projection, PublishedDenoiser, TextRoute, TinyPipeline

# Keys, then values, in one projection of the text; a LoRA trains the attention's own projections.
_TEXT_KV = TextRoute(
    "added_kv", Projection("txt_kv_proj", block=0), Projection("txt_kv_proj", block=1),
    lora_targets=("img_qkv_proj", "txt_kv_proj", "to_out.0"),
)

#: The prompt as given (light cleaning: ftfy's fixes and HTML unescaping), at the size asked for.
_CALL_DEFAULTS: Mapping[str, Any] = MappingProxyType({**SIZE_AS_ASKED, "skip_text_cleaning": True})


def _check_text(encoded: tuple) -> None:
    """Refuse a guided call of more than one image: ``encode_prompt`` returns the prompts' embeddings
    and mask, then the negative prompts' (``None`` unguided), and the loop's timestep has one entry
    per CFG half, which the transformer cannot broadcast over a larger batch."""
    if encoded[2] is not None and encoded[0].shape[0] > 1:
        raise ValueError(
            f"PRXPipeline hands its transformer one timestep per classifier-free-guidance half, so under guidance it "
            f"runs one image a call, not {encoded[0].shape[0]}: run them one at a time, or unguided (guidance_scale=1)."
        )


def _prx(seed: int) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, PRXTransformer2DModel
    from transformers.models.t5gemma import T5GemmaConfig, T5GemmaModuleConfig
    from transformers.models.t5gemma.modeling_t5gemma import T5GemmaEncoder

    tokenizer = parts.gemma_tokenizer()
    module = parts.decoder_config(
        T5GemmaModuleConfig, tokenizer, 2, query_pre_attn_scalar=parts.TEXT_WIDTH // 2, sliding_window=parts.TEXT_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
    )
    # The encoder is built from the encoder-decoder config's encoder part, as T5Gemma's checkpoints hold it.
    encoder = T5GemmaConfig(encoder=module.to_dict(), decoder=module.to_dict()).encoder
    transformer = parts.init(
        seed, PRXTransformer2DModel, in_channels=4, patch_size=2, context_in_dim=parts.TEXT_WIDTH, hidden_size=32,
        mlp_ratio=2.0, num_heads=2, depth=2, axes_dim=[8, 8],
    )
    # Every block's modulation starts at zero (Modulation.__init__): gates of 0 would leave the random
    # model blind to its text. Drawn like any linear layer, from the same seeded RNG.
    for block in transformer.blocks:
        block.modulation.lin.reset_parameters()
    return dict(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=parts.init(seed, T5GemmaEncoder, encoder),
        tokenizer=tokenizer,
        vae=tiny_vae(seed),
        default_sample_size=parts.IMAGE_SIZE,  # pixels: the side get_default_resolution gives
    )


class PRXInversion(Inversion):
    """Flow inversion in the VAE's latents, which the transformer patchifies itself."""

    flow = True

    def size_multiple(self, pipe: Any) -> int:
        return pipe.vae_scale_factor * pipe.transformer.config.patch_size

    def conditioning(self, pipe, prompts, arguments, height, width):
        embeddings, mask, _, _ = encode_prompt(pipe, prompts, arguments)
        return {"encoder_hidden_states": embeddings, "attention_mask": mask}

    def predict(self, pipe, sample, timestep, conditioning):
        time = timestep.expand(sample.shape[0]).float() / pipe.scheduler.config.num_train_timesteps
        return pipe.transformer(hidden_states=sample, timestep=time, **conditioning, return_dict=False)[0]


PRX_1024 = PublishedDenoiser(
    "PRX", "PRXTransformer2DModel", {}, 256,
    "inferred: diffusers' class defaults (16 blocks 1792 wide, 28 heads, on T5Gemma's 2304-wide states), not read from "
    "a published config.json; text: an assumed tokenizer_max_length of 256",
)

FAMILY = Family(
    name="prx",
    denoisers=("PRXTransformer2DModel",),
    pipelines=("PRXPipeline",),
    attention=(AttentionRule("PRXAttention", _TEXT_KV),),
    check_text=_check_text,
    call_defaults=_CALL_DEFAULTS,
    denoiser_config={"bottleneck_size": None},  # the pixel-space one's has a bottleneck
    tiny={"prx": TinyPipeline("PRXPipeline", _prx)},
    published=(PRX_1024,),
    inversion=PRXInversion(),
)
