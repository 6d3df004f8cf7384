"""Attention probabilities: the engine's one processor-level hook (Prompt-to-Prompt needs it).

Everything else in the engine changes projection outputs and leaves processors alone.
Prompt-to-Prompt edits softmax(QK^T / sqrt(d)) itself, which fused SDPA kernels never
materialize, so here, and only here, the engine swaps processors: for the context's lifetime the
chosen layers run ``_ExplicitAttention``, which repeats diffusers' AttnProcessor2_0 /
AttnAddedKVProcessor2_0 step for step except that it computes the attention weights explicitly
when asked to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from textloc.engine.choices import Branch
from textloc.engine.install import hooked
from textloc.engine.run_state import RunState
from textloc.engine.units import AttentionLayer

# The diffusers processors whose computation `_ExplicitAttention` repeats; any other processor
# (IP-Adapter, linear attention, a user's own) would silently lose its behaviour, so it is refused.
_EXPLICIT_PROCESSORS = frozenset(
    {"AttnProcessor", "AttnProcessor2_0", "AttnAddedKVProcessor", "AttnAddedKVProcessor2_0", "SanaAttnProcessor2_0"}
)
PROBABILITY_KINDS = ("cross", "self", "added_kv")


@dataclass(frozen=True)
class AttentionCall:
    """One call of an attention layer inside a denoiser pass, as an edit of its probabilities sees it.

    The probabilities are ``[batch, heads, queries, keys]``. ``text_keys`` and ``image_keys`` are
    the key positions that hold text tokens and image tokens (``None`` where there are none):
    ``cross`` layers have only text keys, ``self`` layers only image keys, ``added_kv`` layers
    (DeepFloyd IF) both, text first.
    """

    layer: AttentionLayer
    step: int
    num_steps: int
    branch_rows: dict[Branch, list[int]]
    num_queries: int
    text_keys: slice | None
    image_keys: slice | None


ProbabilityEdit = Callable[[AttentionCall, torch.Tensor], torch.Tensor]


def has_attention_probabilities(layer: AttentionLayer) -> bool:
    """Whether :func:`edit_attention_probabilities` can run ``layer`` with explicit probabilities."""
    return layer.kind in PROBABILITY_KINDS and type(layer.module.processor).__name__ in _EXPLICIT_PROCESSORS


class _ExplicitAttention:
    """An attention processor that computes the attention probabilities and lets ``edit`` change them.

    The pre- and post-processing repeat diffusers' SDPA processors exactly; calls that ``when``
    declines go through the same fused SDPA call as the original, so they cost nothing extra.
    """

    def __init__(self, layer: AttentionLayer, state: RunState, edit: ProbabilityEdit, when: Callable[[AttentionCall], bool]):
        self.layer, self.state, self.edit, self.when = layer, state, edit, when

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if self.layer.kind == "added_kv":
            return self._added_kv(attn, hidden_states, encoder_hidden_states, attention_mask)
        return self._attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def _attention(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, text_length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, text_length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        is_self = encoder_hidden_states is None
        if is_self:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        query, key, value = (_split_heads(t, attn.heads) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        everything = slice(0, key.shape[2])
        text_keys, image_keys = (None, everything) if is_self else (everything, None)
        hidden_states = self._attend(query, key, value, attention_mask, text_keys, image_keys)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, query.shape[1] * query.shape[3]).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _added_kv(self, attn, hidden_states, encoder_hidden_states, attention_mask):
        residual = hidden_states
        hidden_states = hidden_states.view(hidden_states.shape[0], hidden_states.shape[1], -1).transpose(1, 2)
        batch, num_queries, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, num_queries, batch, out_dim=4)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = _split_heads(attn.to_q(hidden_states), attn.heads)
        key = _split_heads(attn.add_k_proj(encoder_hidden_states), attn.heads)
        value = _split_heads(attn.add_v_proj(encoder_hidden_states), attn.heads)
        text_length = key.shape[2]
        image_keys = None
        if not attn.only_cross_attention:  # the image's own K/V follow the text's: [text, image]
            key = torch.cat([key, _split_heads(attn.to_k(hidden_states), attn.heads)], dim=2)
            value = torch.cat([value, _split_heads(attn.to_v(hidden_states), attn.heads)], dim=2)
            image_keys = slice(text_length, key.shape[2])
        hidden_states = self._attend(query, key, value, attention_mask, slice(0, text_length), image_keys)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, residual.shape[1])
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        return hidden_states.transpose(-1, -2).reshape(residual.shape) + residual

    def _attend(self, query, key, value, mask, text_keys, image_keys) -> torch.Tensor:
        run = self.state
        call = AttentionCall(self.layer, run.call.step, run.num_steps, run.call.branch_rows, query.shape[2], text_keys, image_keys)
        if not self.when(call):
            return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        # SDPA's scale, not attn.scale: the processors this one stands in for use SDPA's default.
        # The softmax runs in float32 because fp16 scores overflow (SDPA kernels accumulate in
        # float32 too), and the edit sees float32 probabilities.
        scores = query.float() @ key.float().transpose(-1, -2) * query.shape[-1] ** -0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probabilities = scores.softmax(dim=-1)
        edited = self.edit(call, probabilities)
        if edited.shape != probabilities.shape:
            raise ValueError(f"The probability edit returned shape {tuple(edited.shape)} for {self.layer.name}; it must keep {tuple(probabilities.shape)}.")
        return edited.to(value.dtype) @ value


def _split_heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """``[batch, tokens, heads * dim]`` to ``[batch, heads, tokens, dim]``."""
    batch, tokens, inner = tensor.shape
    return tensor.view(batch, tokens, heads, inner // heads).transpose(1, 2)


@contextlib.contextmanager
def edit_attention_probabilities(
    pipe: Any,
    layers: Sequence[AttentionLayer],
    edit: ProbabilityEdit,
    *,
    when: Callable[[AttentionCall], bool] | None = None,
) -> Iterator[None]:
    """Inside this context, ``layers`` compute their attention probabilities explicitly and ``edit`` may change them.

    ``edit(call, probabilities)`` gets each call's :class:`AttentionCall` (layer, step, the CFG
    branch of each batch row, which keys are text and which image) and the float32 probabilities
    ``[batch, heads, queries, keys]`` (masked keys at zero), and returns the probabilities to use
    (it may edit them in place). ``when(call)`` chooses the calls that need them (default: all);
    the others run the fused kernel, since explicit probabilities cost memory quadratic in the
    image tokens. This is how Prompt-to-Prompt works; it applies to ``cross``, ``self`` and
    ``added_kv`` layers that run one of diffusers' standard processors. On exit, normal or not,
    every layer has its original processor object back.
    """
    for layer in layers:
        if layer.kind not in PROBABILITY_KINDS:
            raise ValueError(
                f"{layer.name} is a {layer.kind} layer, where text and image tokens attend jointly: it has no "
                "cross-attention probabilities, so Prompt-to-Prompt does not apply; edit text there by patching "
                "its text K/V instead (tl.run_with_patches, or tl.patch with a recorded TextCache)."
            )
        if not has_attention_probabilities(layer):
            raise ValueError(
                f"{layer.name} runs {type(layer.module.processor).__name__}; explicit attention probabilities "
                f"replace only diffusers' standard processors ({', '.join(sorted(_EXPLICIT_PROCESSORS))})."
            )
    originals = [(layer.module, layer.module.processor) for layer in layers]
    with hooked(pipe, []) as state:
        try:
            for layer in layers:
                layer.module.set_processor(_ExplicitAttention(layer, state, edit, when or (lambda call: True)))
            yield
        finally:
            for module, processor in originals:
                module.set_processor(processor)
