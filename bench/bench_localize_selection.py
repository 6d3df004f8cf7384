"""Does a selection made on few pairs hold on new ones? The lower-bound rule against the point rule.

    python bench/bench_localize_selection.py [--draws 5] [--choice 8] [--held 16]

Each draw takes ``--choice`` pairs at random (seeded by the draw) from textloc-tiny's 24 choice
pairs (``localization_pairs(56, seed=0)[:24]``, the shipped localization's) and localizes on them
with the exact sweep; the chosen set is scored on the same ``--held`` pairs of the 32 that the
shipped localization holds out. Each draw selects twice from the same sweep: with
``rule="lower-bound"`` (the lower end of the 95% interval of the set's share of the directly
prompted rate must reach 0.8) and with ``rule="point"`` (the share itself, the old rule). The second
selection resumes the first's log, so it costs generations only where it chooses another set.

A draw holds when its set writes the target word on the held-out pairs at 80% or more of the
rate of the target prompted directly. Results go to bench/results/localize_selection.json after
each draw; the runs are in runs/bench_localize_selection/draw-<k> and resume.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import torch

import textloc as tl
from textloc.localization import localize
from textloc.localization.results import Share
from textloc.models import named_model
from textloc.pipelines import recommended_settings
from textloc.tiny.pairs import localization_pairs

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "bench_localize_selection"
RESULTS = ROOT / "bench" / "results" / "localize_selection.json"
CHOICE_PAIRS = 24  # the shipped localization's: localization_pairs(56, seed=0), 24 to choose on, 32 held out
THRESHOLD = 0.8


def held_out_score(result: Any) -> dict[str, Any]:
    """What a draw's selection gives on the held-out pairs."""
    held = result.held_out and result.held_out.sufficiency
    share = held.share_of_direct if held else Share(None, None, None)
    return {
        "layers": result.selected,
        "reached_on_choice_pairs": result.reached,
        "held_out_target_hit": held.patched.target_hit if held else None,
        "held_out_direct_hit": held.direct.target_hit if held else None,
        "held_out_share": list(share),
        "holds": share.value is not None and share.value >= THRESHOLD - 1e-9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=5, help="draws of choice pairs (default 5)")
    parser.add_argument("--choice", type=int, default=8, help="pairs to choose on per draw (default 8)")
    parser.add_argument("--held", type=int, default=16, help="held-out pairs every draw is scored on (default 16)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)

    pipe = tl.load_pipeline("textloc-tiny")
    model = named_model("textloc-tiny")
    settings = recommended_settings("textloc-tiny")
    every = localization_pairs(56, seed=0)
    choice, held = every[:CHOICE_PAIRS], every[CHOICE_PAIRS : CHOICE_PAIRS + args.held]
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    setup = {"choice": args.choice, "held": args.held, "threshold": THRESHOLD}
    if results.get("setup") not in (None, setup):
        raise SystemExit(f"{args.results} holds draws of another setup {results['setup']}; move it away first.")
    results["setup"] = setup
    draws = results.setdefault("draws", {})
    for draw in range(1, args.draws + 1):
        if str(draw) in draws:
            print(f"draw {draw}: done", flush=True)
            continue
        drawn = random.Random(draw).sample(choice, args.choice)
        pairs = drawn + held
        row: dict[str, Any] = {"pairs": [(pair.source, pair.target) for pair in drawn]}
        for rule in ("lower-bound", "point"):
            print(f"draw {draw}, rule {rule} ...", flush=True)
            result = localize(
                pipe, pairs, rule=rule, threshold=THRESHOLD, held_out=len(held) / len(pairs), scene_judge=model.scene_judge,
                out=RUNS / f"draw-{draw}", model_name="textloc-tiny", **settings,
            )
            row[rule] = held_out_score(result)
            print(f"  {json.dumps(row[rule])}", flush=True)
        draws[str(draw)] = row
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(results: dict[str, Any]) -> None:
    """The README's table: per draw and rule, the chosen set and its held-out share of the direct rate."""
    print("\n| draw | rule | layers chosen | reached on the choice pairs | held-out: target read / direct | share of direct [95% interval] | holds |")
    print("|---|---|---|---|---|---|---|")
    for draw, row in results["draws"].items():
        for rule in ("lower-bound", "point"):
            score = row[rule]
            share = score["held_out_share"]
            shown = "-" if share[0] is None else f"{share[0]:.0%} [{share[1]:.0%}, {share[2]:.0%}]"
            print(f"| {draw} | {rule} | {len(score['layers'])} | {'yes' if score['reached_on_choice_pairs'] else 'no'} | "
                  f"{score['held_out_target_hit']:.0%} / {score['held_out_direct_hit']:.0%} | {shown} | {'yes' if score['holds'] else 'no'} |")
    for rule in ("lower-bound", "point"):
        holds = sum(row[rule]["holds"] for row in results["draws"].values())
        print(f"{rule}: holds in {holds} of {len(results['draws'])} draws")


if __name__ == "__main__":
    main()
