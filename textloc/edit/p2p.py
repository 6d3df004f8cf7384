"""Prompt-to-Prompt word swap (Hertz et al., 2022): the attention-editing baseline for text edits.

The source prompt and the new prompt run as the two rows of one batch, from the same noise. While
a step lies in the cross-replace window, the new prompt's cross-attention probabilities (the
conditional branch's) are replaced by the source's, token-aligned, so the new word is drawn where
and how the old one was; while it lies in the self-replace window, the source's self-attention
maps are copied too (only small maps, at most 16² queries), which keeps the layout. It needs the
attention probabilities themselves, so it runs without fused attention kernels on the layers it
edits: about twice one generation, plus the maps' memory.

It applies where a layer's image tokens attend to the text alone (``cross``) or to text and image
(``added_kv``, DeepFloyd IF); ``joint`` and ``single`` layers (SD3, FLUX) mix both streams, and are
refused with a pointer to textloc's patching edit.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from textloc import seeding
from textloc.engine import (
    ATTENTION_TEXT_KINDS,
    AttentionCall,
    AttentionLayer,
    attention_layers,
    StepWindow,
    check_step_window,
    edit_attention_probabilities,
    has_attention_probabilities,
    window_steps,
)
from textloc.pipeline_calls import call_kwargs, images_of, prompt_token_ids

# Prompt-to-Prompt's setting: self-attention maps are copied only at 16 x 16 tokens or fewer; a
# map costs memory quadratic in the image tokens, and the coarse maps are the ones that hold layout.
MAX_SELF_REPLACE_QUERIES = 16 * 16


def prompt_to_prompt(
    pipe: Any,
    prompt: str,
    new_prompt: str,
    *,
    cross_replace_steps: StepWindow = (0.0, 0.8),
    self_replace_steps: StepWindow = (0.0, 0.4),
    generator: torch.Generator | None = None,
    **generate_kwargs: Any,
) -> tuple[Any, Any]:
    """The source image and the word-swapped image, as one 2-row batched generation from one noise.

    ``new_prompt`` is ``prompt`` with one run of words replaced (a word swap). The windows are
    step windows as in :func:`textloc.engine.window_steps` (a fraction ``f`` is step
    ``floor(f * num_steps)``, the stop excluded); ``None`` switches that replacement off, and
    ``(0.0, 1.0)`` covers every step. ``generator`` (default ``textloc.seeding.generator(0)``) is
    copied to both rows, so both start from the same noise. ``generate_kwargs`` go to the pipeline
    call. Returns the pipeline's two images (PIL unless ``output_type`` says otherwise).
    """
    for window in (cross_replace_steps, self_replace_steps):
        check_step_window(window)
    if generate_kwargs.get("num_images_per_prompt", 1) != 1:
        raise ValueError("prompt_to_prompt makes one source and one edited image: call it once per seed, not num_images_per_prompt.")
    if generate_kwargs.get("complex_human_instruction", _default(pipe, "complex_human_instruction")):
        raise ValueError(
            "Sana's complex_human_instruction puts an instruction before the prompt and keeps only its tail, "
            "which moves the prompt's tokens: pass complex_human_instruction=[]."
        )
    layers = _edited_layers(pipe, replace_cross=cross_replace_steps is not None, replace_self=self_replace_steps is not None)
    kwargs = call_kwargs(pipe, **generate_kwargs)
    source_ids, target_ids = _token_ids(pipe, prompt, kwargs), _token_ids(pipe, new_prompt, kwargs)
    swap = WordSwap(source_ids, target_ids, cross_replace_steps, self_replace_steps)
    generators = seeding.copies(generator if generator is not None else seeding.generator(0), 2)
    with edit_attention_probabilities(pipe, layers, swap.edit, when=swap.applies):
        images = images_of(pipe(prompt=[prompt, new_prompt], generator=generators, **kwargs))
    return images[0], images[1]


def token_mapping(source_ids: Sequence[int], target_ids: Sequence[int], length: int) -> torch.Tensor:
    """Where each target token takes its attention from: ``M`` with ``target = source @ M``, ``[length, length]``.

    The two token lists differ in one span (a word swap). Tokens before and after it align one to
    one (after it, shifted by the difference in length); the target span covers the source span
    proportionally: each source token's probability is spread over the target tokens that overlap
    it when both spans are laid on [0, 1), so equal spans map one to one and the span's total
    probability is kept. Positions past the end of the prompts (padding) keep aligning by the same
    shift; a target position shifted past the last source position takes the last one.
    """
    source_ids, target_ids = list(source_ids)[:length], list(target_ids)[:length]
    prefix = 0
    while prefix < min(len(source_ids), len(target_ids)) and source_ids[prefix] == target_ids[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(source_ids), len(target_ids)) - prefix and source_ids[-1 - suffix] == target_ids[-1 - suffix]:
        suffix += 1
    source_span, target_span = len(source_ids) - suffix - prefix, len(target_ids) - suffix - prefix
    if (source_span == 0) != (target_span == 0):
        raise ValueError(
            "Prompt-to-Prompt's word swap replaces words: the new prompt only adds or drops tokens here; "
            "replace a word with another (the same number of words) instead."
        )
    mapping = torch.zeros(length, length)
    shift = len(source_ids) - len(target_ids)
    for target in range(length):
        if target < prefix:
            mapping[target, target] = 1.0
        elif target < prefix + target_span:
            # Target token t covers [t*m, (t+1)*m) and source token u covers [u*n, (u+1)*n) on a
            # grid of m*n cells; source token u gives it overlap/n of its probability.
            t = target - prefix
            for u in range(source_span):
                overlap = min((t + 1) * source_span, (u + 1) * target_span) - max(t * source_span, u * target_span)
                if overlap > 0:
                    mapping[prefix + u, target] = overlap / target_span
        else:
            mapping[min(target + shift, length - 1), target] = 1.0
    return mapping


class WordSwap:
    """The probability edit of one Prompt-to-Prompt word swap: batch row 0 is the source, row 1 the target.

    Only the conditional branch is edited. ``added_kv`` layers hold text and image keys in one
    softmax: the text part is the cross-attention map and the image part the self-attention map;
    when only one part is replaced the other is rescaled so that each query's weights still sum
    to one.
    """

    def __init__(self, source_ids: Sequence[int], target_ids: Sequence[int], cross_window: StepWindow, self_window: StepWindow):
        self.source_ids, self.target_ids = list(source_ids), list(target_ids)
        self.cross_window, self.self_window = cross_window, self_window
        longest = max(len(self.source_ids), len(self.target_ids))
        token_mapping(self.source_ids, self.target_ids, longest)  # refuses a non-swap before any generation
        self._mappings: dict[int, torch.Tensor] = {}

    def applies(self, call: AttentionCall) -> bool:
        """Whether ``call`` needs its probabilities: something is replaced there."""
        return len(call.branch_rows.get("cond", ())) == 2 and (self._replaces_text(call) or self._replaces_image(call))

    def _replaces_text(self, call: AttentionCall) -> bool:
        return call.text_keys is not None and _covers(self.cross_window, call)

    def _replaces_image(self, call: AttentionCall) -> bool:
        return call.image_keys is not None and call.num_queries <= MAX_SELF_REPLACE_QUERIES and _covers(self.self_window, call)

    def edit(self, call: AttentionCall, probabilities: torch.Tensor) -> torch.Tensor:
        source, target = call.branch_rows["cond"]
        source_row, edited = probabilities[source], probabilities[target]  # views: edits land in place
        replaced, kept = [], []
        if call.text_keys is not None:
            keys = call.text_keys
            if self._replaces_text(call):
                edited[..., keys] = source_row[..., keys] @ self._mapping(keys.stop - keys.start, probabilities)
            (replaced if self._replaces_text(call) else kept).append(keys)
        if call.image_keys is not None:
            keys = call.image_keys
            if self._replaces_image(call):
                edited[..., keys] = source_row[..., keys]
            (replaced if self._replaces_image(call) else kept).append(keys)
        if replaced and kept:  # added_kv with one part replaced: the kept part gets what is left
            (part,) = kept
            left = (1.0 - sum(edited[..., keys].sum(-1, keepdim=True) for keys in replaced)).clamp_min(0.0)
            edited[..., part] *= left / edited[..., part].sum(-1, keepdim=True).clamp_min(torch.finfo(edited.dtype).tiny)
        return probabilities

    def _mapping(self, length: int, like: torch.Tensor) -> torch.Tensor:
        if length not in self._mappings:
            longest = max(len(self.source_ids), len(self.target_ids))
            if longest > length:
                raise ValueError(
                    f"The prompts tokenize to {longest} tokens but the denoiser sees {length} text tokens: textloc "
                    "cannot tell which tokens it kept. Shorten the prompts (or raise max_sequence_length)."
                )
            self._mappings[length] = token_mapping(self.source_ids, self.target_ids, length)
        return self._mappings[length].to(like.device, like.dtype)


def _covers(window: StepWindow, call: AttentionCall) -> bool:
    return window is not None and call.step in window_steps(window, call.num_steps)


def _edited_layers(pipe: Any, replace_cross: bool, replace_self: bool) -> list[AttentionLayer]:
    """The layers whose probabilities the swap needs; a model with joint/single/prefix layers is refused."""
    wanted = attention_layers(pipe, ATTENTION_TEXT_KINDS)
    joint = sorted({layer.kind for layer in wanted if layer.kind in ("joint", "single", "prefix")})
    if joint:
        raise ValueError(
            f"Prompt-to-Prompt does not apply to {type(pipe).__name__}: its {'/'.join(joint)} layers attend to text and "
            "image jointly and have no cross-attention probabilities to replace; edit its text by patching the "
            "text K/V instead (tl.run_with_patches with a live source row, or tl.patch)."
        )
    if replace_self:
        # Linear-attention self layers (Sana) have no probabilities to copy: they are left alone.
        wanted += [layer for layer in attention_layers(pipe, "self") if has_attention_probabilities(layer)]
    if not replace_cross:
        wanted = [layer for layer in wanted if layer.kind != "cross"]
    return wanted


def _token_ids(pipe: Any, prompt: str, kwargs: dict[str, Any]) -> list[int]:
    """The prompt's token ids as the denoiser's text positions hold them (special tokens included).

    SDXL concatenates two text encoders along the feature axis, so both must give the same positions.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt_to_prompt edits one prompt; got {type(prompt).__name__}.")
    if getattr(pipe, "tokenizer", None) is None:
        raise ValueError(f"{type(pipe).__name__} has no tokenizer; Prompt-to-Prompt maps tokens between the two prompts.")
    ids, *others = prompt_token_ids(pipe, prompt, clean_caption=kwargs.get("clean_caption", False))
    if getattr(pipe, "tokenizer_2", None) is not None and len(others[0]) != len(ids):
        raise ValueError(
            f"{type(pipe).__name__}'s two tokenizers split {prompt!r} into different numbers of tokens, so "
            "a token position means different words to its two text encoders."
        )
    return ids


def _default(pipe: Any, argument: str) -> Any:
    """The default of one of the pipeline call's arguments (``None`` where it has no such argument)."""
    parameter = inspect.signature(pipe.__call__).parameters.get(argument)
    return None if parameter is None else parameter.default
