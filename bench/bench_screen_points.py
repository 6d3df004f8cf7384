"""How many points does the integrated screen need? Each k judged against the exact sweep.

    python bench/bench_screen_points.py [--points 1 2 3 4] [--localization samples/tiny/localize]

The integrated screen averages the strength gradient over k points of the path from no patch to a
full one (k = 1 is the plain gradient at strength 0.5; localize's ``screen="gradient"`` takes it at
0). For each k it scores textloc-tiny's choice pairs with ``attribution_scores``, exactly as
``localize`` does, and judges the scores against the exact sweep that the localization logged on
the same pairs, noise and settings (the script checks them against the log's; it reads the main
process's log, so a localization launched on several processes is not supported), by
``Localization.agreement``'s protocol: on the layers whose
exact effect is distinguishable from zero, the screen on half the pairs against the sweep on the
other half over 300 halvings, beside the sweep against itself; the recall of the exact top 3; the
sweep's logged time over the screen's. Scores go to bench/results/screen_points.json after each k,
and a rerun measures only the k it lacks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import textloc as tl
from textloc.localization import stats
from textloc.localization.attribution import attribution_scores, path_points
from textloc.localization.stages import exact_effects, gradient_step_indices
from textloc.localization.report import PROGRESS_FILE
from textloc.localization.sweep import PatchSettings
from textloc.fingerprint import weights_fingerprint
from textloc.pipelines import recommended_settings
from textloc.tiny.pairs import localization_pairs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "screen_points.json"
TOP_K = 3  # the shipped localization's selected set


def logged_sweep(folder: Path) -> tuple[dict, list[dict]]:
    """The localization's settings and its exact sweep, pair by pair, from its log."""
    lines = [json.loads(line) for line in (folder / PROGRESS_FILE).read_text().splitlines()]
    sweep = {line["pair"]: line["result"] for line in lines[1:] if line["stage"] == "sweep"}
    return lines[0]["settings"], [sweep[index] for index in range(len(sweep))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, nargs="+", default=[1, 2, 3, 4], help="values of k to measure (default 1 2 3 4)")
    parser.add_argument("--localization", type=Path, default=ROOT / "samples" / "tiny" / "localize", help="a textloc-tiny localization with an exact sweep in its log")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)

    pipe = tl.load_pipeline("textloc-tiny")
    settings, sweep = logged_sweep(args.localization)
    if settings["weights"] != weights_fingerprint(pipe):
        raise SystemExit(f"{args.localization} was localized on other weights than the shipped textloc-tiny; localize it again first.")
    pairs = localization_pairs(56, seed=0)[: len(sweep)]
    if [[pair.source, pair.target] for pair in pairs] != settings["pairs"][: len(sweep)]:
        raise SystemExit(f"{args.localization} chose on other pairs than localization_pairs(56, seed=0).")
    if any(done["layer_sets"] != [[name] for name in settings["layers"]] for done in sweep):
        raise SystemExit(f"{args.localization} swept other layers than its candidates (screen+exact?); it needs the whole exact sweep.")
    generate_kwargs = recommended_settings("textloc-tiny")
    logged = {key: value for key, value in settings["generate_kwargs"].items() if key in generate_kwargs}
    if logged != {key: repr(value) for key, value in generate_kwargs.items()}:
        raise SystemExit(f"{args.localization} generated with {settings['generate_kwargs']}, not textloc-tiny's settings {generate_kwargs}.")
    layers = tl.select_layers(pipe, settings["layers"])
    window = tuple(settings["patch_steps"]) if settings["patch_steps"] is not None else None
    patch = PatchSettings(window, settings["heads"], settings["branch"], settings["kv"])
    grad_steps = gradient_step_indices(settings["grad_steps"], generate_kwargs["num_inference_steps"], window)

    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    for k in args.points:
        if str(k) in results:
            continue
        print(f"k = {k} ...", flush=True)
        start = time.perf_counter()
        scores = [attribution_scores(pipe, pair, layers, patch, settings["seed"], grad_steps, generate_kwargs, points=path_points(k)) for pair in pairs]
        results[str(k)] = {"points": list(path_points(k)), "scores": scores, "seconds": time.perf_counter() - start}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")

    effect = exact_effects(sweep)
    keep = [i for i in range(len(layers)) if stats.excludes_zero(effect[:, i], settings["seed"])]
    if len(keep) < 2:
        raise SystemExit(f"Only {len(keep)} layer(s) have an exact effect distinguishable from 0: there is no order to agree on.")
    sweep_seconds = sum(done["seconds"] for done in sweep)
    ceiling = stats.split_half(effect[:, keep], effect[:, keep], settings["seed"])
    print(f"\n{len(keep)} of {len(layers)} layers distinguishable from 0; the exact sweep against itself, split-half {ceiling[0]:.2f}"
          f" [{ceiling[1]:.2f}, {ceiling[2]:.2f}], {sweep_seconds / 60:.1f} min\n")
    print("| k | strengths | time for the pairs | sweep's time / screen's | split-half agreement [95% range] | top-3 recall |")
    print("|---|---|---|---|---|---|")
    for k, done in sorted(results.items(), key=lambda item: int(item[0])):
        scores = np.array(done["scores"])
        half = stats.split_half(scores[:, keep], effect[:, keep], settings["seed"])
        recall = stats.top_k_recall(scores.mean(axis=0), effect.mean(axis=0), TOP_K)
        strengths = ", ".join(f"{a:g}" for a in done["points"])
        print(f"| {k} | {strengths} | {done['seconds'] / 60:.1f} min | {sweep_seconds / done['seconds']:.1f}x | {half[0]:.2f} [{half[1]:.2f}, {half[2]:.2f}] | {recall:.0%} |")


if __name__ == "__main__":
    main()
