"""What the text K/V projections of attention layers read: :func:`text_input_moments`, and for
prompt pairs that line up token by token, :func:`paired_text_input_moments`.

A change ``ΔW`` to a projection moves the output of an input ``x`` by ``ΔW x``; over the text
tokens of some prompts its mean square is ``tr(ΔW Σ ΔWᵀ)``, where ``Σ = E[x xᵀ]`` is the second
moment of those tokens' inputs. With ``Σ`` recorded once, how far a LoRA moves those prompts' text
keys and values is a quadratic in its weights, with no forward pass (the anchor of
:func:`textloc.finetune.train_lora`). A closed-form edit that maps source prompts' tokens to their
targets' (:func:`textloc.finetune.closed_form_edit`) needs, besides, the cross moment ``E[t sᵀ]`` of
a target token's input ``t`` and its source's ``s`` at the same position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from textloc import seeding
from textloc.architectures.spec import STEP_INDEPENDENT_KINDS
from textloc.engine.input_moments import InputMoments, InputTokens, text_kv_columns
from textloc.engine.install import hooked, pipeline_kwargs, run_pipeline
from textloc.engine.recording import one_text_pass
from textloc.engine.units import AttentionLayer, LayerSelector, select_layers
from textloc.pipeline_calls import prompt_token_ids


#: Where a read of prompt-shaped layers ends: at the second step, every CFG pass of the first done.
STOP_AFTER_FIRST = 1


def text_input_moments(
    pipe: Any,
    layers: LayerSelector,
    prompts: Sequence[str],
    *,
    batch_size: int = 8,
    progress: bool = True,
    **generate_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """The second moment ``E[x xᵀ]`` (float32, on the CPU) of what each text K/V projection of
    ``layers`` reads over the text tokens of ``prompts``, keyed by its full module path.

    Every token a layer attends to counts (its padding where the model attends to it), in every
    CFG branch the pipeline runs; prompts go ``batch_size`` at a time, each batch of one token
    length. Step-independent layers (``cross``, ``added_kv``, ...) read the prompt alone: one text
    encoding and one denoiser pass per batch, on the smallest image. Layers that rewrite the text
    at every step (``joint``, ``single``) are read at every step of a generation with
    ``generate_kwargs`` (each batch from seed 0 unless they hold a ``generator``).
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts is a non-empty list of prompts, e.g. ['A sign that says \"OPEN\".'].")
    _check_batch_size(batch_size)
    selected = _text_layers(pipe, layers)
    static = all(layer.kind in STEP_INDEPENDENT_KINDS for layer in selected)
    kwargs = _pass_kwargs(pipe, generate_kwargs, static)
    moments = InputMoments()
    seeded = kwargs.get("generator") is None
    for batch in tqdm(_batches(pipe, prompts, batch_size, generate_kwargs), desc="text inputs", disable=not progress):
        if seeded:  # each batch from the same seed unless the caller gave a generator
            kwargs["generator"] = seeding.generator(0)
        with hooked(pipe, selected, projection_inputs=moments, stop_at_step=STOP_AFTER_FIRST if static else None):
            run_pipeline(pipe, prompt=batch, **kwargs)
    return moments.moments()


class PairMoments(NamedTuple):
    """One projection's moments over prompt pairs: ``s`` a source token's input, ``t`` its target's at
    the same position (float32, on the CPU)."""

    source: torch.Tensor  #: ``E[s sᵀ]``
    cross: torch.Tensor  #: ``E[t sᵀ]``
    target: torch.Tensor  #: ``E[t tᵀ]``


def paired_text_input_moments(
    pipe: Any,
    layers: LayerSelector,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    progress: bool = True,
    **generate_kwargs: Any,
) -> dict[str, PairMoments]:
    """For ``(source, target)`` prompt pairs whose tokens line up one to one (the same number under
    every tokenizer of the pipeline, e.g. a word swapped for one as long): per text K/V projection of
    ``layers`` (full module path), the :class:`PairMoments` of what it reads over the pairs' attended
    tokens, in every CFG branch the pipeline runs.

    Only layers whose text K/V depend on the prompt alone (``cross``, ``added_kv``, ``refiner``, ...)
    are read: one text encoding a side per batch. Where the text is rewritten at every step with the
    image (``joint``, ``single``), a source's and a target's tokens are not read on the same inputs,
    and such a layer is refused.
    """
    if isinstance(pairs, str) or not pairs or not all(
        isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(prompt, str) for prompt in pair) for pair in pairs
    ):
        raise ValueError("pairs is a non-empty list of (source, target) prompts, e.g. [('A sign that says \"DAMN\".', 'A sign that says \"BOOK\".')].")
    _check_batch_size(batch_size)
    selected = _text_layers(pipe, layers)
    moving = [layer for layer in selected if layer.kind not in STEP_INDEPENDENT_KINDS]
    if moving:
        raise ValueError(
            f"{moving[0].name} is a {moving[0].kind} layer: its text tokens change with the image at every step, so a source "
            f"prompt's and a target's are not read on the same inputs. Pairs are read on layers whose text K/V depend on the "
            f"prompt alone ({', '.join(kind for kind in STEP_INDEPENDENT_KINDS if kind != 'pooled')})."
        )
    for index, (source, target) in enumerate(pairs):  # checked before any text is encoded
        if _token_lengths(pipe, source, generate_kwargs) != _token_lengths(pipe, target, generate_kwargs):
            raise ValueError(
                f"Pair {index} does not line up token by token: {source!r} and {target!r} are tokenized to different lengths. "
                "Give a target of the same number of tokens, e.g. the source with a word swapped for one as long."
            )
    kwargs = _pass_kwargs(pipe, generate_kwargs, static=True)
    tokens = InputTokens()
    sums: dict[str, list[torch.Tensor]] = {}
    counts: dict[str, int] = {}
    for batch in tqdm(_batches(pipe, pairs, batch_size, generate_kwargs), desc="text input pairs", disable=not progress):
        read = []
        for side in (0, 1):
            kwargs["generator"] = seeding.generator(0)  # the text alone shapes what these layers read; seeded all the same
            with hooked(pipe, selected, projection_inputs=tokens, stop_at_step=STOP_AFTER_FIRST):
                run_pipeline(pipe, prompt=[pair[side] for pair in batch], **kwargs)
            read.append(tokens.take())
        for path, source in read[0].items():
            target = read[1][path]
            if target.shape != source.shape:  # a tokenizer the check above cannot see (a processor's)
                raise ValueError(f"{path} read {source.shape[0]} text tokens of the sources but {target.shape[0]} of their targets: the pairs do not line up token by token.")
            products = [source.T @ source, target.T @ source, target.T @ target]
            sums[path] = products if path not in sums else [total + product for total, product in zip(sums[path], products)]
            counts[path] = counts.get(path, 0) + source.shape[0]
    return {path: PairMoments(*(total.div(counts[path]).cpu() for total in totals)) for path, totals in sums.items()}


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: prompts per pipeline call, a positive integer.")


def _text_layers(pipe: Any, layers: LayerSelector) -> list[AttentionLayer]:
    """The selected layers; a unit with no text tokens is refused before any work."""
    selected = select_layers(pipe, layers)
    for layer in selected:
        text_kv_columns(layer)
    return selected


def _pass_kwargs(pipe: Any, generate_kwargs: dict[str, Any], static: bool) -> dict[str, Any]:
    """The call's arguments: with only prompt-shaped layers, the smallest image, stopped after the
    first step (:data:`STOP_AFTER_FIRST`) of two: PixArt-α's pipeline takes a one-step call for a
    distilled sampler's and fails on its own scheduler."""
    kwargs = pipeline_kwargs(pipe, generate_kwargs)
    if static:
        kwargs.update(one_text_pass(pipe), num_inference_steps=2, output_type="latent" if hasattr(pipe, "vae") else "pt")
    return kwargs


def _token_lengths(pipe: Any, prompt: str, generate_kwargs: dict[str, Any]) -> tuple[int, ...]:
    return tuple(len(ids) for ids in prompt_token_ids(pipe, prompt, bool(generate_kwargs.get("clean_caption", False))))


def _batches(pipe: Any, items: Sequence[Any], size: int, generate_kwargs: dict[str, Any]) -> list[list[Any]]:
    """``items`` (prompts, or pairs by their first) in batches of up to ``size`` prompts of one token
    length each: families that give each row its own text length (Lumina 2, Qwen-Image 2.1, ...) take
    no mixed batch, and the moments are sums, so the order is free."""
    groups: dict[tuple[int, ...], list[Any]] = {}
    for item in items:
        groups.setdefault(_token_lengths(pipe, item if isinstance(item, str) else item[0], generate_kwargs), []).append(item)
    return [group[start : start + size] for group in groups.values() for start in range(0, len(group), size)]
