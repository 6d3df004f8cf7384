"""Record and patch the text keys/values of attention layers, on any diffusers pipeline.

How it works: the engine never replaces an attention processor. It registers ``diffusers.hooks``
on three kinds of modules while a context is open:

- the denoiser, to know the step, the CFG branch of each batch row and the text length;
- each selected attention module, to swap the text attention mask (PixArt, Sana pad their text);
- the layer's text K/V projections (``to_k``/``to_v`` or ``add_k_proj``/``add_v_proj``), whose
  outputs are recorded, or overwritten (keys, values or both) for chosen rows, heads, steps
  and branches.

Because only projection outputs change, every processor (SDPA, FLUX, joint, added-KV, LoRA-wrapped,
a user's own) keeps working unchanged, and closing the context removes the hooks and leaves the
pipeline exactly as it was. A patch source is either another row of the same batch (a "live"
source: the source prompt is generated alongside, with the same noise, which for joint layers is
exactly the paper's cached patching, with no cache to hold) or a :class:`TextCache` recorded
earlier with :func:`record`.

Text K/V of ``cross`` and ``added_kv`` layers depend on the prompt only, not on the step or the
image, so a cache stores them once; ``joint`` and ``single`` layers are stored per step and branch.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from textloc import seeding
from textloc.attention import AttentionLayer, LayerSelector, denoiser, select_layers
from textloc.fingerprint import module_fingerprint
from textloc.pipeline_calls import call_kwargs

# "skip_layer" is the extra pass of SD3's skip-layer guidance: the conditional rows again, with
# some blocks skipped. A patch on the conditional branch patches it too.
Branch = Literal["cond", "uncond", "skip_layer"]
BranchChoice = Literal["cond", "uncond", "both"]
# Which of a layer's text keys and values a patch replaces. The hooks name the two projection
# outputs by role, "key" and "value", whatever the layer kind calls the modules.
KV = Literal["k", "v", "both"]
KV_CHOICES: tuple[KV, ...] = ("k", "v", "both")
_KV_ROLES: dict[KV, tuple[str, ...]] = {"k": ("key",), "v": ("value",), "both": ("key", "value")}
# "cond" covers SD3's skip-layer pass, which reruns the conditional rows.
_BRANCHES_WRITTEN: dict[BranchChoice, tuple[Branch, ...]] = {
    "cond": ("cond", "skip_layer"), "uncond": ("uncond",), "both": ("cond", "uncond", "skip_layer"),
}
StepWindow = Union[tuple[Union[int, float, None], Union[int, float, None]], None]

STEP_INDEPENDENT_KINDS = ("cross", "added_kv")
_HOOK_PREFIX = "textloc"


# --------------------------------------------------------------------------------------------
# The cache


@dataclass
class TextKV:
    """Text keys and values of one layer at one denoiser pass and branch: ``[rows, text_tokens, dim]``."""

    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None = None  # the layer's text attention mask, where the model pads text


@dataclass
class TextCache:
    """Per-layer, per-pass, per-branch text K/V recorded from a generation.

    ``entries`` are keyed by ``(layer, position, branch)``: ``position`` indexes the scheduler's
    timesteps, which is the step itself for first-order schedulers, while the two denoiser passes
    of a second-order step (Heun, KDPM2) each have their own. Entries of step-independent layers
    (``cross``, ``added_kv``) are stored once, under position ``None``, and serve every step of
    any schedule. ``fingerprint`` identifies the denoiser's weights (:mod:`textloc.fingerprint`).
    """

    fingerprint: str
    prompts: list[str]
    num_steps: int
    layers: dict[str, str]  # name -> kind, in forward order
    entries: dict[tuple[str, int | None, Branch], TextKV] = field(default_factory=dict, repr=False)
    num_positions: int = 0  # len(scheduler.timesteps) of the recorded run

    def get(self, layer: str, position: int, branch: Branch) -> TextKV:
        """The entry for a layer at a scheduler position and branch; a clear error if it was not recorded."""
        entry = self.entries.get((layer, position, branch)) or self.entries.get((layer, None, branch))
        if entry is None and branch == "skip_layer":
            # A step-independent layer's text K/V are the conditional branch's in every pass.
            entry = self.entries.get((layer, None, "cond"))
        if entry is None:
            if layer not in self.layers:
                raise ValueError(f"The cache holds no layer {layer!r}; it holds {', '.join(self.layers)}.")
            missing = {
                "uncond": "it was recorded without classifier-free guidance",
                "skip_layer": "it was recorded without skip-layer guidance",
            }.get(branch, "it was recorded over fewer steps")
            raise ValueError(f"The cache has no {branch} entry for {layer} at scheduler position {position}: {missing}.")
        return entry

    @property
    def nbytes(self) -> int:
        """Memory held by the cached tensors, in bytes."""
        tensors = [t for e in self.entries.values() for t in (e.key, e.value, e.mask) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextCache:
        """A copy with every tensor moved (masks keep their dtype)."""
        moved = {
            key: TextKV(e.key.to(device, dtype), e.value.to(device, dtype), None if e.mask is None else e.mask.to(device))
            for key, e in self.entries.items()
        }
        return TextCache(self.fingerprint, list(self.prompts), self.num_steps, dict(self.layers), moved, self.num_positions)


# --------------------------------------------------------------------------------------------
# Patches and step windows


@dataclass(frozen=True)
class RowPatch:
    """One patch of a batched run: batch row ``row`` takes the text K/V of ``source`` at ``layers``.

    ``source`` is another row of the same batch (an ``int``) or a :class:`TextCache`
    (``source_row`` picks its row). ``row=None`` patches every row. ``patch_steps`` is a step
    window (see :func:`window_steps`); ``heads`` a subset of attention heads; ``branch`` the CFG
    branch (``"cond"`` also covers SD3's skip-layer guidance pass, which reruns the conditional
    rows). ``kv`` chooses what is replaced: ``"k"`` the text keys only (where the image attends),
    ``"v"`` the text values only (what it reads there), ``"both"`` both. ``strength`` blends the
    row's own K/V toward the source's (1 replaces them); a tensor strength that requires grad
    receives the gradient of whatever is computed from the run, which is how attribution patching
    works.
    """

    layers: tuple[str, ...]
    source: int | TextCache
    row: int | None = None
    source_row: int = 0
    patch_steps: StepWindow = None
    heads: tuple[int, ...] | None = None
    branch: BranchChoice = "cond"
    strength: float | torch.Tensor = 1.0
    kv: KV = "both"

    def branches(self) -> tuple[Branch, ...]:
        """The branches this patch writes to."""
        return _BRANCHES_WRITTEN[self.branch]

    def roles(self) -> tuple[str, ...]:
        """The projection roles (``"key"``, ``"value"``) this patch writes to."""
        return _KV_ROLES[self.kv]

    def partial(self) -> str | None:
        """In words, the part of the text K/V this patch replaces, keeping the rest the row's own; ``None`` if it replaces them whole."""
        if self.heads is not None:
            return "a subset of heads"
        return {"k": "the keys only", "v": "the values only"}.get(self.kv)


def check_step_window(window: object) -> None:
    """Raise ``ValueError`` unless ``window`` is a step window that can cover some step."""
    if window is None:
        return
    if isinstance(window, str):
        raise ValueError(
            f"A step window is (start, stop), not the string {window!r} (the command line's form): write "
            "e.g. (3, None) for '3:' or (0.2, 0.8) for '0.2:0.8'."
        )
    if isinstance(window, (int, float)) and not isinstance(window, bool):
        raise ValueError(
            f"A step window is (start, stop), not the single number {window!r}: write ({window!r}, None) "
            "for that step onwards."
        )
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"A step window is (start, stop), not {window!r}.")
    for bound in window:
        if isinstance(bound, bool) or not (bound is None or isinstance(bound, (int, float))):
            raise ValueError(f"A step bound is an int index, a float fraction or None; got {bound!r}.")
        if isinstance(bound, float) and not 0.0 <= bound <= 1.0:
            raise ValueError(f"A fractional step bound lies in [0, 1]; got {bound}.")
    start, stop = window
    comparable = (
        isinstance(start, float) and isinstance(stop, float)
        or isinstance(start, int) and isinstance(stop, int) and (start < 0) == (stop < 0)
    )
    if comparable and stop <= start:
        raise ValueError(f"The step window {tuple(window)} stops before it starts: it would patch no step.")


def window_steps(window: StepWindow, num_steps: int) -> range:
    """The step indices that ``window`` covers in a run of ``num_steps`` steps.

    ``None`` is every step. Otherwise ``(start, stop)``, stop excluded, ``None`` open: an ``int``
    bound is a step index, negative ones counting from the end as in Python (``(-2, None)``: the
    last two steps); a ``float`` bound ``f`` in [0, 1] is a fraction of the schedule, step
    ``floor(f * num_steps)`` (Prompt-to-Prompt's rule), so ``(0.25, 0.75)`` of 6 steps covers
    steps 1, 2 and 3.
    """
    if window is None:
        return range(num_steps)
    start, stop = (int(bound * num_steps) if isinstance(bound, float) else bound for bound in window)
    return range(num_steps)[slice(start, stop)]


def validate_patch(patch: RowPatch, layers: dict[str, AttentionLayer]) -> None:
    """Raise ``ValueError`` with a one-line reason unless ``patch`` can run on ``layers`` (its
    branch, kv, step window and heads); with no layers, its shared settings alone. A cache source
    is checked where the patch is applied, against the pipeline's weights first."""
    if patch.branch not in ("cond", "uncond", "both"):
        raise ValueError(f"branch must be 'cond', 'uncond' or 'both', not {patch.branch!r}.")
    if patch.kv not in KV_CHOICES:
        raise ValueError(f"kv must be 'k' (keys only), 'v' (values only) or 'both', not {patch.kv!r}.")
    check_step_window(patch.patch_steps)
    if patch.heads is not None:
        for name in patch.layers:
            bad = [h for h in patch.heads if not 0 <= h < layers[name].num_heads]
            if bad:
                raise ValueError(f"Heads {bad} do not exist in {name}, which has {layers[name].num_heads} heads.")

# --------------------------------------------------------------------------------------------
# Run state shared by the hooks of one context: step and branch, as the pipeline states them


@dataclass
class _Call:
    """What the denoiser call now running holds: its step, and which branch each batch row is."""

    step: int
    position: int  # index into the scheduler's timesteps: a second-order step has two
    branch_rows: dict[Branch, list[int]]  # branch -> batch indices, in row order
    text_len: int | None
    replays: dict[str, LayerReplay] = field(default_factory=dict)  # layer name -> its replay in this call


@dataclass
class LayerReplay:
    """An attention layer's call at a gradient step, and the same call made again with a patch.

    ``output`` is what the layer returned to the denoiser (one tensor, or a joint layer's image
    and text outputs), kept in the autograd graph: ``torch.autograd.grad`` of anything computed
    from the prediction can be taken with respect to it. ``patched`` is the layer's output, without
    autograd history, when it is called again on the same inputs with its replay patch applied:
    the layer alone is patched, exactly, through its own processor.
    """

    output: tuple[torch.Tensor, ...]
    patched: tuple[torch.Tensor, ...]


class _StopRun(Exception):
    """Raised inside the denoiser to end a generation once what was wanted is recorded."""


class _RunState:
    """Step and CFG layout of each denoiser call, read from the pipeline's own state.

    - The step: the scheduler's ``step()`` calls are counted, so the n-th denoiser pass of a run is
      at scheduler position ``begin_index + n``, and position p of ``len(timesteps)`` is step
      ``p * num_inference_steps // len(timesteps)``: the step itself for first-order schedulers,
      both passes of a second-order step (Heun, KDPM2: 2n - 1 timesteps) and PLMS's warm-up pass
      (n + 1 timesteps) in their step.
    - The branch: a ``cache_context("cond"/"uncond")`` the pipeline opens around a call (FLUX true
      CFG runs the branches as two calls); a ``skip_layers`` argument (SD3 skip-layer guidance);
      else the pipeline's ``do_classifier_free_guidance`` property (SD, SDXL, SD3, Sana; it knows
      that LCM-distilled U-Nets run no CFG batch), else the ``do_classifier_free_guidance`` the
      pipeline passed to its own ``encode_prompt`` (IF, PixArt). Under CFG the batch is
      ``cat([uncond, cond])``. A pipeline that states none of these is refused, never guessed.
    """

    def __init__(self, pipe: Any, stop_at_step: int | None = None):
        self.pipe = pipe
        self.stop_at_step = stop_at_step
        self.context = StateManager(_NoState)  # diffusers' cache_context() sets its context
        self.encoded_cfg: bool | None = None  # the flag the pipeline last passed to encode_prompt
        self.scheduler_steps = 0  # scheduler.step() calls in this run
        self.schedule: torch.Tensor | None = None
        self.begin = self.num_steps = self.num_positions = 0
        self.call: _Call | None = None
        self.windows: dict[int, range] = {}  # id(patch) -> the steps it covers in this run
        self.on_new_run: list[Callable[[_RunState], None]] = []
        # Asked once: inspecting the class on every denoiser call would cost more than the answer.
        self.cfg_property = isinstance(inspect.getattr_static(type(pipe), "do_classifier_free_guidance", None), property)

    def begin_call(self, sample: torch.Tensor, timestep: Any, kwargs: dict[str, Any]) -> None:
        scheduler = self.pipe.scheduler
        schedule = scheduler.timesteps
        if schedule is not self.schedule:  # set_timesteps made a new schedule: a new generation
            self.schedule, self.scheduler_steps = schedule, 0
            self.begin = getattr(scheduler, "begin_index", None) or 0  # img2img starts part-way
            self.num_positions = len(schedule)
            self.num_steps = getattr(scheduler, "num_inference_steps", None) or self.num_positions
            for callback in self.on_new_run:
                callback(self)
        position = self.begin + self.scheduler_steps
        if position >= self.num_positions:
            raise ValueError(
                f"The denoiser ran after the last of the scheduler's {self.num_positions} timesteps; textloc "
                "follows the steps of a pipeline call and cannot place this one."
            )
        step = position * self.num_steps // self.num_positions
        if step == self.stop_at_step:
            raise _StopRun
        encoder_states = kwargs.get("encoder_hidden_states")
        text_len = None if encoder_states is None else encoder_states.shape[1]
        self.call = _Call(step, position, self._branch_rows(sample.shape[0], kwargs), text_len)

    def _branch_rows(self, batch: int, kwargs: dict[str, Any]) -> dict[Branch, list[int]]:
        rows = list(range(batch))
        if kwargs.get("skip_layers") is not None:
            return {"skip_layer": rows}
        context = self.context._context
        if context is not None and context.name in ("cond", "uncond"):
            return {context.name: rows}
        if not self._classifier_free_guidance():
            return {"cond": rows}
        if batch % 2:
            raise ValueError(f"{type(self.pipe).__name__} runs classifier-free guidance on an odd batch of {batch}; textloc cannot split it into branches.")
        return {"uncond": rows[: batch // 2], "cond": rows[batch // 2 :]}

    def _classifier_free_guidance(self) -> bool:
        if self.cfg_property:
            return bool(self.pipe.do_classifier_free_guidance)
        if self.encoded_cfg is not None:
            return self.encoded_cfg
        raise ValueError(
            f"textloc cannot tell the classifier-free guidance layout of {type(self.pipe).__name__}: it has no "
            "do_classifier_free_guidance property, passes no such flag to encode_prompt and opens no "
            "cache_context around its denoiser calls. Patch through a pipeline that does (SD, SDXL, SD3, "
            "FLUX, IF, PixArt, Sana)."
        )

    def count_scheduler_step(self) -> None:
        self.scheduler_steps += 1

    def note_encode_prompt(self, arguments: dict[str, Any]) -> None:
        if "do_classifier_free_guidance" in arguments:
            self.encoded_cfg = bool(arguments["do_classifier_free_guidance"])


class _NoState(BaseState):
    """The engine keeps no per-context state; it only reads which context the pipeline opened."""

    def reset(self) -> None:
        pass


class _DenoiserHook(ModelHook):
    _is_stateful = True  # so that diffusers' cache_context() hands it the branch name

    def __init__(self, state: _RunState, on_call: Callable[[_Call, tuple, dict], None] | None = None):
        super().__init__()
        self.state = state
        self.context = state.context
        self.on_call = on_call

    def pre_forward(self, module, *args, **kwargs):
        sample, timestep = _sample_and_timestep(args, kwargs)
        self.state.begin_call(sample, timestep, kwargs)
        if self.on_call is not None:
            self.on_call(self.state.call, args, kwargs)
        return args, kwargs

    def reset_state(self, module):
        return module


def _sample_and_timestep(args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    # Pipelines call U-Nets as unet(sample, t, ...) and transformers with keywords.
    sample = kwargs.get("sample", kwargs.get("hidden_states", args[0] if args else None))
    timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
    return sample, timestep


class _GradientHook(ModelHook):
    """Runs the denoiser with autograd on at chosen steps and hands each prediction to a callback.

    Pipelines run under ``torch.no_grad``; this turns grad back on inside the denoiser only, with
    its parameters frozen so that gradients reach patch strengths and nothing else. The pipeline
    gets a detached prediction and goes on as usual.
    """

    def __init__(self, state: _RunState, grad_steps: frozenset[int], on_output):
        super().__init__()
        self.state, self.grad_steps, self.on_output = state, grad_steps, on_output

    def new_forward(self, module, *args, **kwargs):
        call = self.state.call
        if call.step not in self.grad_steps:
            output = self.fn_ref.original_forward(*args, **kwargs)
            if self.on_output is not None:
                self.on_output(call, _prediction(output))
            return output
        frozen = [p for p in module.parameters() if p.requires_grad]
        try:
            for parameter in frozen:
                parameter.requires_grad_(False)
            with torch.enable_grad():
                output = self.fn_ref.original_forward(*args, **kwargs)
                self.on_output(call, _prediction(output))
        finally:
            for parameter in frozen:
                parameter.requires_grad_(True)
        if isinstance(output, tuple):
            return tuple(item.detach() if torch.is_tensor(item) else item for item in output)
        output.sample = output.sample.detach()
        return output


def _prediction(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output.sample


# --------------------------------------------------------------------------------------------
# Per-layer hooks


# diffusers turns text masks into additive biases with this value (PixArt, Sana).
_MASKED_BIAS = -10000.0


_ALL_ROWS = slice(None)


@dataclass
class _Source:
    """Where one patch reads from in the call now running: a batch row, or rows of a cache entry."""

    batch_index: int | None = None
    entry: TextKV | None = None
    rows: slice = field(default_factory=lambda: _ALL_ROWS)

    def values(self, role: str, text: torch.Tensor) -> torch.Tensor:
        if self.entry is None:
            return text[self.batch_index : self.batch_index + 1]
        cached = self.entry.key if role == "key" else self.entry.value
        # Each tensor op costs microseconds on every patched layer call: skip the ones that do nothing.
        if self.rows != _ALL_ROWS:
            cached = cached[self.rows]
        if cached.shape[1] != text.shape[1]:
            if self.entry.mask is None:
                raise ValueError(
                    f"The source has {cached.shape[1]} text tokens and this run {text.shape[1]}; record "
                    "the source with the same text length (max_sequence_length)."
                )
            cached = _fit_tokens(cached, text.shape[1], dim=1, fill=0.0)
        if cached.device == text.device and cached.dtype == text.dtype:
            return cached
        return cached.to(text.device, text.dtype)

    def mask(self, mask: torch.Tensor) -> torch.Tensor | None:
        if self.entry is None:
            return mask[self.batch_index : self.batch_index + 1]
        if self.entry.mask is None:
            return None
        cached = self.entry.mask[self.rows]
        length = mask.shape[-1]
        if cached.shape[-1] > length and _attends(cached[..., length:]).any():
            raise ValueError(
                f"The source prompt needs {int(_attends(cached).sum(-1).max())} text tokens but this run "
                f"keeps {length}; raise max_sequence_length."
            )
        masked = False if cached.dtype == torch.bool else _MASKED_BIAS
        return _fit_tokens(cached, length, dim=-1, fill=masked).to(mask.device, mask.dtype)


def _attends(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask > _MASKED_BIAS / 2


def _fit_tokens(tensor: torch.Tensor, length: int, dim: int, fill: float | bool) -> torch.Tensor:
    """Cut or pad a text axis to ``length``; what is cut or padded is masked out by the caller."""
    size = tensor.shape[dim]
    if size >= length:
        return tensor.narrow(dim, 0, length)
    pad_shape = list(tensor.shape)
    pad_shape[dim] = length - size
    return torch.cat([tensor, tensor.new_full(pad_shape, fill)], dim=dim)


@dataclass
class _Writes:
    """The patches one layer applies during one denoiser call."""

    call: _Call
    patches: list[tuple[RowPatch, slice, _Source]]
    copy: bool


class _LayerHooks:
    """Records and patches one layer's text K/V; shared by its projection and attention hooks.

    With a ``replay`` patch, at each of ``replay_steps`` the layer's output is kept in the autograd
    graph and the layer is called again on the same inputs with ``replay`` added to its patches
    (see :class:`LayerReplay`); the run itself goes on with the unreplayed output.
    """

    def __init__(
        self, layer: AttentionLayer, state: _RunState, recorder: _Recorder | None, patches: list[RowPatch],
        replay: RowPatch | None = None, replay_steps: frozenset[int] = frozenset(),
    ):
        self.layer, self.state, self.recorder, self.patches = layer, state, recorder, patches
        self.replay, self.replay_steps = replay, replay_steps
        self.mask: torch.Tensor | None = None  # this call's text attention mask, as the layer saw it
        self.pending: dict[Branch, dict[str, torch.Tensor]] = {}
        self._writes: _Writes | None = None
        self._inputs: tuple[tuple, dict] | None = None  # the call to replay, as the layer received it

    def text_slice(self, output: torch.Tensor) -> torch.Tensor:
        if self.layer.kind == "single":  # FLUX single blocks: [text, image] tokens
            return output[:, : self.state.call.text_len]
        return output

    def writes(self) -> _Writes:
        """The active patches of the call now running, worked out once per layer and call."""
        call = self.state.call
        if self._writes is not None and self._writes.call is call:
            return self._writes
        found, sources = [], set()
        for patch in self.patches:
            if call.step not in self.state.windows[id(patch)]:
                continue
            for branch in patch.branches():
                rows = call.branch_rows.get(branch)
                if rows is None:
                    continue
                for row in (patch.row, patch.source if isinstance(patch.source, int) else None):
                    if row is not None and row >= len(rows):
                        raise ValueError(f"Patch row {row} is outside this call's batch of {len(rows)} rows per branch.")
                # A branch's rows are contiguous, so every target is a slice: no index tensors.
                first = rows[0] if patch.row is None else rows[patch.row]
                targets = slice(first, first + (len(rows) if patch.row is None else 1))
                if isinstance(patch.source, int):
                    sources.add(rows[patch.source])
                    found.append((patch, targets, _Source(batch_index=rows[patch.source])))
                    continue
                entry = patch.source.get(self.layer.name, call.position, branch)
                row_wise = patch.row is None and entry.key.shape[0] == len(rows)
                picks = _ALL_ROWS if row_wise else slice(patch.source_row, patch.source_row + 1)
                found.append((patch, targets, _Source(entry=entry, rows=picks)))
        # Writing in place is safe unless a row that is read as a source also gets written.
        overlap = any(target.start <= index < target.stop for _, target, _ in found for index in sources)
        self._writes = _Writes(call, found, copy=overlap)
        return self._writes

    def on_projection(self, role: str, output: torch.Tensor) -> torch.Tensor:
        if self.recorder is not None:
            self.recorder.add(self, role, output)
        writes = self.writes()
        if not writes.patches:
            return output
        # The projection's output is a fresh tensor that only this layer's processor reads.
        patched = output.clone() if writes.copy else output
        source_text, text = self.text_slice(output), self.text_slice(patched)
        head_dim = output.shape[-1] // self.layer.num_heads
        for patch, targets, source in writes.patches:
            if role not in patch.roles():
                continue
            values = source.values(role, source_text)
            if not (isinstance(patch.strength, float) and patch.strength == 1.0):
                own = source_text[targets]
                values = own + patch.strength * (values - own)
            if patch.heads is None:
                text[targets] = values
            else:
                for head in patch.heads:
                    columns = slice(head * head_dim, (head + 1) * head_dim)
                    text[targets, :, columns] = values[..., columns]
        return patched

    def on_attention(self, kwargs: dict) -> dict:
        mask = self.mask = kwargs.get("attention_mask")
        if mask is None:
            return kwargs
        writes = self.writes()
        if not writes.patches:
            return kwargs
        swapped = mask.clone()
        for patch, targets, source in writes.patches:
            source_mask = source.mask(mask)
            if source_mask is None:
                continue
            # One mask serves every head, key and value of a row: a patch that keeps part of the
            # row's own K/V can only take the source's mask when the two are the same.
            part = patch.partial()
            if part is not None and not torch.equal(source_mask.expand_as(mask[targets]), mask[targets]):
                raise ValueError(
                    f"{self.layer.name} masks padded text tokens, and the source's text length differs "
                    f"from the prompt's: patching {part} would mix two masks. Patch all heads with "
                    "kv='both', or give source and prompt the same token length."
                )
            swapped[targets] = source_mask
        return {**kwargs, "attention_mask": swapped}

    def keep_inputs(self, args: tuple, kwargs: dict) -> None:
        """Keep the call's inputs where it is to be replayed, before any patch swaps its mask: the
        replay swaps it anew, for its own patches."""
        due = self.replay is not None and self.state.call.step in self.replay_steps
        self._inputs = (args, kwargs) if due else None

    def replayed(self, output: Any, call_again: Callable[[tuple, dict], Any]) -> Any:
        """``output``, made a node of the autograd graph where this call is replayed: by
        ``call_again(args, kwargs)``, with the replay's patch, into the denoiser call's ``replays``."""
        if self._inputs is None:
            return output
        args, kwargs = self._inputs
        # A layer with nothing upstream that requires grad returns a tensor outside the graph:
        # it becomes a leaf that the rest of the pass, and so the prediction, depends on.
        output = _map_tensors(output, lambda tensor: tensor if tensor.requires_grad else tensor.detach().requires_grad_())
        patches, self.patches = self.patches, [*self.patches, self.replay]
        self._writes = None  # this call's writes, worked out again with the replay's patch
        try:
            with torch.no_grad():
                patched = call_again(args, kwargs)
        finally:
            self.patches, self._writes, self._inputs = patches, None, None
        self.state.call.replays[self.layer.name] = LayerReplay(_tensors(output), _tensors(patched))
        return output


def _map_tensors(output: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``function`` applied to an attention module's output: a tensor, or a tuple of them (joint layers)."""
    if isinstance(output, tuple):
        return tuple(function(item) if torch.is_tensor(item) else item for item in output)
    return function(output)


def _tensors(output: Any) -> tuple[torch.Tensor, ...]:
    """The tensors of an attention module's output, in order."""
    return tuple(item for item in output if torch.is_tensor(item)) if isinstance(output, tuple) else (output,)


class _Recorder:
    """Fills a :class:`TextCache` as the layers compute their text K/V, straight onto ``device``.

    With ``stop_when_complete`` the run ends as soon as every step-independent layer holds an
    entry for every branch of the first pass: nothing later can add to the cache.
    """

    def __init__(self, cache: TextCache, device: torch.device | str | None, stop_when_complete: bool):
        self.cache, self.device, self.stop_when_complete = cache, device, stop_when_complete
        self.pending: dict[tuple[str, Branch], dict[str, torch.Tensor]] = {}

    def add(self, hooks: _LayerHooks, role: str, output: torch.Tensor) -> None:
        call, layer = hooks.state.call, hooks.layer
        static = layer.kind in STEP_INDEPENDENT_KINDS
        text = hooks.text_slice(output).detach()
        for branch, rows in call.branch_rows.items():
            if static and branch == "skip_layer":
                continue  # the conditional branch's entry serves that pass
            key = (layer.name, None if static else call.position, branch)
            if static and key in self.cache.entries:
                continue  # recorded at the first pass; identical at every other
            pending = self.pending.setdefault((layer.name, branch), {})
            pending[role] = self._keep(text[rows])
            if len(pending) == 2:
                mask = None if hooks.mask is None else self._keep(hooks.mask[rows])
                self.cache.entries[key] = TextKV(pending["key"], pending["value"], mask)
                del self.pending[layer.name, branch]
        if self.stop_when_complete and self._complete(call):
            raise _StopRun

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        kept = tensor.to(self.device) if self.device is not None else tensor
        return kept.clone() if kept.data_ptr() == tensor.data_ptr() else kept

    def _complete(self, call: _Call) -> bool:
        return all((name, None, branch) in self.cache.entries for name in self.cache.layers for branch in call.branch_rows)


class _ProjectionHook(ModelHook):
    def __init__(self, hooks: _LayerHooks, role: str):
        super().__init__()
        self.hooks, self.role = hooks, role

    def post_forward(self, module, output):
        return self.hooks.on_projection(self.role, output)


class _AttentionHook(ModelHook):
    def __init__(self, hooks: _LayerHooks):
        super().__init__()
        self.hooks = hooks

    def pre_forward(self, module, *args, **kwargs):
        self.hooks.keep_inputs(args, kwargs)
        return args, self.hooks.on_attention(kwargs)

    def post_forward(self, module, output):
        return self.hooks.replayed(output, self._call_again)

    def _call_again(self, args: tuple, kwargs: dict) -> Any:
        # From this hook inwards, as the call went: hooks outside it have already prepared the inputs.
        return self.fn_ref.forward(*args, **self.hooks.on_attention(kwargs))


# --------------------------------------------------------------------------------------------
# The context that installs and removes hooks


@contextlib.contextmanager
def _hooked(
    pipe: Any,
    layers: Sequence[AttentionLayer],
    patches: Sequence[RowPatch] = (),
    recorder: _Recorder | None = None,
    stop_at_step: int | None = None,
    grad_steps: frozenset[int] = frozenset(),
    on_output=None,
    on_call: Callable[[_Call, tuple, dict], None] | None = None,
    replays: Sequence[RowPatch] = (),
) -> Iterator[_RunState]:
    model = denoiser(pipe)
    state = _RunState(pipe, stop_at_step)
    caches = {id(p.source): p.source for p in patches if isinstance(p.source, TextCache)}
    fingerprint = module_fingerprint(model) if caches else None
    for cache in caches.values():
        if cache.fingerprint != fingerprint:
            raise ValueError(
                f"This cache was recorded on other weights ({cache.fingerprint}); this pipeline's denoiser "
                f"is {fingerprint}. Record the source on this pipeline."
            )
    for p in patches:
        missing = [name for name in p.layers if name not in p.source.layers] if isinstance(p.source, TextCache) else []
        if missing:
            raise ValueError(f"The cache was not recorded at {', '.join(missing)}; record those layers too.")

    def start_run(run: _RunState) -> None:
        for cache in caches.values():
            stepped = any(position is not None for (_, position, _) in cache.entries)
            if stepped and (cache.num_steps, cache.num_positions) != (run.num_steps, run.num_positions):
                raise ValueError(
                    f"This cache was recorded over {cache.num_steps} steps ({cache.num_positions} scheduler "
                    f"timesteps) but the run has {run.num_steps} ({run.num_positions}); record the source with "
                    "the same num_inference_steps and scheduler."
                )
        run.windows = {id(p): window_steps(p.patch_steps, run.num_steps) for p in [*patches, *replays]}
        for p in [*patches, *replays]:
            if not run.windows[id(p)]:
                raise ValueError(f"patch_steps {p.patch_steps} covers no step of this {run.num_steps}-step run.")

    state.on_new_run.append(start_run)
    registered: list[tuple[torch.nn.Module, str]] = []

    def register(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
        registered.append((module, name))

    tag = f"{_HOOK_PREFIX}_{id(state)}"
    with contextlib.ExitStack() as stack:
        stack.enter_context(_wrapped(pipe.scheduler, "step", state.count_scheduler_step, arguments=False))
        if not state.cfg_property:
            stack.enter_context(_wrapped(pipe, "encode_prompt", state.note_encode_prompt))
        try:
            if grad_steps or on_output is not None:
                register(model, _GradientHook(state, grad_steps, on_output), f"{tag}_gradient")
            # Registered last, so outermost: it must know the step before the gradient hook runs.
            register(model, _DenoiserHook(state, on_call), f"{tag}_denoiser")
            for layer in layers:
                layer_patches = [p for p in patches if layer.name in p.layers]
                replay = next((p for p in replays if layer.name in p.layers), None)
                hooks = _LayerHooks(layer, state, recorder, layer_patches, replay, grad_steps)
                key_proj, value_proj = layer.text_kv_projections
                register(layer.module, _AttentionHook(hooks), f"{tag}_attention")
                register(key_proj, _ProjectionHook(hooks, "key"), f"{tag}_key")
                register(value_proj, _ProjectionHook(hooks, "value"), f"{tag}_value")
            yield state
        finally:
            for module, name in reversed(registered):
                module._diffusers_hook.remove_hook(name, recurse=False)


@contextlib.contextmanager
def _wrapped(owner: Any, method: str, before: Callable[..., None], arguments: bool = True) -> Iterator[None]:
    """Call ``before(arguments)`` (by parameter name, defaults filled in) ahead of ``owner.method``;
    with ``arguments=False``, ``before()``: binding them costs more than a scheduler step's own work.

    The wrapper is an instance attribute that shadows the class's method, so other instances are
    untouched; on exit the attribute the instance had before (none, or an outer wrapper) is back.
    """
    original = getattr(owner, method, None)
    if original is None:
        yield
        return
    signature = inspect.signature(original)
    shadowed = owner.__dict__.get(method)

    @functools.wraps(original)  # pipelines read the signature (prepare_extra_step_kwargs)
    def wrapper(*args, **kwargs):
        if arguments:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            before(bound.arguments)
        else:
            before()
        return original(*args, **kwargs)

    object.__setattr__(owner, method, wrapper)
    try:
        yield
    finally:
        if shadowed is None:
            object.__delattr__(owner, method)
        else:
            object.__setattr__(owner, method, shadowed)


def _run(pipe: Any, **kwargs: Any) -> Any:
    """Call the pipeline; ``None`` when a hook ended the run early, with offloaded models freed."""
    try:
        return pipe(**kwargs)
    except _StopRun:
        # The pipeline's own cleanup never ran: hand models back to their offload device.
        if hasattr(pipe, "maybe_free_model_hooks"):
            pipe.maybe_free_model_hooks()
        return None


def _run_kwargs(pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The pipeline-call arguments, with an error naming any that the pipeline does not take."""
    # Named parameters only: SD/SDXL's **kwargs swallow a misspelt argument without a word.
    parameters = [name for name, p in inspect.signature(pipe.__call__).parameters.items() if p.kind is not p.VAR_KEYWORD]
    for name in kwargs:
        if name not in parameters:
            close = difflib.get_close_matches(name, parameters, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "."
            raise TypeError(f"{name!r} is not an argument of {type(pipe).__name__}.__call__{hint}")
    if kwargs.get("generator") is not None:
        seeding.check_generator(kwargs["generator"])
    return call_kwargs(pipe, **kwargs)


def _select(pipe: Any, layers: LayerSelector, prompt: object, function: str) -> list[AttentionLayer]:
    """Resolve ``layers``; if the caller swapped layers and prompt (the old order), say so."""
    try:
        return select_layers(pipe, layers)
    except ValueError:
        swapped = False
        with contextlib.suppress(ValueError, TypeError):
            swapped = bool(select_layers(pipe, prompt))
        if swapped:
            raise TypeError(f"{function} takes (pipe, layers, prompt): the layers come before the prompt.") from None
        raise


# --------------------------------------------------------------------------------------------
# Public API


def run_with_cache(
    pipe: Any,
    layers: LayerSelector,
    prompt: str | list[str],
    *,
    cache_device: torch.device | str | None = None,
    **generate_kwargs: Any,
) -> tuple[Any, TextCache]:
    """Generate ``prompt`` and record the text K/V of ``layers`` at every step and branch.

    Returns ``(pipeline output, TextCache)``. The cache is written to ``cache_device`` as it is
    recorded (default: the device that computes it). ``generate_kwargs`` go to the pipeline call.
    """
    selected = _select(pipe, layers, prompt, "run_with_cache")
    return _record(pipe, selected, prompt, cache_device, stop_when_complete=False, **generate_kwargs)


def record(
    pipe: Any,
    layers: LayerSelector,
    prompt: str | list[str],
    *,
    cache_device: torch.device | str | None = None,
    **generate_kwargs: Any,
) -> TextCache:
    """The text K/V of ``layers`` while generating ``prompt`` (see :func:`run_with_cache`).

    When every layer is step-independent (``cross``, ``added_kv``) the generation stops as soon as
    they have computed their text K/V in the first denoiser pass: nothing later adds to the cache.
    """
    selected = _select(pipe, layers, prompt, "record")
    static = all(layer.kind in STEP_INDEPENDENT_KINDS for layer in selected)
    generate_kwargs.setdefault("output_type", "latent" if hasattr(pipe, "vae") else "pt")
    return _record(pipe, selected, prompt, cache_device, stop_when_complete=static, **generate_kwargs)[1]


def _record(pipe, selected, prompt, cache_device, stop_when_complete: bool, **generate_kwargs) -> tuple[Any, TextCache]:
    if not isinstance(prompt, (str, list, tuple)):
        raise TypeError(f"prompt is a string or a list of strings, not {type(prompt).__name__}.")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    cache = TextCache(module_fingerprint(denoiser(pipe)), prompts, 0, {layer.name: layer.kind for layer in selected})
    kwargs = _run_kwargs(pipe, generate_kwargs)
    with _hooked(pipe, selected, recorder=_Recorder(cache, cache_device, stop_when_complete)) as state:
        output = _run(pipe, prompt=prompts if len(prompts) > 1 else prompts[0], **kwargs)
    cache.num_steps, cache.num_positions = state.num_steps, state.num_positions
    return output, cache


def record_text(pipe: Any, layers: LayerSelector, prompt: str | list[str], **generate_kwargs: Any) -> TextCache:
    """The text K/V of step-independent (``cross``, ``added_kv``) layers, at the least cost.

    Those K/V depend on the prompt only, not on the image or the step: one text encoding and part
    of one denoiser pass on the smallest image the model takes, stopped once the layers have them,
    from a private generator (the caller's global RNG is untouched). Of ``generate_kwargs`` only
    those that shape the text encoding are used: the parameters the pipeline's ``encode_prompt``
    also takes (``negative_prompt``, ``max_sequence_length``, ...), and ``guidance_scale``, which
    decides whether an unconditional branch is encoded.
    """
    selected = _select(pipe, layers, prompt, "record_text")
    stepwise = [layer.name for layer in selected if layer.kind not in STEP_INDEPENDENT_KINDS]
    if stepwise:
        raise ValueError(
            f"{', '.join(stepwise)} rewrite the text at every step, so their text K/V cannot be encoded "
            "once: record them with `tl.record(pipe, layers, prompt, **generate_kwargs)` using the same "
            "generation settings, or generate the source in the same batch with `tl.run_with_patches`."
        )
    _run_kwargs(pipe, generate_kwargs)  # a misspelt argument is an error, not silently dropped
    shaping = set(inspect.signature(pipe.encode_prompt).parameters) | {"guidance_scale", "true_cfg_scale"}
    size = _smallest_image_side(pipe)
    settings = {"num_inference_steps": 1, "height": size, "width": size, "generator": seeding.generator(0)}
    return record(pipe, selected, prompt, **settings, **{k: v for k, v in generate_kwargs.items() if k in shaping})


@dataclass(frozen=True)
class DenoiserInputs:
    """How a pipeline conditions its denoiser for some prompts: its call, less the noisy sample and timestep.

    Captured from the pipeline's own first denoiser call (:func:`denoiser_inputs`), so the text
    embeddings, pooled projections, micro-conditioning (SDXL's time ids), position ids (FLUX), text
    masks (PixArt, Sana) and guidance embedding are what the pipeline itself passes; nothing about
    an architecture is restated here. ``sample_shape`` is the shape the denoiser takes its sample
    in (FLUX: packed latents); ``timestep_scale`` turns a scheduler timestep into the value the
    pipeline hands the denoiser (FLUX: 1/1000, others: 1).
    """

    args: tuple
    kwargs: dict[str, Any]
    sample_shape: torch.Size
    timestep_scale: float

    def __call__(self, model: torch.nn.Module, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The prediction of ``model`` (this pipeline's denoiser, or a wrapper of it) for ``sample`` at ``timesteps``.

        ``timesteps`` are scheduler timesteps, one per row. A denoiser that also predicts a variance
        (IF, PixArt: twice the sample's channels) gives its first half, the part a scheduler's
        ``prediction_type`` names.
        """
        if sample.shape != self.sample_shape:
            raise ValueError(f"The denoiser was called with samples of shape {tuple(self.sample_shape)}, not {tuple(sample.shape)}.")
        args, kwargs = list(self.args), dict(self.kwargs)
        timestep = (timesteps * self.timestep_scale).to(sample.device)
        for key, position, value in (("sample", 0, sample), ("hidden_states", 0, sample), ("timestep", 1, timestep)):
            if key in kwargs:
                kwargs[key] = value
            elif key != "hidden_states" and len(args) > position:
                args[position] = value
        prediction = _prediction(model(*args, **kwargs))
        if prediction.shape[1] == 2 * sample.shape[1] and prediction.shape[2:] == sample.shape[2:]:
            prediction = prediction[:, : sample.shape[1]]
        return prediction


def denoiser_inputs(pipe: Any, prompt: str | list[str], **generate_kwargs: Any) -> DenoiserInputs:
    """Run ``pipe`` up to its first denoiser call and return that call (see :class:`DenoiserInputs`).

    The call must carry no classifier-free guidance batch (give the settings that turn it off,
    e.g. ``guidance_scale=1``); the run stops before the denoiser computes anything.
    """
    captured: list[DenoiserInputs] = []

    def capture(call: _Call, args: tuple, kwargs: dict[str, Any]) -> None:
        if set(call.branch_rows) != {"cond"}:
            raise ValueError(
                f"{type(pipe).__name__} ran this call with classifier-free guidance "
                f"({', '.join(call.branch_rows)} rows); capture its inputs with guidance off (guidance_scale=1)."
            )
        sample, timestep = _sample_and_timestep(args, kwargs)
        scheduled = float(pipe.scheduler.timesteps[call.position])
        given = float(torch.as_tensor(timestep).flatten()[0])
        if scheduled == 0:
            raise ValueError("The first scheduled timestep is 0: run the capture with num_inference_steps >= 2.")
        captured.append(DenoiserInputs(args, kwargs, sample.shape, given / scheduled))
        raise _StopRun

    kwargs = _run_kwargs(pipe, generate_kwargs)
    with _hooked(pipe, [], on_call=capture):
        _run(pipe, prompt=prompt, **kwargs)
    if not captured:
        raise ValueError(f"{type(pipe).__name__} finished without calling its denoiser.")
    return captured[0]


def _smallest_image_side(pipe: Any, at_least: int = 32) -> int:
    """A small image side (pixels) that the pipeline's VAE and denoiser both divide evenly."""
    config = denoiser(pipe).config
    blocks = getattr(config, "block_out_channels", None)
    factor = 2 ** (len(blocks) - 1) if blocks else getattr(config, "patch_size", None) or 1
    multiple = (getattr(pipe, "vae_scale_factor", None) or 1) * factor
    return -(-at_least // multiple) * multiple


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
    with _hooked(pipe, selected, [row_patch]):
        yield


@contextlib.contextmanager
def patch_rows(pipe: Any, patches: Sequence[RowPatch]) -> Iterator[None]:
    """Inside this context, every pipeline call runs with ``patches``, each on its own batch row.

    The per-row counterpart of :func:`patch` for calls the caller makes itself: ``RowPatch.row``
    and an ``int`` ``source`` index the rows of a CFG branch (the prompts of the call, times
    ``num_images_per_prompt``). :func:`run_with_patches` is this context around one call that it
    makes, with every row on the same noise.
    """
    selected = _patched_layers(pipe, patches)
    with _hooked(pipe, selected, patches):
        yield


def _patched_layers(pipe: Any, patches: Sequence[RowPatch]) -> list[AttentionLayer]:
    """The layers ``patches`` name, each patch checked against them."""
    patches = _patch_list(patches)
    names = sorted({name for p in patches for name in p.layers})
    selected = select_layers(pipe, names) if names else []
    by_name = {layer.name: layer for layer in selected}
    for p in patches:
        validate_patch(p, by_name)
    return selected


def _patch_list(patches: object) -> list[RowPatch]:
    """``patches`` as a list; a clear error unless each is a :class:`RowPatch` with a tuple of layer names."""
    if isinstance(patches, RowPatch):
        raise TypeError("patches is a list of RowPatch: write [RowPatch(...)].")
    patches = list(patches)
    for p in patches:
        if not isinstance(p, RowPatch):
            raise TypeError(f"patches is a list of RowPatch, not of {type(p).__name__}.")
        if isinstance(p.layers, str):
            raise TypeError(f"RowPatch.layers is a tuple of layer names: write ({p.layers!r},), not {p.layers!r}.")
    return patches


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
    patches, replays = _patch_list(patches), _patch_list(replays)
    selected = _patched_layers(pipe, [*patches, *replays])
    for p in [*patches, *replays]:
        for row in (p.row, p.source if isinstance(p.source, int) else None):
            if row is not None and not 0 <= row < len(prompts):
                raise ValueError(f"Patch row {row} is outside the batch of {len(prompts)} prompts.")
    replayed = [name for p in replays for name in p.layers]
    twice = sorted({name for name in replayed if replayed.count(name) > 1})
    if twice:
        raise ValueError(f"One replay per layer: {', '.join(twice)} would be replayed more than once.")
    kwargs = _run_kwargs(pipe, generate_kwargs)
    if kwargs.get("num_images_per_prompt", 1) != 1:
        raise ValueError("run_with_patches addresses rows by prompt: repeat a prompt instead of num_images_per_prompt.")
    if grad_steps and on_output is None:
        raise ValueError("grad_steps without on_output: nothing would use the gradients.")
    if replays and not grad_steps:
        raise ValueError("replays without grad_steps: layers are replayed at the gradient steps only.")
    hooks = _hooked(
        pipe, selected, patches, stop_at_step=stop_at_step, grad_steps=frozenset(grad_steps), on_output=on_output, replays=replays,
    )
    with hooks:
        return _run(pipe, prompt=prompts, generator=generators, **kwargs)


# ============================================================================================
# Attention probabilities: the engine's one processor-level hook (Prompt-to-Prompt needs it)
#
# Everything above changes projection outputs and leaves processors alone. Prompt-to-Prompt edits
# softmax(QK^T / sqrt(d)) itself, which fused SDPA kernels never materialize, so here, and only
# here, the engine swaps processors: for the context's lifetime the chosen layers run
# `_ExplicitAttention`, which repeats diffusers' AttnProcessor2_0 / AttnAddedKVProcessor2_0 step
# for step except that it computes the attention weights explicitly when asked to.

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

    def __init__(self, layer: AttentionLayer, state: _RunState, edit: ProbabilityEdit, when: Callable[[AttentionCall], bool]):
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
    with _hooked(pipe, []) as state:
        try:
            for layer in layers:
                layer.module.set_processor(_ExplicitAttention(layer, state, edit, when or (lambda call: True)))
            yield
        finally:
            for module, processor in originals:
                module.set_processor(processor)
