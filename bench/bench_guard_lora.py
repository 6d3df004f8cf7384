"""The guard in the weights: a LoRA on an embedded model's text layers that writes a benign word where a toxic one is asked for.

    python bench/bench_guard_lora.py [--model textloc-tiny-sd3] [--steps 300] [--batch-size 8] [--lr 3e-3] [--rank 4] [--scenes 2] [--benign 64]
        [--variants text-layers,base,all-attention,closed-form] [--toxic-fraction 0.5] [--twin-fraction F] [--targets to_k,to_v] [--anchor-weight W] [--preserve] [--ema-decay D] [--replace W=NEW,...]
        [--preserve-weight L]
        [--results FILE --runs DIR]   # any option changed: a results file and runs folder of its own

Variants, each trained with ``tl.train_guard_lora`` on the same pairs (:class:`textloc.guard.GuardPairs`:
half the examples a toxic word asked for and its benign replacement drawn in the same scene, half
ordinary signs of the benign words; held-out scenes never drawn) with the same budget:

- ``text-layers``: LoRA on the shipped localization's layers (samples/tiny/localize, samples/tiny-sd3/localize);
- ``all-attention``: LoRA on q, k, v and out of every attention layer (self and cross), as the issue asks;
- ``base``: the model as shipped;
- ``closed-form`` (only when asked for): no training, ``tl.closed_form_edit`` of the same layers' text K/V
  projections from the pairs' toxic captions to the same captions asking for the replacement
  (``GuardPairs.edit_pairs``), the ordinary signs' captions preserved (``GuardPairs.anchor_prompts``)
  with ``--preserve-weight`` (TIME/UCE as a baseline against the trained LoRA); with its ``sweep``: how far
  the edit reaches the replacement captions' text K/V and moves the ordinary signs' at other weights
  (no images).

Each is scored with the runtime guard off (``tl.ToxicTextGuard(..., method="unguarded")``, the plain
pipeline call) on bench_guard_adversarial's set (every toxic word in its held-out scenes, 9 forms,
the same noise; its functions imported, its scores: toxic word read, replacement read, scene kept,
MSE outside text against the base model's image), and on benign-word accuracy: held-out captions of
the benign vocabulary (combinations training never draws), as bench_finetune measures it (OCR word
accuracy, sign and background colour accuracy), and each LoRA against the base model on the same
captions and noise: the points it loses, with a paired bootstrap interval over captions, and the
words of the captions it loses (``benign_drop``; the base model's verdicts are kept under
runs/bench_guard_lora-benign/ for every budget's file, and a rerun of a finished file adds them).
A LoRA on named projections (``--targets``) and the closed-form edit also get ``kv_change``: how far they move their layers'
text keys and values, relative to their size (what ``--anchor-weight``'s anchor penalises), on 128
held-out benign captions and on 128 of the pairs' toxic captions.

LoRA folders go under runs/bench_guard_lora/ (``-tiny-sd3`` for the other model; resumable: a rerun
continues training from the last checkpoint, and a longer ``--steps`` continues a finished run);
images are kept per variant and step count; results go to bench/results/guard_lora.json
(``guard_lora-tiny-sd3.json``) after each variant, so a rerun skips what is done.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

import textloc as tl
from bench_finetune import checkpoint_step, generate as generate_chunked  # beside this script
from bench_guard_adversarial import FORMS, adversarial_prompts, generate_kept, kept_images, scenes_suffix, score_method
from embedded import DEFAULT_MODEL, ROOT, add_model_argument, layers_dir, results_file, short_name
from textloc.engine import attention_layers, conditional_settings, denoiser, text_input_moments
from textloc.finetune.anchor import TextAnchor, anchored_paths
from textloc.finetune.lora import TRAINING_FILE, lora_disabled
from textloc.guard import GuardPairs, ToxicTextGuard
from textloc.layers import resolve_layers
from textloc.localization.stats import interval
from textloc.models import named_model
from textloc.pipeline_calls import call_kwargs
from textloc.scoring.ocr import get_ocr
from textloc.tiny.data import EVAL_SEED, make_example
from textloc.tiny.evaluate import judge, summarise

VARIANTS = ("text-layers", "base", "all-attention", "closed-form")
DEFAULT_VARIANTS = VARIANTS[:3]


def runs_dir(model: str) -> Path:
    """Where a model's LoRA folders and images go by default."""
    return ROOT / "runs" / ("bench_guard_lora" + ("" if model == DEFAULT_MODEL else f"-{short_name(model)}"))


def lora_layers(pipe: Any, model: str, variant: str, projections: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``train_guard_lora``'s ``layers``/``targets`` for a LoRA variant (``projections``: of each text layer; default its family's)."""
    if variant == "text-layers":
        if projections is None:
            return {"layers": layers_dir(model), "targets": None}
        # Named projections are an attention's: a pooled unit of the localization (SD3's) has none, and is left out.
        layers = [layer.name for layer in resolve_layers(pipe, layers_dir(model)) if layer.kind != "pooled"]
        return {"layers": layers, "targets": projections}
    every = [layer.name for layer in attention_layers(pipe) if layer.kind != "pooled"]  # self-attention included
    return {"layers": None, "targets": [f"{name}.{p}" for name in every for p in ("to_q", "to_k", "to_v", "to_out.0")]}


def benign_accuracy(pipe: Any, words: tuple[str, ...], count: int) -> dict[str, Any]:
    """Word, sign and background accuracy on ``count`` held-out captions of ``words``, and whether
    each caption's word was read (``word_ok``, for a paired comparison on the same captions and noise)."""
    examples = [make_example(EVAL_SEED, index, held_out=True, words=words) for index in range(count)]
    verdicts = judge(generate_chunked(pipe, [e.caption for e in examples], seed=EVAL_SEED), examples)
    return {**summarise(verdicts), "word_ok": [bool(v["word_ok"]) for v in verdicts]}


def base_benign(pipe: Any, model: str, words: tuple[str, ...], count: int) -> dict[str, Any]:
    """:func:`benign_accuracy` of the model as shipped, kept under runs/ for every budget's file to reuse."""
    path = ROOT / "runs" / "bench_guard_lora-benign" / f"{short_name(model)}-{count}.json"
    key = [list(words), count, EVAL_SEED]
    if path.is_file() and (kept := json.loads(path.read_text()))["key"] == key:
        return kept["benign"]
    benign = benign_accuracy(pipe, words, count)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps({"key": key, "benign": benign}) + "\n")
    path.with_suffix(".tmp").replace(path)  # whole or not at all: a run cut off mid-write leaves no file to misread
    return benign


def benign_drop(base: dict[str, Any], variant: dict[str, Any], pairs: GuardPairs) -> dict[str, Any] | None:
    """How many points of benign word accuracy a variant loses against the base on the same captions
    and noise, with the paired bootstrap interval over captions, and which words the captions it
    loses and gains ask for (``twin_share``: the share of the lost captions whose word is one of
    ``pairs.twin_words``, beside their share of all captions); ``None`` when they were not the same captions."""
    if "word_ok" not in base or len(base.get("word_ok", [])) != len(variant.get("word_ok", [])):
        return None
    before, after = np.asarray(base["word_ok"], float), np.asarray(variant["word_ok"], float)
    words = [make_example(EVAL_SEED, index, held_out=True, words=pairs.benign_words).word for index in range(len(before))]
    lost = [word for word, b, a in zip(words, before, after) if b > a]
    twins = set(pairs.twin_words)
    return {
        "points": float(100 * (before - after).mean()), "ci95": [100 * bound for bound in interval(before - after)],
        "lost": len(lost), "gained": int((after > before).sum()), "lost_by_word": dict(Counter(lost).most_common()),
        "twin_words": list(pairs.twin_words),
        "twin_share": {"lost": sum(word in twins for word in lost) / max(len(lost), 1), "captions": sum(word in twins for word in words) / len(words)},
    }


def kv_change(model: str, folder: Path, pairs: GuardPairs, count: int = 128) -> dict[str, float]:
    """How far the LoRA in ``folder`` moves the text keys and values of its layers, relative to their
    size (what ``train_lora``'s anchor measures, :class:`textloc.finetune.anchor.TextAnchor`): on
    ``count`` held-out benign captions and on ``count`` of the pairs' toxic captions."""
    pipe = tl.load_pipeline(model)
    layers = resolve_layers(pipe, json.loads((folder / "training.json").read_text())["layers"])
    tl.load_lora(pipe, folder)
    modules = dict(denoiser(pipe).named_modules())
    trained = [path for path, module in modules.items() if hasattr(module, "lora_A") and len(module.lora_A)]
    anchored = anchored_paths(layers, trained)
    adapter = next(iter(modules[next(iter(anchored))].lora_A))  # the name pipe.load_lora_weights gave it
    toxic = [pair.caption for pair in map(pairs.pair, range(4 * count)) if pair.form is not None][:count]
    benign = [make_example(EVAL_SEED, index, held_out=True, words=pairs.benign_words).caption for index in range(count)]
    settings = call_kwargs(pipe, **named_model(model).settings)
    change = {}
    for name, prompts in (("benign", benign), ("toxic", toxic)):
        with lora_disabled(denoiser(pipe)):
            moments = text_input_moments(pipe, layers, prompts, progress=False, **conditional_settings(pipe, settings))
        change[name] = float(TextAnchor(pipe, anchored, moments, adapter)().detach())
    return change


#: The preserve weights at which the closed-form variant also records how far an edit reaches its
#: targets' text K/V and moves the ordinary signs' (no images: the edit's own two numbers).
SWEEP = (1e-4, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def closed_form_sweep(model: str, pairs: GuardPairs, folder: Path) -> dict[str, dict[str, float]]:
    """``reached`` and ``preserved_moved`` of the guard's closed-form edit at each weight of :data:`SWEEP`,
    on the same pairs and layers (the edits are written under ``folder`` and kept)."""
    sweep = {}
    for weight in SWEEP:
        run = folder / f"closed-form-sweep-{weight:g}"
        if (run / TRAINING_FILE).is_file():
            made = json.loads((run / TRAINING_FILE).read_text())
        else:
            pipe = tl.load_pipeline(model)
            tl.closed_form_edit(pipe, layers_dir(model), pairs.edit_pairs(), pairs.anchor_prompts, preserve_weight=weight, output_dir=run,
                                generate_kwargs=call_kwargs(pipe, **named_model(model).settings), progress=False)
            made = json.loads((run / TRAINING_FILE).read_text())
        sweep[f"{weight:g}"] = {"reached": made["reached"], "preserved_moved": made["preserved_moved"]}
    return sweep


def overall(forms: dict[str, dict[str, Any]], key: str) -> float | None:
    values = [form[key] for form in forms.values() if form[key] is not None]
    return float(np.mean(values)) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_argument(parser)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each LoRA (default 300)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step (default 8)")
    parser.add_argument("--lr", type=float, default=3e-3, help="LoRA learning rate, constant (default 3e-3)")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (default 4, train_lora's)")
    parser.add_argument("--scenes", type=int, default=2, help="held-out scenes per toxic word in the adversarial set (default 2, as bench_guard_adversarial)")
    parser.add_argument("--toxic-fraction", type=float, default=0.5, help="share of toxic examples in the pairs (default 0.5; 0: a control, ordinary signs only)")
    parser.add_argument("--ema-decay", type=float, help="train_lora's ema_decay: keep an average of the LoRA's weights (default: none, the last step's)")
    parser.add_argument("--replace", help="what each toxic word is drawn as, WORD=NEW,... (default: the runtime guard's benign word of the same length)")
    parser.add_argument("--twin-fraction", type=float, default=0.0, help="GuardPairs(twin_fraction=): share of the ordinary signs drawn from the benign words sharing a letter the replacements change (default 0)")
    parser.add_argument("--targets", help="the text layers' projections the LoRA trains, e.g. to_k,to_v (default: the family's, q, k, v and out)")
    parser.add_argument("--anchor-weight", type=float, help="train_lora's anchor_weight: hold the ordinary signs' text keys and values where the model has them (default: no anchor)")
    parser.add_argument("--preserve", action="store_true", help="GuardPairs(preserve=True): the ordinary signs' target is the model's own prediction")
    parser.add_argument("--benign", type=int, default=64, help="held-out benign captions (default 64)")
    parser.add_argument("--preserve-weight", type=float, help="the closed-form variant's preserve_weight (default 1)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"variants to run, of {','.join(VARIANTS)} (default {','.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--batch", type=int, default=8, help="prompts per pipeline call (default 8)")
    parser.add_argument("--results", type=Path, help="results JSON (default bench/results/guard_lora[-<model>].json)")
    parser.add_argument("--runs", type=Path, help="where the LoRA folders and images go (default runs/bench_guard_lora[-<model>]); another budget needs its own")
    args = parser.parse_args()
    args.results = args.results or results_file("guard_lora", args.model)
    args.runs = args.runs or runs_dir(args.model)
    torch.set_num_threads(1)
    if "closed-form" in args.variants.split(",") and args.preserve_weight is None:
        args.preserve_weight = 1.0

    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    budget = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "rank": args.rank, "toxic_fraction": args.toxic_fraction, "ema_decay": args.ema_decay, "preserve": args.preserve, "replace": args.replace, "twin_fraction": args.twin_fraction, "targets": args.targets, "anchor_weight": args.anchor_weight, "preserve_weight": args.preserve_weight, "scenes": args.scenes, "benign": args.benign}
    # files from before --rank, --replace, --twin-fraction, --targets, --anchor-weight, --preserve-weight
    if results.get("budget") is not None and {"rank": 4, "replace": None, "twin_fraction": 0.0, "targets": None, "anchor_weight": None, "preserve_weight": None, **results["budget"]} != budget:
        raise SystemExit(f"{args.results} holds results of another budget {results['budget']}; move it away first.")
    results["budget"] = budget
    model = named_model(args.model)
    results["model"] = model.name
    replace = "benign" if args.replace is None else dict(swap.split("=") for swap in args.replace.split(","))
    pairs = GuardPairs(seed=0, toxic_fraction=args.toxic_fraction, preserve=args.preserve, replace=replace, twin_fraction=args.twin_fraction)
    results["pairs"] = pairs.description
    items = adversarial_prompts(args.scenes)
    prompts, seeds = [item["prompt"] for item in items], [item["seed"] for item in items]
    written = [pairs.replacements[item["word"]] for item in items]  # what the LoRA was trained to write instead
    ocr, judge = get_ocr("rapidocr"), model.scene_judge
    done = results.setdefault("variants", {})
    base_pipe = tl.load_pipeline(model.name)
    settings = call_kwargs(base_pipe, **model.settings, output_type="np")

    def adversarial_images(pipe: Any, folder: Path, name: str) -> dict[str, Any]:
        """The adversarial set generated with the runtime guard off (the plain call), kept in ``folder``, and read."""
        run = generate_kept(name, folder, ToxicTextGuard(pipe, layers_dir(model.name), method="unguarded"), prompts, seeds, args.batch, settings)
        run["readings"] = ocr.readings(run["images"])
        run["reads"] = [reading.text for reading in run["readings"]]
        return run

    print(f"base: {len(prompts)} adversarial prompts ...", flush=True)
    # The base model's adversarial images are bench_guard_adversarial's own unguarded run: reused when it is there.
    base_run = adversarial_images(base_pipe, kept_images(model.name, args.scenes), "unguarded")
    for variant in [v for v in VARIANTS if v in args.variants.split(",")]:
        if variant in done:
            print(f"{variant}: done", flush=True)
            continue
        record: dict[str, Any] = {}
        if variant == "base":
            pipe, adversarial = base_pipe, base_run
        elif variant == "closed-form":
            pipe = tl.load_pipeline(model.name)
            run = args.runs / variant
            if (run / TRAINING_FILE).is_file():  # made by an earlier run: the same edit, loaded
                tl.load_lora(pipe, run)
                made = json.loads((run / TRAINING_FILE).read_text())
            else:
                print(f"{variant}: editing ...", flush=True)
                began = time.perf_counter()
                tl.closed_form_edit(pipe, layers_dir(model.name), pairs.edit_pairs(), pairs.anchor_prompts, preserve_weight=args.preserve_weight, output_dir=run,
                                    generate_kwargs=call_kwargs(pipe, **model.settings))
                made = {**json.loads((run / TRAINING_FILE).read_text()), "seconds": time.perf_counter() - began}
            record.update({key: made[key] for key in ("reached", "preserved_moved", "seconds") if key in made}, layers=len(made["layers"]))
            print(f"{variant}: {len(prompts)} adversarial prompts ...", flush=True)
            adversarial = adversarial_images(pipe, args.runs / "images", f"{variant}-{args.preserve_weight}{scenes_suffix(args.scenes)}")
        else:
            pipe = tl.load_pipeline(model.name)
            run = args.runs / variant
            first = checkpoint_step(run, args.steps)
            began = time.perf_counter()
            print(f"{variant}: training from step {first} to {args.steps} ...", flush=True)
            trained = tl.train_guard_lora(
                pipe, **lora_layers(pipe, model.name, variant, args.targets and tuple(args.targets.split(","))), pairs=pairs, steps=args.steps, batch_size=args.batch_size, lr=args.lr, rank=args.rank,
                ema_decay=args.ema_decay, anchor_weight=args.anchor_weight, checkpoint_every=25, output_dir=run, resume=True,
            )
            record.update(trainable_parameters=trained.trainable_parameters, trainable_share=trained.trainable_share, layers=len(trained.layers))
            if first < args.steps:  # a run finished before has no time of its own to report
                record["seconds_per_step"] = (time.perf_counter() - began) / (args.steps - first)
            print(f"{variant}: {len(prompts)} adversarial prompts ...", flush=True)
            adversarial = adversarial_images(pipe, args.runs / "images", f"{variant}-{args.steps}-{args.batch_size}-{args.lr}{scenes_suffix(args.scenes)}")
        forms = score_method(adversarial, base_run, items, written, judge)
        for form in forms.values():  # the prompt side and the image check are off here
            form.pop("found_in_prompt"), form.pop("caught_by_image_check")
        print(f"{variant}: {args.benign} held-out benign captions ...", flush=True)
        if variant == "base":
            benign = base_benign(pipe, model.name, pairs.benign_words, args.benign)
        else:
            benign = benign_accuracy(pipe, pairs.benign_words, args.benign)
        done[variant] = {
            **record, "toxic_word_read": overall(forms, "toxic_word_read"), "replacement_read": overall(forms, "replacement_read"),
            "scene_kept": overall(forms, "scene_kept"), "mse_outside_text": overall(forms, "mse_outside_text"),
            "benign": benign, "forms": forms,
        }
        print(f"  {json.dumps({k: v for k, v in done[variant].items() if k not in ('forms', 'benign')})} benign {done[variant]['benign']['word_acc']:.3f}", flush=True)
        results["torch"], results["threads"] = torch.__version__, torch.get_num_threads()
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
    if "base" in done:  # every variant against the base, whichever ran first (a rerun of a finished file adds it)
        for name, other in done.items():
            if name != "base":
                other["benign_drop"] = benign_drop(done["base"]["benign"], other["benign"], pairs)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
    # How far a LoRA on named projections, or the closed-form edit, moves their text K/V
    for name in [n for n in ("text-layers", "closed-form") if n in done and (n == "closed-form" or args.targets) and "kv_change" not in done[n]]:
        done[name]["kv_change"] = kv_change(model.name, args.runs / name, pairs)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
    if "closed-form" in done and "sweep" not in done["closed-form"]:  # the edit's reach and drift over preserve weights
        done["closed-form"]["sweep"] = closed_form_sweep(model.name, pairs, args.runs)
        targets = json.loads((args.runs / "closed-form" / TRAINING_FILE).read_text())["targets"]
        modules = dict(denoiser(base_pipe).named_modules())
        done["closed-form"]["edited_parameters"] = sum(modules[path].weight.numel() for path in targets)
        args.results.write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def print_tables(results: dict[str, Any]) -> None:
    variants = results["variants"]
    print("\n## Toxic word read, per form (runtime guard off; same prompts and noise)\n")
    print("| form | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for form in FORMS:
        print(f"| {form} | " + " | ".join(_pct(v["forms"][form]["toxic_word_read"]) for v in variants.values()) + " |")
    print("\n| variant | trainable parameters | toxic word read | replacement read | scene kept | MSE outside text | benign word acc | benign drop (95% CI) | sign acc | background acc |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, v in variants.items():
        trainable = f"{v['trainable_parameters']:,}" if "trainable_parameters" in v else "-"
        mse = "-" if v["mse_outside_text"] is None else f"{v['mse_outside_text']:.4f}"
        b, drop = v["benign"], v.get("benign_drop")
        lost = "-" if drop is None else f"{drop['points']:.1f} ({drop['ci95'][0]:.1f} to {drop['ci95'][1]:.1f}; {drop['lost']} lost, {drop['gained']} gained)"
        print(f"| {name} | {trainable} | {_pct(v['toxic_word_read'])} | {_pct(v['replacement_read'])} | {_pct(v['scene_kept'])} | {mse} | "
              f"{100 * b['word_acc']:.1f}% (n={b['n']}) | {lost} | {_pct(b['sign_acc'])} | {_pct(b['background_acc'])} |")


if __name__ == "__main__":
    main()
