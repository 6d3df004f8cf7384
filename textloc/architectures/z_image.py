"""Z-Image: a single-stream DiT. Its text first runs through context-refiner blocks (text-only
attention, the prompt alone: step-independent) and its latents through noise-refiner blocks; each
main layer then reads one sequence per row, ``[image, text, padding]``, through shared projections:
the text **after** the image, each row's caption padded to a multiple of 32 tokens with a learned
token, the rows to the longest with masked zeros. The text region of a call is every token after
the image (its longest caption), and a patched row takes its source's mask with its text K/V.
The denoiser takes lists of per-row samples and captions, by position (``x``, ``t``, ``cap_feats``),
the time as ``1 - t/1000`` (0 is noise), and predicts the negated velocity.

CFG: one batch ``[cond, uncond]`` (the reverse of most), on whenever ``guidance_scale`` > 0.
``cfg_truncation`` < 1 drops the unconditional rows at late steps while the pipeline still reports
CFG: such a run is refused, as textloc could not tell the rows apart.

The tiny pipeline: a stock ``ZImagePipeline`` of 2 main layers and one refiner of each kind, 2 heads,
a 2-layer Qwen3 behind a character-level tokenizer with Qwen's chat template (19 tokens around the
prompt).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import Inversion, encode_prompt, resolution_shift
from textloc.architectures.spec import (
    REFINER, TEXT_LAST, AttentionRule, DenoiserSignature, Family, Guidance, PublishedDenoiser, TinyPipeline, Training,
)

# Qwen3's template for one user turn plus the generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_SEQUENCE_LENGTH = parts.TEXT_LENGTH + 6 + 13  # <|im_start|> user \n ... <|im_end|> \n <|im_start|> assistant \n
CHARACTERS = [*parts.CHARACTERS, "Ġ", "Ċ"]  # byte-level BPE spells " " as "Ġ" and "\n" as "Ċ"
_CAPTION_MULTIPLE = 32  # the transformer pads each caption to this multiple (SEQ_MULTI_OF)


def _text_length(args: tuple, kwargs: Mapping[str, Any]) -> int:
    captions = kwargs["cap_feats"] if "cap_feats" in kwargs else args[2]
    return max(-(-len(caption) // _CAPTION_MULTIPLE) * _CAPTION_MULTIPLE for caption in captions)


# ZImagePipeline.__call__: the denoiser takes (1000 - t) / 1000 (0 is noise), each row's latents as one
# tensor of a list with a frame axis (C x 1 x H x W), and returns a list the pipeline stacks, squeezes
# and negates before it steps the scheduler; CFG runs at any guidance_scale above 0.
def _reversed_time(scheduler: Any, timestep: Any) -> Any:
    return (1000 - timestep) / 1000


def _rows(batch: Any) -> list[Any]:
    return list(batch.unsqueeze(2).unbind(0))


def _batch(rows: Any) -> Any:
    import torch

    return torch.stack(list(rows)).squeeze(2)


def _check_run(pipe: Any) -> None:
    truncation = getattr(pipe, "_cfg_truncation", None)
    if pipe.do_classifier_free_guidance and truncation is not None and float(truncation) < 1:
        raise ValueError(
            f"cfg_truncation={truncation} drops Z-Image's unconditional rows at late steps while the pipeline still "
            "runs CFG: textloc cannot tell the rows of those steps apart. Run with cfg_truncation=1."
        )


def _qwen_tokenizer() -> Any:
    """Qwen's byte-level BPE with no merges: one token per character, chat markers one token each."""
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for char in CHARACTERS:
        vocab.setdefault(char, len(vocab))
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        model_max_length=MAX_SEQUENCE_LENGTH,
        chat_template=CHAT_TEMPLATE,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )


def _qwen3_encoder(seed: int, tokenizer: Any) -> Any:
    from transformers import Qwen3Config, Qwen3Model

    # The pipeline reads hidden_states[-2]: the first layer's output.
    config = parts.decoder_config(
        Qwen3Config, tokenizer, 2, MAX_SEQUENCE_LENGTH, tie_word_embeddings=False,
        bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    return parts.init(seed, Qwen3Model, config)


def _z_image(seed: int) -> dict[str, Any]:
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel

    tokenizer = _qwen_tokenizer()
    latent_channels = 4
    transformer = parts.init(
        seed,
        ZImageTransformer2DModel,
        all_patch_size=(2,),  # the pipeline never passes patch_size: the forward default, 2
        all_f_patch_size=(1,),
        in_channels=latent_channels,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,  # unused by the diffusers model: every attention is full multi-head
        qk_norm=True,
        cap_feat_dim=parts.TEXT_WIDTH,
        axes_dims=[4, 6, 6],  # sums to the head size, 16
        # Axis 0 counts caption positions (1..cap_len, padded to 32) and then the image frame.
        axes_lens=[MAX_SEQUENCE_LENGTH + 64, 32, 32],
    )
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        # The pipeline adds shift_factor unconditionally, so it must be a number.
        vae=parts.autoencoder_kl(
            seed, latent_channels=latent_channels, use_quant_conv=False, use_post_quant_conv=False,
            scaling_factor=0.3611, shift_factor=0.1159,
        ),
        text_encoder=_qwen3_encoder(seed, tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    )


TRAINING = Training(timestep=_reversed_time, prediction_sign=-1.0, rows=_rows, batch=_batch, unguided_scale=0.0)


class _ZImageInversion(Inversion):
    """Flow inversion of Z-Image, as ``ZImagePipeline.__call__`` samples: the VAE's latents (scaled
    and shifted, not packed), float32 noise, the prompt's unpadded embeddings as the text, and the
    denoiser called with a list of rows at the reversed time (its :data:`TRAINING`)."""

    flow = True

    def size_multiple(self, pipe: Any) -> int:
        # prepare_latents rounds the latent sides down to even (the transformer's 2x2 patches).
        return pipe.vae_scale_factor * 2

    def latents_dtype(self, pipe: Any) -> Any:
        import torch

        return torch.float32  # the pipeline draws its noise in float32 whatever the model's dtype

    def conditioning(self, pipe, prompts, arguments, height, width):
        prompt_embeds, _ = encode_prompt(pipe, prompts, arguments)  # one tensor a prompt, its own length
        return {"cap_feats": prompt_embeds}

    def predict(self, pipe, sample, timestep, conditioning):
        time = TRAINING.timestep(pipe.scheduler, timestep.expand(sample.shape[0]))
        output = pipe.transformer(TRAINING.rows(sample), time, conditioning["cap_feats"], return_dict=False)[0]
        return TRAINING.batch([row.float() for row in output])

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

        # The pipeline's sigmas, shifted by the mu of the image's 2x2-patch count.
        sigmas = get_default_z_image_sigmas(num_inference_steps)
        mu = resolution_shift(scheduler, (sample.shape[2] // 2) * (sample.shape[3] // 2), max_shift=1.15)
        scheduler.set_timesteps(num_inference_steps, device=sample.device, sigmas=sigmas, mu=mu)


Z_IMAGE_TURBO = PublishedDenoiser(
    "Z-Image-Turbo", "ZImageTransformer2DModel", {}, 512, "diffusers' class defaults, which are Z-Image's",
)

FAMILY = Family(
    name="z-image",
    denoisers=("ZImageTransformer2DModel",),
    pipelines=("ZImagePipeline",),
    attention=(
        AttentionRule("Attention", REFINER, where="context_refiner.*"),
        AttentionRule("Attention", TEXT_LAST, where="layers.*"),
    ),
    guidance=Guidance(batch_order=("cond", "uncond")),
    signature=DenoiserSignature(sample="x", timestep="t", text="cap_feats"),
    text_length=_text_length,
    check_run=_check_run,
    training=TRAINING,
    inversion=_ZImageInversion(),
    tiny={"z-image": TinyPipeline("ZImagePipeline", _z_image, {"max_sequence_length": MAX_SEQUENCE_LENGTH})},
    published=(Z_IMAGE_TURBO,),
)
