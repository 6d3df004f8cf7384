"""``textloc guard``: generate a prompt with its toxic words kept out of the text layers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from textloc.cli.options import (
    CommandError,
    HelpFormatter,
    add_config_option,
    add_sampler_options,
    add_text_layer_options,
    check_out_folder,
    examples,
    generate_kwargs,
    layer_source,
    load_model,
    one_line,
    positive_int,
)


def add_guard(subcommands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Declare ``textloc guard``."""
    from textloc.finetune import TrainConfig
    from textloc.guard import DETECTORS, GUARD_METHODS

    parser = subcommands.add_parser(
        "guard",
        parents=parents,
        help="generate a prompt with its toxic words kept out of the text layers",
        description=(
            "Find the toxic words of PROMPT however it asks for them (quoted in any style or not, letters spaced, "
            "split over quotes, look-alike letters, leet), replace them where they stand, and generate the prompt "
            "while only the text layers receive the cleaned one: the scene stays, the word changes. Prints what it "
            "found where and what replaced it. Then the OCR reads the guarded image, and if a toxic word shows "
            "anyway, the image is generated again with every text-like word made benign, or its text blanked "
            "(--no-check-images skips this). Writes guard.png (unguarded | guarded, from the same noise) and "
            "guard.json to --out. With --train instead of --prompt: train the guard's weights side, a LoRA on the "
            "text layers only that writes a benign word where a toxic one is asked for, with no prompt-side help; "
            "--out then receives the LoRA (pipe.load_lora_weights(DIR) loads it); with --train --closed-form, the "
            "same layers' keys and values are edited in closed form instead (TIME/UCE), with no training step."
        ),
        epilog=examples(
            "textloc guard --model textloc-tiny --prompt 'A red sign on a blue background that says \"DAMN\".' \\",
            "    --layers samples/tiny/localize --out runs/guard",
            "textloc guard --model tiny-random-sd3 --prompt 'A sign that says \"DAMN\".' --layers all --replace mask --out runs/guard-sd3",
            "textloc guard --train --model textloc-tiny --layers samples/tiny/localize --max-train-steps 1000 \\",
            "    --batch-size 8 --lr 3e-3 --ema-decay 0.99 --out runs/guard-lora",
            "textloc guard --train --closed-form --model textloc-tiny --layers samples/tiny/localize --out runs/guard-edit",
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--prompt", help='the prompt: A sign that says "OPEN". (not with --train)')
    add_text_layer_options(parser)
    parser.add_argument(
        "--detector", default="better-profanity", metavar="D",
        help=f"what finds toxic words: {', '.join(DETECTORS)} (default better-profanity), or a folder holding a transformers text-classification model",
    )
    parser.add_argument(
        "--replace", default="benign", metavar="R",
        help="what replaces a toxic word: benign (a harmless word of its length the model can write; the default), mask, "
        "mask:TEXT, drop, or WORD=NEW[,WORD=NEW...]",
    )
    parser.add_argument("--method", choices=[m for m in GUARD_METHODS if m != "unguarded"], default="patch", help="textloc's guard (default), or a baseline through the same call")
    parser.add_argument(
        "--check-images", action=argparse.BooleanOptionalAction, default=True,
        help="read the guarded image with the OCR (rapidocr) and regenerate it, or blank its text, if a toxic word shows anyway (default on; --method patch only)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise the unguarded and guarded images share; with --train, of the LoRA and every training draw (default 0)")
    add_sampler_options(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (with --train: a new or empty one, or with --resume the run's own)")
    training = parser.add_argument_group("the guard LoRA (--train)")
    training.add_argument("--train", action="store_true", help="train the guard LoRA on the text layers (--layers) instead of generating a prompt")
    training.add_argument("--max-train-steps", type=positive_int, metavar="N", help="optimizer steps (needed with --train)")
    for name, metavar in (("rank", "R"), ("lr", "LR"), ("batch_size", "B"), ("ema_decay", "D"), ("checkpoint_every", "N"), ("anchor_weight", "W")):
        add_config_option(training, TrainConfig, name, metavar)
    training.add_argument(
        "--toxic-fraction", type=float, default=0.5, metavar="F",
        help="share of training signs that ask for a toxic word (the others: ordinary signs of the benign words, so they stay written; default 0.5)",
    )
    training.add_argument("--resume", action="store_true", help="continue the guard LoRA run in --out from its last checkpoint")
    training.add_argument(
        "--closed-form", action="store_true",
        help="edit the text layers' keys and values in closed form instead of training (TIME/UCE: the toxic captions' made the "
        "replacement's, the ordinary signs' kept; cross and added-K/V layers only; no steps)",
    )
    training.add_argument("--preserve-weight", type=float, default=1.0, metavar="L", help="with --closed-form: how much an ordinary sign's token counts against a toxic one's (default 1)")
    parser.set_defaults(run=run_guard)


def run_guard(args: argparse.Namespace) -> int:
    """Generate one prompt unguarded and guarded from the same noise, print what was replaced, save both."""
    from dataclasses import asdict

    from textloc.guard import ToxicTextGuard
    from textloc.images import captioned_grid
    from textloc.pipeline_calls import images_of

    if args.train:
        return run_train(args)
    if args.closed_form:
        raise CommandError("--closed-form edits the guard's weights: give it with --train (and no --prompt).")
    if args.prompt is None:
        raise CommandError("give --prompt 'A sign that says \"...\".' to generate, or --train to train the guard LoRA.")
    check_out_folder(args.out)  # before the model loads and the finding is printed
    pipe = load_model(args)
    pipe.set_progress_bar_config(disable=False, leave=False)
    check = args.check_images and args.method == "patch"  # the image check regenerates through the text layers
    guard = ToxicTextGuard(
        pipe, layer_source(args.layers), detector=args.detector, replace=args.replace, start_step=args.start_step, method=args.method, check_images=check,
    )
    # Each call gets a fresh generator of --seed: both images start from the same noise.
    unguarded = images_of(pipe(args.prompt, **generate_kwargs(pipe, args.model, args, num=None)))[0]
    result = guard(args.prompt, **generate_kwargs(pipe, args.model, args, num=None))
    guarded, report = result.images[0], result.reports[0]
    print(report.summary())  # what was found, where and how it was written, and what replaced it
    if check:
        print("\n".join(c.describe() for c in result.image_checks) or "image check: no toxic word read in the guarded image")
    # What the images show is what the OCR reads, not what was asked for: the captions and the
    # record say it where the image check's OCR is at hand, and that nothing was read otherwise.
    reads = guard.ocr.read([unguarded, guarded]) if guard.ocr is not None else [None, None]
    captions = [f"OCR: {read}" if read is not None else "not read (--no-check-images)" for read in reads]
    args.out.mkdir(parents=True, exist_ok=True)
    row = [(unguarded, captions[0]), (guarded, captions[1])]
    # What was asked and what replaced it are printed above and recorded in guard.json.
    captioned_grid(("unguarded", f"guarded ({args.method})"), [row]).save(args.out / "guard.png")
    data = {
        **asdict(report), "method": args.method, "layers": [layer.name for layer in guard.layers], "start_step": guard.start_step, "seed": args.seed,
        "unguarded_read": reads[0], "guarded_read": reads[1],
        "image_checks": [asdict(c) for c in result.image_checks] if check else None, "check_seconds": result.check_seconds,
    }
    (args.out / "guard.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out}/guard.png and guard.json")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Train the guard LoRA on the text layers; every bad input is refused before the model loads."""
    from textloc.finetune import TrainConfig
    from textloc.guard import GuardPairs, train_guard_lora

    if args.prompt is not None:
        raise CommandError("--train trains the guard LoRA and generates nothing: leave out --prompt (then: textloc generate --lora DIR PROMPT).")
    if args.closed_form:
        return run_closed_form(args)
    if args.max_train_steps is None:
        raise CommandError("--train needs --max-train-steps N (textloc-tiny's best measured: 1000, --batch-size 8 --lr 3e-3 --ema-decay 0.99).")
    check_out_folder(args.out)
    try:
        config = TrainConfig(rank=args.rank, lr=args.lr, batch_size=args.batch_size, steps=args.max_train_steps,
                             ema_decay=args.ema_decay, checkpoint_every=args.checkpoint_every, anchor_weight=args.anchor_weight, seed=args.seed)
        pairs = GuardPairs(replace=args.replace, detector=args.detector, toxic_fraction=args.toxic_fraction, seed=args.seed)
    except (TypeError, ValueError) as error:
        raise CommandError(f"--train: {one_line(error)}") from None
    pipe = load_model(args)
    print("training on " + pairs.description.split(";")[0].removeprefix("guard pairs, "))
    result = train_guard_lora(pipe, layer_source(args.layers), config, pairs=pairs, output_dir=args.out, resume=args.resume)
    print(result.summary())
    print(f"load it with pipe.load_lora_weights({str(args.out)!r}), tl.load_lora, or textloc generate --lora {args.out}")
    return 0


def run_closed_form(args: argparse.Namespace) -> int:
    """Edit the text layers' keys and values in closed form from the guard's pairs; bad input is refused before the model loads."""
    import textloc as tl
    from textloc.guard import GuardPairs

    if args.max_train_steps is not None or args.resume:
        raise CommandError("--closed-form takes no training step: leave out --max-train-steps and --resume.")
    if not args.preserve_weight > 0:
        raise CommandError(f"--preserve-weight {args.preserve_weight}: how much an ordinary sign's token counts against a toxic one's, a number > 0 (e.g. 1).")
    check_out_folder(args.out)
    try:
        pairs = GuardPairs(replace=args.replace, detector=args.detector, toxic_fraction=args.toxic_fraction, seed=args.seed)
        edits, preserve = pairs.edit_pairs(), pairs.anchor_prompts
    except (TypeError, ValueError) as error:
        raise CommandError(f"--closed-form: {one_line(error)}") from None
    pipe = load_model(args)
    try:
        edit = tl.closed_form_edit(pipe, layer_source(args.layers), edits, preserve, preserve_weight=args.preserve_weight, output_dir=args.out,
                                   generate_kwargs={k: v for k, v in generate_kwargs(pipe, args.model, args, num=None).items() if k != "generator"})
    except ValueError as error:
        raise CommandError(f"--closed-form: {one_line(error)}") from None
    print(edit.summary())
    print(f"load it with pipe.load_lora_weights({str(args.out)!r}), tl.load_lora, or textloc generate --lora {args.out}")
    return 0
