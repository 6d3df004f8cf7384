"""CogView3-Plus: a DiT (``transformer_cogview3plus.py``) whose every block runs one attention over
``cat([text, image])`` (``CogVideoXAttnProcessor2_0`` concatenates the two streams before shared
``to_q``/``to_k``/``to_v``): the text **first**, its stream modulated by the timestep (step-dependent
K/V). The processor takes an ``attention_mask`` but the block passes none: nothing is masked.

The prompt is T5's, padded to ``max_sequence_length`` (224) with no mask, so every prompt, negative
prompt and source has that one length. With no negative prompt, the unconditional text is zeros
(``prompt_embeds.new_zeros``), not an encoded empty prompt.

CFG: one batch ``[uncond, cond]`` (``torch.cat([negative_prompt_embeds, prompt_embeds])``), on while
``do_classifier_free_guidance`` (``guidance_scale`` > 1). The scheduler is CogVideoX's DDIM (or
DPM), v-prediction with a zero-terminal-SNR schedule shifted by ``snr_shift_scale``: a schedule
neither the DDPM training objective nor DDIM inversion rebuilds from its config, so both are
refused.

The tiny pipeline: a stock ``CogView3PlusPipeline`` of 2 blocks of 2 heads, a 2-layer T5 behind a
byte-level tokenizer, a two-block KL autoencoder (CogView3's has 16 channels; 4 here).
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.spec import TEXT_FIRST, AttentionRule, Family, PublishedDenoiser, TinyPipeline

_SCHEDULE = (
    "its CogVideoX scheduler shifts the noise schedule's signal-to-noise ratio (snr_shift_scale), which the "
    "DDPM/DDIM schedules textloc builds from a scheduler config do not"
)


def _cogview3plus(seed: int) -> dict[str, Any]:
    from diffusers import CogVideoXDDIMScheduler, CogView3PlusTransformer2DModel

    tokenizer = parts.t5_tokenizer()
    transformer = parts.init(
        seed,
        CogView3PlusTransformer2DModel,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        out_channels=4,
        text_embed_dim=parts.TEXT_WIDTH,
        time_embed_dim=32,
        condition_dim=16,
        pos_embed_max_size=parts.LATENT_SIZE // 2,  # patches per side
        sample_size=parts.LATENT_SIZE,
    )
    return dict(
        tokenizer=tokenizer,
        text_encoder=parts.t5_encoder(seed, tokenizer),
        # CogView3-Plus decodes latents / scaling_factor (no shift).
        vae=parts.autoencoder_kl(seed, scaling_factor=1.0),
        transformer=transformer,
        # CogView3-Plus-3B's scheduler config (inferred: not read from the published file): v-prediction,
        # zero terminal SNR, trailing timesteps, the SNR shifted by 4.
        scheduler=CogVideoXDDIMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=True,
            prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing", snr_shift_scale=4.0,
        ),
    )


COGVIEW3_PLUS_3B = PublishedDenoiser(
    "CogView3-Plus-3B", "CogView3PlusTransformer2DModel", {}, 224,
    "diffusers' class defaults, its docstring's (30 layers of 64 x 40, T5-XXL's 4096-wide text; inferred: not read "
    "from a published config.json); text: the pipeline's max_sequence_length, which every prompt is padded to",
)

FAMILY = Family(
    name="cogview3plus",
    denoisers=("CogView3PlusTransformer2DModel",),
    pipelines=("CogView3PlusPipeline",),
    attention=(AttentionRule("Attention", TEXT_FIRST, where="transformer_blocks.*"),),
    refuses={"train_lora": _SCHEDULE},
    tiny={"cogview3plus": TinyPipeline("CogView3PlusPipeline", _cogview3plus)},
    published=(COGVIEW3_PLUS_3B,),
)
