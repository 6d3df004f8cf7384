"""Record and patch the text keys/values of attention layers, on any diffusers pipeline.

How it works: the engine never replaces an attention processor. It registers ``diffusers.hooks``
on three kinds of modules while a context is open:

- the denoiser, to know the step, the CFG branch of each batch row and the text length;
- each selected attention module, to swap the text attention mask (PixArt, Sana pad their text);
- the layer's text K/V projections (``to_k``/``to_v`` or ``add_k_proj``/``add_v_proj``), whose
  outputs are recorded, or overwritten for chosen rows, heads, steps and branches.

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
import hashlib
import inspect
import json
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from diffusers.hooks import HookRegistry, ModelHook

from textloc.attention import AttentionLayer, LayerSelector, denoiser, select_layers
from textloc.pipelines import call_kwargs

Branch = Literal["cond", "uncond"]
BranchChoice = Literal["cond", "uncond", "both"]
StepWindow = Union[tuple[Union[int, float, None], Union[int, float, None]], None]

STEP_INDEPENDENT_KINDS = ("cross", "added_kv")
_HOOK_PREFIX = "textloc"


# --------------------------------------------------------------------------------------------
# The cache


@dataclass
class TextKV:
    """Text keys and values of one layer at one step and branch: ``[rows, text_tokens, dim]``."""

    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None = None  # the layer's text attention mask, where the model pads text


@dataclass
class TextCache:
    """Per-layer, per-step, per-branch text K/V recorded from a generation.

    Entries of step-independent layers (``cross``, ``added_kv``) are stored once, under step
    ``None``, and serve every step of any schedule.
    """

    model_id: str
    prompts: list[str]
    num_steps: int
    layers: dict[str, str]  # name -> kind, in forward order
    entries: dict[tuple[str, int | None, Branch], TextKV] = field(default_factory=dict, repr=False)

    def get(self, layer: str, step: int, branch: Branch) -> TextKV:
        """The entry for a layer at a step and branch; a clear error if it was not recorded."""
        entry = self.entries.get((layer, step, branch)) or self.entries.get((layer, None, branch))
        if entry is None:
            if layer not in self.layers:
                raise ValueError(f"The cache holds no layer {layer!r}; it holds {', '.join(self.layers)}.")
            raise ValueError(
                f"The cache has no {branch} entry for {layer} at step {step}: it was recorded "
                f"{'without classifier-free guidance' if branch == 'uncond' else 'over fewer steps'}."
            )
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
        return TextCache(self.model_id, list(self.prompts), self.num_steps, dict(self.layers), moved)


def model_id(pipe_or_model: object) -> str:
    """A fingerprint of the denoiser (class, config, size) to tell caches of other models apart."""
    model = denoiser(pipe_or_model)
    config = json.dumps(dict(getattr(model, "config", {})), sort_keys=True, default=str)
    digest = hashlib.sha1(config.encode()).hexdigest()[:12]
    return f"{type(model).__name__}:{sum(p.numel() for p in model.parameters())}:{digest}"


# --------------------------------------------------------------------------------------------
# Patches


@dataclass(frozen=True)
class RowPatch:
    """One patch of a batched run: batch row ``row`` takes the text K/V of ``source`` at ``layers``.

    ``source`` is another row of the same batch (an ``int``) or a :class:`TextCache`
    (``source_row`` picks its row). ``row=None`` patches every row. ``steps`` is a window
    ``(start, stop)`` of step indices or fractions of the schedule (stop exclusive, ``None`` open);
    ``heads`` a subset of attention heads; ``branch`` the CFG half. ``strength`` blends the row's
    own K/V toward the source's (1 replaces them); a tensor strength that requires grad receives
    the gradient of whatever is computed from the run, which is how attribution patching works.
    """

    layers: tuple[str, ...]
    source: int | TextCache
    row: int | None = None
    source_row: int = 0
    steps: StepWindow = None
    heads: tuple[int, ...] | None = None
    branch: BranchChoice = "cond"
    strength: float | torch.Tensor = 1.0

    def branches(self) -> tuple[Branch, ...]:
        """The CFG branches this patch writes to."""
        return ("cond", "uncond") if self.branch == "both" else (self.branch,)

    def active_at(self, step: int, num_steps: int) -> bool:
        """Whether the patch applies at denoising step ``step`` of ``num_steps``."""
        return in_step_window(self.steps, step, num_steps)


def in_step_window(window: StepWindow, step: int, num_steps: int) -> bool:
    """Whether step index ``step`` of ``num_steps`` lies in ``window`` (``None``: every step)."""
    if window is None:
        return True
    start, stop = (_step_bound(bound, num_steps) for bound in window)
    return (start is None or step >= start) and (stop is None or step < stop)


def _step_bound(bound: int | float | None, num_steps: int) -> int | None:
    if bound is None or isinstance(bound, int):
        return bound
    return round(bound * num_steps)


def _validate_patch(patch: RowPatch, layers: dict[str, AttentionLayer]) -> None:
    if patch.branch not in ("cond", "uncond", "both"):
        raise ValueError(f"branch must be 'cond', 'uncond' or 'both', not {patch.branch!r}.")
    if patch.steps is not None:
        if len(patch.steps) != 2:
            raise ValueError(f"steps is a window (start, stop), not {patch.steps!r}.")
        for bound in patch.steps:
            if isinstance(bound, float) and not 0.0 <= bound <= 1.0:
                raise ValueError(f"A fractional step bound lies in [0, 1]; got {bound}.")
            if bound is not None and not isinstance(bound, (int, float)):
                raise ValueError(f"A step bound is an int index, a float fraction or None; got {bound!r}.")
    if patch.heads is not None:
        for name in patch.layers:
            bad = [h for h in patch.heads if not 0 <= h < layers[name].num_heads]
            if bad:
                raise ValueError(f"Heads {bad} do not exist in {name}, which has {layers[name].num_heads} heads.")
    if isinstance(patch.source, TextCache):
        missing = [name for name in patch.layers if name not in patch.source.layers]
        if missing:
            raise ValueError(f"The cache was not recorded at {', '.join(missing)}; record those layers too.")


# --------------------------------------------------------------------------------------------
# Run state shared by the hooks of one context


@dataclass
class _Call:
    """What the denoiser call now running holds: step, and which branch/row each batch row is."""

    step: int
    branch_rows: dict[Branch, list[int]]  # branch -> batch indices, in row order
    text_len: int | None


class _StopRun(Exception):
    """Raised by the denoiser hook to end a generation once what was wanted is recorded."""


class _RunState:
    def __init__(self, pipe: Any, concat_cfg: bool | None, stop_at_step: int | None = None):
        self.pipe = pipe
        self.concat_cfg = concat_cfg  # None: detect it from the pipeline at the first call
        self.stop_at_step = stop_at_step
        self.schedule: torch.Tensor | None = None
        self.num_steps = 0
        self.step = -1
        self.calls_in_step = 0
        self.last_timestep: float | None = None
        self.call: _Call | None = None
        self.on_new_run: list = []

    def begin_call(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor | None) -> None:
        schedule = getattr(self.pipe.scheduler, "timesteps", None)
        if schedule is not self.schedule:  # set_timesteps made a new schedule: a new generation
            self.schedule = schedule
            # Second-order schedulers (Heun, KDPM2) list 2n - 1 timesteps for n steps.
            order = getattr(self.pipe.scheduler, "order", 1)
            self.num_steps = math.ceil(len(schedule) / order) if schedule is not None else 0
            self.step, self.last_timestep = -1, None
            for callback in self.on_new_run:
                callback(self)
        t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        if t != self.last_timestep:
            self.step, self.calls_in_step, self.last_timestep = self.step + 1, 0, t
            if self.step == self.stop_at_step:
                raise _StopRun
        else:
            self.calls_in_step += 1

        batch = sample.shape[0]
        if self._concat_cfg(sample):
            half = batch // 2
            branch_rows = {"uncond": list(range(half)), "cond": list(range(half, batch))}
        else:
            # Pipelines that run CFG as separate calls (FLUX true CFG) run cond first, then uncond.
            branch_rows = {"cond" if self.calls_in_step == 0 else "uncond": list(range(batch))}
        text_len = None if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        self.call = _Call(self.step, branch_rows, text_len)

    def _concat_cfg(self, sample: torch.Tensor) -> bool:
        if self.concat_cfg is not None:
            return self.concat_cfg
        flag = getattr(self.pipe, "do_classifier_free_guidance", None)
        if isinstance(flag, bool):
            return flag
        # IF and PixArt keep the flag local; they feed torch.cat([x] * 2) under CFG.
        batch = sample.shape[0]
        return batch % 2 == 0 and torch.equal(sample[: batch // 2], sample[batch // 2 :])


class _DenoiserHook(ModelHook):
    def __init__(self, state: _RunState):
        super().__init__()
        self.state = state

    def pre_forward(self, module, *args, **kwargs):
        # Pipelines call U-Nets as unet(sample, t, ...) and transformers with keywords.
        sample = kwargs.get("sample", kwargs.get("hidden_states", args[0] if args else None))
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        self.state.begin_call(sample, timestep, kwargs.get("encoder_hidden_states"))
        return args, kwargs


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


@dataclass
class _Source:
    """Where one patch reads from in the call now running: a batch row, or rows of a cache entry."""

    batch_index: int | None = None
    entry: TextKV | None = None
    rows: slice = field(default_factory=lambda: slice(None))

    def values(self, role: str, text: torch.Tensor) -> torch.Tensor:
        if self.entry is None:
            return text[self.batch_index : self.batch_index + 1]
        cached = (self.entry.key if role == "key" else self.entry.value)[self.rows]
        if cached.shape[1] != text.shape[1]:
            if self.entry.mask is None:
                raise ValueError(
                    f"The source has {cached.shape[1]} text tokens and this run {text.shape[1]}; record "
                    "the source with the same text length (max_sequence_length)."
                )
            cached = _fit_tokens(cached, text.shape[1], dim=1, fill=0.0)
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
    """Records and patches one layer's text K/V; shared by its projection and attention hooks."""

    def __init__(self, layer: AttentionLayer, state: _RunState, recorder: TextCache | None, patches: list[RowPatch]):
        self.layer, self.state, self.recorder, self.patches = layer, state, recorder, patches
        self.mask: torch.Tensor | None = None  # this call's text attention mask, as the layer saw it
        self.pending: dict[Branch, dict[str, torch.Tensor]] = {}
        self._writes: _Writes | None = None

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
            if not patch.active_at(call.step, self.state.num_steps):
                continue
            for branch in patch.branches():
                rows = call.branch_rows.get(branch)
                if rows is None or (patch.row is not None and patch.row >= len(rows)):
                    continue
                # A branch's rows are contiguous, so every target is a slice: no index tensors.
                first = rows[0] if patch.row is None else rows[patch.row]
                targets = slice(first, first + (len(rows) if patch.row is None else 1))
                if isinstance(patch.source, int):
                    sources.add(rows[patch.source])
                    found.append((patch, targets, _Source(batch_index=rows[patch.source])))
                    continue
                entry = patch.source.get(self.layer.name, call.step, branch)
                row_wise = patch.row is None and entry.key.shape[0] == len(rows)
                picks = slice(None) if row_wise else slice(patch.source_row, patch.source_row + 1)
                found.append((patch, targets, _Source(entry=entry, rows=picks)))
        # Writing in place is safe unless a row that is read as a source also gets written.
        overlap = any(target.start <= index < target.stop for _, target, _ in found for index in sources)
        self._writes = _Writes(call, found, copy=overlap)
        return self._writes

    def on_projection(self, role: str, output: torch.Tensor) -> torch.Tensor:
        if self.recorder is not None:
            self.record(role, output)
        writes = self.writes()
        if not writes.patches:
            return output
        # The projection's output is a fresh tensor that only this layer's processor reads.
        patched = output.clone() if writes.copy else output
        source_text, text = self.text_slice(output), self.text_slice(patched)
        head_dim = output.shape[-1] // self.layer.num_heads
        for patch, targets, source in writes.patches:
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
            if patch.heads is not None and not torch.equal(source_mask.expand_as(mask[targets]), mask[targets]):
                raise ValueError(
                    f"{self.layer.name} masks padded text tokens, and the source's text length differs "
                    "from the prompt's: patching a subset of heads would mix two masks. Patch all heads, "
                    "or give source and prompt the same token length."
                )
            swapped[targets] = source_mask
        return {**kwargs, "attention_mask": swapped}

    def record(self, role: str, output: torch.Tensor) -> None:
        call = self.state.call
        static = self.layer.kind in STEP_INDEPENDENT_KINDS
        step = None if static else call.step
        text = self.text_slice(output).detach()
        for branch, rows in call.branch_rows.items():
            key = (self.layer.name, step, branch)
            if static and key in self.recorder.entries:
                continue  # recorded at the first step; identical at every other step
            pending = self.pending.setdefault(branch, {})
            pending[role] = text[rows].clone()
            if len(pending) == 2:
                mask = None if self.mask is None else self.mask[rows].clone()
                self.recorder.entries[key] = TextKV(pending["key"], pending["value"], mask)
                del self.pending[branch]


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
        return args, self.hooks.on_attention(kwargs)


# --------------------------------------------------------------------------------------------
# The context that installs and removes hooks


@contextlib.contextmanager
def _hooked(
    pipe: Any,
    layers: Sequence[AttentionLayer],
    patches: Sequence[RowPatch] = (),
    recorder: TextCache | None = None,
    concat_cfg: bool | None = None,
    stop_at_step: int | None = None,
    grad_steps: frozenset[int] = frozenset(),
    on_output=None,
) -> Iterator[_RunState]:
    model = denoiser(pipe)
    state = _RunState(pipe, concat_cfg, stop_at_step)
    caches = {id(p.source): p.source for p in patches if isinstance(p.source, TextCache)}
    fingerprint = model_id(pipe) if caches else None

    def check_caches(run: _RunState) -> None:
        for cache in caches.values():
            if cache.model_id != fingerprint:
                raise ValueError(f"This cache was recorded on another model ({cache.model_id}); this pipeline's denoiser is {fingerprint}.")
            stepped = any(step is not None for (_, step, _) in cache.entries)
            if stepped and cache.num_steps != run.num_steps:
                raise ValueError(
                    f"This cache was recorded over {cache.num_steps} steps but the run has {run.num_steps}; "
                    "record the source with the same num_inference_steps."
                )

    state.on_new_run.append(check_caches)
    registered: list[tuple[torch.nn.Module, str]] = []

    def register(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
        registered.append((module, name))

    tag = f"{_HOOK_PREFIX}_{id(state)}"
    try:
        if grad_steps or on_output is not None:
            register(model, _GradientHook(state, grad_steps, on_output), f"{tag}_gradient")
        # Registered last, so outermost: it must know the step before the gradient hook runs.
        register(model, _DenoiserHook(state), f"{tag}_denoiser")
        for layer in layers:
            layer_patches = [p for p in patches if layer.name in p.layers]
            hooks = _LayerHooks(layer, state, recorder, layer_patches)
            key_proj, value_proj = layer.text_kv_projections
            register(layer.module, _AttentionHook(hooks), f"{tag}_attention")
            register(key_proj, _ProjectionHook(hooks, "key"), f"{tag}_key")
            register(value_proj, _ProjectionHook(hooks, "value"), f"{tag}_value")
        yield state
    finally:
        for module, name in reversed(registered):
            module._diffusers_hook.remove_hook(name, recurse=False)


def _cfg_layout(pipe: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a call with these kwargs batches CFG as ``cat([uncond, cond])``."""
    parameters = inspect.signature(pipe.__call__).parameters
    if "true_cfg_scale" in parameters:  # FLUX-style: CFG, if any, runs as a second call
        return False
    scale = kwargs.get("guidance_scale", parameters["guidance_scale"].default if "guidance_scale" in parameters else 1.0)
    return scale > 1.0


# --------------------------------------------------------------------------------------------
# Public API


def run_with_cache(pipe: Any, prompt: str | list[str], layers: LayerSelector = "all", cache_device: torch.device | str | None = None, **generate_kwargs: Any) -> tuple[Any, TextCache]:
    """Generate ``prompt`` and record the text K/V of ``layers`` at every step and branch.

    Returns ``(pipeline output, TextCache)``. The cache stays on the device that produced it
    unless ``cache_device`` says otherwise. ``generate_kwargs`` go to the pipeline call.
    """
    return _record(pipe, prompt, layers, cache_device, first_step_only=False, **generate_kwargs)


def record(pipe: Any, prompt: str | list[str], layers: LayerSelector = "all", cache_device: torch.device | str | None = None, **generate_kwargs: Any) -> TextCache:
    """The text K/V of ``layers`` while generating ``prompt`` (see :func:`run_with_cache`).

    When every layer is step-independent (``cross``, ``added_kv``) the generation stops after its
    first denoiser step: that step already holds everything the cache can contain.
    """
    selected = select_layers(pipe, layers)
    first_step_only = all(layer.kind in STEP_INDEPENDENT_KINDS for layer in selected)
    generate_kwargs.setdefault("output_type", "latent" if hasattr(pipe, "vae") else "pt")
    return _record(pipe, prompt, selected, cache_device, first_step_only, **generate_kwargs)[1]


def _record(pipe, prompt, layers, cache_device, first_step_only: bool, **generate_kwargs) -> tuple[Any, TextCache]:
    selected = select_layers(pipe, layers)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    cache = TextCache(model_id(pipe), prompts, 0, {layer.name: layer.kind for layer in selected})
    kwargs = call_kwargs(pipe, **generate_kwargs)
    output = None
    with _hooked(pipe, selected, recorder=cache, concat_cfg=_cfg_layout(pipe, kwargs), stop_at_step=1 if first_step_only else None) as state:
        try:
            output = pipe(prompt=prompts if len(prompts) > 1 else prompts[0], **kwargs)
        except _StopRun:
            pass
    cache.num_steps = state.num_steps
    return output, cache.to(cache_device) if cache_device is not None else cache


@contextlib.contextmanager
def patch(
    pipe: Any,
    layers: LayerSelector,
    source: str | TextCache,
    steps: StepWindow = None,
    heads: Sequence[int] | None = None,
    branch: BranchChoice = "cond",
    **text_kwargs: Any,
) -> Iterator[None]:
    """Inside this context, ``layers`` receive the text signal of ``source`` instead of the prompt's.

    ``source`` is a :class:`TextCache` from :func:`record`, or a prompt. A prompt works directly
    for ``cross`` and ``added_kv`` layers, whose text K/V do not depend on the step (injection:
    one short forward pass encodes it); ``joint`` and ``single`` layers need a cache recorded with
    the same generation settings (``tl.record(pipe, source, layers, **same_kwargs)``), or
    :func:`run_with_patches`, which generates the source alongside in one batch.
    With a prompt source, ``text_kwargs`` are the pipeline arguments that shape its text
    encoding (``max_sequence_length``, ``negative_prompt``, ...): give the ones the patched call uses.
    ``steps``, ``heads`` and ``branch`` are as in :class:`RowPatch`. On exit, normal or not, the
    hooks are removed and the pipeline is exactly as before.
    """
    selected = select_layers(pipe, layers)
    if isinstance(source, str):
        stepwise = [layer.name for layer in selected if layer.kind not in STEP_INDEPENDENT_KINDS]
        if stepwise:
            raise ValueError(
                f"{', '.join(stepwise)} rewrite the text at every step, so a prompt cannot be injected "
                "there: record it first with `cache = tl.record(pipe, source, layers, **generate_kwargs)` "
                "using the same generation settings, then `tl.patch(pipe, layers, cache)`; or use "
                "`tl.run_with_patches`, which generates the source in the same batch."
            )
        source = record(pipe, source, selected, **text_kwargs)
    elif text_kwargs:
        raise TypeError(f"Unexpected arguments {sorted(text_kwargs)}: they only apply to a prompt source.")
    elif not isinstance(source, TextCache):
        raise TypeError(f"source is a prompt (str) or a TextCache, not {type(source).__name__}.")
    row_patch = RowPatch(tuple(layer.name for layer in selected), source, steps=steps, heads=None if heads is None else tuple(heads), branch=branch)
    _validate_patch(row_patch, {layer.name: layer for layer in selected})
    with _hooked(pipe, selected, [row_patch]):
        yield


def run_with_patches(
    pipe: Any,
    prompts: Sequence[str],
    patches: Sequence[RowPatch],
    seed: int | Sequence[int] = 0,
    *,
    on_output: Callable[[Any, torch.Tensor], None] | None = None,
    grad_steps: Collection[int] = (),
    stop_at_step: int | None = None,
    **generate_kwargs: Any,
) -> Any:
    """One batched generation in which each row may carry its own patch.

    ``prompts[i]`` is row ``i``; a patch with ``source=j`` gives its row the text K/V that row ``j``
    computes in the same batch, at the same step and branch. All rows start from the same noise
    (one seed, or one seed per row), so a sweep over L layers — rows 0..L-1 patched from a source
    row L — is one generation and equals L separate patched runs.

    ``on_output(call, prediction)`` sees the denoiser's prediction at every call (``call.step``,
    ``call.branch_rows``); at ``grad_steps`` the prediction carries autograd history back to any
    tensor ``strength`` of the patches. ``stop_at_step`` ends the generation when that step would
    begin (the return value is then ``None``).
    """
    prompts = list(prompts)
    seeds = [seed] * len(prompts) if isinstance(seed, int) else list(seed)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts; give one seed or one per prompt.")
    names = sorted({name for p in patches for name in p.layers})
    selected = select_layers(pipe, names) if names else []
    by_name = {layer.name: layer for layer in selected}
    for p in patches:
        _validate_patch(p, by_name)
        for row in (p.row, p.source if isinstance(p.source, int) else None):
            if row is not None and not 0 <= row < len(prompts):
                raise ValueError(f"Patch row {row} is outside the batch of {len(prompts)} prompts.")
    kwargs = call_kwargs(pipe, **generate_kwargs)
    if "num_images_per_prompt" in kwargs and kwargs["num_images_per_prompt"] != 1:
        raise ValueError("run_with_patches addresses rows by prompt: repeat a prompt instead of num_images_per_prompt.")
    if grad_steps and on_output is None:
        raise ValueError("grad_steps without on_output: nothing would use the gradients.")
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    hooks = _hooked(
        pipe, selected, patches, concat_cfg=_cfg_layout(pipe, kwargs), stop_at_step=stop_at_step,
        grad_steps=frozenset(grad_steps), on_output=on_output,
    )
    with hooks:
        try:
            return pipe(prompt=prompts, generator=generators, **kwargs)
        except _StopRun:
            return None
