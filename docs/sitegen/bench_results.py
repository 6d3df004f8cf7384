"""The engine's and the localization benches' results pages.

``engine.json`` (``bench/bench_engine.py``): per architecture its ``overhead`` (plain against
patched generation), ``work`` (aten ops and Python calls counted), ``sweep`` (one batch against
separate runs) and ``cache`` (bytes), and ``real_sizes`` (a cache at real scale).
``real_sizes.json`` (``bench/bench_real_sizes.py``): every family's published denoisers, built on
the meta device. ``localize.json``, ``localize_selection.json``, ``screen_points.json`` and
``pooled_text*.json``: the localization benches of the same names under ``bench/``. ``demo.json``
(``bench/bench_demo.sh``): the seconds each command of ``make demo`` took; ``cli.json``
(``bench/bench_cli.py``): how long each ``--help`` takes.
"""

from __future__ import annotations

from typing import Any

from sitegen.markdown import DASH, code, pct, rate, source_note, table
from sitegen.sources import Sources


def pages(sources: Sources) -> dict[str, str]:
    """``results/engine.md`` and ``results/localization-benches.md``."""
    return {"results/engine.md": _engine_page(sources), "results/localization-benches.md": _localize_page(sources)}


def _binary(n: float) -> str:
    """Bytes in KiB, MiB or GiB, one decimal."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 2**10:,.1f} KiB"


def _per_arch(results: dict[str, Any], part: str) -> list[tuple[str, dict[str, Any]]]:
    return [(arch, parts[part]) for arch, parts in results["archs"].items() if part in parts]


def _engine_page(sources: Sources) -> str:
    engine_path, sizes_path, demo_path, cli_path = (f"bench/results/{name}.json" for name in ("engine", "real_sizes", "demo", "cli"))
    results, sizes, demo, cli = (sources.json(path) for path in (engine_path, sizes_path, demo_path, cli_path))
    settings = results["settings"]
    environment = next(iter(results["environment"].values()))
    overhead = []
    for arch, o in _per_arch(results, "overhead"):
        low, high = o["ratio_interval"]
        overhead.append((arch, o["layers"], o["denoiser_calls"], len(o["times_s"]["plain"]), f"{o['plain_ms']:.0f}", f"{o['patched_ms']:.0f}",
                         f"{o['ratio']:.3f} [{low:.3f}, {high:.3f}]", f"{o['hook_us_per_layer_call']:.0f}", f"{o['enter_ms']:.1f}",
                         f"{o['estimated_ratio']:.3f}", "yes" if o["bit_identical"] else "**no**"))
    work = []
    for arch, w in _per_arch(results, "work"):
        plain, patched = w["plain"], w["patched"]
        extra = {key: patched[key] - plain[key] for key in plain}
        work.append((arch, f"{plain['aten_ops']:,}", f"{patched['aten_ops']:,}", f"+{extra['aten_ops']:,} ({extra['aten_ops'] / plain['aten_ops']:.1%})",
                     f"{plain['python_calls']:,}", f"{patched['python_calls']:,}",
                     f"+{extra['python_calls']:,} ({extra['python_calls'] / plain['python_calls']:.1%})", f"{w['entering']['python_calls']:,}"))
    sweep = [(arch, s["layers"], f"{s['batched_ms']:.0f}", f"{s['separate_ms']:.0f}", f"{s['separate_over_batched']:.2f}", f"{s['max_abs_difference']:.1e}")
             for arch, s in _per_arch(results, "sweep")]
    cache = [(arch, ", ".join(f"{'/'.join(f'{b:,}' for b in sizes_)} ({kind})" for kind, sizes_ in c["entry_bytes"].items()), c["entries"],
              "once" if c["steps_stored"] == [None] else f"{len(c['steps_stored'])} steps", f"{c['nbytes']:,}")
             for arch, c in _per_arch(results, "cache")]
    real = [(r["model"], f"{r['denoiser_params']:,}", f"{r['text_layers']} ({'/'.join(r['kinds'])})", r["text_tokens"],
             "/".join(map(str, r["kv_widths"])), "/".join(_binary(b) for b in r["entry_bytes"]), f"{r['steps']} × {r['branches']}",
             _binary(r["all_layers_bytes_per_prompt"])) for r in results.get("real_sizes", [])]
    return "\n\n".join([
        "# Engine results", source_note(engine_path, sizes_path, demo_path, cli_path),
        (f"Tiny random pipelines at {settings['size']}×{settings['size']}, {settings['steps']} steps, CFG; torch "
        f"{environment['torch']}, diffusers {environment['diffusers']}, {environment['torch_threads']} torch thread(s) on "
        f"{environment['cpu_count']} CPU cores. The guide: [Benchmarks](../benchmarks.md)."),
        "## Hook overhead\n\nGeneration inside `tl.patch(pipe, \"all\", cache)` against plain generation; the hooks' "
        "own cost per layer call and the cost of entering the context, timed apart, and the ratio they predict.\n\n"
        + table(("arch", "text layers", "denoiser calls", "repeats", "plain ms", "patched ms", "patched / plain [95% interval]",
                 "hooks, µs per layer call", "entering, ms", "predicted ratio", "bit-identical"), overhead),
        "## Work per generation, counted\n\n"
        + table(("arch", "aten ops, plain", "patched", "extra", "Python calls, plain", "patched", "extra", "of which entering"), work),
        "## Sweep over every text layer\n\nOne `tl.run_with_patches` batch of L+1 rows against recording the source "
        "once and L separate patched generations.\n\n"
        + table(("arch", "L", "batched ms", "separate ms", "separate / batched", "max abs difference"), sweep),
        "## Cache memory, tiny models (float32, one prompt)\n\n"
        + table(("arch", "bytes per entry (kind)", "entries", "steps stored", "whole cache, bytes"), cache),
        "## Cache memory at real sizes (fp16, one prompt, every text layer)\n\n"
        + table(("model", "denoiser parameters", "text layers", "text tokens", "K/V widths", "one entry", "steps × branches", "whole cache"), real),
        _real_sizes(sizes),
        "## `make demo`, after the install\n\n"
        + table(("command", "seconds"), [(step["command"], f"{step['seconds']:.0f}") for step in demo["steps"]] + [("in all", f"{demo['total_seconds']:.0f}")]),
        f"## `--help`, a fresh process each (median of {cli['repeats']})\n\n"
        + table(("command", "seconds"), [(f"textloc {name}" if name != "textloc" else name, f"{value:.2f}") for name, value in cli["median_seconds"].items()]),
    ]) + "\n"


def _size(num_bytes: int) -> str:
    return DASH if not num_bytes else f"{num_bytes / 2**20:.0f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:.0f} KiB"


def real_size_rows(sizes: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The rows of ``bench/bench_real_sizes.py``'s table, as it prints them (families.md quotes it)."""
    rows = []
    for row in sizes["models"]:
        kinds = ", ".join(f"{n} {kind}" for kind, n in row["text_layers"].items())
        pooled = DASH if row["pooled"] is None else f"{code(row['pooled']['name'])} ({row['pooled']['params'] / 1e6:.1f}M)"
        rows.append((row["model"], f"{row['denoiser_params'] / 1e9:.2f}B", kinds,
                     f"{row['text_kv_params'] / 1e6:.1f}M ({row['text_kv_share']:.2%})", pooled, row["text_tokens"],
                     _size(row["cache_bytes_per_step_and_branch"]), _size(row["cache_bytes_once_per_branch"])))
    return rows


def _real_sizes(sizes: dict[str, Any]) -> str:
    rows = real_size_rows(sizes)
    return (f"## Every family's published denoisers\n\nBuilt on the meta device (shapes only); caches in {sizes['dtype']} "
            "at the text length each pipeline feeds. The guide: [Families](../families.md).\n\n"
            + table(("model", "denoiser", "text layers", "text K/V parameters (share)", "pooled vector", "text tokens",
                     "cache per step and branch", "prompt-only, once per branch"), rows))


def _localize_page(sources: Sources) -> str:
    sweep_path, selection_path, points_path = ("bench/results/localize.json", "bench/results/localize_selection.json",
                                               "bench/results/screen_points.json")
    pooled_paths = sources.glob("bench/results/pooled_text*.json")
    sweep, selection, points = sources.json(sweep_path), sources.json(selection_path), sources.json(points_path)
    parts = ["# Localization benches", source_note(sweep_path, selection_path, points_path, *pooled_paths),
             "The guide: [Localization](../localization.md)."]
    parts.append(
        f"## One batched sweep against a loop (`bench/bench_localize.py`)\n\n{sweep['model']}, {sweep['layers']} layers, "
        f"{sweep['pairs']} pairs, {sweep['threads']} thread(s).\n\n" + table(("", "value"), [
            ("exact sweep as one batched plan, s", f"{sweep['batched_sweep_s']:.1f}"),
            ("exact sweep as a loop of patched generations, s", f"{sweep['naive_sweep_s']:.1f}"),
            ("loop / batched", f"{sweep['sweep_speedup']:.2f}"),
            ("largest pixel difference", f"{sweep['max_abs_image_difference']:.1e}"),
            ("exact sweep with OCR, s", f"{sweep['exact_s']:.1f}"),
            *((f"{name} screen: s, exact / screen, Spearman against the sweep",
               f"{screen['s']:.1f}, {screen['speedup']:.1f}, {DASH if screen['spearman'] is None else format(screen['spearman'], '.2f')}")
              for name, screen in sweep["screens"].items()),
        ]))
    setup = selection["setup"]
    rows = []
    for draw, rules in selection["draws"].items():
        for rule in ("lower-bound", "point"):
            r = rules[rule]
            share = r["held_out_share"]
            rows.append((draw, rule, ", ".join(code(name.replace(".transformer_blocks.0.attn2", "")) for name in r["layers"]),
                         f"{pct(r['held_out_target_hit'])} / {pct(r['held_out_direct_hit'])}", rate(share[0], share[1:]),
                         "yes" if r["holds"] else "**no**"))
    parts.append(
        f"## Does a choice made on few pairs hold? (`bench/bench_localize_selection.py`)\n\n{setup['choice']} choice "
        f"pairs per draw, the chosen set scored on {setup['held']} held-out pairs; a draw holds when the set reaches "
        f"{setup['threshold']} of the direct rate.\n\n"
        + table(("draw", "rule", "layers chosen", "held out: target read / direct", "share of the direct rate", "holds"), rows))
    parts.append(
        "## Points on the integrated screen's path (`bench/bench_screen_points.py`)\n\n"
        + table(("k", "strengths", "time for the pairs, min"),
                [(k, ", ".join(f"{p:.3g}" for p in entry["points"]), f"{entry['seconds'] / 60:.1f}") for k, entry in points.items()]))
    for path in pooled_paths:
        parts.append(_pooled(path, sources.json(path)))
    parts.append(_estimate("bench/results/estimate.json", sources.json("bench/results/estimate.json")))
    return "\n\n".join(parts) + "\n"


def _estimate(path: str, results: dict[str, Any]) -> str:
    """``bench/bench_estimate.py``'s file: per shipped run, each stage's estimated work and time beside what its log holds."""
    parts = [f"## The cost estimate against the shipped runs (`bench/bench_estimate.py`, {code(path)})",
             "`textloc localize --estimate` on each embedded model's shipped settings, beside what its run logged."]
    for run in results["results"]:
        rows = [(stage["stage"], f"{stage['estimated']['pairs']} / {stage['logged']['pairs']}",
                 f"{stage['estimated']['patched_images']} / {stage['logged']['patched_images']}",
                 f"{stage['estimated']['seconds'] / 60:.1f} / {stage['logged']['seconds'] / 60:.1f}") for stage in run["stages"]]
        rows.append(("**total**", "", "", f"{run['estimated_seconds'] / 60:.0f} / {run['reported_seconds'] / 60:.0f}"))
        parts.append(f"### {run['model']}\n\n" + table(("stage", "pairs: estimated / logged", "patched images", "minutes"), rows))
    return "\n\n".join(parts)


def _pooled(path: str, results: dict[str, Any]) -> str:
    settings = results["settings"]
    rows = [(name, rate(row["target_hit"], results["intervals"][name]), pct(row["source_hit"]), pct(row["scene"]))
            for name, row in results["rows"].items()]
    split = settings.get("split", "choice")
    return (f"## The pooled text vector: {code(path)}\n\n{settings['model']}, {settings['pairs']} {split} pairs; "
            f"blocks {', '.join(code(b) for b in settings['blocks'])}; the first prompt generated with what follows the comma "
            "taken from the other.\n\n" + table(("run", "target word read", "source word read", "scene kept"), rows))


