"""Edit your own image: change the word on a sign in a picture the model never generated.

The image is inverted to the noise the model would start from, then regenerated with the text
layers reading the new word. Without an image of your own the script draws one with the renderer
textloc-tiny was trained on; give ``--image`` and ``--prompt`` (a caption of it, its word quoted)
to edit yours. textloc-tiny is a 64-pixel model of signs: a photo is resized to 64 pixels and far
from what it knows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import textloc as tl
from textloc.tiny.data import render_sign

PROMPT = 'A yellow sign on a green background that says "STOP".'


def main(out: str | Path = "runs/examples/edit_image", image: str | Path | None = None, prompt: str = PROMPT,
         new_text: str = "OPEN") -> tl.EditResult:
    """Edit ``image`` (default: a rendered sign, saved as ``sign.png``) so that it says ``new_text``;
    writes ``edit.png`` (your image | its regeneration | edited) and ``edit.json``."""
    out = Path(out)
    if image is None:
        out.mkdir(parents=True, exist_ok=True)
        image = out / "sign.png"
        render_sign("STOP", sign="yellow", background="green", shape="rounded", offset=(0, 0))[0].save(image)
    pipe = tl.load_pipeline("textloc-tiny")
    result = tl.edit_image(pipe, image, prompt, new_text, "preset", num_inference_steps=8)
    print(result.summary())
    print(f"the unedited regeneration against your image: {result.reconstruction}")
    result.save(out)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="runs/examples/edit_image", help="folder to write into")
    parser.add_argument("--image", help="your image (default: a sign drawn by textloc-tiny's renderer)")
    parser.add_argument("--prompt", default=PROMPT, help="a caption of the image, its text in double quotes")
    parser.add_argument("--new-text", default="OPEN", help="what the sign should say")
    args = parser.parse_args()
    main(args.out, args.image, args.prompt, args.new_text)
