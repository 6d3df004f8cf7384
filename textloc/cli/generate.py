"""``textloc generate``: images of a prompt, saved as one PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from textloc.cli.options import (
    CommandError,
    HelpFormatter,
    add_sampler_options,
    examples,
    generate_kwargs,
    load_model,
    positive_int,
)
from textloc.images import image_grid
from textloc.models import DEFAULT_MODEL, named_model


def add_generate(subcommands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Declare ``textloc generate``."""
    parser = subcommands.add_parser(
        "generate",
        parents=parents,
        help="generate images from a prompt and save them as a PNG",
        description=(
            "Generate images of PROMPT and save them as one PNG (a grid when --num is above 1). "
            "Options left out take a named model's own settings (" + _settings_text(DEFAULT_MODEL) + "; the "
            "tiny-random-* models: their fast test settings, 2 steps at 32x32), else the pipeline's defaults."
        ),
        epilog=examples(
            "textloc generate --model tiny-random-sdxl 'A sign that says \"HELLO\".' --out hello.png",
            "textloc generate --model tiny-random-sd3 'A sign that says \"HELLO\".' --num 4 --num-inference-steps 10 --size 64",
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("prompt", metavar="PROMPT", nargs="?", help="the text prompt")
    parser.add_argument("--prompt", dest="prompt_option", metavar="PROMPT", help="the text prompt given as edit and guard take it, instead of PROMPT")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise, drawn on the CPU so it is alike on every device (default 0)")
    add_sampler_options(parser)
    parser.add_argument("--num", type=positive_int, default=1, metavar="K", help="number of images (default 1)")
    parser.add_argument("--lora", type=Path, metavar="DIR", help="a LoRA folder (textloc finetune's --out) to generate with")
    parser.add_argument("--out", type=Path, default=Path("generated.png"), metavar="FILE.png", help="where to save the PNG (default generated.png)")
    parser.set_defaults(run=run_generate)


def _settings_text(model: str) -> str:
    """A named model's sampler settings as the options that set them, for help texts."""
    settings = named_model(model).settings
    return f"{model}: " + ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in settings.items())


def run_generate(args: argparse.Namespace) -> int:
    """Generate ``--num`` images of the prompt and save them as one PNG."""
    if (args.prompt is None) == (args.prompt_option is None):
        raise CommandError("give the prompt once: textloc generate 'A sign that says \"OPEN\".', or --prompt '...'.")
    prompt = args.prompt if args.prompt is not None else args.prompt_option
    if args.out.suffix.lower() != ".png":
        raise CommandError(f"--out must be a .png file, not {str(args.out)!r}.")
    pipe = load_model(args)
    if args.lora is not None:
        from textloc.finetune import load_lora

        load_lora(pipe, args.lora)
    pipe.set_progress_bar_config(disable=False, leave=False)
    images = pipe(prompt, **generate_kwargs(pipe, args.model, args, num=args.num)).images
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images).save(args.out)
    width, height = images[0].size
    lora = "" if args.lora is None else f", LoRA {args.lora}"
    print(f"saved {args.out} ({len(images)} image{'s' * (len(images) > 1)} of {width}x{height}, seed {args.seed}{lora})")
    return 0
