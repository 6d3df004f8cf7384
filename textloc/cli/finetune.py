"""``textloc finetune``: train a LoRA on only the text layers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from textloc.cli.options import (
    CommandError,
    HelpFormatter,
    Renamed,
    add_config_option,
    examples,
    layer_source,
    load_model,
    positive_int,
)
from textloc.models import find_named_model


def add_finetune(subcommands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Declare ``textloc finetune``."""
    from textloc.finetune import JOINT_STREAMS, TrainConfig

    parser = subcommands.add_parser(
        "finetune",
        parents=parents,
        help="train a LoRA on only the text layers, loadable by pipe.load_lora_weights",
        description=(
            "Train a LoRA on the attention projections of the text layers only; every other weight stays frozen. "
            "Writes pytorch_lora_weights.safetensors (diffusers' pipe.load_lora_weights(DIR) loads it), training.json, "
            "checkpoints, and with validation prompts validation.csv, validation.png and sample grids to --out. "
            "Validation images use the model's own sampler settings."
        ),
        epilog=examples(
            "textloc finetune --model textloc-tiny --layers samples/tiny/localize --data textloc-tiny --max-train-steps 500 --out runs/lora",
            "textloc finetune --model textloc-tiny --layers samples/tiny/localize --data textloc-tiny:new_words.txt --max-train-steps 500 --out runs/lora-new",
            "textloc finetune --model stabilityai/stable-diffusion-xl-base-1.0 --layers preset --data ./mario --max-train-steps 10000 \\",
            "    --lr 1e-6 --batch-size 8 --grad-accum 8 --mixed-precision bf16 --out runs/lora-sdxl",
            "textloc generate --model textloc-tiny --lora runs/lora 'A sign that says \"LAMP\".' --out lamp.png",
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--layers", action="append", metavar="SEL",
        help="the text layers: a localization's output folder, 'preset' (the default), or layer names, blocks, globs or indices (repeatable)",
    )
    parser.add_argument(
        "--data", required=True, metavar="DIR|MODEL[:WORDS]",
        help="an imagefolder directory (images and a metadata.jsonl with file_name and a caption), or a named model's "
        "rendered signs (textloc-tiny), optionally over the words of a file (one per line)",
    )
    parser.add_argument("--caption-column", default="text", metavar="C", help="the caption column of metadata.jsonl (default text)")
    parser.add_argument("--max-train-steps", type=positive_int, required=True, metavar="N", help="optimizer steps (as diffusers' training scripts name them)")
    parser.add_argument("--steps", action=Renamed, new="--max-train-steps")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (a new or empty one; with --resume, the run's own)")
    # The training options are TrainConfig's fields: the same defaults and help as the Python API.
    for name, metavar in (("rank", "R"), ("alpha", "A")):
        add_config_option(parser, TrainConfig, name, metavar)
    parser.add_argument(
        "--targets", metavar="T",
        help=f"projections of each layer: for joint layers a stream ({', '.join(JOINT_STREAMS)}; default image), "
        "or comma-separated names such as to_k,to_v (default: q, k, v and out; IF also its text K/V)",
    )
    for name, metavar in (("lr", "LR"), ("batch_size", "B"), ("grad_accum", "K"), ("mixed_precision", None), ("resolution", "PX"),
                          ("checkpoint_every", "N"), ("validate_every", "N"), ("ema_decay", "D"), ("anchor_weight", "W")):
        add_config_option(parser, TrainConfig, name, metavar)
    parser.add_argument("--anchor-prompt", action="append", metavar="P", help="a prompt whose text keys and values the anchor holds (repeatable; needs --anchor-weight)")
    parser.add_argument(
        "--validation-prompt", action="append", metavar="P",
        help="a validation prompt quoting its text (repeatable; default with rendered signs: 8 held-out captions of their words)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed of the LoRA's initial weights and of every training draw (default 0)")
    parser.set_defaults(run=run_finetune)


def _training_data(args: argparse.Namespace) -> Any:
    """--data as train_lora takes it: a named model's rendered signs (over a word file's words), or a folder."""
    from textloc.finetune import ImageFolder, RenderedSigns

    name, _, words_file = args.data.partition(":")
    named = None if Path(args.data).is_dir() else find_named_model(name)
    if named is None or named.training_data is None:
        return ImageFolder(args.data, caption_column=args.caption_column)
    words = None
    if words_file:
        try:
            words = [line.strip() for line in Path(words_file).read_text().splitlines() if line.strip()]
        except OSError as error:
            raise CommandError(f"--data {args.data}: cannot read {words_file} ({error.strerror}).") from error
    return RenderedSigns(words)


def _targets(text: str | None) -> Any:
    from textloc.finetune import JOINT_STREAMS

    if text is None or text in JOINT_STREAMS:
        return text
    return tuple(name.strip() for name in text.split(",") if name.strip())


def run_finetune(args: argparse.Namespace) -> int:
    """Train a LoRA on the text layers and print what it trained and how validation moved."""
    from textloc.finetune import RenderedSigns, TrainConfig, train_lora
    from textloc.pipeline_calls import call_kwargs

    data = _training_data(args)  # a bad folder or word file is refused before the model loads
    if args.anchor_weight is not None and not args.anchor_prompt:
        raise CommandError("--anchor-weight holds the text keys and values of --anchor-prompt P (repeatable): give at least one.")
    prompts = args.validation_prompt
    if prompts is None and isinstance(data, RenderedSigns):
        prompts = data.held_out_captions(8)
    try:
        config = TrainConfig(
            rank=args.rank, alpha=args.alpha, steps=args.max_train_steps, lr=args.lr, batch_size=args.batch_size,
            grad_accum=args.grad_accum, mixed_precision=args.mixed_precision, checkpoint_every=args.checkpoint_every,
            validate_every=args.validate_every, validation_prompts=prompts or (), ema_decay=args.ema_decay, seed=args.seed,
            resolution=args.resolution, anchor_weight=args.anchor_weight, anchor_prompts=args.anchor_prompt or (),
        )
    except (TypeError, ValueError) as error:
        raise CommandError(str(error)) from None
    pipe = load_model(args)
    named = find_named_model(args.model)
    settings = call_kwargs(pipe, **({} if named is None else named.settings))
    result = train_lora(
        pipe, layer_source(args.layers), data, config, targets=_targets(args.targets), output_dir=args.out,
        resume=args.resume, caption_column=args.caption_column, generate_kwargs=settings,
    )
    print(result.summary())
    return 0
