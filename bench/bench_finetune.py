"""Fine-tuning textloc-tiny: LoRA on its localized layers against LoRA on more layers and full fine-tuning.

    python bench/bench_finetune.py [--steps 150] [--new-word-steps 400] [--batch-size 16] [--lr 1e-3]
        [--full-lr 1e-4] [--tasks A,B] [--variants base,localized,...]

Every variant of a task gets the same budget (steps, batch, constant learning rate; LoRA rank 4,
alpha 4), the same training samples and draws (seed 0), and the same evaluation:

- variants: LoRA on the shipped localization's layers (samples/tiny/localize), LoRA on all 11
  cross-attention layers, LoRA on every attention layer (self and cross), full fine-tuning of
  the U-Net (the reference; its own learning rate, ``--full-lr``), and the base model;
- task A, the words it knows: trained on the renderer's own distribution; word accuracy and edit
  distance on 64 held-out captions, sign/background colour accuracy, and the diversity of one
  caption over 8 seeds (mean pairwise pixel MSE);
- task B, new words: trained on 12 words outside its vocabulary (J and V among their letters,
  never seen in training), half of each batch's signs theirs and half the original vocabulary's
  (prior preservation: trained on the new words alone, the localized LoRA kept 16% of the old
  words); word accuracy on 48 held-out captions of them, retention (accuracy on 32 original
  held-out captions) and drift (pixel MSE against the base model's images of those 32, outside
  both images' OCR text boxes).

LoRA runs write their folders under runs/bench_finetune/ (resumable); results go to
bench/results/finetune.json after each variant, so a rerun skips what is done. The task-A
localized LoRA is copied to samples/tiny/finetune/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import torch

import textloc as tl
from textloc.engine import attention_layers
from textloc.finetune import RenderedSigns, train_lora
from textloc.finetune.objective import Objective
from textloc.finetune.train import batch_loss, capture_settings, last_checkpoint
from textloc.pipelines import model_image_side
from textloc.images import captioned_grid
from textloc.scoring.metrics import background_mask, mse
from textloc.models import named_model
from textloc.scoring.ocr import get_ocr
from textloc.tiny.data import VOCABULARY, make_example
from textloc.tiny.data import EVAL_SEED
from textloc.tiny.evaluate import heldout_examples, score
from textloc.tiny.evaluate import generate as generate_batch

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ROOT / "samples" / "tiny" / "localize"
RUNS = ROOT / "runs" / "bench_finetune"
RESULTS = ROOT / "bench" / "results" / "finetune.json"
SHIPPED = ROOT / "samples" / "tiny" / "finetune"
GRID = SHIPPED / "grid.png"
#: Task B's words: none in textloc-tiny's vocabulary; J and V never appear in it.
NEW_WORDS = ("JAM", "JET", "VAN", "JUMP", "VOTE", "WAVE", "JOKE", "LAVA", "DIVE", "NEST", "LION", "DUCK")
DIVERSITY_CAPTION = 'A sign that says "LAMP".'
DIVERSITY_SEEDS = 8
#: Task B's training words: the new words repeated until they are half the draws, then the vocabulary.
MIXED_WORDS = NEW_WORDS * (len(VOCABULARY) // len(NEW_WORDS)) + VOCABULARY
VARIANTS = ("base", "localized", "all-cross", "all-attention", "full")
# Images per pipeline call: on one CPU thread a batch of 64 captions (128 rows under CFG) runs
# several times slower per image than batches of 8.
CHUNK = 8


def generate(pipe: Any, captions: list[str], seed: int) -> list:
    """One image per caption, image i from seed ``seed + i`` (as one call would), in chunks."""
    return [image for start in range(0, len(captions), CHUNK)
            for image in generate_batch(pipe, captions[start : start + CHUNK], seed=seed + start)]


def lora_layers(pipe: Any, variant: str) -> dict[str, Any]:
    """``train_lora``'s ``layers``/``targets`` for a LoRA variant."""
    if variant == "localized":
        return {"layers": LAYERS}
    if variant == "all-cross":
        return {"layers": "all"}
    every = [layer.name for layer in attention_layers(pipe)]  # self-attention included
    return {"layers": None, "targets": [f"{name}.{p}" for name in every for p in ("to_q", "to_k", "to_v", "to_out.0")]}


def full_finetune(pipe: Any, data: Any, steps: int, batch_size: int, lr: float, seed: int) -> dict[str, float]:
    """Every U-Net weight trained, with train_lora's own loss, samples and draws (the text encoder frozen)."""
    model = pipe.unet
    model.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    resolution = model_image_side(pipe)
    objective = Objective(pipe, resolution)
    capture = capture_settings(pipe, dict(named_model("textloc-tiny").settings), resolution)
    began = time.perf_counter()
    for step in range(steps):
        loss = batch_loss(pipe, model, objective, data, range(step * batch_size, (step + 1) * batch_size), seed, capture)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 0:
            print(f"  full fine-tuning step {step}/{steps}: loss {loss.item():.4f}", flush=True)
    model.eval()
    model.requires_grad_(False)
    return {"trainable_parameters": sum(p.numel() for p in model.parameters()), "seconds_per_step": (time.perf_counter() - began) / steps}


def checkpoint_step(run: Path, steps: int) -> int:
    """The step a resumed LoRA run in ``run`` starts from (0 for a new run)."""
    checkpoint = last_checkpoint(run, up_to=steps)
    return json.loads((checkpoint / "state.json").read_text())["step"] if checkpoint else 0


def diversity(pipe: Any) -> float:
    """Mean pairwise pixel MSE of one caption over several seeds (higher: more varied images)."""
    images = [np.asarray(image, dtype=np.float32) / 255 for image in generate(pipe, [DIVERSITY_CAPTION] * DIVERSITY_SEEDS, seed=EVAL_SEED)]
    return float(np.mean([mse(a, b) for a, b in itertools.combinations(images, 2)]))


def drift(base_images: list, images: list, ocr: Any) -> float:
    """Mean pixel MSE against the base model's images, outside both images' OCR text boxes."""
    values = []
    for base, image, read_base, read in zip(base_images, images, ocr.readings(base_images), ocr.readings(images)):
        height, width = np.asarray(image).shape[:2]
        mask = background_mask(height, width, [*(read_base.boxes or ()), *(read.boxes or ())])
        values.append(mse(np.asarray(base, dtype=np.float32) / 255, np.asarray(image, dtype=np.float32) / 255, mask))
    return float(np.mean(values))


def evaluate(pipe: Any, task: str, base_images: dict[str, list]) -> tuple[dict[str, Any], dict[str, list]]:
    """The task's scores of ``pipe``, and the images they were computed on."""
    ocr = get_ocr("rapidocr")
    if task == "A":
        examples = heldout_examples(64)
        images = generate(pipe, [e.caption for e in examples], seed=EVAL_SEED)
        return {**score(images, examples), "diversity": diversity(pipe)}, {"heldout": images}
    new = [make_example(EVAL_SEED, i, held_out=True, words=NEW_WORDS) for i in range(48)]
    new_images = generate(pipe, [e.caption for e in new], seed=EVAL_SEED)
    old = heldout_examples(32)
    old_images = generate(pipe, [e.caption for e in old], seed=EVAL_SEED)
    scores = {f"new_{key}": value for key, value in score(new_images, new).items()}
    scores.update({f"retained_{key}": value for key, value in score(old_images, old).items()})
    scores["drift_mse"] = drift(base_images["old"], old_images, ocr) if base_images else 0.0
    return scores, {"new": new_images, "old": old_images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="task A's optimizer steps, every variant (default 150)")
    parser.add_argument("--new-word-steps", type=int, default=400, help="task B's optimizer steps, every variant (default 400)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per step (default 16)")
    parser.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate, constant (default 1e-3)")
    parser.add_argument("--full-lr", type=float, default=1e-4, help="full fine-tuning's learning rate, constant (default 1e-4)")
    parser.add_argument("--tasks", default="A,B", help="tasks to run (default A,B)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"variants to run (default {','.join(VARIANTS)})")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)

    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    steps = {"A": args.steps, "B": args.new_word_steps}
    budget = {"steps": steps, "batch_size": args.batch_size, "lr": args.lr, "full_lr": args.full_lr}
    if results.get("budget") not in (None, budget):
        raise SystemExit(f"{args.results} holds results of another budget {results['budget']}; move it away first.")
    results["budget"] = budget
    data = {"A": RenderedSigns(), "B": RenderedSigns(MIXED_WORDS)}
    variants = [variant for variant in VARIANTS if variant in args.variants.split(",")]
    settings = dict(named_model("textloc-tiny").settings)
    for task in args.tasks.split(","):
        done = results.setdefault(task, {})
        base_images: dict[str, list] = {}
        grid_rows: dict[str, list] = {}
        for variant in variants:
            pipe = tl.load_pipeline("textloc-tiny")
            # Task B's base images are what drift is measured against: regenerate them on a rerun.
            if variant in done and not (variant == "base" and task == "B"):
                print(f"task {task}, {variant}: done", flush=True)
                continue
            print(f"task {task}, {variant} ...", flush=True)
            record: dict[str, Any] = {}
            if variant == "full":
                record.update(full_finetune(pipe, data[task], steps[task], args.batch_size, args.full_lr, seed=0))
            elif variant != "base":
                run = RUNS / task / variant
                first = checkpoint_step(run, steps[task])
                began = time.perf_counter()
                trained = train_lora(
                    pipe, **lora_layers(pipe, variant), dataset=data[task], steps=steps[task], batch_size=args.batch_size,
                    lr=args.lr, checkpoint_every=25, output_dir=run, resume=True, generate_kwargs=settings,
                )
                record.update(trainable_parameters=trained.trainable_parameters, trainable_share=trained.trainable_share)
                if first < steps[task]:  # a run finished before has no time of its own to report
                    record["seconds_per_step"] = (time.perf_counter() - began) / (steps[task] - first)
            scores, images = evaluate(pipe, task, base_images)
            if variant == "base":
                base_images = images
            grid_rows[variant] = images
            done[variant] = {**record, **scores}
            print(f"  {json.dumps(done[variant])}", flush=True)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(results, indent=2) + "\n")
        if task == "A" and "localized" in grid_rows:
            ship_localized_lora(RUNS / "A" / "localized", grid_rows, args)
    print_table(results)


def ship_localized_lora(run: Path, rows: dict[str, list], args: argparse.Namespace) -> None:
    """Copy task A's localized LoRA to samples/tiny/finetune with the command that trains it, and a grid."""
    SHIPPED.mkdir(parents=True, exist_ok=True)
    for name in ("pytorch_lora_weights.safetensors", "training.json"):
        shutil.copy(run / name, SHIPPED / name)
    (SHIPPED / "COMMAND.txt").write_text(
        "# The same LoRA as bench/bench_finetune.py's task A, localized variant:\n"
        f"textloc --threads 1 finetune --model textloc-tiny --layers samples/tiny/localize --data textloc-tiny "
        f"--max-train-steps {args.steps} --batch-size {args.batch_size} --lr {args.lr} --checkpoint-every 25 --out runs/lora-tiny\n"
    )
    examples = heldout_examples(8)
    shown = [v for v in ("base", "localized", "all-cross", "all-attention", "full") if v in rows]
    cells = [[(rows[v]["heldout"][i], e.word) for v in shown] for i, e in enumerate(examples)]
    captioned_grid(shown, cells).save(GRID)


def interval(rate: float, n: int) -> str:
    """A rate with its exact (Clopper-Pearson) 95% interval."""
    low, high = scipy.stats.binomtest(round(rate * n), n).proportion_ci(0.95)
    return f"{rate:.1%} [{low:.0%}, {high:.0%}]"


def print_table(results: dict[str, Any]) -> None:
    """The README's tables: every rate with its 95% interval."""
    for task, rates, values in (
        ("A", (("word_acc", "n"), ("sign_acc", "n"), ("background_acc", "n")), ("edit_distance", "diversity")),
        ("B", (("new_word_acc", "new_n"), ("retained_word_acc", "retained_n")), ("new_edit_distance", "drift_mse")),
    ):
        if task not in results:
            continue
        names = [rate for rate, _ in rates] + list(values)
        print(f"\n| task {task} | trainable parameters | s/step | " + " | ".join(names) + " |")
        print("|" + "---|" * (len(names) + 3))
        for variant, row in results[task].items():
            cells = [interval(row[rate], int(row[n])) for rate, n in rates] + [f"{row[value]:.4f}" for value in values]
            trainable = f"{row['trainable_parameters']:,}" if "trainable_parameters" in row else "-"
            seconds = f"{row['seconds_per_step']:.2f}" if "seconds_per_step" in row else "-"
            print(f"| {variant} | {trainable} | {seconds} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
