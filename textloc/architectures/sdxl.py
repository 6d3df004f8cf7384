"""Stable Diffusion XL (and Kolors): a U-Net reading two CLIPs' hidden states side by side in its
``attn2`` layers, the second one's pooled projection in its time embedding.

CFG: one batch ``[uncond, cond]``, from the pipeline's ``do_classifier_free_guidance``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import encode_prompt
from textloc.architectures.sd import StableDiffusionInversion
from textloc.architectures.spec import UNET_ATTENTION, UNET_SIGNATURE, Family, PublishedDenoiser, TinyPipeline


def _sdxl(seed: int) -> dict[str, Any]:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    tokenizer = parts.clip_tokenizer()
    time_embed_dim = 8
    # SDXL's layout in small: no attention at the highest resolution, more transformer layers
    # deeper down (two in the lowest block and the mid block), 11 attn2 layers in all; the
    # U-Net reads both encoders' hidden states side by side and gets the second one's pooled
    # projection plus six size/crop numbers in its time embedding ("text_time").
    unet = parts.init(
        seed,
        UNet2DConditionModel,
        sample_size=parts.LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        transformer_layers_per_block=(1, 1, 2),
        norm_num_groups=8,
        attention_head_dim=2,
        use_linear_projection=True,
        cross_attention_dim=2 * parts.TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + parts.TEXT_WIDTH,
    )
    return dict(
        vae=parts.autoencoder_kl(seed),
        text_encoder=parts.clip_text_encoder(seed, tokenizer, parts.TEXT_WIDTH),
        # seed + 1: the same seed would make both encoders' shared weights identical.
        text_encoder_2=parts.clip_text_encoder(seed + 1, tokenizer, parts.TEXT_WIDTH, CLIPTextModelWithProjection),
        tokenizer=tokenizer,
        tokenizer_2=parts.clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
    )


SDXL_BASE = PublishedDenoiser(
    "SDXL base 1.0", "UNet2DConditionModel",
    {
        "sample_size": 128, "in_channels": 4, "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (320, 640, 1280), "layers_per_block": 2, "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048, "use_linear_projection": True,
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
    },
    77, "stable-diffusion-xl-base-1.0 unet/config.json",
)

class _SDXLInversion(StableDiffusionInversion):
    """Stable Diffusion's, plus the pooled text vector and the size conditions in the time embedding."""

    def conditioning(self, pipe, prompts, arguments, height, width):
        prompt_embeds, _, pooled, _ = encode_prompt(pipe, prompts, arguments)
        if pipe.text_encoder_2 is None:
            projection_dim = int(pooled.shape[-1])
        else:
            projection_dim = pipe.text_encoder_2.config.projection_dim
        time_ids = pipe._get_add_time_ids(
            arguments["original_size"] or (height, width),
            arguments["crops_coords_top_left"],
            arguments["target_size"] or (height, width),
            dtype=prompt_embeds.dtype,
            text_encoder_projection_dim=projection_dim,
        )
        time_ids = time_ids.to(prompt_embeds.device).repeat(len(prompts), 1)
        return {"encoder_hidden_states": prompt_embeds, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


def _text_embeds_width(args: tuple, kwargs: Mapping[str, Any]) -> int:
    """How many of ``add_embedding``'s input columns are the pooled text: ``text_embeds``' width."""
    return kwargs["added_cond_kwargs"]["text_embeds"].shape[-1]


FAMILY = Family(
    name="sdxl",
    denoisers=("UNet2DConditionModel",),
    pipelines=(
        "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline",
        "KolorsPipeline", "KolorsImg2ImgPipeline",
    ),
    attention=UNET_ATTENTION,
    signature=UNET_SIGNATURE,
    # addition_embed_type="text_time": the pooled CLIP vector (text_embeds), with the size
    # conditioning (time_ids) after it, joins the timestep embedding: the unit is text_embeds' columns.
    pooled="add_embedding",
    pooled_columns=_text_embeds_width,
    denoiser_config={"addition_embed_type": "text_time"},
    tiny={"sdxl": TinyPipeline("StableDiffusionXLPipeline", _sdxl)},
    published=(SDXL_BASE,),
    inversion=_SDXLInversion(),
)
