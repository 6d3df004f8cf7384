"""``textloc edit``: change the quoted text of a generated or given image."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from textloc.cli.options import (
    HelpFormatter,
    add_sampler_options,
    add_text_layer_options,
    check_out_folder,
    examples,
    generate_kwargs,
    layer_source,
    load_model,
)
from textloc.scoring.ocr import ENGINES as OCR_ENGINES


def add_edit(subcommands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Declare ``textloc edit``."""
    from textloc.edit import EDIT_METHODS

    parser = subcommands.add_parser(
        "edit",
        parents=parents,
        help="change the quoted text in an image, patching only the layers that write it",
        description=(
            "Generate PROMPT, then the same prompt from the same noise while the text layers receive the prompt "
            "with its quoted text replaced by --new-text: the word changes, the rest of the image stays. Writes "
            "edit.png (source | edited, what OCR read under each) and edit.json (reads, scores) to --out."
        ),
        epilog=examples(
            "textloc edit --model textloc-tiny --prompt 'A red sign on a blue background that says \"LAMP\".' \\",
            "    --new-text FISH --layers samples/tiny/localize --out runs/edit",
            "textloc edit --model stabilityai/stable-diffusion-xl-base-1.0 --prompt 'A sign that says \"OPEN\".' --new-text STOP --out runs/edit-sdxl",
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--prompt", required=True, help='the prompt, with the text to change in double quotes: A sign that says "OPEN".')
    parser.add_argument("--new-text", required=True, metavar="TEXT", help="the text the edited image should show instead")
    add_text_layer_options(parser)
    parser.add_argument("--method", choices=EDIT_METHODS, default="patch", help="textloc's patch (default), or a baseline through the same harness")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise the source and the edit share (default 0)")
    parser.add_argument(
        "--image", type=Path, metavar="PNG",
        help="edit this image instead of a generated one: --prompt describes it, its text included; it is inverted "
        "to noise with the model first, at the model's size (guidance defaults to 1 there, where inverted noise "
        "regenerates the image; an embedded model's guidance and start step to those of its real-image figure)",
    )
    add_sampler_options(parser)
    parser.add_argument("--ocr", choices=OCR_ENGINES, default="rapidocr", help="OCR engine (default rapidocr)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.set_defaults(run=run_edit)


def run_edit(args: argparse.Namespace) -> int:
    """Edit the quoted text of one prompt and save the pair with its scores."""
    from textloc.edit import edit_image, edit_text, replace_quoted

    check_out_folder(args.out)
    replace_quoted(args.prompt, args.new_text)  # bad text or a missing image is refused before the model loads
    image = None if args.image is None else Image.open(args.image).convert("RGB")
    pipe = load_model(args)
    pipe.set_progress_bar_config(disable=False, leave=False)
    settings = generate_kwargs(pipe, args.model, args, num=None)
    settings.pop("output_type")
    layers = layer_source(args.layers)
    if image is None:
        result = edit_text(pipe, args.prompt, args.new_text, layers, start_step=args.start_step, method=args.method, ocr=args.ocr, **settings)
    else:
        settings.pop("generator")
        settings["guidance_scale"] = args.guidance_scale  # None: edit_image's default for the model
        result = edit_image(pipe, image, args.prompt, args.new_text, layers, start_step=args.start_step, method=args.method, ocr=args.ocr, **settings)
    result.generation["model"] = args.model  # the name as given: a named model's pipeline may have no name_or_path
    result.save(args.out)
    print(result.summary())
    if result.reconstruction is not None:
        print(f"the unedited regeneration of {args.image}: PSNR {result.reconstruction['psnr']:.1f} dB, SSIM {result.reconstruction['ssim']:.3f}")
    print(f"wrote {args.out}/edit.png and edit.json")
    return 0
