"""Cosmos-Predict2 text-to-image: a video DiT run on one frame, whose ``attn2`` layers cross-attend
to T5's hidden states (padded rows zeroed, no mask); the timestep modulates the image stream only,
so the text K/V depend on the prompt alone.

CFG: two plain denoiser calls a step, the conditional one first (``pipeline_cosmos2_text2image.py``),
with no ``cache_context``: the branch is the call's place in the step. Latents are 5-D
``(batch, channels, frames, height, width)``; the pipeline passes the timestep as σ/(σ+1).

The tiny pipeline differs from the real one in two things that do not touch attention: no padding
mask channel (resizing it needs torchvision), and a pass-through safety checker (the pipeline
refuses to run without one, and the real one needs the ``cosmos_guardrail`` package).
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import Inversion, encode_prompt, vae_decoding, vae_encoding
from textloc.architectures.spec import CROSS, AttentionRule, Family, Guidance, PublishedDenoiser, TinyPipeline


class PassThroughSafetyChecker:
    """Stands in for ``cosmos_guardrail.CosmosSafetyChecker`` in the tiny pipeline: flags nothing."""

    def to(self, *args: Any, **kwargs: Any) -> PassThroughSafetyChecker:
        return self

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, video: Any) -> Any:
        return video


def _cosmos2(seed: int) -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel, FlowMatchEulerDiscreteScheduler

    tokenizer = parts.t5_tokenizer()
    latent_channels = 4
    transformer = parts.init(
        seed,
        CosmosTransformer3DModel,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        mlp_ratio=2.0,
        text_embed_dim=parts.TEXT_WIDTH,
        adaln_lora_dim=8,
        max_size=(4, 16, 16),
        patch_size=(1, 2, 2),
        rope_scale=(1.0, 4.0, 4.0),
        concat_padding_mask=False,
        extra_pos_embed_type=None,
    )
    # One spatial downsample: 32 px -> 16x16 latents, 8x8 tokens after 2x2 patches.
    vae = parts.init(
        seed, AutoencoderKLWan, base_dim=8, z_dim=latent_channels, dim_mult=[1, 2], num_res_blocks=1,
        temperal_downsample=[False], latents_mean=[0.0] * latent_channels, latents_std=[1.0] * latent_channels,
    )
    return dict(
        text_encoder=parts.t5_encoder(seed, tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True),
        safety_checker=PassThroughSafetyChecker(),
    )


def _mean_std(pipe: Any, like: Any) -> tuple[Any, Any]:
    import torch

    shape = (1, pipe.vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(pipe.vae.config.latents_mean).view(shape).to(like)
    return mean, torch.tensor(pipe.vae.config.latents_std).view(shape).to(like)


class _Cosmos2Inversion(Inversion):
    """Inversion of Cosmos-Predict2 along its EDM probability-flow ODE, as
    ``Cosmos2TextToImagePipeline.__call__`` samples it: the sample is the video autoencoder's one-frame
    latents normalised by its mean and std and scaled by the scheduler's ``sigma_data``, plus sigma
    times the noise (sigmas up to ``sigma_max``, timesteps ``1000 sigma``); its ``latents`` argument is
    that over ``sigma_max``, which ``prepare_latents`` multiplies back. The denoiser is preconditioned
    (time ``c = sigma / (sigma + 1)``, input ``(1 - c) x``, denoised ``(1 - c) x - c F``), and the
    pipeline steps its FlowMatchEuler with ``(x - denoised) / sigma``: :meth:`predict` returns that."""

    flow = True

    def size_multiple(self, pipe: Any) -> int:
        import math

        # check_inputs takes multiples of 16; the transformer's patches tile the latents.
        return math.lcm(16, pipe.vae_scale_factor_spatial * pipe.transformer.config.patch_size[1])

    def encode_image(self, pipe, pixels, generators=None):
        latents = vae_encoding(pipe.vae, pixels[:, :, None], generators)  # one frame: B x C x 1 x h x w
        mean, std = _mean_std(pipe, latents)
        return (latents - mean) / std * pipe.scheduler.config.sigma_data

    def decode_sample(self, pipe, sample, height, width):
        mean, std = _mean_std(pipe, sample)
        return vae_decoding(pipe.vae, sample * std / pipe.scheduler.config.sigma_data + mean)[:, :, 0]

    def latents_argument(self, pipe, sample, height, width):
        return sample / pipe.scheduler.config.sigma_max

    def latents_dtype(self, pipe: Any) -> Any:
        import torch

        return torch.float32

    def conditioning(self, pipe, prompts, arguments, height, width):
        prompt_embeds, _ = encode_prompt(pipe, prompts, arguments)
        padding_mask = prompt_embeds.new_zeros(1, 1, height, width, dtype=pipe.transformer.dtype)
        return {"encoder_hidden_states": prompt_embeds, "padding_mask": padding_mask}

    def predict(self, pipe, sample, timestep, conditioning):
        # FlowMatchEuler's timesteps are 1000 sigma; the rest is the pipeline's loop, conditional branch.
        sigma = timestep.float() / pipe.scheduler.config.num_train_timesteps
        c = sigma / (sigma + 1)
        dtype = pipe.transformer.dtype
        time = c.expand(sample.shape[0]).to(dtype)
        output = pipe.transformer(hidden_states=(sample * (1 - c)).to(dtype), timestep=time, **conditioning, return_dict=False)[0]
        denoised = ((1 - c) * sample.float() - c * output.float()).to(dtype)
        return (sample.float() - denoised.float()) / sigma

    def set_flow_timesteps(self, pipe, scheduler, num_inference_steps, sample):
        import torch

        # The pipeline's __init__ registers its EDM sigma range on its scheduler's config, where the
        # Karras sigmas read it; a scheduler built from the config's __init__ arguments lacks it.
        edm = ("sigma_min", "sigma_max", "sigma_data", "final_sigmas_type")
        scheduler.register_to_config(**{name: pipe.scheduler.config[name] for name in edm})
        scheduler.set_timesteps(sigmas=torch.linspace(0, 1, num_inference_steps, dtype=torch.float64), device=sample.device)
        if scheduler.config.get("final_sigmas_type", "zero") == "sigma_min":
            scheduler.sigmas[-1] = scheduler.sigmas[-2]  # the pipeline's last step stays at the smallest sigma


COSMOS_PREDICT2_2B = PublishedDenoiser(
    "Cosmos-Predict2 2B Text2Image", "CosmosTransformer3DModel",
    {"num_attention_heads": 16, "attention_head_dim": 128, "num_layers": 28, "rope_scale": (1.0, 4.0, 4.0)}, 512,
    "inferred: a 2B model of 28 blocks 2048 wide (16 heads of 128) on T5-11B's 1024-wide text; the rest: diffusers' class defaults",
)

FAMILY = Family(
    name="cosmos2",
    denoisers=("CosmosTransformer3DModel",),
    pipelines=("Cosmos2TextToImagePipeline",),
    attention=(AttentionRule("Attention", CROSS, when="is_cross_attention"),),
    guidance=Guidance(call_order=("cond", "uncond")),
    refuses=dict.fromkeys(
        ("train_lora", "denoiser_inputs"), "its pipeline wraps the denoiser in EDM preconditioning (timestep σ/(σ+1), scaled input and output)",
    ),
    inversion=_Cosmos2Inversion(),
    # Its default negative prompt is ~700 characters: the tiny pipeline's is empty. Three steps: of
    # two Karras-spaced ones, the second runs at the final sigma and changes nothing.
    tiny={"cosmos2": TinyPipeline("Cosmos2TextToImagePipeline", _cosmos2, {"negative_prompt": "", "num_inference_steps": 3})},
    published=(COSMOS_PREDICT2_2B,),
)
