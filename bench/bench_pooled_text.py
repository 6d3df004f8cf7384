"""How much of the word reaches an SD3 model through its pooled text vector, which no attention layer carries.

    python bench/bench_pooled_text.py [--model textloc-tiny-sd3] [--held-out]

SD3's transformer reads the prompt twice: the text tokens, which every joint block attends to
(the K/V that localization patches), and the pooled CLIP vectors, which modulate every block's
norms (AdaLN) and never pass through attention. Patching the text K/V of every block can only
move what the tokens carry. This bench measures the other path, alone and with the K/V of the
blocks the model's shipped localization selected, on its pairs (its choice pairs, or with
``--held-out`` its held-out pairs), seed and sampler settings. The pooled vector is swapped with the pipeline's own
``prompt_embeds`` / ``pooled_prompt_embeds`` arguments (conditional branch only, as the K/V patch),
the K/V with ``tl.patch`` from a cache of the other prompt recorded with the same noise:

- sufficiency: the source prompt with the target's pooled vector, K/V, or both (does the target word appear?);
- necessity: the target prompt with the source's pooled vector, K/V, or both (does the target word survive?);

beside the source and target prompts generated as they are, every row of a pair from the same
noise, scored as localization scores (OCR word hits, the scene judge).

Writes bench/results/pooled_text-tiny-sd3.json (pooled_text-held-out-tiny-sd3.json) and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

import numpy as np
import torch

import textloc as tl
from textloc.localization import Localization
from textloc.scoring.prompts import PromptPair, as_template, quoted_text
from textloc.localization.report import PROGRESS_FILE
from textloc.localization.results import ImageScores
from textloc.localization.scoring import mean_metrics, score_images
from textloc.models import named_model
from textloc.scoring.ocr import get_ocr
from textloc.pipeline_calls import call_kwargs, images_of
from embedded import ROOT, add_model_argument, layers_dir, results_file  # beside this script

ROWS = (
    "source", "target",
    "source, target pooled", "source, target K/V at the blocks", "source, target K/V at the blocks and target pooled",
    "target, source pooled", "target, source K/V at the blocks", "target, source K/V at the blocks and source pooled",
)


def logged_pairs(folder) -> list[PromptPair]:
    """The prompt pairs of a localization, from the first line of its log."""
    first = json.loads((folder / PROGRESS_FILE).read_text().splitlines()[0])
    return [PromptPair.from_template(as_template(source), quoted_text(source), quoted_text(target))
            for source, target in first["settings"]["pairs"]]


def generate(pipe: Any, blocks: list[str], pair: PromptPair, seed: int, settings: dict[str, Any]) -> list[np.ndarray]:
    """The images of :data:`ROWS`, each from the same noise: a prompt generated with the other
    prompt's pooled vector, its K/V at ``blocks`` (the localization's patch, conditional branch), or both."""
    prompts = (pair.source, pair.target)
    # (tokens, negative tokens, pooled, negative pooled); the negative prompt is "" for every row.
    encoded = {prompt: pipe.encode_prompt(prompt, prompt, None, max_sequence_length=settings["max_sequence_length"]) for prompt in prompts}
    caches = {prompt: tl.record(pipe, blocks, prompt, generator=tl.generator(seed), **settings) for prompt in prompts}
    call = {key: value for key, value in settings.items() if key != "max_sequence_length"}

    def run(tokens: str, pooled: str, kv: str) -> np.ndarray:
        embeds = {"prompt_embeds": encoded[tokens][0], "negative_prompt_embeds": encoded[tokens][1],
                  "pooled_prompt_embeds": encoded[pooled][2], "negative_pooled_prompt_embeds": encoded[tokens][3]}
        with contextlib.ExitStack() as stack:
            if kv != tokens:
                stack.enter_context(tl.patch(pipe, blocks, caches[kv]))
            return np.asarray(images_of(pipe(**embeds, generator=tl.generator(seed), output_type="np", **call))[0])

    source, target = prompts
    images = [run(source, source, source), run(target, target, target)]
    for own, other in ((source, target), (target, source)):
        images += [run(own, other, own), run(own, own, other), run(own, other, other)]
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_argument(parser)
    parser.add_argument("--held-out", action="store_true", help="the localization's held-out pairs (default: its choice pairs)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = named_model(args.model)
    finding = Localization.load(layers_dir(args.model))
    pipe = tl.load_pipeline(model.name)
    if not hasattr(pipe, "transformer") or "pooled_projection_dim" not in pipe.transformer.config:
        raise SystemExit(f"{model.name} has no pooled text vector: this bench is for SD3-style models.")
    settings = {"max_sequence_length": 256, **call_kwargs(pipe, **model.settings)}
    choice = finding.settings["choice_pairs"]
    logged = logged_pairs(layers_dir(args.model))
    pairs = logged[choice:] if args.held_out else logged[:choice]
    ocr = get_ocr("rapidocr")
    scored: dict[str, list[ImageScores]] = {row: [] for row in ROWS}
    for index, pair in enumerate(pairs):
        print(f"pair {index + 1}/{len(pairs)}: {pair.source_text} -> {pair.target_text}", flush=True)
        images = generate(pipe, finding.selected, pair, finding.settings["seed"], settings)
        for row, score in zip(ROWS, score_images(images, pair, images[0], images[1], ocr, model.scene_judge), strict=True):
            scored[row].append(score)
    means = {row: mean_metrics(scored[row]) for row in ROWS}
    results = {
        "settings": {"model": model.name, "pairs": len(pairs), "split": "held out" if args.held_out else "choice",
                     "blocks": finding.selected, "seed": finding.settings["seed"], "model_settings": dict(model.settings),
                     "localization": str(layers_dir(args.model).relative_to(ROOT)), "torch": torch.__version__},
        "rows": {row: {key: getattr(means[row], key) for key in ("target_hit", "source_hit", "scene")} for row in ROWS},
        "intervals": {row: means[row].ci["target_hit"] for row in ROWS},
        "reads": {row: [score.read for score in scored[row]] for row in ROWS},
    }
    out = results_file("pooled_text" + ("-held-out" if args.held_out else ""), model.name)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n| {len(pairs)} {'held-out' if args.held_out else 'choice'} pairs, seed {results['settings']['seed']} | target word read | source word read | scene (source's colours) |")
    print("|---|---|---|---|")
    for row, r in results["rows"].items():
        low, high = results["intervals"][row]
        print(f"| {row} | {100 * r['target_hit']:.0f}% [{100 * low:.0f}, {100 * high:.0f}] | {100 * r['source_hit']:.0f}% | {100 * r['scene']:.0f}% |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
