"""Text edits on an embedded model: textloc's patch, Prompt-to-Prompt and prompt swap, side by side.

    python bench/bench_edit.py [--model textloc-tiny-sd3] [--pairs 48] [--sweep-pairs 16] [--starts 0 0.1 0.2 0.3 0.4]

Every method edits the same held-out scenes (the embedded models' colour/word combinations never
trained together; pair seed 7, which no test uses) from the same noise (seed 1000 + i), through
the same harness (``tl.edit.edit_text``), on the layers of the model's shipped localization
(``samples/<tiny|tiny-sd3>/localize``), scored the same way: the new word read by OCR, the old
word still read, the sign and background colours kept (the models' pixel judge), and the
background outside both images' OCR text boxes (MSE, SSIM, in float) against the source image.

1. Start-step sweep: the patch from each start step on ``--sweep-pairs`` pairs of their own.
2. Methods on ``--pairs`` other pairs, the patch at the best start step of the sweep.
3. Cost: one edit against one plain generation, measured side by side in this run.
4. Real images (``--sections real``): ``--real`` signs drawn by the models' renderer (never
   generated), inverted with the model and edited at ``--real-guidance``; the unedited
   regeneration's PSNR/SSIM against the real image beside every score.

Writes bench/results/edit.json (textloc-tiny; edit-tiny-sd3.json for textloc-tiny-sd3; a run of
some ``--sections`` updates only those), samples/<tiny|tiny-sd3>/edit/grid.png and real.png, and
prints the tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import textloc as tl
from textloc.edit import EDIT_METHODS, edit_text
from textloc.engine import DEFAULT_START_STEP
from textloc.images import captioned_grid
from textloc.layers import LayerSource
from textloc.models import NamedModel, named_model
from embedded import add_layers_argument, add_model_argument, bench_layers, layers_label, results_file, samples_dir  # beside this script
from timing import timed

PAIR_SEED, NOISE_SEED = 7, 1000


def edits(pipe, model: NamedModel, layers: LayerSource, pairs, method: str, start_step=None, first_seed: int = NOISE_SEED) -> list[Any]:
    """One edit per pair (source prompt -> target word), each from its own seed."""
    generators = [tl.generator(first_seed + i) for i in range(len(pairs))]
    return edit_text(
        pipe, [pair.source for pair in pairs], [pair.target_text for pair in pairs], layers,
        start_step=start_step, method=method, generator=generators, **model.settings,
    )


def summarize(model: NamedModel, results, pairs) -> dict[str, float]:
    judge = model.scene_judge
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


def cost(pipe, model: NamedModel, layers: LayerSource, pair, start_step, repeats: int, methods: list[str]) -> dict[str, float]:
    """Seconds of one plain generation and of one edit per method, and their ratios (same run)."""
    settings = model.settings
    plain = timed(lambda: pipe(pair.source, generator=tl.generator(0), output_type="np", **settings), repeats)
    out: dict[str, float] = {"plain_s": plain}
    for method in methods:
        # OCR excluded: it is the same for every method, and no part of generating.
        seconds = timed(lambda: edit_text(pipe, pair.source, pair.target_text, layers, start_step=start_step, method=method, ocr=_NoOCR(), **settings), repeats)
        out[f"{method}_s"], out[f"{method}_ratio"] = seconds, seconds / plain
    return out


def refused(pipe, model: NamedModel, layers: LayerSource, pair, method: str) -> str | None:
    """Why ``method`` cannot edit this model (e.g. Prompt-to-Prompt on joint blocks), or ``None``.

    Asked with a one-step edit, so an error of the bench's real run is never taken for a refusal.
    """
    try:
        edit_text(pipe, pair.source, pair.target_text, layers, method=method, ocr=_NoOCR(), **{**model.settings, "num_inference_steps": 1})
    except ValueError as error:
        return str(error)
    return None


class _NoOCR:
    def read(self, images):
        return [""] * len(images)


def real_edits(pipe, model: NamedModel, layers: LayerSource, count: int, guidance: float, start_step) -> tuple[dict[str, Any], list[Any]]:
    """Edits of renderer signs (held-out scenes, stream 17): each image's word to another word."""
    from textloc.tiny.data import make_example

    words = model.prompt_pairs(count, PAIR_SEED + 1)
    # The model's own settings (max_sequence_length, for one) but its guidance: --real-guidance.
    settings = {key: value for key, value in model.settings.items() if key != "guidance_scale"}
    results, kept = [], []
    for index in range(count):
        example = make_example(17, index, held_out=True)
        new = next(pair.target_text for pair in words[index:] + words if pair.target_text != example.word)
        result = tl.edit_image(pipe, example.image, example.caption, new, layers, start_step=start_step,
                               guidance_scale=guidance, **settings)
        results.append(result)
        kept.append(model.scene_judge([result.edited_image], [example.caption])[0])
    summary = {
        "edits": count, "guidance_scale": guidance, "start_step": start_step,
        "new_word_read": float(np.mean([r.scores["new_contains"] for r in results])),
        "old_word_read": float(np.mean([r.scores["old_contains"] for r in results])),
        "regeneration_reads_old_word": float(np.mean([r.floor["old_contains"] for r in results])),
        "scene_kept": float(np.mean(kept)),
        "reconstruction_psnr": float(np.median([r.reconstruction["psnr"] for r in results])),
        "reconstruction_ssim": float(np.median([r.reconstruction["ssim"] for r in results])),
        "seconds_per_edit": float(np.mean([r.seconds for r in results])),
    }
    return summary, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_argument(parser)
    parser.add_argument("--pairs", type=int, default=48, help="pairs each method edits (default 48)")
    parser.add_argument("--sweep-pairs", type=int, default=16, help="pairs of the start-step sweep (default 16)")
    parser.add_argument("--starts", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4], help="start steps swept, fractions of the schedule")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each timing (default 3)")
    parser.add_argument("--real", type=int, default=24, help="real (rendered) images edited (default 24)")
    parser.add_argument("--real-guidance", type=float, default=2.0, help="guidance of the real-image edits (default 2)")
    parser.add_argument("--real-start", type=float, help="start step of the real-image edits (default: the sweep's best, else textloc's default)")
    parser.add_argument("--results", type=Path, help="the JSON to update (default bench/results/edit.json, edit-tiny-sd3.json)")
    parser.add_argument("--sections", nargs="+", choices=("generated", "real"), default=["generated", "real"], help="what to run (default both)")
    parser.add_argument("--grid", type=Path, help="the generated edits' grid PNG (default samples/<tiny|tiny-sd3>/edit/grid.png; real.png beside it)")
    add_layers_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model, layers = named_model(args.model), bench_layers(args)
    args.results = args.results or results_file("edit", args.model)
    args.grid = args.grid or samples_dir(args.model) / "edit" / "grid.png"
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    pipe = tl.load_pipeline(model.name)
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    if "generated" in args.sections:
        results.update(generated_edits(pipe, model, layers, args, args.grid))
    if "real" in args.sections:
        start = args.real_start if args.real_start is not None else results.get("settings", {}).get("best_start", DEFAULT_START_STEP)
        print(f"real images: {args.real} edits ...", flush=True)
        summary, edited = real_edits(pipe, model, layers, args.real, args.real_guidance, start)
        results["real"] = summary
        rows = [[(r.source_image, f"regen: {r.source_read}"), (r.edited_image, f"edit: {r.edited_read}")] for r in edited[:6]]
        captioned_grid(("regenerated", "edited"), rows).save(args.grid.with_name(args.grid.name.replace("grid", "real")))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)
    print(f"\nwrote {args.results}")


def generated_edits(pipe, model: NamedModel, layers: LayerSource, args, grid: Path) -> dict[str, Any]:
    """Sections 1-3: the sweep, the methods and the cost, on generated images."""
    pairs = model.prompt_pairs(args.sweep_pairs + args.pairs, PAIR_SEED)
    sweep_pairs, pairs = pairs[: args.sweep_pairs], pairs[args.sweep_pairs :]

    sweep = {}
    for start in args.starts:
        print(f"sweep: start step {start} ...", flush=True)
        sweep[start] = summarize(model, edits(pipe, model, layers, sweep_pairs, "patch", start), sweep_pairs)
    # The best start: the most new words read while the scene stays; then the cleanest background.
    best = max(sweep, key=lambda s: (sweep[s]["new_word_read"] * (sweep[s]["scene_kept"] >= 0.95), -(sweep[s]["mse_outside_text"] or 1.0)))

    methods, examples, not_applicable = {}, {}, {}
    for method in EDIT_METHODS:
        refusal = refused(pipe, model, layers, pairs[0], method)
        if refusal:
            print(f"{method}: not applicable: {refusal}", flush=True)
            not_applicable[method] = refusal
            continue
        print(f"{method} on {len(pairs)} pairs ...", flush=True)
        results = edits(pipe, model, layers, pairs, method, best if method == "patch" else None)
        methods[method] = summarize(model, results, pairs)
        examples[method] = results[:6]

    timing = cost(pipe, model, layers, pairs[0], best, args.repeats, list(methods))
    rows = [[(examples["patch"][i].source_image, f"{examples['patch'][i].source_read}")]
            + [(examples[m][i].edited_image, f"{m[:6]}: {examples[m][i].edited_read}") for m in methods] for i in range(len(examples["patch"]))]
    captioned_grid(("source", *methods), rows).save(grid)
    settings = {key: value for key, value in vars(args).items() if key in ("model", "pairs", "sweep_pairs", "starts", "repeats")}
    return {"settings": {**settings, "model_settings": dict(model.settings), "layers": layers_label(layers), "best_start": best,
                         "torch": torch.__version__, "threads": torch.get_num_threads()},
            "sweep": {str(k): v for k, v in sweep.items()}, "methods": methods, "not_applicable": not_applicable, "cost": timing}


def _pct(value):
    return "-" if value is None else f"{100 * value:.0f}%"


def print_tables(results: dict[str, Any]) -> None:
    if "sweep" in results:
        print_generated(results)
    if "real" in results:
        r = results["real"]
        print(f"\n## Real images ({r['edits']} renderer signs, inverted; guidance {r['guidance_scale']}, start step {r['start_step']})\n")
        print("| new word read | old word read | regeneration reads the old word | scene kept | reconstruction PSNR (median) | SSIM | s per edit |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {_pct(r['new_word_read'])} | {_pct(r['old_word_read'])} | {_pct(r['regeneration_reads_old_word'])} | {_pct(r['scene_kept'])} | "
              f"{r['reconstruction_psnr']:.1f} dB | {r['reconstruction_ssim']:.3f} | {r['seconds_per_edit']:.1f} |")


def print_generated(results: dict[str, Any]) -> None:
    print(f"\n# {results['settings'].get('model', 'textloc-tiny')}")  # runs before --model were textloc-tiny's
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
    for method in results["methods"]:
        print(f"| {method} | {c[method + '_s']:.2f} | {c[method + '_ratio']:.2f} |")
    for method, reason in results.get("not_applicable", {}).items():
        print(f"\n{method}: not applicable ({reason})")


if __name__ == "__main__":
    main()
