"""Edit a generated image: change the word on a sign and keep the rest of the picture.

The prompt is generated from its noise while textloc-tiny's text layers (its shipped localization,
``"preset"``) read the prompt with the new word, from a fifth of the schedule on. The same call
takes ``method="prompt-swap"`` or ``"prompt-to-prompt"`` for the baselines (the Editing guide).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import textloc as tl


def main(out: str | Path = "runs/examples/edit") -> tl.EditResult:
    """Edit "LAMP" into "FISH" on textloc-tiny; writes ``edit.png`` (source | edited, OCR under each) and ``edit.json``."""
    pipe = tl.load_pipeline("textloc-tiny")
    result = tl.edit_text(pipe, 'A red sign on a blue background that says "LAMP".', "FISH", "preset",
                          generator=tl.generator(0), num_inference_steps=8)
    print(result.summary())
    result.save(out)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="runs/examples/edit", help="folder to write into")
    main(parser.parse_args().out)
