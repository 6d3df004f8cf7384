"""Patch the text K/V of attention layers: :func:`patch`, :func:`patch_rows`, :func:`run_with_patches`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

import torch

from textloc import seeding
from textloc.engine.choices import BranchChoice
from textloc.engine.cache import TextCache
from textloc.engine.install import hooked, pipeline_kwargs, run_pipeline
from textloc.engine.plan import KV, RowPatch, StepWindow, patch_list, validate_patch
from textloc.engine.recording import record_text
from textloc.engine.units import AttentionLayer, LayerSelector, select_layers


@contextlib.contextmanager
def patch(
    pipe: Any,
    layers: LayerSelector,
    source: str | TextCache,
    patch_steps: StepWindow = None,
    heads: Sequence[int] | None = None,
    branch: BranchChoice = "cond",
    kv: KV = "both",
    **text_kwargs: Any,
) -> Iterator[None]:
    """Inside this context, ``layers`` receive the text signal of ``source`` instead of the prompt's.

    ``source`` is a :class:`TextCache` from :func:`record`, or a prompt. A prompt works directly
    for ``cross`` and ``added_kv`` layers, whose text K/V do not depend on the step (injection,
    encoded once by :func:`record_text`); ``joint`` and ``single`` layers need a cache recorded
    with the same generation settings (``tl.record(pipe, layers, source, **same_kwargs)``), or
    :func:`run_with_patches`, which generates the source alongside in one batch. With a prompt
    source, ``text_kwargs`` are the arguments of the patched call (those that shape the text
    encoding are used: ``negative_prompt``, ``max_sequence_length``, ``guidance_scale``, ...).
    ``patch_steps``, ``heads``, ``branch`` and ``kv`` (``"k"``, ``"v"`` or ``"both"``) are as in
    :class:`RowPatch`. On exit, normal or not, the hooks are removed and the pipeline is exactly
    as before.
    """
    if "steps" in text_kwargs:
        raise TypeError("patch's step window is called patch_steps (steps= was its old name).")
    selected = select_layers(pipe, layers)
    if heads is not None and (isinstance(heads, (int, str)) or not isinstance(heads, Iterable)):
        raise TypeError(f"heads is a list of head indices, e.g. [{heads if isinstance(heads, int) else 0}], not {heads!r}.")
    row_patch = RowPatch(
        tuple(layer.name for layer in selected), source, patch_steps=patch_steps,
        heads=None if heads is None else tuple(heads), branch=branch, kv=kv,
    )
    validate_patch(row_patch, {layer.name: layer for layer in selected})
    if isinstance(source, str):
        row_patch = RowPatch(**{**vars(row_patch), "source": record_text(pipe, selected, source, **text_kwargs)})
    elif text_kwargs:
        raise TypeError(f"Unexpected arguments {sorted(text_kwargs)}: they only apply to a prompt source.")
    elif not isinstance(source, TextCache):
        raise TypeError(f"source is a prompt (str) or a TextCache, not {type(source).__name__}.")
    with hooked(pipe, selected, [row_patch]):
        yield


@contextlib.contextmanager
def patch_rows(pipe: Any, patches: Sequence[RowPatch]) -> Iterator[None]:
    """Inside this context, every pipeline call runs with ``patches``, each on its own batch row.

    The per-row counterpart of :func:`patch` for calls the caller makes itself: ``RowPatch.row``
    and an ``int`` ``source`` index the rows of a CFG branch (the prompts of the call, times
    ``num_images_per_prompt``). :func:`run_with_patches` is this context around one call that it
    makes, with every row on the same noise.
    """
    selected = patched_layers(pipe, patches)
    with hooked(pipe, selected, patches):
        yield


def patched_layers(pipe: Any, patches: Sequence[RowPatch]) -> list[AttentionLayer]:
    """The layers ``patches`` name, each patch checked against them."""
    patches = patch_list(patches)
    names = sorted({name for p in patches for name in p.layers})
    selected = select_layers(pipe, names) if names else []
    by_name = {layer.name: layer for layer in selected}
    for p in patches:
        validate_patch(p, by_name)
    return selected




def run_with_patches(
    pipe: Any,
    prompts: Sequence[str],
    patches: Sequence[RowPatch],
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    on_output: Callable[[Any, torch.Tensor], None] | None = None,
    grad_steps: Collection[int] = (),
    stop_at_step: int | None = None,
    replays: Sequence[RowPatch] = (),
    **generate_kwargs: Any,
) -> Any:
    """One batched generation in which each row may carry its own patch.

    ``prompts[i]`` is row ``i``; a patch with ``source=j`` gives its row the text K/V that row ``j``
    computes in the same batch, at the same step and branch. ``generator`` is one
    ``torch.Generator`` whose state is copied to every row, so all rows start from the same noise
    (default: seed 0 on the CPU), or one generator per row. A sweep over L layers — rows 0..L-1
    patched from a source row L — is thus one generation and equals L separate patched runs.

    ``on_output(call, prediction)`` sees the denoiser's prediction at every call (``call.step``,
    ``call.branch_rows``); at ``grad_steps`` the prediction carries autograd history back to any
    tensor ``strength`` of the patches. ``stop_at_step`` ends the generation when that step would
    begin (the return value is then ``None``).

    ``replays`` are patches that never enter the run: at ``grad_steps``, each layer that one of
    them names (one replay per layer) is called a second time on the inputs it has just received,
    with the replay added to its patches, and ``call.replays[layer name]`` holds a
    :class:`LayerReplay`: the layer's output as a node of the autograd graph, and its exactly
    patched output. A live source row of a replay is read inside that second call, from the
    same batch. This is how the attention output of a patched layer is computed, not linearized,
    while the rest of the pass is differentiated.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts is a list with one prompt per batch row, not a single string.")
    if "seed" in generate_kwargs:
        raise TypeError("run_with_patches takes generator= (e.g. tl.generator(0), copied to every row), not seed=.")
    prompts = list(prompts)
    generators = seeding.per_row(generator, len(prompts))
    patches, replays = patch_list(patches), patch_list(replays)
    selected = patched_layers(pipe, [*patches, *replays])
    for p in [*patches, *replays]:
        for row in (p.row, p.source if isinstance(p.source, int) else None):
            if row is not None and not 0 <= row < len(prompts):
                raise ValueError(f"Patch row {row} is outside the batch of {len(prompts)} prompts.")
    replayed = [name for p in replays for name in p.layers]
    twice = sorted({name for name in replayed if replayed.count(name) > 1})
    if twice:
        raise ValueError(f"One replay per layer: {', '.join(twice)} would be replayed more than once.")
    kwargs = pipeline_kwargs(pipe, generate_kwargs)
    if kwargs.get("num_images_per_prompt", 1) != 1:
        raise ValueError("run_with_patches addresses rows by prompt: repeat a prompt instead of num_images_per_prompt.")
    if grad_steps and on_output is None:
        raise ValueError("grad_steps without on_output: nothing would use the gradients.")
    if replays and not grad_steps:
        raise ValueError("replays without grad_steps: layers are replayed at the gradient steps only.")
    hooks = hooked(
        pipe, selected, patches, stop_at_step=stop_at_step, grad_steps=frozenset(grad_steps), on_output=on_output, replays=replays,
    )
    with hooks:
        return run_pipeline(pipe, prompt=prompts, generator=generators, **kwargs)


