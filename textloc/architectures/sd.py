"""Stable Diffusion 1.x/2.x: a U-Net whose ``attn2`` layers cross-attend to CLIP's hidden states.

CFG: one batch ``[uncond, cond]``, on when the pipeline's ``do_classifier_free_guidance`` says so.
"""

from __future__ import annotations

import math
from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import Inversion, encode_prompt
from textloc.architectures.spec import UNET_ATTENTION, UNET_SIGNATURE, Family, PublishedDenoiser, TinyPipeline


def _sd15(seed: int) -> dict[str, Any]:
    from diffusers import DDIMScheduler, UNet2DConditionModel

    tokenizer = parts.clip_tokenizer()
    # Cross-attention in both resolutions, down and up, plus the mid block: 7 attn2 layers.
    # attention_head_dim is the number of heads in UNet2DConditionModel (a diffusers misnomer).
    unet = parts.init(
        seed,
        UNet2DConditionModel,
        sample_size=parts.LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=parts.TEXT_WIDTH,
        attention_head_dim=2,
    )
    return dict(
        vae=parts.autoencoder_kl(seed),
        text_encoder=parts.clip_text_encoder(seed, tokenizer, parts.TEXT_WIDTH),
        tokenizer=tokenizer,
        unet=unet,
        # Not SD1.5's PNDM: with skipped PRK steps it evaluates the U-Net once more than asked.
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


class StableDiffusionInversion(Inversion):
    """DDIM inversion of a latent U-Net that cross-attends to the prompt's hidden states."""

    def size_multiple(self, pipe: Any) -> int:
        # The pipeline's own check asks for multiples of 8; the U-Net pads any latent size itself.
        return math.lcm(8, pipe.vae_scale_factor)

    def conditioning(self, pipe, prompts, arguments, height, width):
        return {"encoder_hidden_states": encode_prompt(pipe, prompts, arguments)[0]}

    def predict(self, pipe, sample, timestep, conditioning):
        return pipe.unet(sample, timestep, **conditioning, return_dict=False)[0]


SD_1_5 = PublishedDenoiser(
    "Stable Diffusion 1.5", "UNet2DConditionModel", {"sample_size": 64, "cross_attention_dim": 768}, 77,
    "stable-diffusion-v1-5 unet/config.json (the rest: diffusers' class defaults, which are SD 1.x's)",
)

FAMILY = Family(
    name="sd",
    denoisers=("UNet2DConditionModel",),
    pipelines=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    attention=UNET_ATTENTION,
    signature=UNET_SIGNATURE,
    denoiser_config={"addition_embed_type": None},
    tiny={"sd15": TinyPipeline("StableDiffusionPipeline", _sd15)},
    published=(SD_1_5,),
    inversion=StableDiffusionInversion(),
)
