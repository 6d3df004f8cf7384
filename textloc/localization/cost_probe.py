"""Two short generations of a localization's own kind, timed: what one denoiser call, the rest of a
generation and reading an image cost at the run's size, and the activation memory of a pass."""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from textloc.architectures import family_of
from textloc.engine import AttentionLayer, denoiser, run_with_patches
from textloc.localization.sweep import PatchSettings, unit_patches
from textloc.scoring.ocr import OCR
from textloc.scoring.prompts import PromptPair, SceneJudge
from textloc.seeding import generator


@dataclass
class Probe:
    """What the probe generations measured.

    ``calls_per_step``: the denoiser calls of each step of a full generation; ``branch_calls_per_step``:
    of them, those that hold the CFG branch a screen differentiates (one backward pass each).
    ``call_seconds``: ``(rows, seconds)`` of one denoiser call at two batch sizes. ``fixed_seconds_per_row``:
    a full generation's time beside its denoiser calls (text encoding, decoding, the scheduler), per
    prompt row. ``read_seconds``: reading one new image (OCR, and the scene judge if any).
    ``activation_bytes``: ``(rows, bytes)`` of one pass without gradients at the largest batch, and
    with autograd keeping what a backward pass needs (the screens' gradient steps).
    """

    calls_per_step: list[int]
    branch_calls_per_step: list[int]
    call_seconds: tuple[tuple[int, float], tuple[int, float]]
    fixed_seconds_per_row: float
    read_seconds: float
    text_tokens: int | None
    activation_bytes: tuple[int, int]
    grad_activation_bytes: tuple[int, int]
    device: str

    def seconds_per_call(self, rows: int) -> float:
        """One denoiser call at ``rows`` prompt rows: a line through the two measured sizes."""
        (small, at_small), (large, at_large) = self.call_seconds
        if large == small:
            return at_small
        return max(0.0, at_small + (rows - small) * (at_large - at_small) / (large - small))


def probe(
    pipe: Any, pair: PromptPair, layers: list[AttentionLayer], settings: PatchSettings, seed: int, max_rows: int,
    generate_kwargs: dict[str, Any], ocr: OCR, judge: SceneJudge | None,
) -> Probe:
    """Time a full patched generation of three rows (source, target, one patched: a held-out
    generation) and three steps of one at ``max_rows`` rows (the largest batch of the run)."""
    model = denoiser(pipe)
    max_rows = max(max_rows, 3)  # a run of screens alone has batches of two
    prompts = [pair.source, pair.target, *[pair.source] * (max_rows - 2)]
    plan = [patch for row in range(2, max_rows) for patch in unit_patches([layers[(row - 2) % len(layers)].name], row, settings)]
    branch = "uncond" if settings.branch == "uncond" else "cond"

    def run(rows: int, stop_at_step: int | None) -> tuple[list[tuple[int, bool, float]], Any, tuple[tuple, dict], int | None, float]:
        """(step, holds the branch, seconds) of each denoiser call, the output, the last call's
        inputs, the text tokens, the total seconds."""
        noted: list[tuple[int, bool, int | None]] = []
        seconds: list[float] = []
        last: dict[str, Any] = {}

        def before(module, args, kwargs):
            last["inputs"], last["start"] = (args, kwargs), time.perf_counter()

        def after(module, args, kwargs, output):
            seconds.append(time.perf_counter() - last["start"])

        def on_output(call, prediction):
            noted.append((call.step, branch in call.branch_rows, call.text_tokens()))

        # Torch's hooks wrap the engine's, so each call's seconds include the engine's work on it.
        handles = [model.register_forward_pre_hook(before, with_kwargs=True), model.register_forward_hook(after, with_kwargs=True)]
        began = time.perf_counter()
        try:
            output = run_with_patches(
                pipe, prompts[:rows], [patch for patch in plan if patch.row < rows], generator=generator(seed),
                on_output=on_output, stop_at_step=stop_at_step, output_type="np", **generate_kwargs,
            )
        finally:
            for handle in handles:
                handle.remove()
        calls = [(step, holds, spent) for (step, holds, _), spent in zip(noted, seconds, strict=True)]
        return calls, output, last["inputs"], noted[0][2], time.perf_counter() - began

    run(3, stop_at_step=1)  # warm-up: the first calls of a process allocate
    calls, output, small_inputs, text_tokens, total = run(3, stop_at_step=None)
    steps = max(step for step, _, _ in calls) + 1
    calls_per_step = [sum(1 for step, _, _ in calls if step == s) for s in range(steps)]
    branch_calls = [sum(1 for step, holds, _ in calls if step == s and holds) for s in range(steps)]
    denoising = sum(seconds for _, _, seconds in calls)
    at_small = float(np.median([seconds for _, _, seconds in calls[1:]] or [calls[0][2]]))
    # Three steps at the largest batch, the first of them a warm-up at that size.
    large_calls, _, large_inputs, _, _ = run(max_rows, stop_at_step=min(3, steps))
    warm = [seconds for step, _, seconds in large_calls if step > 0] or [seconds for _, _, seconds in large_calls]
    return Probe(
        calls_per_step=calls_per_step,
        branch_calls_per_step=branch_calls,
        call_seconds=((3, at_small), (max_rows, float(np.median(warm)))),
        fixed_seconds_per_row=max(0.0, total - denoising) / 3,
        read_seconds=_read_seconds(np.asarray(output.images), [pair.source, pair.target, pair.source], ocr, judge),
        text_tokens=text_tokens,
        activation_bytes=(max_rows, _peak_bytes(model, large_inputs)),
        grad_activation_bytes=(3, _peak_bytes(model, small_inputs, sample=family_of(pipe).signature.sample)),
        device=str(next(model.parameters()).device),
    )


def _read_seconds(images: np.ndarray, prompts: list[str], ocr: OCR, judge: SceneJudge | None) -> float:
    """Seconds to read one image the OCR has not seen (it caches what it read: one pixel of each is
    nudged, so that these are new to it)."""
    fresh = images.copy()
    fresh[:, 0, 0, 0] = np.where(fresh[:, 0, 0, 0] > 0.5, fresh[:, 0, 0, 0] - 1 / 255, fresh[:, 0, 0, 0] + 1 / 255)
    began = time.perf_counter()
    ocr.read(list(fresh))
    if judge is not None:
        judge(list(fresh), prompts)
    return (time.perf_counter() - began) / len(fresh)


def _peak_bytes(model: torch.nn.Module, inputs: tuple[tuple, dict], sample: str | None = None) -> int:
    """The most memory one call of ``model`` on ``inputs`` holds beyond what existed before it: on a
    GPU, torch's allocator peak; elsewhere, the tensors the call's ops made that were alive together.
    With ``sample`` (the argument's name), the sample requires grad, so autograd keeps what a
    backward pass needs, as at a screen's gradient steps."""
    args, kwargs = inputs
    if sample is not None:
        if sample in kwargs:
            kwargs = {**kwargs, sample: _requiring_grad(kwargs[sample])}
        else:
            args = (_requiring_grad(args[0]), *args[1:])
    device = next(model.parameters()).device

    def call() -> None:
        with torch.set_grad_enabled(sample is not None):
            model(*args, **kwargs)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        return torch.cuda.max_memory_allocated(device) - before
    with _LiveBytes() as live:
        call()
    return live.peak


def _requiring_grad(sample: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """A denoiser's sample (Z-Image's: a list of per-row samples) as a leaf that requires grad."""
    if isinstance(sample, (list, tuple)):
        return [row.detach().requires_grad_() for row in sample]
    return sample.detach().requires_grad_()


class _LiveBytes(TorchDispatchMode):
    """The bytes of the storages that ops allocate while active, counted until each is freed: their
    peak. Views allocate nothing and are not counted; tensors made before (the weights) neither."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._alive: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(output):
            if isinstance(tensor, torch.Tensor) and not tensor._is_view():
                self._count(tensor.untyped_storage())
        return output

    def _count(self, storage: torch.UntypedStorage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if not size or key in self._alive:  # empty, or written in place
            return
        self._alive.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._alive.discard(key)
        self.live -= size

