"""The small parts every tiny random pipeline is built from: character-level tokenizers, two-layer
text encoders, two-block autoencoders, all from configs written here (no file read, nothing
downloaded), each from a freshly seeded RNG so the same seed gives the same weights.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # each builder imports its classes when called: listing the families stays cheap
    import torch
    from diffusers import AutoencoderDC, AutoencoderKL
    from transformers import ByT5Tokenizer, CLIPTextModel, CLIPTokenizer, Gemma2Model, GemmaTokenizer, T5EncoderModel

# Every tokenizer here is character-level, so a prompt costs one token per character. 48 keeps
# the quoted word of templates such as 'Little panda holding a sign that says "HELLO".' (46
# characters) inside the window while staying cheap.
TEXT_LENGTH = 48
IMAGE_SIZE = 32
# Every VAE here has two blocks, so latents are half the image size.
LATENT_SIZE = IMAGE_SIZE // 2
TEXT_WIDTH = 32  # hidden size of every text encoder (each SD3 CLIP: half, see the sd3 family)

# Printable ASCII without whitespace: whitespace never reaches the vocabulary (CLIP splits on it,
# Gemma turns it into "▁").
CHARACTERS = [char for char in string.printable if not char.isspace()]

_Module = TypeVar("_Module", bound="torch.nn.Module")


def init(seed: int, model_class: Callable[..., _Module], *args: Any, **config: Any) -> _Module:
    """Build one model from a freshly seeded RNG, in eval mode (T5 dropout is on in train mode)."""
    import torch

    torch.manual_seed(seed)
    return model_class(*args, **config).eval()


def byte_characters() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE (Qwen's, Llama 3's) works in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


# --- text encoders -------------------------------------------------------------------------


def clip_tokenizer() -> CLIPTokenizer:
    """CLIP's byte-level BPE with no merges: one token per character, `</w>` closing a word."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in CHARACTERS:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_LENGTH)


def clip_text_encoder(
    seed: int, tokenizer: CLIPTokenizer, hidden_size: int, model_class: type[CLIPTextModel] | None = None,
    length: int = TEXT_LENGTH,
) -> CLIPTextModel:
    """A two-layer CLIP text encoder (``model_class``: CLIPTextModel, or one with a projection) with
    positions for ``length`` tokens."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return init(seed, model_class or CLIPTextModel, config)


def t5_tokenizer(length: int = TEXT_LENGTH) -> ByT5Tokenizer:
    from transformers import ByT5Tokenizer

    # Byte-level T5 tokenizer: needs no vocabulary file; no sentinel ids, the encoder never sees them.
    return ByT5Tokenizer(model_max_length=length, extra_ids=0)


def t5_encoder(seed: int, tokenizer: ByT5Tokenizer) -> T5EncoderModel:
    from transformers import T5Config, T5EncoderModel

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
    return init(seed, T5EncoderModel, config)


def decoder_config(config_class: Callable[..., Any], tokenizer: Any, layers: int, length: int = TEXT_LENGTH, **overrides: Any) -> Any:
    """The config of a tiny decoder-only text encoder (Qwen3, Mistral, GLM, Llama, Gemma 2):
    ``layers`` layers of width :data:`TEXT_WIDTH`, two query heads sharing one K/V head, positions
    for ``length`` tokens; ``overrides`` set or replace any field (special tokens, windows)."""
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=TEXT_WIDTH // 2,
        max_position_embeddings=length,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return config_class(**{**settings, **overrides})


def gemma_tokenizer(length: int = TEXT_LENGTH) -> GemmaTokenizer:
    """Gemma's BPE with no merges: one token per character, spaces as "▁", <bos> first (built from a
    vocabulary, transformers' GemmaTokenizer adds none unless told; the real one does)."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "▁": 5}
    for char in CHARACTERS:
        vocab.setdefault(char, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=length, add_bos_token=True)


def gemma_encoder(seed: int, tokenizer: GemmaTokenizer, length: int = TEXT_LENGTH) -> Gemma2Model:
    from transformers import Gemma2Config, Gemma2Model

    config = decoder_config(
        Gemma2Config, tokenizer, 2, length,
        query_pre_attn_scalar=TEXT_WIDTH // 2, sliding_window=length, bos_token_id=tokenizer.bos_token_id,
    )
    return init(seed, Gemma2Model, config)


# --- autoencoders ----------------------------------------------------------------------------


def autoencoder_kl(seed: int, latent_channels: int = 4, model_class: type | None = None, **config: Any) -> AutoencoderKL:
    """A two-block KL autoencoder (``model_class``: AutoencoderKL, or one alike such as FLUX.2's);
    ``config`` adds to or overrides its settings."""
    from diffusers import AutoencoderKL

    settings = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=latent_channels,
        sample_size=IMAGE_SIZE,
    )
    return init(seed, model_class or AutoencoderKL, **{**settings, **config})


def autoencoder_dc(seed: int) -> AutoencoderDC:
    from diffusers import AutoencoderDC

    return init(
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
