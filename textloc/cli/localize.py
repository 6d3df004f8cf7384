"""``textloc localize``: find the layers that render text, from prompt pairs the options choose."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

from textloc.cli.options import (
    CommandError,
    HelpFormatter,
    add_config_option,
    add_sampler_options,
    check_out_folder,
    examples,
    generate_kwargs,
    layer_source,
    load_model,
    positive_int,
    step_bound,
)
from textloc.models import find_named_model
from textloc.scoring.ocr import ENGINES as OCR_ENGINES

#: A new run of more pairs than this estimates its cost before it starts (--max-hours): the dry run
#: that counts its work takes seconds here; `--estimate` for 100,000 pairs took 2 min 39 s on textloc-tiny.
LARGE_RUN_PAIRS = 1000


def add_localize(subcommands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Declare ``textloc localize``."""
    from textloc.localization import LocalizeConfig

    parser = subcommands.add_parser(
        "localize",
        parents=parents,
        help="find the attention layers that render the text in the model's images",
        description=(
            "Generate prompt pairs that differ only in their quoted text (source 'A sign that says \"A\".', "
            "target '... \"B\".') from the same noise, patch candidate layers of the source run with the "
            "target's text signal, read the images with OCR, rank the layers and choose the smallest set "
            "that makes the model write the target text. Writes report.json, layers.csv, layers.png and "
            "examples.png to --out; rerunning the same command resumes an interrupted run."
        ),
        epilog=examples(
            "textloc localize --model textloc-tiny --pairs 40 --out runs/localize-tiny",
            "textloc localize --model tiny-random-sdxl --pairs 4 --out /tmp/loc --method both --direction both",
            "textloc localize --model stabilityai/stable-diffusion-xl-base-1.0 --glyphcontrol ../shared/benchmarks/glyphcontrol \\",
            "    --pairs 200 --num-inference-steps 50 --guidance-scale 5 --method screen+exact --top-k 12 --out runs/sdxl",
        ),
        formatter_class=HelpFormatter,
    )
    source = parser.add_argument_group("prompt pairs (default: the model's own, else built-in words and templates)")
    source.add_argument("--pairs", type=positive_int, default=20, metavar="N", help="number of prompt pairs (default 20)")
    words = source.add_mutually_exclusive_group()
    words.add_argument("--words", type=Path, metavar="FILE", help="word list, one per line")
    words.add_argument("--glyphcontrol", type=Path, metavar="DIR", help="GlyphControl benchmark folder (SimpleBench/, CreativeBench/)")
    source.add_argument("--bench", choices=("simple", "creative"), default="simple", help="which GlyphControl benchmark, with --glyphcontrol (default simple)")
    source.add_argument("--template", action="append", metavar="T", help="prompt template with \"{}\" where the text goes (repeatable)")
    method = parser.add_argument_group("method")
    # The method's options are LocalizeConfig's fields: the same defaults and help as the Python API.
    for name in ("method", "direction", "screen", "screen_points", "selection", "threshold", "unit", "rule", "held_out", "top_k"):
        add_config_option(method, LocalizeConfig, name, {"top_k": "K", "screen_points": "K", "held_out": "F", "threshold": "F"}.get(name))
    method.add_argument("--layers", action="append", metavar="SEL", help="candidate layers: a full module name, a block (every text layer inside it), a glob (\"up_blocks.0.*attn2\") or an index among the text layers, as `textloc layers` lists them (repeatable; default all)")
    method.add_argument("--patch-steps", metavar="START:STOP", help="patch only in this step window of the denoising steps, stop excluded, either bound may be left out: step indices (0:10, 4:; negative ones count from the end: --patch-steps=-2:) or fractions of the schedule, written with a point (0:0.5, 0.5:1.0)")
    method.add_argument("--heads", metavar="H,H", help="patch only these heads (comma-separated)")
    add_config_option(method, LocalizeConfig, "kv")
    add_config_option(method, LocalizeConfig, "branch")
    method.add_argument("--ocr", choices=OCR_ENGINES, default="rapidocr", help="OCR engine (default rapidocr)")
    run = parser.add_argument_group("generation")
    run.add_argument("--seed", type=int, help="seed of the noise shared by every row, and of which prompt pairs are drawn (default 0)")
    run.add_argument("--seeds", metavar="S,S,...", help="several noise seeds: the first serves as --seed, and the exact sweep is repeated at the others to report how stable the ranking is from seed to seed")
    add_sampler_options(run)
    add_config_option(run, LocalizeConfig, "max_batch", "B")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder (resumes a run already there); required but with --estimate")
    cost = parser.add_argument_group("cost")
    cost.add_argument(
        "--estimate", action="store_true",
        help="run nothing: print the generations, denoiser calls and images of each stage, the memory and the wall time "
        "(from a denoiser call timed now) that this run would take",
    )
    cost.add_argument(
        "--max-hours", type=float, default=24.0, metavar="H",
        help=f"a new run of more than {LARGE_RUN_PAIRS:,} pairs first estimates its cost (as --estimate does) and is "
        "refused when it would take longer than H hours (default 24)",
    )
    cost.add_argument("--assume-selected", action="append", metavar="SEL", help="with --estimate: the layers the selection is assumed to choose, as --layers takes them (default: the first quarter of the candidates)")
    parser.set_defaults(run=run_localize)


def _seeds(args: argparse.Namespace) -> list[int]:
    """--seeds as a list of distinct seeds, the first replacing --seed; else [--seed]."""
    if args.seeds is None:
        return [0 if args.seed is None else args.seed]
    seeds = [int(seed) for seed in args.seeds.split(",")] if re.fullmatch(r"\d+(,\d+)+", args.seeds) else []
    if len(set(seeds)) < 2 or len(set(seeds)) < len(seeds):
        raise CommandError(f"--seeds takes two or more distinct seeds separated by commas (e.g. 0,1,2), not {args.seeds!r}.")
    if args.seed is not None:
        raise CommandError("Give --seed or --seeds, not both: the first of --seeds is the seed.")
    if args.method == "attribution":
        raise CommandError("--seeds repeats the exact sweep, which --method attribution does not run; use activation, screen+exact or both.")
    return seeds


def _heads(text: str) -> list[int]:
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise CommandError(f"--heads takes head indices separated by commas (e.g. 0,3), not {text!r}.")
    return [int(head) for head in text.split(",")]


def _window(text: str | None) -> tuple[int | float | None, int | float | None] | None:
    """``--patch-steps START:STOP`` as a step window, refused when it cannot cover a step."""
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) != 2:
        raise CommandError(f"--patch-steps takes START:STOP (e.g. 4: or 0:0.5), not {text!r}.")
    from textloc.engine import check_step_window

    try:
        window = tuple(step_bound(part) for part in parts)
        check_step_window(window)
    except (CommandError, ValueError) as error:
        raise CommandError(f"--patch-steps {text}: {error}") from None
    return window


def localization_pairs(model: str, args: argparse.Namespace) -> tuple[list, Callable | None]:
    """The prompt pairs a localize run uses, from the options, else the model's own (a named model
    that has pairs, such as textloc-tiny), else built-in words and templates; and the scene judge
    that goes with the model's own pairs (``None`` with any other pairs)."""
    from textloc.localization import load_glyphcontrol, load_words, make_pairs
    from textloc.scoring.prompts import DEFAULT_WORDS

    templates = args.template
    named = find_named_model(model)
    seed = 0 if args.seed is None else args.seed
    if args.glyphcontrol is not None:
        bench = load_glyphcontrol(args.glyphcontrol, args.bench)
        words, templates = bench.all_words(), templates or list(bench.templates)
    elif args.words is not None:
        words = load_words(args.words)
    elif named is not None and named.prompt_pairs is not None and templates is None:
        return named.prompt_pairs(args.pairs, seed), named.scene_judge
    else:
        words = list(DEFAULT_WORDS)
    return make_pairs(words, n=args.pairs, templates=templates, seed=seed), None


def run_localize(args: argparse.Namespace) -> int:
    """Localize the text-rendering layers and print the summary table."""
    from textloc.distributed import is_main_process
    from textloc.localization import LocalizeConfig, localize
    from textloc.localization.report import PROGRESS_FILE

    # Options are checked before the model loads, which can take minutes.
    if args.out is None and not args.estimate:
        raise CommandError("localize needs --out DIR (the run's folder), unless it only --estimate's the cost.")
    if args.assume_selected and not args.estimate:
        raise CommandError("--assume-selected only applies to --estimate.")
    if args.out is not None:
        check_out_folder(args.out)
    window, heads = _window(args.patch_steps), None if args.heads is None else _heads(args.heads)
    args.seed, *stability_seeds = _seeds(args)
    candidates = layer_source(args.layers, default="all")
    if not isinstance(candidates, (str, list)) or candidates == "preset":
        raise CommandError(f"localize --layers names candidate layers (names, blocks, globs, indices or all), not {args.layers[0]!r}.")
    try:
        config = LocalizeConfig(
            method=args.method, direction=args.direction, screen=args.screen, screen_points=args.screen_points,
            selection=args.selection, threshold=args.threshold, rule=args.rule, unit=args.unit, held_out=args.held_out,
            top_k=args.top_k, patch_steps=window, heads=heads, kv=args.kv, branch=args.branch, seed=args.seed,
            stability_seeds=stability_seeds, max_batch=args.max_batch,
        )
    except (TypeError, ValueError) as error:
        raise CommandError(str(error)) from None
    pipe = load_model(args)
    settings = generate_kwargs(pipe, args.model, args, num=None)
    settings.pop("generator")
    settings.pop("output_type")
    pairs, judge = localization_pairs(args.model, args)
    if args.estimate:  # it prints the estimate itself
        assumed = None if args.assume_selected is None else layer_source(args.assume_selected, default="all")
        localize(pipe, pairs, candidates, config, ocr=args.ocr, scene_judge=judge, model_name=args.model, estimate=True, assume_selected=assumed, **settings)
        return 0
    if len(pairs) > LARGE_RUN_PAIRS and not (args.out / PROGRESS_FILE).exists():  # a resumed run was agreed to when it began
        print(f"{len(pairs):,} pairs: estimating what the run costs before it starts (--max-hours {args.max_hours:g}) ...", file=sys.stderr)
        cost = localize(pipe, pairs, candidates, config, ocr=args.ocr, scene_judge=judge, model_name=args.model, estimate=True, **settings)
        if cost.seconds > 3600 * args.max_hours:
            raise CommandError(
                f"localize: {len(pairs):,} pairs would take about {cost.seconds / 3600:,.1f} h (the estimate above), over --max-hours "
                f"{args.max_hours:g}. Run fewer --pairs, or pass --max-hours {math.ceil(cost.seconds / 3600)} to start it anyway."
            )
    result = localize(
        pipe, pairs, candidates, config,
        ocr=args.ocr, scene_judge=judge, out=str(args.out), model_name=args.model, **settings,
    )
    if is_main_process():  # every process of a launched run has the result; one prints it
        print(result.summary())
        print(f"\nwrote {args.out}/report.json, layers.csv, layers.png, examples.png")
    return 0
