"""DeepFloyd IF (stage I): a pixel-space U-Net whose attention layers give T5's text K/V projections of
their own (``add_k_proj``/``add_v_proj``), concatenated with the image's in one attention.

CFG: one batch ``[uncond, cond]``; the pipeline has no ``do_classifier_free_guidance`` property, so
the engine reads the flag it passes to its own ``encode_prompt``.
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import Inversion, encode_prompt
from textloc.architectures.spec import CAPTION_AS_GIVEN, UNET_ATTENTION, UNET_SIGNATURE, Family, PublishedDenoiser, TinyPipeline


def _deepfloyd_if(seed: int) -> dict[str, Any]:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    tokenizer = parts.t5_tokenizer()
    # IF stage I: a pixel-space U-Net whose Simple* blocks use added-K/V attention (text K/V
    # concatenated to the image K/V in one attention), 4 such layers. Here attention_head_dim
    # really is the head size: 32 and 64 channels give 2 and 4 heads.
    unet = parts.init(
        seed,
        UNet2DConditionModel,
        sample_size=parts.IMAGE_SIZE,
        in_channels=3,
        out_channels=6,  # learned variance: mean and variance channels
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        encoder_hid_dim=parts.TEXT_WIDTH,
        attention_head_dim=16,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
    )
    return dict(
        tokenizer=tokenizer,
        text_encoder=parts.t5_encoder(seed, tokenizer),
        unet=unet,
        scheduler=DDPMScheduler(
            beta_schedule="squaredcos_cap_v2",
            thresholding=True,
            dynamic_thresholding_ratio=0.95,
            sample_max_value=1.0,
            prediction_type="epsilon",
            variance_type="learned_range",
        ),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )


class _IFInversion(Inversion):
    """DDIM inversion in pixel space: the sample is the image itself."""

    def size_multiple(self, pipe: Any) -> int:
        # The U-Net's skip connections need every downsampling to halve the size exactly.
        return 2 ** (len(pipe.unet.config.block_out_channels) - 1)

    def encode_image(self, pipe, pixels, generators=None):
        return pixels.float()

    def decode_sample(self, pipe, sample, height, width):
        return sample

    def conditioning(self, pipe, prompts, arguments, height, width):
        return {"encoder_hidden_states": encode_prompt(pipe, prompts, arguments)[0]}

    def predict(self, pipe, sample, timestep, conditioning):
        output = pipe.unet(sample, timestep, **conditioning, return_dict=False)[0]
        # Learned variance: the first channels are the prediction, the rest the variance.
        return output[:, : sample.shape[1]]


# The original IF-I-XL hyper-parameters (model_channels 704, channel_mult 1,2,3,4, 3 res blocks,
# attention at 32/16/8, 64-channel heads, T5 4096 -> 2816) mapped as diffusers' convert_if.py maps
# them: 4,304,695,110 parameters, 22 added-K/V attention layers.
IF_I_XL = PublishedDenoiser(
    "DeepFloyd IF-I-XL v1.0", "UNet2DConditionModel",
    {
        "sample_size": 64, "in_channels": 3, "out_channels": 6,
        "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "up_block_types": ("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        "block_out_channels": (704, 1408, 2112, 2816), "layers_per_block": 3, "attention_head_dim": 64,
        "cross_attention_dim": 2816, "encoder_hid_dim": 4096, "encoder_hid_dim_type": "text_proj",
        "addition_embed_type": "text", "addition_embed_type_num_heads": 64, "cross_attention_norm": "group_norm",
        "resnet_time_scale_shift": "scale_shift", "act_fn": "gelu",
    },
    77, "IF-I-XL's original hyper-parameters through diffusers' convert_if.py (inferred from the conversion)",
)

FAMILY = Family(
    name="deepfloyd-if",
    denoisers=("UNet2DConditionModel",),
    pipelines=("IFPipeline", "IFImg2ImgPipeline", "IFInpaintingPipeline"),
    attention=UNET_ATTENTION,
    signature=UNET_SIGNATURE,
    call_defaults=CAPTION_AS_GIVEN,
    # addition_embed_type="text": an attention pool of the T5 tokens joins the timestep embedding.
    pooled="add_embedding",
    denoiser_config={"addition_embed_type": "text"},
    tiny={"deepfloyd-if": TinyPipeline("IFPipeline", _deepfloyd_if)},
    published=(IF_I_XL,),
    inversion=_IFInversion(),
)
