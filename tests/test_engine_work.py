"""The engine's overhead in counted work, on every family: what a patched projection call
dispatches beyond the same call unpatched, and which modules carry hooks. Counts, not times: they
hold on any machine (the times are bench/bench_engine.py --parts work's)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import textloc as tl
from conftest import ONE_TEXT_LENGTH, OTHER, PROMPT, seeded
from textloc.engine import denoiser


class _OpsPerCall(TorchDispatchMode):
    """The aten ops of each call of the watched modules."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        super().__init__()
        self.calls: dict[str, list[int]] = {name: [] for name in modules}
        self.running: list[int] = []
        self.modules = modules

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.running = [count + 1 for count in self.running]
        return func(*args, **(kwargs or {}))

    def start(self, module, args) -> None:
        self.running.append(0)

    def stop(self, name: str) -> None:
        self.calls[name].append(self.running.pop())


@contextmanager
def counted(modules: dict[str, torch.nn.Module]) -> Iterator[dict[str, list[int]]]:
    mode = _OpsPerCall(modules)
    handles = []
    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(mode.start))
        handles.append(module.register_forward_hook(lambda module, args, output, name=name: mode.stop(name)))
    try:
        with torch.no_grad(), mode:
            yield mode.calls
    finally:
        for handle in handles:
            handle.remove()


def _patched_modules(pipe) -> dict[str, torch.nn.Module]:
    """The modules whose outputs a patch writes: every text K/V projection (one for a fused K/V
    projection), the pooled vector's reader."""
    modules = {}
    for layer in tl.select_layers(pipe, "all"):
        if layer.kind == "pooled":
            modules[layer.name] = layer.module
        else:
            key, value = layer.text_kv_projections
            modules[f"{layer.name} key"] = key
            if value is not key:
                modules[f"{layer.name} value"] = value
    return modules


def test_a_patched_projection_call_adds_at_most_one_view_and_one_copy(arch, pipe):
    cache = tl.record(pipe, "all", OTHER, **seeded(pipe))
    modules = _patched_modules(pipe)

    def generate() -> None:
        pipe(prompt=PROMPT, **seeded(pipe))

    with counted(modules) as plain:
        generate()
    passes = []
    handle = denoiser(pipe).register_forward_pre_hook(lambda module, args: passes.append(1))
    try:
        with counted(modules) as patched, tl.patch(pipe, "all", cache):
            generate()
    finally:
        handle.remove()
    extra: list[int] = []
    for name, module in modules.items():
        assert len(patched[name]) == len(plain[name])
        # A fused projection (FLUX.2's single-stream blocks) makes the keys and the values: each is written.
        roles = 2 if name.endswith(" key") and f"{name[:-4]} value" not in modules else 1
        extra += [(p - q) / roles for p, q in zip(patched[name], plain[name])]
    assert any(extra), "the patch wrote nothing"
    over = sorted(count for count in extra if count > 2)
    # Where each row packs a text length of its own, the first call of a denoiser pass that asks
    # counts it from the mask: once per pass, not per projection.
    assert len(over) <= (len(passes) if arch in ONE_TEXT_LENGTH else 0), over


def test_only_the_patched_layer_carries_hooks_and_none_stays(pipe):
    model = denoiser(pipe)
    layers = tl.select_layers(pipe, "all")
    patched = layers[0]
    cache = tl.record(pipe, patched.name, OTHER, **seeded(pipe))

    def hooked() -> set[str]:
        return {name for name, module in model.named_modules() if _hooks_on(module)}

    before = hooked()
    with tl.patch(pipe, patched.name, cache):
        inside = hooked() - before
        projections = {name for name, module in model.named_modules() if any(module is p for p in patched.text_kv_projections)}
        assert inside == {"", patched.name, *projections}
        assert sum(_hooks_on(module) for layer in layers[1:] for module in (layer.module, *_projections(layer))) == 0
    assert hooked() == before


def _projections(layer: tl.AttentionLayer) -> tuple[torch.nn.Module, ...]:
    return () if layer.kind == "pooled" else layer.text_kv_projections


def _hooks_on(module: torch.nn.Module) -> int:
    registry = getattr(module, "_diffusers_hook", None)
    return (len(registry.hooks) if registry is not None else 0) + len(module._forward_pre_hooks) + len(module._forward_hooks)
