"""Tiny random-init pipelines of every architecture textloc supports, for tests and demos.

Longer than the ~500 lines a module should hold, for a reason: it is data, one config builder per
architecture side by side, and each moves into its family's own spec when the families get one
file each (issue 31).

Each pipeline is the stock diffusers class of its architecture (``StableDiffusionXLPipeline``,
``FluxPipeline``, ...), built from configs written here: no file is read and nothing is
downloaded, so they work on a machine with no network and no cached weights. The models keep the
layout that matters to the attention engine (U-Net cross-attention in several blocks, added-K/V
attention for IF, joint blocks for SD3, double- and single-stream blocks for FLUX, attn2 for
PixArt/Sana, every attention with at least two heads) at a size that builds in about 0.1 s and
generates a 32x32 image in two steps in about 0.1 s on one CPU thread.

Their weights are random, so their images are noise; what tests can rely on is that the same
seed gives the same pipeline and the same image, and that a different prompt gives a different
image.
"""

from __future__ import annotations

import inspect
import string
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    IFPipeline,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SanaPipeline,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    ByT5Tokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Gemma2Config,
    Gemma2Model,
    GemmaTokenizer,
    T5Config,
    T5EncoderModel,
)

from textloc.pipeline_calls import call_kwargs

ARCHITECTURES: tuple[str, ...] = (
    "sd15",
    "sdxl",
    "sd3",
    "flux",
    "deepfloyd-if",
    "pixart-alpha",
    "pixart-sigma",
    "sana",
)

# Every tokenizer here is character-level, so a prompt costs one token per character. 48 keeps
# the quoted word of templates such as 'Little panda holding a sign that says "HELLO".' (46
# characters) inside the window while staying cheap.
TEXT_LENGTH = 48
IMAGE_SIZE = 32
# Every VAE here has two blocks, so latents are half the image size.
LATENT_SIZE = IMAGE_SIZE // 2
TEXT_WIDTH = 32  # hidden size of every text encoder (each SD3 CLIP: half, see _sd3)

# Printable ASCII without whitespace: whitespace never reaches the vocabulary (CLIP splits on it,
# Gemma turns it into "▁").
_CHARACTERS = [char for char in string.printable if not char.isspace()]

_Module = TypeVar("_Module", bound=torch.nn.Module)


def _init(seed: int, model_class: Callable[..., _Module], *args: Any, **config: Any) -> _Module:
    """Build one model from a freshly seeded RNG, in eval mode (T5 dropout is on in train mode)."""
    torch.manual_seed(seed)
    return model_class(*args, **config).eval()


# --- text encoders -------------------------------------------------------------------------


def _clip_tokenizer() -> CLIPTokenizer:
    """CLIP's byte-level BPE with no merges: one token per character, `</w>` closing a word."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _CHARACTERS:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_LENGTH)


def _clip_text_encoder(
    seed: int, tokenizer: CLIPTokenizer, hidden_size: int, model_class: type[CLIPTextModel] = CLIPTextModel
) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=TEXT_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _init(seed, model_class, config)


def _t5_tokenizer() -> ByT5Tokenizer:
    # Byte-level T5 tokenizer: needs no vocabulary file; no sentinel ids, the encoder never sees them.
    return ByT5Tokenizer(model_max_length=TEXT_LENGTH, extra_ids=0)


def _t5_encoder(seed: int, tokenizer: ByT5Tokenizer) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=TEXT_WIDTH,
        d_kv=TEXT_WIDTH // 2,
        d_ff=2 * TEXT_WIDTH,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as in IF, SD3, FLUX and PixArt
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _init(seed, T5EncoderModel, config)


def _gemma_tokenizer() -> GemmaTokenizer:
    """Gemma's BPE with no merges: one token per character, spaces as "▁", <bos> first."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "▁": 5}
    for char in _CHARACTERS:
        vocab.setdefault(char, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_LENGTH)


def _gemma_encoder(seed: int, tokenizer: GemmaTokenizer) -> Gemma2Model:
    head_dim = TEXT_WIDTH // 2
    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        max_position_embeddings=TEXT_LENGTH,
        sliding_window=TEXT_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _init(seed, Gemma2Model, config)


# --- autoencoders ----------------------------------------------------------------------------


def _autoencoder_kl(seed: int, latent_channels: int = 4, **config: Any) -> AutoencoderKL:
    return _init(
        seed,
        AutoencoderKL,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=latent_channels,
        sample_size=IMAGE_SIZE,
        **config,
    )


def _autoencoder_dc(seed: int) -> AutoencoderDC:
    return _init(
        seed,
        AutoencoderDC,
        in_channels=3,
        latent_channels=4,
        attention_head_dim=4,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        scaling_factor=0.41407,
    )


# --- pipelines -------------------------------------------------------------------------------


def _sd15(seed: int) -> dict[str, Any]:
    tokenizer = _clip_tokenizer()
    # Cross-attention in both resolutions, down and up, plus the mid block: 7 attn2 layers.
    # attention_head_dim is the number of heads in UNet2DConditionModel (a diffusers misnomer).
    unet = _init(
        seed,
        UNet2DConditionModel,
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=2,
    )
    return dict(
        vae=_autoencoder_kl(seed),
        text_encoder=_clip_text_encoder(seed, tokenizer, TEXT_WIDTH),
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


def _sdxl(seed: int) -> dict[str, Any]:
    tokenizer = _clip_tokenizer()
    time_embed_dim = 8
    # SDXL's layout in small: no attention at the highest resolution, more transformer layers
    # deeper down (two in the lowest block and the mid block), 11 attn2 layers in all; the
    # U-Net reads both encoders' hidden states side by side and gets the second one's pooled
    # projection plus six size/crop numbers in its time embedding ("text_time").
    unet = _init(
        seed,
        UNet2DConditionModel,
        sample_size=LATENT_SIZE,
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
        cross_attention_dim=2 * TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_WIDTH,
    )
    return dict(
        vae=_autoencoder_kl(seed),
        text_encoder=_clip_text_encoder(seed, tokenizer, TEXT_WIDTH),
        # seed + 1: the same seed would make both encoders' shared weights identical.
        text_encoder_2=_clip_text_encoder(seed + 1, tokenizer, TEXT_WIDTH, CLIPTextModelWithProjection),
        tokenizer=tokenizer,
        tokenizer_2=_clip_tokenizer(),
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
    )


def _sd3(seed: int) -> dict[str, Any]:
    tokenizer = _clip_tokenizer()
    t5_tokenizer = _t5_tokenizer()
    # The pipeline concatenates the two CLIP hidden states along the features and pads them to
    # T5's width, so each CLIP is half as wide as T5; the pooled input is both CLIP projections.
    clip_width = TEXT_WIDTH // 2
    transformer = _init(
        seed,
        SD3Transformer2DModel,
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=2 * clip_width,
        pos_embed_max_size=LATENT_SIZE,
    )
    return dict(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_autoencoder_kl(
            seed, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609
        ),
        text_encoder=_clip_text_encoder(seed, tokenizer, clip_width, CLIPTextModelWithProjection),
        tokenizer=tokenizer,
        # seed + 1, as in _sdxl.
        text_encoder_2=_clip_text_encoder(seed + 1, tokenizer, clip_width, CLIPTextModelWithProjection),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5_encoder(seed, t5_tokenizer),
        tokenizer_3=t5_tokenizer,
    )


def _flux(seed: int) -> dict[str, Any]:
    tokenizer = _clip_tokenizer()
    t5_tokenizer = _t5_tokenizer()
    latent_channels = 4
    # FLUX packs 2x2 latent patches into one token (in_channels = 4 * latent channels); the rotary
    # axes must add up to the head size. Guidance-embedded like FLUX.1-dev.
    transformer = _init(
        seed,
        FluxTransformer2DModel,
        patch_size=1,
        in_channels=4 * latent_channels,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        pooled_projection_dim=TEXT_WIDTH,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_autoencoder_kl(
            seed,
            latent_channels=latent_channels,
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=0.3611,
            shift_factor=0.1159,
        ),
        text_encoder=_clip_text_encoder(seed, tokenizer, TEXT_WIDTH),
        tokenizer=tokenizer,
        text_encoder_2=_t5_encoder(seed, t5_tokenizer),
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def _deepfloyd_if(seed: int) -> dict[str, Any]:
    tokenizer = _t5_tokenizer()
    # IF stage I: a pixel-space U-Net whose Simple* blocks use added-K/V attention (text K/V
    # concatenated to the image K/V in one attention), 4 such layers. Here attention_head_dim
    # really is the head size: 32 and 64 channels give 2 and 4 heads.
    unet = _init(
        seed,
        UNet2DConditionModel,
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=6,  # learned variance: mean and variance channels
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        encoder_hid_dim=TEXT_WIDTH,
        attention_head_dim=16,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
    )
    return dict(
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(seed, tokenizer),
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


def _pixart_transformer(seed: int) -> PixArtTransformer2DModel:
    return _init(
        seed,
        PixArtTransformer2DModel,
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=4,
        out_channels=8,  # learned variance
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=16,
        cross_attention_dim=32,
        caption_channels=TEXT_WIDTH,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )


def _pixart(seed: int) -> dict[str, Any]:
    tokenizer = _t5_tokenizer()
    return dict(
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(seed, tokenizer),
        vae=_autoencoder_kl(seed),
        transformer=_pixart_transformer(seed),
        scheduler=DPMSolverMultistepScheduler(),
    )


def _sana(seed: int) -> dict[str, Any]:
    tokenizer = _gemma_tokenizer()
    transformer = _init(
        seed,
        SanaTransformer2DModel,
        sample_size=LATENT_SIZE,
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=16,
        num_cross_attention_heads=2,
        cross_attention_head_dim=16,
        cross_attention_dim=32,
        caption_channels=TEXT_WIDTH,
    )
    return dict(
        tokenizer=tokenizer,
        text_encoder=_gemma_encoder(seed, tokenizer),
        vae=_autoencoder_dc(seed),
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


# Each architecture: its stock pipeline class, and the function that builds its components.
_ARCHITECTURE_PARTS: dict[str, tuple[type[DiffusionPipeline], Callable[[int], dict[str, Any]]]] = {
    "sd15": (StableDiffusionPipeline, _sd15),
    "sdxl": (StableDiffusionXLPipeline, _sdxl),
    "sd3": (StableDiffusion3Pipeline, _sd3),
    "flux": (FluxPipeline, _flux),
    "deepfloyd-if": (IFPipeline, _deepfloyd_if),
    "pixart-alpha": (PixArtAlphaPipeline, _pixart),
    "pixart-sigma": (PixArtSigmaPipeline, _pixart),
    "sana": (SanaPipeline, _sana),
}


def _check_arch(arch: str) -> None:
    if arch not in _ARCHITECTURE_PARTS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def tiny_pipeline(arch: str, seed: int = 0) -> DiffusionPipeline:
    """A random-init pipeline of ``arch`` (one of :data:`ARCHITECTURES`), built offline.

    The same ``arch`` and ``seed`` always give the same weights; the caller's global torch RNG is
    left as it was. Every component is in eval mode and the progress bar is off. Run it with
    :func:`tiny_call_kwargs`.
    """
    _check_arch(arch)
    pipeline_class, build_components = _ARCHITECTURE_PARTS[arch]
    with torch.random.fork_rng(devices=[]):
        pipe = pipeline_class(**build_components(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_call_kwargs(arch_or_pipe: str | DiffusionPipeline) -> dict[str, Any]:
    """Keyword arguments that run a tiny pipeline fast, deterministically and with CFG.

    Two steps at :data:`IMAGE_SIZE`, NumPy output (``images`` is a float array ``(batch, H, W, 3)``
    in [0, 1]; the one format every pipeline agrees on, as IF's ``"pt"`` output stays in [-1, 1]),
    and a guidance scale above 1 so every denoiser sees a conditional and an unconditional
    branch. FLUX is guidance-distilled: it gets ``true_cfg_scale`` and an empty negative prompt,
    which FluxPipeline runs as a second, unconditional pass. Captions are not cleaned, sizes not
    snapped to resolution bins, and text is cut to :data:`TEXT_LENGTH` tokens.
    """
    if isinstance(arch_or_pipe, str):
        _check_arch(arch_or_pipe)
        arch = arch_or_pipe
    else:
        arch = _arch_of(arch_or_pipe)
    pipeline_class = _ARCHITECTURE_PARTS[arch][0]
    kwargs: dict[str, Any] = {
        "height": IMAGE_SIZE,
        "width": IMAGE_SIZE,
        "num_inference_steps": 2,
        "guidance_scale": 4.0,
        "output_type": "np",
    }
    if "max_sequence_length" in inspect.signature(pipeline_class.__call__).parameters:
        kwargs["max_sequence_length"] = TEXT_LENGTH
    if arch == "flux":
        kwargs.update(true_cfg_scale=4.0, negative_prompt="")
    if arch == "sana":
        # Sana prepends a ~700-character "complex human instruction" to every prompt by default;
        # with character-level tokens that is 15x the prompt's cost, for random weights.
        kwargs["complex_human_instruction"] = []
    # call_kwargs only reads the signature of __call__, which the class has as well.
    return call_kwargs(pipeline_class, **kwargs)


def _arch_of(pipe: DiffusionPipeline) -> str:
    for arch, (pipeline_class, _) in _ARCHITECTURE_PARTS.items():
        if type(pipe) is pipeline_class:
            return arch
    known = ", ".join(pipeline_class.__name__ for pipeline_class, _ in _ARCHITECTURE_PARTS.values())
    raise ValueError(f"no tiny call arguments for {type(pipe).__name__}; known pipelines: {known}")
