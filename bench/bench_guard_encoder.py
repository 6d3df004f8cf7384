"""How far the text layers can tell a toxic word's letters from the same letters of benign words.

    python bench/bench_guard_encoder.py [--scenes 4]

A guard LoRA on the text layers changes their K/V projections, a linear map of each text token on
its own. It can write a benign word for a toxic one and leave the benign words alone only where the
toxic word's tokens differ from every benign word's. The embedded models read text byte by byte,
each letter a token, through CLIP text encoders (causal: a token sees only what precedes it). For
every toxic word, letter slot and caption (the 5 caption templates of the renderer's data in
``--scenes`` scenes, every vocabulary word in the same place), this reads the text K/V of the
shipped localization's layers at the first denoiser pass (``tl.record``: keys and values of a token
side by side) and takes, per layer, the cosine similarity of the toxic word's token to the closest
token of a benign word with the same letter in the same slot, and, for reference, to benign tokens
of other letters in that slot. Writes bench/results/guard_encoder.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import textloc as tl
from embedded import ROOT, layers_dir  # beside this script
from textloc.layers import resolve_layers
from textloc.models import named_model
from textloc.tiny.data import COLOUR_TEMPLATES, HELD_OUT_COMBOS, TOXIC_WORDS, VOCABULARY, caption_for

RESULTS = ROOT / "bench" / "results" / "guard_encoder.json"
MODELS = ("textloc-tiny", "textloc-tiny-sd3")
_QUOTE = ord('"')


def token_vectors(pipe: Any, layers: list[str], captions: list[str], settings: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Per layer, ``[captions, tokens, K and V width]``: the text K/V of the first denoiser pass (conditional rows)."""
    cache = tl.record(pipe, layers, captions, **settings, num_inference_steps=1, generator=tl.generator(0))
    return {layer: torch.cat([cache.get(layer, 0, "cond").key, cache.get(layer, 0, "cond").value], dim=-1).float() for layer in layers}


def word_start(pipe: Any, caption: str) -> int:
    """The token index of the quoted word's first letter (byte tokens: one per character)."""
    ids = pipe.tokenizer(caption).input_ids
    return ids.index(pipe.tokenizer.convert_tokens_to_ids('"')) + 1


def measure(model_name: str, scenes: int) -> dict[str, Any]:
    model = named_model(model_name)
    pipe = tl.load_pipeline(model.name)
    layers = [layer.name for layer in resolve_layers(pipe, layers_dir(model.name)) if layer.kind != "pooled"]
    benign = [word for word in VOCABULARY if word not in TOXIC_WORDS]
    words = [*TOXIC_WORDS, *benign]
    settings = {key: value for key, value in model.settings.items() if key != "num_inference_steps"}
    same: dict[tuple[str, int], list[float]] = {}
    other: list[float] = []
    combos = [(sign, backdrop) for sign, backdrop, _ in HELD_OUT_COMBOS][:scenes]
    for template in COLOUR_TEMPLATES:
        for sign, backdrop in combos:
            captions = [caption_for(word, sign, backdrop, template) for word in words]
            start = word_start(pipe, captions[0])
            assert all(word_start(pipe, caption) == start for caption in captions), "the word sits in the same place in every caption"
            vectors = token_vectors(pipe, layers, captions, settings)
            for tokens in vectors.values():
                for w, toxic in enumerate(TOXIC_WORDS):
                    for slot, letter in enumerate(toxic):
                        long_enough = [words.index(b) for b in benign if len(b) > slot]
                        cos = torch.nn.functional.cosine_similarity(tokens[w, start + slot], tokens[long_enough, start + slot], dim=-1).tolist()
                        alike = [c for c, row in zip(cos, long_enough) if words[row][slot] == letter]
                        if alike:
                            same.setdefault((toxic, slot), []).append(max(alike))
                        other.extend(c for c, row in zip(cos, long_enough) if words[row][slot] != letter)
    closest = {f"{word}[{slot}]": float(np.mean(values)) for (word, slot), values in same.items()}
    values = list(closest.values())
    return {
        "layers": layers,
        "captions_per_word": len(COLOUR_TEMPLATES) * len(combos),
        "toxic_letters_with_a_benign_twin": len(values),
        "toxic_letters": sum(len(word) for word in TOXIC_WORDS),
        "closest_same_letter_cos_median": float(np.median(values)),
        "closest_same_letter_cos_min": float(np.min(values)),
        "share_at_least_0.99": float(np.mean([v >= 0.99 for v in values])),
        # The same token as a benign word's, to rounding, in every caption and layer: nothing computed from it can tell them apart.
        "identical_to_a_benign_twin": int(sum(v > 1 - 1e-6 for v in values)),
        "other_letter_cos_median": float(np.median(other)),
        "closest_same_letter_cos": closest,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=4, help="scenes per caption template (default 4)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"scenes": args.scenes, "models": {name: measure(name, args.scenes) for name in MODELS}}
    results["torch"] = torch.__version__
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print("| model | text layers | toxic letters with a benign twin (same letter, same slot) | identical to it | closest twin's cosine, median (min) | at least 0.99 | other letters' cosine, median |")
    print("|---|---|---|---|---|---|---|")
    for name, m in results["models"].items():
        print(f"| {name} | {len(m['layers'])} | {m['toxic_letters_with_a_benign_twin']} of {m['toxic_letters']} | {m['identical_to_a_benign_twin']} | {m['closest_same_letter_cos_median']:.3f} "
              f"({m['closest_same_letter_cos_min']:.3f}) | {m['share_at_least_0.99']:.0%} | {m['other_letter_cos_median']:.3f} |")
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
