"""Localize: which attention layers of textloc-tiny write the word on its signs.

Pairs of prompts that differ only in the quoted word; the source prompt is generated while one layer
at a time reads the target prompt's text, and the OCR says whether the target word now shows. The
smallest set of layers that writes it as often as prompting it directly is selected and scored on a
pair held out of the choice. With two pairs, three candidate layers and five steps this takes
seconds and proves little; `textloc localize --model textloc-tiny --pairs 56` is the real run
(the Localization guide).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import textloc as tl


def main(out: str | Path = "runs/examples/localize") -> tl.Localization:
    """Localize on textloc-tiny into ``out``: report.json, layers.csv, layers.png, examples.png."""
    pipe = tl.load_pipeline("textloc-tiny")
    # Its captions and words: the model was trained on signs like these.
    pairs = tl.make_pairs(["LAMP", "FISH", "STOP"], n=2, templates=['A red sign on a blue background that says "{}".'])
    result = tl.localize(
        pipe, pairs, "up_blocks.1",  # the 16x16 up block's three cross-attention layers, not all 11: seconds, not minutes
        held_out=0.5, out=str(out), progress=False, num_inference_steps=5, guidance_scale=5.0,
    )
    print(result.summary())
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="runs/examples/localize", help="folder to write into")
    main(parser.parse_args().out)
