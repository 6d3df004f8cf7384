"""``textloc generate``: images of a prompt, saved as one PNG."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from PIL import Image

from textloc.cli.options import (
    CommandError,
    HelpFormatter,
    add_sampler_options,
    examples,
    generate_kwargs,
    load_model,
    positive_int,
)
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
    parser.add_argument("--num", type=positive_int, default=1, metavar="K", help="number of images; image i has seed --seed + i (default 1)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, metavar="B",
        help="images per pipeline call: memory grows with it, not with --num (default 8)",
    )
    parser.add_argument("--lora", type=Path, metavar="DIR", help="a LoRA folder (textloc finetune's --out) to generate with")
    parser.add_argument(
        "--lora-on-other-weights", action="store_true",
        help="apply a LoRA that was trained on other weights than this model's (refused otherwise)",
    )
    parser.add_argument("--out", type=Path, default=Path("generated.png"), metavar="FILE.png", help="where to save the PNG (default generated.png)")
    parser.set_defaults(run=run_generate)


def _settings_text(model: str) -> str:
    """A named model's sampler settings as the options that set them, for help texts."""
    settings = named_model(model).settings
    return f"{model}: " + ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in settings.items())


def _generate(pipe: Any, prompt: str, kwargs: dict[str, Any], seeds: range, batch_size: int) -> list[Image.Image]:
    """One image per seed, ``batch_size`` to a pipeline call (so an image never depends on the batch);
    refused after the first call if the grid would be larger than an image PIL reads back."""
    from tqdm.auto import tqdm

    from textloc.pipeline_calls import images_of
    from textloc.seeding import generators

    pipe.set_progress_bar_config(disable=len(seeds) > batch_size, leave=False)  # one bar: the batches' below
    images: list[Image.Image] = []
    for start in tqdm(range(0, len(seeds), batch_size), desc="batches", disable=len(seeds) <= batch_size, leave=False):
        chunk = seeds[start : start + batch_size]
        images += images_of(pipe(prompt, **{**kwargs, "num_images_per_prompt": len(chunk), "generator": generators(chunk)}))
        if start == 0:
            _check_grid(len(seeds), images[0].size)
    return images


def _check_grid(count: int, size: tuple[int, int]) -> None:
    columns = math.ceil(math.sqrt(count))
    pixels = columns * size[0] * math.ceil(count / columns) * size[1]
    if pixels > Image.MAX_IMAGE_PIXELS:
        most = Image.MAX_IMAGE_PIXELS // (size[0] * size[1])
        raise CommandError(
            f"--num {count}: a grid of {count} images of {size[0]}x{size[1]} would hold {pixels:,} pixels, more than "
            f"an image PIL reads back ({Image.MAX_IMAGE_PIXELS:,}); generate at most about {most:,} to one --out."
        )


def run_generate(args: argparse.Namespace) -> int:
    """Generate ``--num`` images of the prompt and save them as one PNG."""
    from textloc.images import image_grid

    if (args.prompt is None) == (args.prompt_option is None):
        raise CommandError("give the prompt once: textloc generate 'A sign that says \"OPEN\".', or --prompt '...'.")
    prompt = args.prompt if args.prompt is not None else args.prompt_option
    if args.out.suffix.lower() != ".png":
        raise CommandError(f"--out must be a .png file, not {str(args.out)!r}.")
    pipe = load_model(args)
    if args.lora is not None:
        from textloc.finetune import load_lora

        load_lora(pipe, args.lora, other_weights=args.lora_on_other_weights)
    images = _generate(pipe, prompt, generate_kwargs(pipe, args.model, args, num=None), range(args.seed, args.seed + args.num), args.batch_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images).save(args.out)
    width, height = images[0].size
    lora = "" if args.lora is None else f", LoRA {args.lora}"
    print(f"saved {args.out} ({len(images)} image{'s' * (len(images) > 1)} of {width}x{height}, seed {args.seed}{lora})")
    return 0
