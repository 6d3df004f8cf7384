"""Kandinsky 3: a latent U-Net (``unet_kandinsky3.py``) that cross-attends to Flan-UL2's T5 states.

How text enters: ``encoder_hid_proj`` (a linear layer and a LayerNorm) maps the T5 states to the
U-Net's context width once per call, from the prompt alone. Every ``Kandinsky3AttentionBlock``
holds one diffusers ``Attention`` built as ``Attention(channels, context_dim or channels)``: those
with a context (``attentions.1…`` of each level that has one) read only the text through
``to_k``/``to_v`` (``cross``); the first of a level's (``attentions.0``) is given no context and
attends over the image, though its ``is_cross_attention`` is set too (a context width is always
passed), so the rules go by path, not by that flag. ``add_time_condition`` is an attention pool:
its query is the mean of the projected text, its keys and values the text, and its output joins
the time embedding of every block: the pooled unit is that attention, whose whole output (one
vector per row) is recorded and patched.

The text mask: ``encode_prompt`` pads T5's tokens to 128, zeroes the padded states and cuts the
call's text to its longest prompt plus one token (``_cut_context``, which ``__call__`` always sets);
the U-Net turns the keep-mask into an additive bias, ``(batch, 1, text)``, which its blocks hand
every attention by position (the engine reads it by name). A source of another length is patched
with its own mask. The attention pool's query, though, averages every token of the call's text,
padding included, so a row's image depends on its call's longest prompt: textloc runs Kandinsky 3
on prompts of one token length (``check_text``) and refuses a call of mixed lengths in one line.
A source longer than the prompt it patches does not fit the prompt's cut text, and is refused.

CFG: one batch ``[uncond, cond]`` (``torch.cat([negative_prompt_embeds, prompt_embeds])``), on while
``guidance_scale`` > 1 (``do_classifier_free_guidance``), combined as ``(g + 1) * cond - g *
uncond``. With no negative prompt the unconditional text is zeros under an all-masked mask; a
negative prompt is cut to the prompt's length. The U-Net takes the scheduler's timestep and
predicts the noise (DDPM); the movq (a ``VQModel``) decodes the latents as they are, unscaled.

Sizes: the pipeline makes ``8 * ceil(side / 64)`` latents a side whatever its movq (it assumes an
8x one): a side the movq renders exactly is a multiple of ``8 *`` the movq's downsampling (64 for the
real one).

The tiny pipeline: a stock ``Kandinsky3Pipeline`` with a 2-level U-Net of 2 blocks a level (the
class needs 2: with one, an up level's self-attention gets the wrong width), whose levels hold 6
cross-attention layers as the class lays them out for 2 levels (the second down level, both up
levels); 4 levels, the real layout, would downsample the tiny 8 x 8 latents to 1 x 1, where a
batch of one fails its group norms. A 2-layer byte-level T5 and a 3-block movq (4x, so 32-pixel
images come from the pipeline's 8 x 8 latents).
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import Inversion, cast
from textloc.architectures.spec import CROSS, UNET_SIGNATURE, AttentionRule, Family, PublishedDenoiser, TinyPipeline

#: The token length ``encode_prompt`` pads T5's tokens to before cutting them (its ``max_length``).
_PADDED_LENGTH = 128


def _check_text(encoded: tuple) -> None:
    """Refuse a call whose prompts have different token lengths: ``encode_prompt`` returns the
    embeddings cut to the longest prompt plus one token and the keep-mask, and the attention pool's
    query averages the padding too."""
    lengths = encoded[2].sum(-1)
    if (lengths != lengths[0]).any():
        raise ValueError(
            f"Kandinsky 3 pads a call's prompts ({lengths.tolist()} text tokens) to the longest and its attention pool "
            "averages the padding, so a shorter row is not its own image: textloc runs it only on prompts of one token "
            "length (run others one at a time)."
        )


def _movq(seed: int) -> Any:
    """Kandinsky 3's movq in small: a ``VQModel`` of 4 latent channels, 4x. Group-normed: the real one's
    spatial norm fixes 32 groups, too wide for a tiny decoder, and no text reaches the movq."""
    from diffusers import VQModel

    return parts.init(
        seed, VQModel, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8),
        layers_per_block=1, latent_channels=4, num_vq_embeddings=64, norm_num_groups=4, vq_embed_dim=4,
    )


def _kandinsky3(seed: int) -> dict[str, Any]:
    from diffusers import DDPMScheduler, Kandinsky3UNet

    tokenizer = parts.t5_tokenizer()
    unet = parts.init(
        seed, Kandinsky3UNet, in_channels=4, time_embedding_dim=32, groups=4, attention_head_dim=4,
        layers_per_block=2, block_out_channels=(16, 16), cross_attention_dim=32, encoder_hid_dim=parts.TEXT_WIDTH,
    )
    # Every conditional norm starts at zero (Kandinsky3ConditionalGroupNorm.__init__): the random
    # model would ignore its time embedding, and with it the pooled text. Drawn like any linear layer.
    for module in unet.modules():
        if type(module).__name__ == "Kandinsky3ConditionalGroupNorm":
            module.context_mlp[1].reset_parameters()
    return dict(
        tokenizer=tokenizer,
        text_encoder=parts.t5_encoder(seed, tokenizer),
        unet=unet,
        # Kandinsky 3's scheduler config: DDPM, linear betas, the noise predicted.
        scheduler=DDPMScheduler(beta_schedule="linear", clip_sample=False, thresholding=False, prediction_type="epsilon"),
        movq=_movq(seed),
    )


def movq_factor(pipe: Any) -> int:
    """How many pixels a side one latent of the pipeline's movq makes."""
    return 2 ** (len(pipe.movq.config.block_out_channels) - 1)


class Kandinsky3Inversion(Inversion):
    """DDIM inversion in the movq's unscaled latents, the text as the pipeline cuts it."""

    def size_multiple(self, pipe: Any) -> int:
        # The pipeline's latents are 8 * ceil(side / 64) a side: exact where the side is a multiple of 8 movq latents.
        return 8 * movq_factor(pipe)

    def encode_image(self, pipe, pixels, generators=None):
        # The movq's encoder is deterministic (no posterior to draw from), and the pipeline decodes
        # its latents unscaled.
        with cast(pipe.movq, pipe.movq.dtype):
            return pipe.movq.encode(pixels.to(pipe.movq.dtype)).latents.float()

    def decode_sample(self, pipe, sample, height, width):
        return pipe.movq.decode(sample.to(pipe.movq.dtype), force_not_quantize=True).sample.float()

    def conditioning(self, pipe, prompts, arguments, height, width):
        embeds, _, mask, _ = pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, num_images_per_prompt=1, device=pipe._execution_device, _cut_context=True,
        )
        _check_text((embeds, None, mask))
        return {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}

    def predict(self, pipe, sample, timestep, conditioning):
        return pipe.unet(sample, timestep, **conditioning, return_dict=False)[0]


KANDINSKY_3 = PublishedDenoiser(
    "Kandinsky 3", "Kandinsky3UNet", {}, _PADDED_LENGTH,
    "diffusers' class defaults, which are the original code's U-Net (ai-forever/Kandinsky-3, get_T2I_unet: 384 channels "
    "x (1, 2, 4, 8), 3 blocks a level, 64-wide heads, a 4096-wide context from Flan-UL2); the diffusers config.json "
    "itself not read here; text: the 128 tokens encode_prompt pads to, which it cuts to the call's longest prompt plus one",
)

FAMILY = Family(
    name="kandinsky3",
    denoisers=("Kandinsky3UNet",),
    pipelines=("Kandinsky3Pipeline",),
    attention=(
        AttentionRule("Attention", CROSS, where="*_blocks.*.attentions.[1-9]*.attention"),
        AttentionRule("Attention", None, where="*_blocks.*.attentions.0.attention"),
    ),
    signature=UNET_SIGNATURE,
    check_text=_check_text,
    pooled="add_time_condition.attention",
    tiny={"kandinsky3": TinyPipeline("Kandinsky3Pipeline", _kandinsky3)},
    published=(KANDINSKY_3,),
    inversion=Kandinsky3Inversion(),
)
