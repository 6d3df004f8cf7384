"""The hooks on one attention layer: record its text K/V, and overwrite them for chosen rows, heads and steps.

Only projection outputs change (and, where the model pads its text, the attention mask), so every
processor (SDPA, FLUX, joint, added-KV, LoRA-wrapped, a user's own) keeps working unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import ModelHook

from textloc.engine.cache import TextKV
from textloc.engine.eager import eager
from textloc.engine.plan import RowPatch
from textloc.engine.recorder import Recorder
from textloc.engine.replays import map_tensors, output_tensors
from textloc.engine.run_state import DenoiserCall, LayerReplay, RunState
from textloc.engine.units import AttentionLayer

# diffusers turns text masks into additive biases with this value (PixArt, Sana).
_MASKED_BIAS = -10000.0


_ALL_ROWS = slice(None)


@dataclass
class _Source:
    """Where one patch reads from in the call now running: a batch row, or rows of a cache entry.

    ``keep_mask``: the layer's text mask is a keep-mask the pipeline leaves ``None`` when no token
    is padding (Qwen-Image), so an entry recorded with none had every token valid.
    """

    batch_index: int | None = None
    entry: TextKV | None = None
    rows: slice = field(default_factory=lambda: _ALL_ROWS)
    keep_mask: bool = False

    def cached(self, role: str) -> torch.Tensor | None:
        """The cache entry's keys or values for the rows written (``None``: the unit has none, as the pooled vector has no keys)."""
        cached = self.entry.key if role == "key" else self.entry.value
        return cached if cached is None or self.rows == _ALL_ROWS else cached[self.rows]

    def fit(self, cached: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``cached`` with as many text tokens as ``like``, the text it replaces, and placed and typed as it."""
        if cached.shape[1] != like.shape[1]:
            if self.entry.mask is None and not self.keep_mask:
                raise ValueError(
                    f"The source has {cached.shape[1]} text tokens and this run {like.shape[1]}; record "
                    "the source with the same text length (max_sequence_length)."
                )
            cached = _fit_tokens(cached, like.shape[1], dim=1, fill=0.0)
        return cached.to(like.device, like.dtype)

    def mask(self, mask: torch.Tensor) -> torch.Tensor | None:
        if self.entry is None:
            return mask[self.batch_index : self.batch_index + 1]
        if self.entry.mask is not None:
            cached = self.entry.mask[self.rows]
        elif self.keep_mask:  # recorded with no padding: every one of its tokens valid
            cached = torch.ones(self.entry.key[self.rows].shape[:2], dtype=torch.bool)
        else:
            return None
        length = mask.shape[-1]
        if cached.shape[-1] > length and attends(cached[..., length:]).any():
            raise ValueError(
                f"The source prompt needs {int(attends(cached).sum(-1).max())} text tokens but this run "
                f"keeps {length}; raise max_sequence_length (where the pipeline pads each call to its longest "
                "prompt, as Qwen-Image does, batch the prompt with one as long as the source)."
            )
        fitted = _fit_tokens(cached.to(mask.dtype), length, dim=-1, fill=_masked_value(mask))
        return fitted.to(mask.device)


def attends(mask: torch.Tensor) -> torch.Tensor:
    """Where a mask lets a token be attended: a keep-mask (bool, or 0/1 integers) or an additive bias."""
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        return mask != 0
    return mask > _MASKED_BIAS / 2


def _masked_value(mask: torch.Tensor) -> float | bool:
    """What a masked-out token holds in a mask of this kind."""
    if mask.dtype == torch.bool:
        return False
    return _MASKED_BIAS if mask.is_floating_point() else 0


def _fit_tokens(tensor: torch.Tensor, length: int, dim: int, fill: float | bool) -> torch.Tensor:
    """Cut or pad a text axis to ``length``; what is cut or padded is masked out by the caller."""
    size = tensor.shape[dim]
    if size >= length:
        return tensor.narrow(dim, 0, length)
    pad_shape = list(tensor.shape)
    pad_shape[dim] = length - size
    return torch.cat([tensor, tensor.new_full(pad_shape, fill)], dim=dim)


@dataclass(slots=True)
class _Write:
    """One patch's write in the call now running, with what every projection call asks of it worked out."""

    patch: RowPatch
    targets: slice  # the batch rows written
    rows: slice | None  # the same, None where they are every row of the call
    source: _Source
    roles: tuple[str, ...]
    strength: float | torch.Tensor | None  # None: the source's K/V replace the row's own
    values: dict[str, torch.Tensor] | None  # a cache's K/V for those rows, per role; None for a live row
    whole_text: bool = False  # a cache's K/V replace the rows' own whole (no blend, every head)

    def __post_init__(self) -> None:
        self.whole_text = self.values is not None and self.strength is None and self.patch.heads is None


@dataclass(slots=True)
class _Writes:
    """The patches one layer applies during one denoiser call."""

    call: DenoiserCall
    patches: list[_Write]
    copy: bool
    num_rows: int


class LayerHooks:
    """Records and patches one layer's text K/V; shared by its projection and attention hooks.

    With a ``replay`` patch, at each of ``replay_steps`` the layer's output is kept in the autograd
    graph and the layer is called again on the same inputs with ``replay`` added to its patches
    (see :class:`LayerReplay`); the run itself goes on with the unreplayed output.
    """

    def __init__(
        self, layer: AttentionLayer, state: RunState, recorder: Recorder | None, patches: list[RowPatch],
        replay: RowPatch | None = None, replay_steps: frozenset[int] = frozenset(),
    ):
        self.layer, self.state, self.recorder, self.patches = layer, state, recorder, patches
        self.replay, self.replay_steps = replay, replay_steps
        self.mask: torch.Tensor | None = None  # this call's text attention mask, as the layer saw it
        self._text_is_all = layer.route.text_at == "all"  # asked on every projection call: read once
        self._replaying = False  # inside the replay's second call: its patch joins the others
        self._writes: _Writes | None = None
        self._inputs: tuple[tuple, dict] | None = None  # the call to replay, as the layer received it

    def text_slice(self, output: torch.Tensor) -> torch.Tensor:
        """The text tokens of a projection's output (a view): all of it, or where the family's spec
        puts the text in a sequence shared with the image."""
        text_at = self.layer.route.text_at
        if text_at == "all":
            return output
        call = self.state.call
        if text_at == "first":
            return output[:, call.text_start : call.text_start + call.text_len]
        return output[:, output.shape[1] - call.text_len :]

    def writes(self) -> _Writes:
        """The active patches of the call now running, worked out once per layer and call."""
        call = self.state.call
        if self._writes is not None and self._writes.call is call:
            return self._writes
        found, sources = [], set()
        for patch in [*self.patches, self.replay] if self._replaying else self.patches:
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
                values = None
                if isinstance(patch.source, int):
                    sources.add(rows[patch.source])
                    source = _Source(batch_index=rows[patch.source])
                else:
                    entry = patch.source.get(self.layer.name, call.position, branch)
                    row_wise = patch.row is None and entry.value.shape[0] == len(rows)
                    picks = _ALL_ROWS if row_wise else slice(patch.source_row, patch.source_row + 1)
                    source = _Source(entry=entry, rows=picks, keep_mask=self.layer.route.text_mask is not None)
                    values = {role: source.cached(role) for role in patch.roles()}
                replaces = isinstance(patch.strength, float) and patch.strength == 1.0
                every_row = targets.start == 0 and targets.stop == call.num_rows
                found.append(_Write(patch, targets, None if every_row else targets, source, patch.roles(), None if replaces else patch.strength, values))
        # Writing in place is safe unless a row that is read as a source also gets written.
        overlap = any(write.targets.start <= index < write.targets.stop for write in found for index in sources)
        self._writes = _Writes(call, found, copy=overlap, num_rows=call.num_rows)
        return self._writes

    def on_projection(self, role: str, output: torch.Tensor, columns: slice | None = None) -> torch.Tensor:
        """Record and patch ``role``'s text in a projection's output (in ``columns`` of it, for a
        fused projection); returns the output the layer goes on with."""
        writes = self.writes()
        if self.recorder is None and not writes.patches:  # a call no patch writes: no op at all
            return output
        rows = writes.num_rows
        if output.shape[0] == 1 < rows:
            # One row for the whole call, broadcast by the model (FLUX's pooled vector of a single
            # negative prompt): each row gets its own copy, so that each can be recorded and patched.
            output = output.expand(rows, *output.shape[1:]).clone()
        if self.recorder is not None:
            self.recorder.add(self.layer, self.state.call, role, self.text_slice(output if columns is None else output[..., columns]), self.mask)
        if not writes.patches:
            return output
        # The projection's output is a fresh tensor that only this layer's processor reads: written
        # in place, unless a row that is read as a source is also written.
        whole = output.clone() if writes.copy else output
        # What runs here runs on every projection call of a patched layer, between the model's own
        # computations, with the interpreter's caches cold: what can be is worked out in writes().
        rows_only = columns is None and self._text_is_all  # the text is whole rows of the output (most layers)
        for write in writes.patches:
            if role not in write.roles:
                continue
            if rows_only and write.whole_text:  # the common write: one slice and one copy, nothing else
                values = write.values[role]
                if values.shape[1] != output.shape[1]:
                    values = write.source.fit(values, output)
                if write.rows is None:
                    whole.copy_(values)
                else:
                    whole[write.rows] = values
                continue
            target = self.text_view(whole, write.targets, columns)
            if write.values is None:  # a live row of this batch, as the projection made it
                values = self.text_view(output, slice(write.source.batch_index, write.source.batch_index + 1), columns)
            else:  # a cache's, placed and typed by copy_ (which does both)
                values = write.values[role]
                if values.shape[1] != target.shape[1]:
                    values = write.source.fit(values, target)
            if write.strength is not None:
                own = self.text_view(output, write.targets, columns)
                values = own + write.strength * (values.to(own.device, own.dtype) - own)
            heads = write.patch.heads
            if heads is None:
                target.copy_(values)
            else:
                head_dim = target.shape[-1] // self.layer.num_heads
                for head in heads:
                    head_columns = slice(head * head_dim, (head + 1) * head_dim)
                    target[..., head_columns].copy_(values[..., head_columns])
        return whole

    def text_view(self, output: torch.Tensor, rows: slice, columns: slice | None) -> torch.Tensor:
        """``rows`` of a projection's output (``[rows, tokens, width]``, or ``[rows, width]`` for the
        pooled vector), at its text tokens and in ``columns`` of it, as one view.

        One ``as_strided`` where more than the rows are cut, not a slice per axis: each is an aten
        op on every patched call, and a single-stream layer patched on one CFG branch would take
        three views where one does.
        """
        if columns is None and self._text_is_all:  # rows only (most layers): one slice, or none
            return output if rows.start == 0 and rows.stop == output.shape[0] else output[rows]
        shape, stride = list(output.shape), output.stride()
        offset = output.storage_offset() + rows.start * stride[0]
        shape[0] = rows.stop - rows.start
        if columns is not None:
            offset += columns.start * stride[-1]
            shape[-1] = columns.stop - columns.start
        text_at = self.layer.route.text_at
        if output.dim() == 3 and text_at != "all":
            text_len = self.state.call.text_len
            offset += (self.state.call.text_start if text_at == "first" else shape[1] - text_len) * stride[1]
            shape[1] = text_len
        if shape == list(output.shape):  # the whole output: no view at all
            return output
        return output.as_strided(shape, stride, offset)

    def on_attention(self, kwargs: dict) -> dict:
        route = self.layer.route
        # A mask the family lays out itself (the same for any source it lets in), or one inside the
        # module that reads the pooled vector, whose whole output is the unit (Kandinsky 3's attention pool).
        if route.mask_text_at is None or route.kind == "pooled":
            self.mask = None
            return kwargs
        keyword = route.text_mask or "attention_mask"
        full = kwargs.get(keyword)
        # A mask over [image, text] (or [text, image]) keys: its text part is recorded and swapped, the image's kept.
        text_len = self.state.call.text_len if route.mask_text_at in ("first", "last") else None
        text_keys = None if text_len is None else slice(0, text_len) if route.mask_text_at == "first" else slice(-text_len, None)
        mask = self.mask = full if full is None or text_keys is None else full[..., text_keys]
        if mask is None and route.text_mask is None:
            return kwargs
        writes = self.writes()
        if not writes.patches:
            return kwargs
        # A keep-mask left None has every token valid; a source with padding, or of another length,
        # needs one, which is made here (and only then: a masked attention takes another code path).
        if mask is not None:
            swapped = mask.clone()
        else:  # only an attention that takes its text apart comes here unmasked
            axes = (1,) * (route.key_mask_dims - 2)  # where the family's key mask has SDPA's (batch, 1, 1, keys)
            hidden = kwargs["hidden_states"]
            swapped = torch.ones((self.state.call.num_rows, *axes, text_len or self.state.call.text_len), dtype=torch.bool, device=hidden.device)
        for write in writes.patches:
            patch, targets, source = write.patch, write.targets, write.source
            source_mask = source.mask(swapped)
            if source_mask is None:
                continue
            source_mask = source_mask.reshape(source_mask.shape[0], *swapped.shape[1:])  # a cache's (rows, text) as this mask lays it out
            # One mask serves every head, key and value of a row: a patch that keeps part of the
            # row's own K/V can only take the source's mask when the two are the same.
            part = patch.partial()
            if part is not None and not torch.equal(source_mask.expand_as(swapped[targets]), swapped[targets]):
                raise ValueError(
                    f"{self.layer.name} masks padded text tokens, and the source's text length differs "
                    f"from the prompt's: patching {part} would mix two masks. Patch all heads with "
                    "kv='both', or give source and prompt the same token length."
                )
            swapped[targets] = source_mask
        if mask is None and bool(attends(swapped).all()):
            return kwargs
        if text_keys is not None:
            if full is not None:
                joint = full.clone()
            else:  # a keep-mask keyword left None: the keys are the image's and the text's
                keys = kwargs["hidden_states"].shape[1] + (text_len if route.text_at == "all" else 0)  # a single stream holds both
                joint = swapped.new_ones((*swapped.shape[:-1], keys))
            joint[..., text_keys] = swapped
            swapped = joint
        return {**kwargs, keyword: swapped}

    def keep_inputs(self, args: tuple, kwargs: dict) -> None:
        """Keep the call's inputs where it is to be replayed, before any patch swaps its mask: the
        replay swaps it anew, for its own patches."""
        due = self.replay is not None and self.state.call.step in self.replay_steps
        self._inputs = (args, kwargs) if due else None

    @contextlib.contextmanager
    def _replay_call(self) -> Iterator[None]:
        # This call's writes are worked out again, with the replay's patch, and once more after.
        self._replaying, self._writes = True, None
        try:
            yield
        finally:
            self._replaying, self._writes, self._inputs = False, None, None

    def replayed(self, output: Any, call_again: Callable[[tuple, dict], Any]) -> Any:
        """``output``, made a node of the autograd graph where this call is replayed: by
        ``call_again(args, kwargs)``, with the replay's patch, into the denoiser call's ``replays``."""
        if self._inputs is None:
            return output
        args, kwargs = self._inputs
        # A layer with nothing upstream that requires grad returns a tensor outside the graph:
        # it becomes a leaf that the rest of the pass, and so the prediction, depends on.
        output = map_tensors(output, lambda tensor: tensor if tensor.requires_grad else tensor.detach().requires_grad_())
        with self._replay_call(), torch.no_grad():
            patched = call_again(args, kwargs)
        self.state.call.replays[self.layer.name] = LayerReplay(output_tensors(output), output_tensors(patched))
        return output



class ProjectionHook(ModelHook):
    """On a text K/V projection: each (role, columns) of its output goes through the layer's hooks."""

    def __init__(self, hooks: LayerHooks, roles: tuple[tuple[str, slice | None], ...]):
        super().__init__()
        self.hooks, self.roles = hooks, roles

    @eager  # under torch.compile, outside the graph (see textloc.engine.eager)
    def post_forward(self, module, output):
        for role, columns in self.roles:
            output = self.hooks.on_projection(role, output, columns)
        return output


class PooledInputHook(ModelHook):
    """On the pooled vector's reader where it reads the text beside something else (SDXL's
    ``add_embedding``: ``text_embeds``, then the size conditioning): the text columns of its input
    go through the unit's hooks, and the rest of the input is left as the pipeline made it."""

    def __init__(self, hooks: LayerHooks):
        super().__init__()
        self.hooks = hooks

    @eager
    def pre_forward(self, module, *args, **kwargs):
        first, *rest = args
        text = slice(0, self.hooks.state.call.pooled_columns())
        return (self.hooks.on_projection("value", first, text), *rest), kwargs


@functools.cache
def _parameter_names(attention_class: type) -> tuple[str, ...]:
    """The names of the arguments ``attention_class.forward`` takes by position, after ``self``."""
    parameters = list(inspect.signature(attention_class.forward).parameters.values())[1:]
    return tuple(p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD)


def _by_name(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """An attention's call with every input after the first by name: Kandinsky 3's blocks pass the
    text and its mask by position (``self.attention(out, context, context_mask)``), and the mask is
    found, recorded and swapped by its name."""
    if len(args) <= 1:
        return args, kwargs
    return args[:1], {**dict(zip(_parameter_names(type(module))[1:], args[1:])), **kwargs}


class AttentionHook(ModelHook):
    def __init__(self, hooks: LayerHooks):
        super().__init__()
        self.hooks = hooks

    @eager
    def pre_forward(self, module, *args, **kwargs):
        args, kwargs = _by_name(module, args, kwargs)
        self.hooks.keep_inputs(args, kwargs)
        return args, self.hooks.on_attention(kwargs)

    @eager
    def post_forward(self, module, output):
        return self.hooks.replayed(output, self._call_again)

    def _call_again(self, args: tuple, kwargs: dict) -> Any:
        # From this hook inwards, as the call went: hooks outside it have already prepared the inputs.
        return self.fn_ref.forward(*args, **self.hooks.on_attention(kwargs))


