"""The engine: list the text layers, record their text keys and values, patch them into another run.

Everything the uses do goes through these calls: ``tl.select_layers`` names the units,
``tl.run_with_cache`` records what the chosen layers compute from a prompt (per layer, step and CFG
branch), and ``tl.patch`` writes a recording into a generation of another prompt, in chosen steps,
heads or branch, and restores the pipeline when the block ends (the engine guide).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

import textloc as tl

SOURCE, TARGET = 'A red sign on a blue background that says "LAMP".', 'A red sign on a blue background that says "FISH".'
LAYERS = "up_blocks.1"  # textloc-tiny's text is written in its 16x16 up block (samples/tiny/localize)


def main(out: str | Path = "runs/examples/engine") -> dict[str, np.ndarray]:
    """Writes ``layers.json`` (every text unit), ``images.png`` (plain | patched | plain again) and
    returns the three images as arrays."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = tl.load_pipeline("textloc-tiny")
    layers = [{"index": layer.index, "name": layer.name, "kind": layer.kind, "heads": layer.num_heads,
               "text_kv_params": layer.num_text_kv_params} for layer in tl.select_layers(pipe, "all")]
    (out / "layers.json").write_text(json.dumps(layers, indent=2) + "\n")
    print(f"{len(layers)} text units; patching {LAYERS}")

    settings = {"num_inference_steps": 8, "guidance_scale": 5.0, "output_type": "np"}
    _, cache = tl.run_with_cache(pipe, LAYERS, TARGET, generator=tl.generator(0), **settings)
    print(f"recorded {len(cache.layers)} layers, {cache.nbytes:,} bytes")
    images = {"plain": pipe(SOURCE, generator=tl.generator(0), **settings).images[0]}
    with tl.patch(pipe, LAYERS, cache, patch_steps=(0.2, None)):  # the source, its text layers reading the target's text
        images["patched"] = pipe(SOURCE, generator=tl.generator(0), **settings).images[0]
    images["plain again"] = pipe(SOURCE, generator=tl.generator(0), **settings).images[0]  # the hooks are gone
    strip = np.concatenate(list(images.values()), axis=1)
    Image.fromarray((strip * 255).round().astype(np.uint8)).save(out / "images.png")
    print("plain again == plain:", np.array_equal(images["plain again"], images["plain"]))
    return images


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="runs/examples/engine", help="folder to write into")
    main(parser.parse_args().out)
