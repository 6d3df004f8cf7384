"""HunyuanDiT (v1.0-v1.2): a DiT whose ``attn2`` layers cross-attend to one text sequence, a
bilingual BERT's 77 tokens followed by mT5's 256 (diffusers ``hunyuan_transformer_2d.py``,
``HunyuanDiT2DModel.forward``): T5's states go through ``text_embedder`` to BERT's width, the two
are concatenated, every padded token is replaced by a learned ``text_embedding_padding`` row, and
each block calls ``attn2`` with no attention mask, so all 333 tokens are attended, the padding rows
included (a patched row takes its source's padding with its text K/V; there is no mask to carry).
The text reaches the image along one other path: an attention pool of the raw T5 states
(``time_extra_emb.pooler``, all 256 tokens) whose output joins the timestep embedding that
modulates every block and the output norm (``HunyuanCombinedTimestepTextSizeStyleEmbedding``). That
output is the pooled unit: text alone in every version, where the ``extra_embedder`` after it also
reads the image size and style in v1.0 and v1.1. Both kinds of unit depend on the prompt alone.
No LoRA can train the pool (it hands its projections' weights to ``F.multi_head_attention_forward``
without calling them): a LoRA on the pooled unit is refused. ``HunyuanDiTControlNetPipeline``'s
ControlNet reads the text too, in blocks of its own that are not units.

CFG: one batch ``[uncond, cond]`` (``pipeline_hunyuandit.py``: ``torch.cat([negative_prompt_embeds,
prompt_embeds])``), on when the pipeline's ``do_classifier_free_guidance`` says so. The pipeline
calls the transformer with the latents and timestep by position and the text as keywords
(``encoder_hidden_states``, ``text_embedding_mask``, ``encoder_hidden_states_t5``,
``text_embedding_mask_t5``); it pads the text to 77 and 256 tokens whatever the call's settings,
and the transformer's ``text_len``/``text_len_t5`` must match. ``HunyuanDiTPAGPipeline`` belongs
here by its transformer; set up for perturbed-attention guidance it is refused, as every family's
PAG pipeline is (:func:`textloc.engine.run_state.refuse_perturbed_attention_guidance`), and so is a
transformer after ``fuse_qkv_projections()`` (its processors run ``to_kv``, not the ``to_k``/``to_v``
the hooks sit on).

The tiny pipeline: a stock ``HunyuanDiTPipeline`` of 4 blocks of 2 heads (the last takes the first's
output as its long skip), a 2-layer BERT behind a character-level WordPiece tokenizer, the
byte-level T5 of the other tiny pipelines, a 4-block VAE (the pipeline sizes its rotary embedding
as if the VAE downsampled 8x, so it must: 32 px -> 4x4 latents -> 2x2 tokens) and the v-prediction
DDPM schedule of Tencent's training config.
"""

from __future__ import annotations

from typing import Any

from textloc.architectures import tiny_parts as parts
from textloc.architectures.inversion import CapturedInversion
from textloc.architectures.spec import CROSS, POOLED_LORA, SIZE_AS_ASKED, AttentionRule, Family, PublishedDenoiser, TinyPipeline

# What HunyuanDiTPipeline.__call__ pads each prompt to, and the transformer's pooler and padding
# rows are sized for.
_BERT_LENGTH, _T5_LENGTH = 77, 256


def _bert_tokenizer() -> Any:
    """BERT's WordPiece with every character a token: ``c`` opens a word, ``##c`` goes on one."""
    from transformers import BertTokenizer

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    for char in parts.CHARACTERS:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault("##" + char, len(vocab))
    return BertTokenizer(vocab=vocab, do_lower_case=False, model_max_length=_BERT_LENGTH)


def _bert_encoder(seed: int, tokenizer: Any) -> Any:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=parts.TEXT_WIDTH,
        intermediate_size=2 * parts.TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=_BERT_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
    )
    return parts.init(seed, BertModel, config)


def _hunyuan_dit(seed: int) -> dict[str, Any]:
    from diffusers import DDPMScheduler, HunyuanDiT2DModel

    tokenizer, t5_tokenizer = _bert_tokenizer(), parts.t5_tokenizer(_T5_LENGTH)
    transformer = parts.init(
        seed,
        HunyuanDiT2DModel,
        num_attention_heads=2,
        attention_head_dim=16,
        hidden_size=32,  # must equal heads x head size: the blocks take the patch embedding as it is
        in_channels=4,
        patch_size=2,
        sample_size=parts.IMAGE_SIZE // 8,  # latents: the pipeline's default size is this times 8
        num_layers=4,  # an even count, as the long skips pair the blocks: block 3 takes block 0's output
        mlp_ratio=2.0,
        learn_sigma=True,  # the pipeline always splits the prediction into mean and variance
        cross_attention_dim=parts.TEXT_WIDTH,  # BERT's width: its states enter as they are
        cross_attention_dim_t5=parts.TEXT_WIDTH,  # divisible by the pooler's 8 heads
        pooled_projection_dim=16,
        text_len=_BERT_LENGTH,
        text_len_t5=_T5_LENGTH,
        use_style_cond_and_image_meta_size=False,  # v1.2: the pooled text alone joins the timestep
    )
    vae = parts.autoencoder_kl(
        seed,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        scaling_factor=0.13025,  # sdxl-vae-fp16-fix's, as the real pipeline ships
    )
    return dict(
        vae=vae,
        text_encoder=_bert_encoder(seed, tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
        # HunyuanDiT's diffusion: v-prediction on SD's scaled-linear betas (its diffusion_v_pred.py).
        scheduler=DDPMScheduler(
            beta_start=0.00085, beta_end=0.02, beta_schedule="scaled_linear", prediction_type="v_prediction",
            clip_sample=False, steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        text_encoder_2=parts.t5_encoder(seed, t5_tokenizer),
        tokenizer_2=t5_tokenizer,
    )


class _HunyuanDiTInversion(CapturedInversion):
    """DDIM inversion of HunyuanDiT, as ``HunyuanDiTPipeline.__call__`` samples: the VAE's latents
    scaled (the default encoding: no shift), noise in the transformer's dtype; the transformer's
    learned variance is split off its prediction (v-prediction in the real model, as its scheduler
    config says), its size and style conditioning and rotary embedding taken from the capture."""

    flow = False

    def size_multiple(self, pipe: Any) -> int:
        import math

        # Its rotary grid counts height // 8 // patch_size tokens, whatever the VAE's factor.
        patch = pipe.transformer.config.patch_size
        return math.lcm(8 * patch, pipe.vae_scale_factor * patch)


HUNYUAN_DIT_1_2 = PublishedDenoiser(
    "HunyuanDiT v1.2", "HunyuanDiT2DModel",
    {
        "in_channels": 4, "patch_size": 2, "sample_size": 128, "hidden_size": 1408, "num_layers": 40,
        "mlp_ratio": 4.3637, "use_style_cond_and_image_meta_size": False,
    },
    333, "HunyuanDiT-v1.2-Diffusers transformer/config.json as a copy gives it (Tencent's DiT-g/2); text: 77 BERT + 256 T5 tokens",
)

FAMILY = Family(
    name="hunyuandit",
    denoisers=("HunyuanDiT2DModel",),
    pipelines=("HunyuanDiTPipeline",),
    attention=(AttentionRule("Attention", CROSS, when="is_cross_attention"),),
    call_defaults=SIZE_AS_ASKED,
    # The attention pool of the T5 states: its output, one vector per row, is the pooled text.
    pooled="time_extra_emb.pooler",
    refuses={
        POOLED_LORA: "its attention pool hands its projections' weights to F.multi_head_attention_forward and never "
        "calls them, so a LoRA on them would never run; train its attention layers ('attention')",
    },
    inversion=_HunyuanDiTInversion(),
    tiny={"hunyuandit": TinyPipeline("HunyuanDiTPipeline", _hunyuan_dit)},
    published=(HUNYUAN_DIT_1_2,),
)
