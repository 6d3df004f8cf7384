"""Localization speed, measured side by side in one run.

1. The exact sweep over every text layer of one prompt pair: textloc's batched plans (one
   generation holds source, target and many patched rows) against the naive loop (record the
   target once, then one patched generation per layer), checking that both give the same images.
2. Each screen (gradient, integrated, key-exact) against the exact sweep over the same pairs: time
   ratio and Spearman rank agreement (``Localization.agreement``).

Run: ``python bench/bench_localize.py [--model textloc-tiny] [--pairs 4] [--repeats 3]``.
Prints a markdown table and writes bench/results/localize.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import textloc as tl
from textloc.localization import localize, make_pairs
from textloc.localization.sweep import PatchSettings, generate_patched
from textloc.pipeline_calls import images_of
from textloc.pipelines import TINY_MODEL_DIR, call_kwargs, recommended_settings

RESULTS = Path(__file__).parent / "results"


def naive_sweep(pipe, pair, layers, seed, settings) -> list[np.ndarray]:
    """What one would write without batched plans: one patched generation per layer."""
    kwargs = call_kwargs(pipe, **settings)
    target = tl.record(pipe, pair.target, layers, generator=torch.Generator().manual_seed(seed), **kwargs)
    images = []
    for layer in layers:
        with tl.patch(pipe, layer, target):
            out = pipe(pair.source, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs)
        images.append(np.asarray(images_of(out)[0]))
    return images


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_model = "textloc-tiny" if (TINY_MODEL_DIR / "model_index.json").exists() else "tiny-random-sdxl"
    parser.add_argument("--model", default=default_model)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe = tl.load_pipeline(args.model)
    settings = recommended_settings(args.model)
    layers = [layer.name for layer in tl.select_layers(pipe, "all")]
    pairs = make_pairs(["HELLO", "WORLD", "LAMP", "STOP", "OPEN", "CAFE"], n=args.pairs, seed=0)
    if args.model == "textloc-tiny":
        from textloc.tiny.pairs import localization_pairs

        pairs = localization_pairs(args.pairs, seed=0)

    # 1. batched vs naive, interleaved so both see the same machine load.
    batched_times, naive_times, worst = [], [], 0.0
    for repeat in range(args.repeats):
        pair = pairs[repeat % len(pairs)]
        t_batched, images = timed(generate_patched, pipe, pair, [[name] for name in layers], PatchSettings(), 0, args.max_batch, settings)
        t_naive, naive = timed(naive_sweep, pipe, pair, layers, 0, settings)
        batched_times.append(t_batched)
        naive_times.append(t_naive)
        worst = max(worst, max(float(np.abs(a - b).max()) for a, b in zip(images.patched, naive)))

    # 2. attribution vs exact on the same pairs (OCR included in the exact sweep: it needs it).
    both = localize(pipe, pairs, method="both", held_out=0.0, progress=False, max_batch=args.max_batch, **settings)
    results = {
        "model": args.model,
        "layers": len(layers),
        "pairs": len(pairs),
        "threads": args.threads,
        "batched_sweep_s": statistics.median(batched_times),
        "naive_sweep_s": statistics.median(naive_times),
        "sweep_speedup": statistics.median(naive_times) / statistics.median(batched_times),
        "max_abs_image_difference": worst,
        "exact_s": both.timings["sweep"],
        "screens": {
            name: {"s": both.timings[f"{name} screen"], "speedup": entry.time_ratio, "spearman": entry.spearman}
            for name, entry in both.agreement.screens.items()
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "localize.json").write_text(json.dumps(results, indent=2))
    print(f"| {args.model}: {len(layers)} layers, {len(pairs)} pairs, {args.threads} thread(s) | time | ratio |")
    print("|---|---|---|")
    print(f"| exact sweep of one pair, naive loop (1 generation per layer) | {results['naive_sweep_s']:.2f} s | 1.00 |")
    print(f"| exact sweep of one pair, batched plans | {results['batched_sweep_s']:.2f} s | {results['sweep_speedup']:.1f}x faster |")
    print(f"| largest pixel difference batched vs naive | {worst:.1e} | |")
    print(f"| exact sweep with OCR, all pairs | {results['exact_s']:.2f} s | 1.00 |")
    for name, screen in results["screens"].items():
        # Under two layers distinguishable from 0 there is no ranking to compare.
        agreement = "too few layers to compare" if screen["spearman"] is None else f"Spearman {screen['spearman']:.2f} (pull toward the target image)"
        print(f"| {name} screen, all pairs | {screen['s']:.2f} s | {screen['speedup']:.1f}x faster, {agreement} |")


if __name__ == "__main__":
    main()
