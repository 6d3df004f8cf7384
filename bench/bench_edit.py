"""Text edits on textloc-tiny: textloc's patch, Prompt-to-Prompt and prompt swap, side by side.

    python bench/bench_edit.py [--pairs 48] [--sweep-pairs 16] [--starts 0 0.1 0.2 0.3 0.4]

Every method edits the same held-out scenes (textloc-tiny's colour/word combinations never
trained together; pair seed 7, which no test uses) from the same noise (seed 1000 + i), through
the same harness (``tl.edit.edit_text``), scored the same way: the new word read by OCR, the old
word still read, the sign and background colours kept (textloc-tiny's pixel judge), and the
background outside both images' OCR text boxes (MSE, SSIM, in float) against the source image.

1. Start-step sweep: the patch from each start step on ``--sweep-pairs`` pairs of their own.
2. Methods on ``--pairs`` other pairs, the patch at the best start step of the sweep.
3. Cost: one edit against one plain generation, measured side by side in this run.

Writes bench/results/edit.json, samples/tiny/edit/grid.png, and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import textloc as tl
from textloc.edit import METHODS, edit_text
from textloc.images import captioned_grid
from textloc.models import named_model

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ROOT / "samples" / "tiny" / "localize"
RESULTS = ROOT / "bench" / "results" / "edit.json"
GRID = ROOT / "samples" / "tiny" / "edit" / "grid.png"
PAIR_SEED, NOISE_SEED = 7, 1000


def edits(pipe, pairs, method: str, start_step=None, first_seed: int = NOISE_SEED) -> list[Any]:
    """One edit per pair (source prompt -> target word), each from its own seed."""
    settings = named_model("textloc-tiny").settings
    generators = [tl.generator(first_seed + i) for i in range(len(pairs))]
    return edit_text(
        pipe, [pair.source for pair in pairs], [pair.target_text for pair in pairs], LAYERS,
        start_step=start_step, method=method, generator=generators, **settings,
    )


def summarize(results, pairs) -> dict[str, float]:
    judge = named_model("textloc-tiny").scene_judge
    kept = judge([r.edited_image for r in results], [pair.source for pair in pairs])
    outside = [r.scores["mse_outside_text"] for r in results if r.scores["mse_outside_text"] is not None]
    return {
        "edits": len(results),
        "new_word_read": float(np.mean([r.scores["new_contains"] for r in results])),
        "old_word_read": float(np.mean([r.scores["old_contains"] for r in results])),
        "scene_kept": float(np.mean(kept)),
        "source_old_word_read": float(np.mean([r.floor["old_contains"] for r in results])),  # the model's own rate
        "source_new_word_read": float(np.mean([r.floor["new_contains"] for r in results])),  # the floor
        "mse_outside_text": float(np.mean(outside)) if outside else None,
        "ssim_outside_text": float(np.mean([r.scores["ssim_outside_text"] for r in results if r.scores["ssim_outside_text"] is not None])) if outside else None,
        "boxes_found": len(outside),
        "seconds_per_edit": float(np.mean([r.seconds for r in results])),
    }


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def cost(pipe, pair, start_step, repeats: int) -> dict[str, float]:
    """Seconds of one plain generation and of one edit per method, and their ratios (same run)."""
    settings = named_model("textloc-tiny").settings
    plain = timed(lambda: pipe(pair.source, generator=tl.generator(0), output_type="np", **settings), repeats)
    out: dict[str, float] = {"plain_s": plain}
    for method in METHODS:
        # OCR excluded: it is the same for every method, and no part of generating.
        seconds = timed(lambda: edit_text(pipe, pair.source, pair.target_text, LAYERS, start_step=start_step, method=method, ocr=_NoOCR(), **settings), repeats)
        out[f"{method}_s"], out[f"{method}_ratio"] = seconds, seconds / plain
    return out


class _NoOCR:
    def read(self, images):
        return [""] * len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=48, help="pairs each method edits (default 48)")
    parser.add_argument("--sweep-pairs", type=int, default=16, help="pairs of the start-step sweep (default 16)")
    parser.add_argument("--starts", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4], help="start steps swept, fractions of the schedule")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each timing (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    pipe = tl.load_pipeline("textloc-tiny")
    pairs = named_model("textloc-tiny").prompt_pairs(args.sweep_pairs + args.pairs, PAIR_SEED)
    sweep_pairs, pairs = pairs[: args.sweep_pairs], pairs[args.sweep_pairs :]

    sweep = {}
    for start in args.starts:
        print(f"sweep: start step {start} ...", flush=True)
        sweep[start] = summarize(edits(pipe, sweep_pairs, "patch", start), sweep_pairs)
    # The best start: the most new words read while the scene stays; then the cleanest background.
    best = max(sweep, key=lambda s: (sweep[s]["new_word_read"] * (sweep[s]["scene_kept"] >= 0.95), -(sweep[s]["mse_outside_text"] or 1.0)))

    methods, examples = {}, {}
    for method in METHODS:
        print(f"{method} on {len(pairs)} pairs ...", flush=True)
        results = edits(pipe, pairs, method, best if method == "patch" else None)
        methods[method] = summarize(results, pairs)
        examples[method] = results[:6]

    timing = cost(pipe, pairs[0], best, args.repeats)
    results = {"settings": {**vars(args), "model_settings": dict(named_model("textloc-tiny").settings), "layers": str(LAYERS.relative_to(ROOT)), "best_start": best,
                            "torch": torch.__version__, "threads": torch.get_num_threads()},
               "sweep": {str(k): v for k, v in sweep.items()}, "methods": methods, "cost": timing}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    rows = [[(examples["patch"][i].source_image, f"{examples['patch'][i].source_read}")]
            + [(examples[m][i].edited_image, f"{m[:6]}: {examples[m][i].edited_read}") for m in METHODS] for i in range(len(examples["patch"]))]
    GRID.parent.mkdir(parents=True, exist_ok=True)
    captioned_grid(("source", *METHODS), rows).save(GRID)
    print_tables(results)
    print(f"\nwrote {RESULTS.relative_to(ROOT)} and {GRID.relative_to(ROOT)}")


def _pct(value):
    return "-" if value is None else f"{100 * value:.0f}%"


def print_tables(results: dict[str, Any]) -> None:
    print(f"\n## Start-step sweep ({results['settings']['sweep_pairs']} pairs; best {results['settings']['best_start']})\n")
    print("| start step | new word read | old word read | scene kept | MSE outside text | SSIM outside text |")
    print("|---|---|---|---|---|---|")
    for start, r in results["sweep"].items():
        print(f"| {start} | {_pct(r['new_word_read'])} | {_pct(r['old_word_read'])} | {_pct(r['scene_kept'])} | {r['mse_outside_text']:.4f} | {r['ssim_outside_text']:.3f} |")
    print(f"\n## Methods ({results['settings']['pairs']} held-out pairs, same noise)\n")
    print("| method | new word read | old word read | scene kept | MSE outside text | SSIM outside text | s per edit |")
    print("|---|---|---|---|---|---|---|")
    for method, r in results["methods"].items():
        print(f"| {method} | {_pct(r['new_word_read'])} | {_pct(r['old_word_read'])} | {_pct(r['scene_kept'])} | {r['mse_outside_text']:.4f} | {r['ssim_outside_text']:.3f} | {r['seconds_per_edit']:.1f} |")
    c = results["cost"]
    print(f"\n## Cost (one edit / one plain generation, same run, median of {results['settings']['repeats']})\n")
    print("| method | seconds | x plain |")
    print("|---|---|---|")
    print(f"| plain generation | {c['plain_s']:.2f} | 1.00 |")
    for method in METHODS:
        print(f"| {method} | {c[method + '_s']:.2f} | {c[method + '_ratio']:.2f} |")


if __name__ == "__main__":
    main()
