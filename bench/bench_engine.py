"""Engine benchmark: hook overhead, a batched layer sweep against separate runs, TextCache memory.

(One script for its parts, over 500 lines: they share one timing harness, one set of pipelines and
one results file; the counted work's own measurements live in ``engine_work.py``.)

Run from the repository root:

    python bench/bench_engine.py [--repeats 7] [--overhead-repeats 21] [--steps 10] [--size 64]
        [--archs sdxl sd3 flux deepfloyd-if] [--parts overhead work sweep cache] [--work-repeats 5]

It prints markdown tables and writes ``bench/results/engine.json``. Every ratio compares runs made
side by side in this one process on the tiny random pipelines of :mod:`textloc.testing`: within a
repeat the variants of an architecture run back to back, in an order that alternates between
repeats, and the ratio reported is the median over repeats of the per-repeat ratio, which other
work on shared cores disturbs less than a ratio of medians. One torch thread throughout.

1. Hook overhead: a generation inside ``tl.patch(pipe, "all", cache)`` (the cache recorded from
   the same prompt, so the image must come out bit-identical) against the plain generation, same
   seed. The timed patched run includes entering and leaving the context. The ratio carries a
   seeded 95% bootstrap interval over the repeats: a few percent is near the noise of shared cores.
   The engine's own cost is timed apart, in tight loops where noise weighs less: each text layer
   called on its inputs inside the context and outside it (microseconds per layer call, the figure
   that carries to other model sizes), and entering the context; with the plain time they give
   the estimated ratio.
2. Work: the aten operations and Python function calls of one plain and one patched generation,
   counted, not timed: the part of the overhead that these shared cores cannot blur. And call by
   call (:mod:`engine_work`), against the bars of :data:`BARS`: the extra aten ops of each patched
   projection call, its extra microseconds (each call timed beside an unhooked twin's), entering
   ``tl.patch`` (median), and the hooks a patched run leaves on the layers it does not patch.
3. Sweep: patching each of the L text layers in turn from a second prompt, as one
   ``tl.run_with_patches`` batch of L+1 rows, against recording that prompt once and running L
   separate ``with tl.patch(...)`` generations. The largest difference between a batched row and
   its separate run is reported too: batching must not change the result beyond float noise.
4. Memory: ``TextCache.nbytes`` per entry on the tiny models, and the same formula at the real
   models' sizes, computed from their denoisers built on the meta device (no weights needed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from scipy import stats
import transformers
from diffusers import FluxTransformer2DModel
from torch.utils._python_dispatch import TorchDispatchMode

import textloc as tl
from textloc.engine import STEP_INDEPENDENT_KINDS, RowPatch, denoiser, denoiser_parameter_count
from textloc.layers import SD3_MEDIUM, SDXL_BASE
from textloc.pipeline_calls import images_of
from textloc.testing import tiny_call_kwargs, tiny_pipeline

import engine_work  # beside this script

PROMPT = 'A sign that says "HELLO".'
OTHER = 'A sign that says "WORLD".'
RESULTS = Path(__file__).parent / "results" / "engine.json"
OVERHEAD_GOAL = 1.05
# The counted bars (issue 37): per patched projection call, per role written; entering on tiny SDXL.
BARS = {"extra_ops_per_call": 2, "extra_us_per_call": 20.0, "enter_ms": 1.0, "enter_ms_arch": "sdxl", "hooks_on_unpatched_layers": 0}


# --------------------------------------------------------------------------------------------
# Timing


def seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Time each variant ``repeats`` times, back to back, reversing the order every other repeat."""
    names = list(variants)
    for name in names:  # warm-up: first calls allocate and fill caches
        variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            times[name].append(seconds(variants[name]))
    return times


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator]))


def paired_ratio_interval(times: dict[str, list[float]], numerator: str, denominator: str) -> list[float]:
    """A seeded 95% bootstrap interval of the median per-repeat ratio: how far noise on shared
    cores leaves the ratio uncertain."""
    ratios = np.array([a / b for a, b in zip(times[numerator], times[denominator])])
    # Percentile, not BCa: BCa's acceleration is undefined (NaN) when resampled medians tie.
    interval = stats.bootstrap((ratios,), np.median, confidence_level=0.95, method="percentile", rng=np.random.default_rng(0)).confidence_interval
    return [float(interval.low), float(interval.high)]


def median_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values)


# --------------------------------------------------------------------------------------------
# The three measurements on one tiny pipeline


def generation_kwargs(pipe: Any, steps: int, size: int) -> dict[str, Any]:
    return {**tiny_call_kwargs(pipe), "num_inference_steps": steps, "height": size, "width": size}


def seeded(kwargs: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    return {**kwargs, "generator": tl.generator(seed)}


def denoiser_calls(pipe: Any, kwargs: dict[str, Any]) -> int:
    """How many times one generation calls the denoiser (FLUX's true CFG calls it twice a step)."""
    calls = []
    handle = denoiser(pipe).register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        pipe(PROMPT, **seeded(kwargs))
    finally:
        handle.remove()
    return len(calls)


def measure_overhead(pipe: Any, kwargs: dict[str, Any], repeats: int) -> dict[str, Any]:
    cache = tl.record(pipe, "all", PROMPT, **seeded(kwargs))

    def plain() -> np.ndarray:
        return images_of(pipe(PROMPT, **seeded(kwargs)))

    def patched() -> np.ndarray:
        with tl.patch(pipe, "all", cache):
            return images_of(pipe(PROMPT, **seeded(kwargs)))

    identical = np.array_equal(plain(), patched())
    times = interleaved({"plain": plain, "patched": patched}, repeats)
    return {
        "layers": len(cache.layers),
        "denoiser_calls": denoiser_calls(pipe, kwargs),
        "plain_ms": median_ms(times["plain"]),
        "patched_ms": median_ms(times["patched"]),
        "ratio": paired_ratio(times, "patched", "plain"),
        "ratio_interval": paired_ratio_interval(times, "patched", "plain"),
        "bit_identical": identical,
        "times_s": times,
        **measure_hook_cost(pipe, kwargs, median_ms(times["plain"])),
    }


def measure_hook_cost(pipe: Any, kwargs: dict[str, Any], plain_ms: float, blocks: int = 21, loops: int = 50) -> dict[str, Any]:
    """The layer hooks' own cost, timed in tight loops, where the rest of a generation adds no noise.

    Every text layer is called ``loops`` times on the inputs it had at the last step of a generation,
    inside ``tl.patch(pipe, "all", cache, branch="both")`` (after one generation there, so that the
    hooks know the step and branches) and outside it, the two in alternating order over ``blocks``;
    the difference per layer call is the layer hooks' cost, attention compute included on both
    sides. Both branches are patched there because the last denoiser call may run only one (FLUX's
    true CFG ends on its negative pass, which a ``branch="cond"`` patch leaves alone): every timed
    call writes, the most any call of the end-to-end run writes. Entering and leaving the context
    is timed on its own. Their sum over one generation, over the plain generation's time, bounds
    the overhead from above as far as the layers go; it leaves out the once-per-denoiser-call work
    (the step and branch bookkeeping, the scheduler's wrapper), which the end-to-end ratio includes.
    """
    cache = tl.record(pipe, "all", PROMPT, **seeded(kwargs))
    layers = tl.select_layers(pipe, "all")
    inputs: dict[str, tuple[tuple, dict]] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, layer_kwargs: dict) -> None:
            inputs[name] = (args, layer_kwargs)
        return hook

    handles = [layer.module.register_forward_pre_hook(keep(layer.name), with_kwargs=True) for layer in layers]
    try:
        pipe(PROMPT, **seeded(kwargs))
    finally:
        for handle in handles:
            handle.remove()

    def call_layers() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for _ in range(loops):
                for layer in layers:
                    args, layer_kwargs = inputs[layer.name]
                    layer.module(*args, **layer_kwargs)
        return time.perf_counter() - start

    extra = []
    for block in range(blocks):
        plain = call_layers() if block % 2 else None
        with tl.patch(pipe, "all", cache, branch="both"):
            pipe(PROMPT, **seeded(kwargs))
            hooked = call_layers()
        if plain is None:
            plain = call_layers()
        extra.append((hooked - plain) / (loops * len(layers)))

    def enter_and_leave() -> None:
        with tl.patch(pipe, "all", cache):
            pass

    enter_ms = 1000 * statistics.median(seconds(enter_and_leave) for _ in range(blocks))
    hook_us = 1e6 * statistics.median(extra)
    layer_calls = len(layers) * denoiser_calls(pipe, kwargs)
    return {
        "hook_us_per_layer_call": hook_us,
        "enter_ms": enter_ms,
        "layer_calls": layer_calls,
        "estimated_ratio": 1 + (enter_ms + hook_us * layer_calls / 1000) / plain_ms,
    }


class _CountOps(TorchDispatchMode):
    """Counts the aten operations dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def counted_work(run: Callable[[], Any]) -> dict[str, int]:
    """The aten operations and Python function calls (generator resumptions included) of ``run()``."""
    calls = 0

    def profile(frame, event, arg) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    ops = _CountOps()
    with ops:
        sys.setprofile(profile)
        try:
            run()
        finally:
            sys.setprofile(None)
    return {"aten_ops": ops.count, "python_calls": calls}


def measure_work(pipe: Any, kwargs: dict[str, Any], repeats: int) -> dict[str, Any]:
    """What a patched generation does beyond a plain one, in counts (the same setup as the overhead),
    and call by call (:mod:`engine_work`): per patched projection call and layer call, entering the
    context, the hooks on a patched run's modules."""
    cache = tl.record(pipe, "all", PROMPT, **seeded(kwargs))

    def plain() -> None:
        pipe(PROMPT, **seeded(kwargs))

    def patched() -> None:
        with tl.patch(pipe, "all", cache):
            pipe(PROMPT, **seeded(kwargs))

    def entering() -> None:
        with tl.patch(pipe, "all", cache):
            pass

    layers = tl.select_layers(pipe, "all")
    return {
        "plain": counted_work(plain), "patched": counted_work(patched), "entering": counted_work(entering),
        "per_projection_call": engine_work.per_call(pipe, plain, cache, engine_work.projections(layers), repeats),
        "per_layer_call": engine_work.per_call(pipe, plain, cache, {layer.name: layer.module for layer in layers}, repeats),
        "context": engine_work.enter_and_leave(pipe, cache),
        "hooks": engine_work.hook_census(pipe, cache),
    }


def measure_sweep(pipe: Any, kwargs: dict[str, Any], repeats: int) -> dict[str, Any]:
    names = [layer.name for layer in tl.select_layers(pipe, "all")]
    source_row = len(names)
    plan = [RowPatch((name,), source=source_row, row=row) for row, name in enumerate(names)]
    unseeded = {key: value for key, value in kwargs.items() if key != "generator"}

    def batched() -> np.ndarray:
        return images_of(tl.run_with_patches(pipe, [PROMPT] * len(names) + [OTHER], plan, generator=tl.generator(0), **unseeded))

    def separate() -> np.ndarray:
        cache = tl.record(pipe, "all", OTHER, **seeded(kwargs))
        images = []
        for name in names:
            with tl.patch(pipe, name, cache):
                images.append(images_of(pipe(PROMPT, **seeded(kwargs)))[0])
        return np.stack(images)

    difference = float(np.abs(batched()[: len(names)] - separate()).max())
    times = interleaved({"batched": batched, "separate": separate}, repeats)
    return {
        "layers": len(names),
        "batched_ms": median_ms(times["batched"]),
        "separate_ms": median_ms(times["separate"]),
        "separate_over_batched": paired_ratio(times, "separate", "batched"),
        "max_abs_difference": difference,
        "times_s": times,
    }


def measure_cache(pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Bytes of one cache entry (one layer, one prompt, one branch, one step or all steps) per kind."""
    cache = tl.record(pipe, "all", PROMPT, **seeded(kwargs))
    per_kind: dict[str, set[int]] = defaultdict(set)
    for (name, _step, _branch), entry in cache.entries.items():
        tensors = [t for t in (entry.key, entry.value, entry.mask) if t is not None]
        per_kind[cache.layers[name]].add(sum(t.numel() * t.element_size() for t in tensors))
    steps = {step for (_, step, _) in cache.entries}
    branches = {branch for (_, _, branch) in cache.entries}
    return {
        "nbytes": cache.nbytes,
        "entries": len(cache.entries),
        "entry_bytes": {kind: sorted(sizes) for kind, sizes in per_kind.items()},
        "steps_stored": sorted(step for step in steps if step is not None) or [None],
        "branches": sorted(branches),
    }


# --------------------------------------------------------------------------------------------
# Cache memory at the real models' sizes

# The published denoiser configs (SDXL base 1.0 and SD3 medium: textloc.layers' presets; FLUX.1-dev),
# built on the meta device:
# only shapes, no weights, no download. Their parameter counts (2,567,463,684; 2,028,328,000;
# 11,901,408,320) and layer names check the configs.
REAL_MODELS: dict[str, dict[str, Any]] = {
    "SDXL (1024px, 50 steps, CFG)": {
        "build": SDXL_BASE.build_on_meta,
        "text_tokens": 77,  # both CLIP encoders, side by side in the features
        "steps": 50,
        "branches": 2,
    },
    "SD3-medium (1024px, 28 steps, CFG)": {
        "build": SD3_MEDIUM.build_on_meta,
        "text_tokens": 77 + 256,  # CLIP tokens, then T5 at the pipeline's max_sequence_length
        "steps": 28,
        "branches": 2,
    },
    "FLUX.1-dev (1024px, 28 steps, no CFG)": {
        "build": lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        ),
        "text_tokens": 512,  # T5 at FLUX.1-dev's max_sequence_length
        "steps": 28,
        "branches": 1,  # guidance-distilled: one conditional pass per step
    },
}
HALF_PRECISION_BYTES = 2


def real_cache_sizes() -> list[dict[str, Any]]:
    """Cache bytes per prompt: 2 (K, V) x tokens x K/V width x 2 bytes, per layer and branch, per step
    for joint/single layers and once for cross layers."""
    rows = []
    for label, spec in REAL_MODELS.items():
        with torch.device("meta"):
            model = spec["build"]()
        layers = tl.attention_layers(model, kind=("cross", "added_kv", "joint", "single"))
        entry_bytes = [2 * spec["text_tokens"] * layer.text_kv_projections[0].out_features * HALF_PRECISION_BYTES for layer in layers]
        stored_steps = [1 if layer.kind in STEP_INDEPENDENT_KINDS else spec["steps"] for layer in layers]
        total = spec["branches"] * sum(size * steps for size, steps in zip(entry_bytes, stored_steps))
        rows.append(
            {
                "model": label,
                "denoiser_params": denoiser_parameter_count(model),
                "text_layers": len(layers),
                "kinds": sorted({layer.kind for layer in layers}),
                "text_tokens": spec["text_tokens"],
                "kv_widths": sorted({layer.text_kv_projections[0].out_features for layer in layers}),
                "entry_bytes": sorted(set(entry_bytes)),
                "steps": spec["steps"],
                "branches": spec["branches"],
                "all_layers_bytes_per_prompt": total,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# Report


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.1f} KiB"


def table_head(title: str, columns: str) -> None:
    """A markdown section title and table header; ``columns`` separated by `` | ``."""
    print(f"\n## {title}\n")
    print(f"| {columns} |")
    print("|" + "---|" * len(columns.split(" | ")))


def measured(results: dict[str, Any], part: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(arch, that arch's results of ``part``) for every arch that has them."""
    for arch, parts in results["archs"].items():
        if part in parts:
            yield arch, parts[part]


def print_tables(results: dict[str, Any]) -> None:
    settings = results["settings"]
    table_head(
        f"Hook overhead ({settings['steps']} steps, {settings['size']}px, CFG; goal <= {OVERHEAD_GOAL})",
        "arch | text layers | denoiser calls | repeats | plain ms | patched ms | patched/plain [95% interval] "
        "| hooks, us per layer call | entering, ms | estimated ratio | bit-identical",
    )
    for arch, o in measured(results, "overhead"):
        if "hook_us_per_layer_call" not in o:  # measured by an older version of this script
            print(f"| {arch} | (measured before the interval and the hooks' own cost; run --parts overhead) |")
            continue
        low, high = o["ratio_interval"]
        print(
            f"| {arch} | {o['layers']} | {o['denoiser_calls']} | {len(o['times_s']['plain'])} | {o['plain_ms']:.0f} | {o['patched_ms']:.0f} | {o['ratio']:.3f} [{low:.3f}, {high:.3f}] "
            f"| {o['hook_us_per_layer_call']:.0f} | {o['enter_ms']:.1f} | {o['estimated_ratio']:.3f} | {o['bit_identical']} |"
        )

    table_head(
        "Work per generation, counted: the same plain and patched generations",
        "arch | aten ops, plain | patched | extra | Python calls, plain | patched | extra | of which entering",
    )
    for arch, work in measured(results, "work"):
        plain, patched, entering = (work[run] for run in ("plain", "patched", "entering"))
        extra = {key: patched[key] - plain[key] for key in plain}
        print(
            f"| {arch} | {plain['aten_ops']:,} | {patched['aten_ops']:,} | +{extra['aten_ops']:,} ({extra['aten_ops'] / plain['aten_ops']:.1%}) "
            f"| {plain['python_calls']:,} | {patched['python_calls']:,} | +{extra['python_calls']:,} ({extra['python_calls'] / plain['python_calls']:.1%}) "
            f"| {entering['python_calls']:,} |"
        )

    print_work_bars(results)

    table_head(
        "Sweep over every text layer: one batch vs separate patched runs",
        "arch | L | batched ms (L+1 rows) | separate ms (record + L runs) | separate/batched | max abs diff",
    )
    for arch, s in measured(results, "sweep"):
        print(f"| {arch} | {s['layers']} | {s['batched_ms']:.0f} | {s['separate_ms']:.0f} | {s['separate_over_batched']:.2f} | {s['max_abs_difference']:.1e} |")

    table_head("TextCache memory, tiny models (float32, 1 prompt)", "arch | bytes per entry (kind) | entries | steps stored | total")
    for arch, c in measured(results, "cache"):
        per_entry = ", ".join(f"{'/'.join(map(str, sizes))} ({kind})" for kind, sizes in c["entry_bytes"].items())
        steps = "once" if c["steps_stored"] == [None] else f"{len(c['steps_stored'])} steps"
        print(f"| {arch} | {per_entry} | {c['entries']} | {steps} | {c['nbytes']:,} B |")

    print("\n## TextCache memory at real sizes (fp16, 1 prompt, every text layer)\n")
    print("entry = 2 (K,V) x text tokens x K/V width x 2 bytes; cross layers store one entry per branch,")
    print("joint/single layers one per branch and step.\n")
    print("| model | denoiser params | text layers | tokens | K/V widths | bytes per entry | steps x branches | whole cache |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results.get("real_sizes", []):
        entries = "/".join(mib(b) for b in r["entry_bytes"])
        print(f"| {r['model']} | {r['denoiser_params']:,} | {r['text_layers']} ({'/'.join(r['kinds'])}) | {r['text_tokens']} | {'/'.join(map(str, r['kv_widths']))} | {entries} | {r['steps']} x {r['branches']} | {mib(r['all_layers_bytes_per_prompt'])} |")


def work_bars(arch: str, work: dict[str, Any]) -> dict[str, bool]:
    """Whether ``arch``'s counted work meets each bar of :data:`BARS` (entering only on its arch)."""
    projection = work["per_projection_call"]
    held = {
        "extra_ops_per_call": max(projection["extra_ops_per_role_writing"]) <= BARS["extra_ops_per_call"],
        "extra_us_per_call": projection["extra_us_writing"] <= BARS["extra_us_per_call"],
        "hooks_on_unpatched_layers": work["hooks"]["hooks_on_unpatched_layers"] == 0 and work["hooks"]["hooks_after"] == 0,
    }
    if arch == BARS["enter_ms_arch"]:
        held["enter_ms"] = work["context"]["enter_ms"] <= BARS["enter_ms"]
    return held


def print_work_bars(results: dict[str, Any]) -> None:
    table_head(
        f"Counted overhead per call (bars: <= {BARS['extra_ops_per_call']} aten ops and <= {BARS['extra_us_per_call']:.0f} us per patched "
        f"projection call, entering <= {BARS['enter_ms']:.0f} ms on {BARS['enter_ms_arch']}, no hook on unpatched layers)",
        "arch | projection calls (writing) | extra aten ops per writing call | extra us per writing call | extra us, hooked but not writing "
        "| plain call us | layer call: extra ops, us | entering ms (first) | leaving ms | hooks on unpatched layers | bars held",
    )
    for arch, work in measured(results, "work"):
        if "per_projection_call" not in work:
            continue
        p, layer, context, hooks = work["per_projection_call"], work["per_layer_call"], work["context"], work["hooks"]
        not_writing = f"{p['extra_us_not_writing']:.1f}" if "extra_us_not_writing" in p else "-"
        held = work_bars(arch, work)
        print(
            f"| {arch} | {p['calls_per_generation']} ({p['writing_calls_per_generation']}) | {'/'.join(map(str, p['extra_ops_per_role_writing']))} "
            f"| {p['extra_us_writing']:.1f} | {not_writing} | {p['plain_us']:.1f} | {'/'.join(map(str, layer['extra_ops_writing']))}, {layer['extra_us_writing']:.0f} "
            f"| {context['enter_ms']:.2f} ({context['first_enter_ms']:.2f}) | {context['leave_ms']:.2f} | {hooks['hooks_on_unpatched_layers']} "
            f"| {', '.join(name for name, ok in held.items() if ok)}{'; not: ' + ', '.join(name for name, ok in held.items() if not ok) if not all(held.values()) else ''} |"
        )


def environment() -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "load_average": os.getloadavg(),  # other jobs on the shared cores while it ran
    }


PARTS = ("overhead", "work", "sweep", "cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per variant of the sweep (default 7)")
    parser.add_argument(
        "--overhead-repeats", type=int, default=21,
        help="timed runs per variant of the overhead (default 21: a few percent needs many repeats on shared cores)",
    )
    parser.add_argument("--work-repeats", type=int, default=5, help="plain and patched generations whose calls are timed beside their twins' (default 5 each)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (default 64; tiny SD3 allows at most 64)")
    parser.add_argument("--archs", nargs="+", default=["sdxl", "sd3", "flux", "deepfloyd-if"])
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS),
        help="what to measure (default all); the others are kept from --out, which must hold the same steps and size",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    settings = {"steps": args.steps, "size": args.size, "prompt": PROMPT, "other": OTHER}
    results: dict[str, Any] = {"settings": dict(settings), "archs": {}}
    if set(args.parts) != set(PARTS):
        if not args.out.is_file():
            raise SystemExit(f"--parts {' '.join(args.parts)} keeps the other parts from {args.out}, which does not exist; measure all parts first.")
        results = json.loads(args.out.read_text())
        kept = {key: results["settings"].get(key) for key in settings}
        if kept != settings:
            raise SystemExit(f"{args.out} was measured with other settings ({kept}); measure all parts again, or pass the same ones.")
    # Parts kept from an earlier run keep the machine they were measured on.
    earlier = results.get("environment", {})
    if "machine" in earlier:  # one environment for every part, as older versions wrote it
        earlier = dict.fromkeys(PARTS, earlier)
    results["environment"] = {**earlier, **dict.fromkeys(args.parts, environment())}
    if "sweep" in args.parts:
        results["settings"]["repeats"] = args.repeats
    for arch in args.archs:
        pipe = tiny_pipeline(arch)
        kwargs = generation_kwargs(pipe, args.steps, args.size)
        measured = results["archs"].setdefault(arch, {})
        if "overhead" in args.parts:
            print(f"{arch}: overhead...", flush=True)
            measured["overhead"] = measure_overhead(pipe, kwargs, args.overhead_repeats)
        if "work" in args.parts:
            print(f"{arch}: work...", flush=True)
            measured["work"] = measure_work(pipe, kwargs, args.work_repeats)
        if "sweep" in args.parts:
            print(f"{arch}: sweep...", flush=True)
            measured["sweep"] = measure_sweep(pipe, kwargs, args.repeats)
        if "cache" in args.parts:
            measured["cache"] = measure_cache(pipe, kwargs)
    if "cache" in args.parts:
        results["real_sizes"] = real_cache_sizes()

    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
