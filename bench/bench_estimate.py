"""The cost estimate (``textloc localize --estimate``) against what the shipped localizations did.

    python bench/bench_estimate.py [--models textloc-tiny textloc-tiny-sd3 textloc-tiny-flux]

For each embedded model, its shipped run (``samples/<model>/localize``) is estimated with the
settings, pairs and candidate layers its report records, assuming the selection it made. The
counts are held to its log: per stage, the pairs and the patched images (its layer sets) that
``progress.jsonl`` holds (the held-out pairs shown in the example grid are not logged: they are
added); the time to the stage times its report keeps. One torch thread, as the runs had; the
shipped runs ran on shared, loaded cores (and were partly resumed), and so does this estimate's
timed denoiser call: the load average is recorded beside it.

Writes bench/results/estimate.json and prints the table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
from collections import defaultdict
from typing import Any

import torch
import transformers

import textloc as tl
from textloc.localization.config import SCREENS, LocalizeConfig
from textloc.localization.stages import EXAMPLES, screen_scorer
from textloc.models import find_named_model
from embedded import ROOT, samples_dir  # beside this script

MODELS = ("textloc-tiny", "textloc-tiny-sd3", "textloc-tiny-flux")
# max_batch is not logged (it only sets how work is batched): the CLI's default ran them.
MAX_BATCH = LocalizeConfig().max_batch


def log_stages(timed: str, config: LocalizeConfig) -> list[str]:
    """The log stages (``Stages._map``'s names) a timed stage of ``localize`` writes."""
    if timed.endswith(" screen"):
        return [screen_scorer(timed.removesuffix(" screen"), config.screen_points)[0]]
    return {
        "sweep": ["sweep"], "necessity sweep": ["necessity sweep"],
        "selection": [f"{way}{config.selection} sets" if config.selection == "cumulative" else f"{way}greedy set" for way in ("", "necessity ")],
        "held_out": ["held out", "necessity held out"],
        "seed sweeps": [f"sweep at seed {seed}" for seed in config.stability_seeds],
        "heads": ["head sweep", "head cumulative sets", "head held out"],
    }[timed]


def logged(folder) -> dict[str, list[dict]]:
    """Each log stage's results, pair by pair, from every process's log (the last entry of a pair wins)."""
    by_stage: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted(folder.glob("progress*.jsonl")):
        for line in path.read_text().splitlines()[1:]:
            entry = json.loads(line)
            by_stage[entry["stage"]][entry["pair"]] = entry["result"]
    return {stage: list(pairs.values()) for stage, pairs in by_stage.items()}


def compare(model: str) -> dict[str, Any]:
    folder = samples_dir(model) / "localize"
    report = json.loads((folder / "report.json").read_text())
    settings = report["settings"]
    named = find_named_model(model)
    pipe = named.load()
    pairs = named.prompt_pairs(settings["held_out_pairs"] + settings["choice_pairs"], settings["seed"])
    logged_pairs = json.loads((folder / "progress.jsonl").read_text().splitlines()[0])["settings"]["pairs"]
    assert [[pair.source, pair.target] for pair in pairs] == logged_pairs, "the model's pairs are not the run's"
    config = LocalizeConfig(**{name: settings[name] for name in LocalizeConfig.__dataclass_fields__ if name in settings})
    generate_kwargs = {key: ast.literal_eval(value) for key, value in settings["generate_kwargs"].items()}
    estimate = tl.localize(
        pipe, pairs, settings["layers"], config, scene_judge=named.scene_judge, estimate=True,
        assume_selected=report["selected"], **generate_kwargs,
    )
    log = logged(folder)
    stages = []
    for cost in estimate.stages:
        names = log_stages(cost.stage, config)
        pairs = patched = 0
        for name in names:
            results = log.get(name, [])
            # Held-out stages keep their first EXAMPLES pairs' images for the example grid, unlogged.
            unlogged = EXAMPLES if name.endswith("held out") else 0
            pairs += len(results) + unlogged
            patched += sum(len(result.get("layer_sets", ())) for result in results)
            if unlogged:
                patched += unlogged * len(results[0]["layer_sets"])
        screen = cost.pairs_scored == 0
        stages.append({
            "stage": cost.stage, "log_stages": names,
            "estimated": {
                "pairs": cost.generations if screen else cost.pairs_scored, "patched_images": cost.images_scored - 2 * cost.pairs_scored,
                "generations": cost.generations, "denoiser_calls": cost.denoiser_calls, "backward_passes": cost.backward_passes,
                "images_read": cost.images_read, "seconds": cost.seconds,
            },
            "logged": {
                "pairs": pairs, "patched_images": patched,
                "seconds": report["timings"].get(cost.stage),
            },
        })
    return {
        "model": model, "settings": {**{key: settings[key] for key in ("method", "direction", "unit", "stability_seeds", "choice_pairs", "held_out_pairs")}, "max_batch": MAX_BATCH, **generate_kwargs},
        "selected": report["selected"], "stages": stages, "probe": estimate.as_dict()["probe"],
        "estimated_seconds": estimate.seconds, "reported_seconds": sum(report["timings"].values()),
        "load_average": os.getloadavg(),
    }


def print_table(results: list[dict[str, Any]]) -> None:
    print("| model | stage | pairs: estimated / logged | patched images: estimated / logged | generations | denoiser calls | backward passes | estimated time | reported time | estimated / reported |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        for stage in [*result["stages"], None]:
            if stage is None:
                ratio = result["estimated_seconds"] / result["reported_seconds"]
                print(f"| {result['model']} | **total** | | | | | | {result['estimated_seconds'] / 60:.0f} min | {result['reported_seconds'] / 60:.0f} min | {ratio:.2f} |")
                continue
            est, log = stage["estimated"], stage["logged"]
            ratio = est["seconds"] / log["seconds"] if log["seconds"] else float("nan")
            print(
                f"| {result['model']} | {stage['stage']} | {est['pairs']} / {log['pairs']} | {est['patched_images']:,} / {log['patched_images']:,} "
                f"| {est['generations']:,} | {est['denoiser_calls']:,} | {est['backward_passes']:,} "
                f"| {est['seconds'] / 60:.1f} min | {(log['seconds'] or 0) / 60:.1f} min | {ratio:.2f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    results = [compare(model) for model in args.models]
    print_table(results)
    out = ROOT / "bench" / "results" / "estimate.json"
    out.write_text(json.dumps({"screens": list(SCREENS), "results": results}, indent=2, default=str) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
