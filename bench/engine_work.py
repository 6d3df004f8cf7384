"""The engine's overhead in counted work, call by call, where shared cores cannot blur it.

Three measurements on one tiny pipeline, used by ``bench_engine.py --parts work``:

- Per call of a text K/V projection (and of the pooled vector's reader), in a real generation
  inside ``tl.patch(pipe, "all", cache)`` against the same call of a plain generation: the aten
  operations it dispatches (a ``TorchDispatchMode`` counting while the module runs) and its time
  (``perf_counter`` around each call). Torch's own module hooks, which the count and the clock hang
  on, wrap diffusers' hooks, where the engine works, so both are inside. The k-th call of a module
  in the patched run is the k-th of the plain run (same seed, same calls), so calls are paired;
  the calls in which a patch writes are told apart by their extra operations (FLUX's negative
  pass runs the hooks of a ``branch="cond"`` patch and writes nothing). The same for whole layer
  calls (the attention module, its projections inside), as context.
- Entering and leaving ``tl.patch`` (median of many, each timed alone).
- Hooks: inside a patch of one layer, which modules carry one (diffusers' registry, torch's hook
  dicts); every other text layer and its projections must carry none; after it, no module.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import textloc as tl
from textloc.engine import AttentionLayer, denoiser


class _ModuleOps(TorchDispatchMode):
    """Counts the aten operations dispatched while each watched module runs (nested ones included)."""

    def __init__(self) -> None:
        super().__init__()
        self.active: list[list[int]] = []  # one counter per module now running

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for counter in self.active:
            counter[0] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def counted_calls(modules: dict[str, torch.nn.Module]) -> Iterator[dict[str, list[int]]]:
    """Per module name, the aten ops of each of its calls while inside."""
    calls: dict[str, list[int]] = {name: [] for name in modules}
    counting = _ModuleOps()
    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(lambda module, args: counting.active.append([0])))
        handles.append(module.register_forward_hook(lambda module, args, output, name=name: calls[name].append(counting.active.pop()[0])))
    try:
        with counting:
            yield calls
    finally:
        for handle in handles:
            handle.remove()


FUSED = " key and value"


def projections(layers: list[AttentionLayer]) -> dict[str, torch.nn.Module]:
    """The modules whose outputs the engine patches: each layer's text K/V projections (one, named
    ``<layer> key and value``, where they are fused), the pooled vector's reader."""
    found: dict[str, torch.nn.Module] = {}
    for layer in layers:
        if layer.kind == "pooled":
            found[layer.name] = layer.module
            continue
        key, value = layer.text_kv_projections
        if value is key:
            found[layer.name + FUSED] = key
        else:
            found[f"{layer.name} key"], found[f"{layer.name} value"] = key, value
    return found


def per_call(pipe: Any, generate: Callable[[], Any], cache: tl.TextCache, modules: dict[str, torch.nn.Module], repeats: int) -> dict[str, Any]:
    """Extra aten ops and microseconds per call of ``modules`` inside ``tl.patch(pipe, "all", cache)``.

    The ops: one plain and one patched generation, counted call by call. The time: in patched
    generations, each call of a watched module and, right beside it (before it on even calls, after
    on odd ones), a call of its twin, an unhooked copy, on the same inputs: the two see the same
    load, so their difference is the hooks' cost even on busy cores.
    """

    def patched() -> None:
        with tl.patch(pipe, "all", cache):
            generate()

    def counted(function: Callable[[], None]) -> dict[str, list[int]]:
        with torch.no_grad(), counted_calls(modules) as calls:
            function()
        return calls

    ops = {"plain": counted(generate), "patched": counted(patched)}
    # Call k of a module is the same call in both runs: its extra ops say whether a patch wrote there.
    extra = {name: [p - q for p, q in zip(ops["patched"][name], ops["plain"][name], strict=True)] for name in modules}
    # The same pairing in plain generations is the method's own bias (torch's hooks that hold the
    # clock, the twin's colder weights): subtracted from the patched generations' differences.
    differences: dict[bool | None, list[float]] = {True: [], False: [], None: []}
    twin_us: list[float] = []
    for repeat in range(2 * repeats):
        with torch.no_grad(), beside_twins(modules) as paired:
            (patched if repeat % 2 else generate)()
        for name, pairs in paired.items():
            for (hooked, twin), count in zip(pairs, extra[name], strict=True):
                differences[bool(count) if repeat % 2 else None].append(1e6 * (hooked - twin))
                twin_us.append(1e6 * twin)
    bias = statistics.median(differences[None])
    result: dict[str, Any] = {
        "calls_per_generation": sum(len(counts) for counts in extra.values()),
        "writing_calls_per_generation": sum(1 for counts in extra.values() for count in counts if count),
        "extra_ops_writing": sorted({count for counts in extra.values() for count in counts if count}),
        # A fused projection's call writes the keys and the values: two patches, counted per role.
        "extra_ops_per_role_writing": sorted({count / (2 if name.endswith(FUSED) else 1) for name, counts in extra.items() for count in counts if count}),
        "extra_ops_not_writing": sorted({count for counts in extra.values() for count in counts if not count}),
        "plain_ops": sorted({count for counts in ops["plain"].values() for count in counts}),
        "plain_us": statistics.median(twin_us),
        "pairing_bias_us": bias,
    }
    for wrote, label in ((True, "writing"), (False, "not_writing")):
        if differences[wrote]:
            result[f"extra_us_{label}"] = statistics.median(differences[wrote]) - bias
            result[f"timed_calls_{label}"] = len(differences[wrote])
    return result


@contextmanager
def beside_twins(modules: dict[str, torch.nn.Module]) -> Iterator[dict[str, list[tuple[float, float]]]]:
    """Per module name, ``(seconds of the call, seconds of its twin's call on the same inputs)`` for
    every call while inside; the twin runs just before the call on even calls, just after on odd ones."""
    twins = {name: _unhooked_copy(module) for name, module in modules.items()}
    paired: dict[str, list[tuple[float, float]]] = {name: [] for name in modules}
    twin_first: dict[str, float] = {}
    started: dict[str, float] = {}

    def time_twin(name: str, args: tuple, kwargs: dict) -> float:
        began = time.perf_counter()
        twins[name](*args, **kwargs)
        return time.perf_counter() - began

    def before(name: str, args: tuple, kwargs: dict) -> None:
        if len(paired[name]) % 2 == 0:
            twin_first[name] = time_twin(name, args, kwargs)
        started[name] = time.perf_counter()

    def after(name: str, args: tuple, kwargs: dict) -> None:
        seconds = time.perf_counter() - started[name]
        twin = twin_first.pop(name) if len(paired[name]) % 2 == 0 else time_twin(name, args, kwargs)
        paired[name].append((seconds, twin))

    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(lambda module, args, kwargs, name=name: before(name, args, kwargs), with_kwargs=True))
        handles.append(module.register_forward_hook(lambda module, args, kwargs, output, name=name: after(name, args, kwargs), with_kwargs=True))
    try:
        yield paired
    finally:
        for handle in handles:
            handle.remove()


def _unhooked_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with no hooks: what diffusers' registry leaves on a module it hooked once
    (its forward, the registry) is dropped from the copy and its children."""
    twin = copy.deepcopy(module)
    for part in twin.modules():
        part.__dict__.pop("forward", None)
        part.__dict__.pop("_diffusers_hook", None)
        part._forward_pre_hooks.clear()
        part._forward_hooks.clear()
    return twin


def enter_and_leave(pipe: Any, cache: tl.TextCache, repeats: int = 301) -> dict[str, float]:
    """Median milliseconds to enter ``tl.patch(pipe, "all", cache)``, and to leave it, each timed alone."""
    entering, leaving = [], []
    for _ in range(repeats + 5):
        context = tl.patch(pipe, "all", cache)
        began = time.perf_counter()
        context.__enter__()
        entered = time.perf_counter()
        context.__exit__(None, None, None)
        entering.append(entered - began)
        leaving.append(time.perf_counter() - entered)
    # The first few fill caches (the weights' fingerprint, the layer list): a user's first entry pays them once.
    return {"enter_ms": 1e3 * statistics.median(entering[5:]), "leave_ms": 1e3 * statistics.median(leaving[5:]), "first_enter_ms": 1e3 * entering[0]}


def hooks_on(module: torch.nn.Module) -> int:
    """Hooks a module carries: diffusers' registry entries and torch's forward hooks."""
    registry = getattr(module, "_diffusers_hook", None)
    return (len(registry.hooks) if registry is not None else 0) + len(module._forward_pre_hooks) + len(module._forward_hooks)


def hook_census(pipe: Any, cache: tl.TextCache) -> dict[str, Any]:
    """Which modules carry hooks inside a patch of the first text layer, and after it."""
    model = denoiser(pipe)
    layers = tl.select_layers(pipe, "all")
    patched, others = layers[0], layers[1:]

    def text_modules(layer: AttentionLayer) -> list[torch.nn.Module]:
        return [layer.module, *projections([layer]).values()]

    before = {name for name, module in model.named_modules() if hooks_on(module)}
    with tl.patch(pipe, patched.name, cache):
        hooked = sorted(name or "(denoiser)" for name, module in model.named_modules() if hooks_on(module) and name not in before)
        on_others = sum(hooks_on(module) for layer in others for module in text_modules(layer))
    after = sum(hooks_on(module) for module in model.modules())
    return {"patched_layer": patched.name, "hooked_modules": hooked, "hooks_on_unpatched_layers": on_others, "hooks_after": after, "unpatched_layers": len(others)}
