"""The ``textloc`` command line: a thin layer over the Python API.

Each subcommand is one ``add_<name>(subcommands, parents)`` function that declares its arguments,
help and examples and sets ``run`` to a ``run_<name>(args) -> exit status`` function; adding a
command (edit, guard, finetune, demo) is writing one such pair and listing it in
:data:`COMMANDS`.

Errors a user can fix (an unknown model, a bad layer selector, missing weights) print one line on
stderr and exit with status 2, the status argparse gives a usage error; ``--debug`` shows the
traceback and the libraries' warnings instead.

Options of the pipeline call take diffusers' names (``--num-inference-steps``,
``--guidance-scale``); a patch's step window is ``--patch-steps``. What a named model runs with
when they are left out comes from the registry (:mod:`textloc.models`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from PIL import Image

from textloc.engine import (
    DEFAULT_START_STEP,
    KINDS,
    TEXT_KINDS,
    AttentionLayer,
    attention_layers,
    check_step_window,
    denoiser,
    denoiser_parameter_count,
)
from textloc.images import image_grid
from textloc.scoring.ocr import ENGINES as OCR_ENGINES
from textloc.models import DEFAULT_MODEL, UnknownModelError, find_named_model, named_model, named_models
from textloc.pipeline_calls import call_kwargs
from textloc.pipelines import load_pipeline
from textloc.seeding import generator

EXIT_ERROR = 2
DTYPES = ("auto", "float32", "float16", "bfloat16")
PROG = "textloc"


class CommandError(Exception):
    """A failure the user can fix; printed as one line, without a traceback."""


# --------------------------------------------------------------------------------------------
# Shared pieces


def _add_global_options(parser: argparse.ArgumentParser, suppress_defaults: bool = False) -> None:
    """Options accepted before and after the subcommand (``textloc --debug layers`` = ``textloc layers --debug``)."""
    # On a subcommand the defaults are suppressed: its defaults would overwrite the values given
    # before it.
    debug_default, threads_default = (argparse.SUPPRESS, argparse.SUPPRESS) if suppress_defaults else (False, None)
    parser.add_argument("--debug", action="store_true", default=debug_default, help="show tracebacks and library warnings")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=threads_default,
        metavar="N",
        help="CPU threads for torch (default: torch's choice); on busy or shared cores 1 is often fastest",
    )


def _common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes, as an argparse parent."""
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, suppress_defaults=True)
    return common


def _model_options() -> argparse.ArgumentParser:
    """``--model``, shared by every subcommand that loads a pipeline."""
    model = argparse.ArgumentParser(add_help=False)
    # Listing the named models imports every pipeline class, whose warnings main() silences first.
    model.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="M",
        help=f"a named model ({', '.join(named_models())}; default {DEFAULT_MODEL}, the embedded model), "
        "or a diffusers hub id (owner/name) or local folder",
    )
    model.add_argument(
        "--device",
        metavar="D",
        help="torch device to run on, e.g. cpu, cuda, cuda:1 (default: the GPU if there is one, else the CPU; "
        "under accelerate launch, each process's own)",
    )
    model.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="weights' precision (default auto: bfloat16 on a GPU that has it, else float16; float32 on the CPU)",
    )
    return model


def _add_sampler_options(group: argparse._ActionsContainer) -> None:
    """The pipeline-call options of every command that generates, under diffusers' names; options
    left out take the model's own settings (see textloc.models), else the pipeline's defaults."""
    group.add_argument("--num-inference-steps", type=_positive_int, metavar="N", help="number of denoising steps")
    group.add_argument(
        "--guidance-scale", type=float, metavar="G", help="classifier-free guidance scale (FLUX.1-dev: its distilled guidance)"
    )
    group.add_argument("--size", type=_positive_int, metavar="PX", help="image height and width in pixels")
    group.add_argument("--steps", action=_Renamed, new="--num-inference-steps")
    group.add_argument("--guidance", action=_Renamed, new="--guidance-scale")


class _Renamed(argparse.Action):
    """An option renamed to diffusers' name: using the old name is an error that names the new one.

    Declared (hidden) rather than left out, so that argparse does not take the old name for an
    abbreviation of the new (``--guidance`` for ``--guidance-scale``) and silently accept it.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        # One line, as textloc's other errors: the usage block would bury the one fact that matters.
        parser.exit(EXIT_ERROR, f"{parser.prog}: error: {option_string} is now {self.new} (diffusers' name for it).\n")


def _settings_text(model: str) -> str:
    """A named model's sampler settings as the options that set them, for help texts."""
    settings = named_model(model).settings
    return f"{model}: " + ", ".join(f"--{key.replace('_', '-')} {value}" for key, value in settings.items())


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~"))


def load_model(args: argparse.Namespace) -> Any:
    """:func:`textloc.load_pipeline` of ``--model`` on ``--device`` in ``--dtype``, with any loading
    failure turned into a :class:`CommandError`."""
    from textloc.distributed import default_dtype, resolve_device

    name = args.model
    if _looks_like_path(name) and not Path(name).expanduser().is_dir():
        raise CommandError(f"cannot load model {name!r}: no such folder.")
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise CommandError(f"--device {_one_line(error)}") from error
    dtype = default_dtype(device) if args.dtype == "auto" else getattr(torch, args.dtype)
    try:
        named = find_named_model(name)
    except UnknownModelError as error:
        raise CommandError(str(error)) from error
    try:
        return load_pipeline(name, device=device, dtype=dtype)
    except Exception as error:  # noqa: BLE001 - the loaders raise many types; all mean "this model"
        # diffusers/hub messages point at a stack trace the one-line error hides.
        hint = "" if named else " (--debug shows the full error)"
        raise CommandError(f"cannot load model {name!r}: {_one_line(error)}{hint}") from error


def _one_line(error: BaseException) -> str:
    return re.sub(r"\s+", " ", str(error)).strip() or type(error).__name__


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, keeping descriptions and examples as written, that never breaks a
    line inside a hyphenated name (``tiny-random-sdxl``, ``--num-inference-steps``), so that
    names in the help can be copied."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _set_library_verbosity(debug: bool) -> None:
    """Show transformers/diffusers warnings (torchvision fallbacks, hub retries) only with --debug."""
    for library in (transformers, diffusers):
        library.logging.set_verbosity(logging.WARNING if debug else logging.ERROR)
        # Their "Loading pipeline components" bars say nothing a user acts on; textloc's own bars stay.
        if debug:
            library.utils.logging.enable_progress_bar()
        else:
            library.utils.logging.disable_progress_bar()


# --------------------------------------------------------------------------------------------
# textloc layers


def add_layers(subcommands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Declare ``textloc layers``."""
    parser = subcommands.add_parser(
        "layers",
        parents=parents,
        help="list the text-conditioned attention layers of a model",
        description=(
            "List the attention layers of a model's denoiser that read the prompt, in forward order: "
            "index (what a layer selector's integer means), full module name, kind, heads, the "
            "parameters of its text K/V projections and their share of the denoiser's parameters. "
            "Kinds: cross (U-Net/PixArt/Sana attn2), added_kv (DeepFloyd IF), joint (SD3, FLUX "
            "double-stream), single (FLUX single-stream), self (no text; only with --all or --kind self)."
        ),
        epilog=_examples(
            "textloc layers --model tiny-random-sdxl",
            "textloc layers --model tiny-random-flux --kind single",
            "textloc layers --model stabilityai/stable-diffusion-xl-base-1.0 --json > layers.json",
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--kind", nargs="+", choices=KINDS, metavar="KIND", help=f"only these kinds ({', '.join(KINDS)})")
    parser.add_argument("--all", action="store_true", help="also list the self-attention layers")
    parser.add_argument("--json", action="store_true", help="print JSON: {model, denoiser, denoiser_params, layers: [...], total}")
    parser.set_defaults(run=run_layers)


def layers_report(pipe: Any, model: str, kinds: Sequence[str]) -> dict[str, Any]:
    """The layers of ``kinds`` with their parameter shares, and the total over the text layers."""
    total_params = denoiser_parameter_count(pipe)
    layers = attention_layers(pipe, kind=kinds)
    rows = [_layer_row(layer, total_params) for layer in layers]
    text_rows = [row for row in rows if row["kind"] != "self"]
    text_kv_params = sum(row["text_kv_params"] for row in text_rows)
    return {
        "model": model,
        "denoiser": type(denoiser(pipe)).__name__,
        "denoiser_params": total_params,
        "layers": rows,
        "total": {"layers": len(text_rows), "text_kv_params": text_kv_params, "share": text_kv_params / total_params},
    }


def _layer_row(layer: AttentionLayer, total_params: int) -> dict[str, Any]:
    return {
        "index": layer.index,
        "name": layer.name,
        "kind": layer.kind,
        "heads": layer.num_heads,
        "text_kv_params": layer.num_text_kv_params,
        "share": layer.num_text_kv_params / total_params,
    }


def format_layers_table(report: dict[str, Any]) -> str:
    """A plain-text table of :func:`layers_report`: one line per layer and a total line."""
    header = ("index", "name", "kind", "heads", "K/V params", "share")
    lines = [
        (
            "-" if row["index"] is None else str(row["index"]),
            row["name"],
            row["kind"],
            str(row["heads"]),
            "-" if row["kind"] == "self" else f"{row['text_kv_params']:,}",
            "-" if row["kind"] == "self" else f"{100 * row['share']:.3f}%",
        )
        for row in report["layers"]
    ]
    total = report["total"]
    footer = ("total", f"{total['layers']} text layers", "", "", f"{total['text_kv_params']:,}", f"{100 * total['share']:.3f}%")
    widths = [max(len(line[column]) for line in (header, *lines, footer)) for column in range(len(header))]
    right_aligned = {0, 3, 4, 5}

    def format_line(cells: Sequence[str]) -> str:
        padded = (cell.rjust(w) if i in right_aligned else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    title = f"{report['model']}: {report['denoiser']}, {report['denoiser_params']:,} parameters"
    rule = "-" * len(format_line(header))
    return "\n".join([title, format_line(header), rule, *map(format_line, lines), rule, format_line(footer)])


def run_layers(args: argparse.Namespace) -> int:
    """Print the layer table (or JSON) of ``--model``."""
    kinds = list(args.kind or TEXT_KINDS)
    if args.all and "self" not in kinds:
        kinds.append("self")
    report = layers_report(load_model(args), args.model, kinds)
    print(json.dumps(report, indent=2) if args.json else format_layers_table(report))
    return 0


# --------------------------------------------------------------------------------------------
# textloc generate


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
        epilog=_examples(
            "textloc generate --model tiny-random-sdxl 'A sign that says \"HELLO\".' --out hello.png",
            "textloc generate --model tiny-random-sd3 'A sign that says \"HELLO\".' --num 4 --num-inference-steps 10 --size 64",
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("prompt", metavar="PROMPT", nargs="?", help="the text prompt")
    parser.add_argument("--prompt", dest="prompt_option", metavar="PROMPT", help="the text prompt given as edit and guard take it, instead of PROMPT")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise, drawn on the CPU so it is alike on every device (default 0)")
    _add_sampler_options(parser)
    parser.add_argument("--num", type=_positive_int, default=1, metavar="K", help="number of images (default 1)")
    parser.add_argument("--lora", type=Path, metavar="DIR", help="a LoRA folder (textloc finetune's --out) to generate with")
    parser.add_argument("--out", type=Path, default=Path("generated.png"), metavar="FILE.png", help="where to save the PNG (default generated.png)")
    parser.set_defaults(run=run_generate)


def generate_kwargs(pipe: Any, model: str, args: argparse.Namespace, num: int | None = 1) -> dict[str, Any]:
    """The pipeline call's keyword arguments: a named model's own settings, overridden by the options given."""
    named = find_named_model(model)
    kwargs = {} if named is None else dict(named.settings)
    options = {"num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale, "height": args.size, "width": args.size}
    kwargs.update({key: value for key, value in options.items() if value is not None})
    kwargs.update(output_type="pil", generator=generator(args.seed))
    if num is not None:
        kwargs["num_images_per_prompt"] = num
    return call_kwargs(pipe, **kwargs)


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


# --------------------------------------------------------------------------------------------
# textloc localize


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
        epilog=_examples(
            "textloc localize --model textloc-tiny --pairs 40 --out runs/localize-tiny",
            "textloc localize --model tiny-random-sdxl --pairs 4 --out /tmp/loc --method both --direction both",
            "textloc localize --model stabilityai/stable-diffusion-xl-base-1.0 --glyphcontrol ../shared/benchmarks/glyphcontrol \\",
            "    --pairs 200 --num-inference-steps 50 --guidance-scale 5 --method screen+exact --top-k 12 --out runs/sdxl",
        ),
        formatter_class=_HelpFormatter,
    )
    source = parser.add_argument_group("prompt pairs (default: the model's own, else built-in words and templates)")
    source.add_argument("--pairs", type=_positive_int, default=20, metavar="N", help="number of prompt pairs (default 20)")
    words = source.add_mutually_exclusive_group()
    words.add_argument("--words", type=Path, metavar="FILE", help="word list, one per line")
    words.add_argument("--glyphcontrol", type=Path, metavar="DIR", help="GlyphControl benchmark folder (SimpleBench/, CreativeBench/)")
    source.add_argument("--bench", choices=("simple", "creative"), default="simple", help="which GlyphControl benchmark, with --glyphcontrol (default simple)")
    source.add_argument("--template", action="append", metavar="T", help="prompt template with \"{}\" where the text goes (repeatable)")
    method = parser.add_argument_group("method")
    # The method's options are LocalizeConfig's fields: the same defaults and help as the Python API.
    for name in ("method", "direction", "screen", "screen_points", "selection", "threshold", "unit", "rule", "held_out", "top_k"):
        _add_config_option(method, LocalizeConfig, name, {"top_k": "K", "screen_points": "K", "held_out": "F", "threshold": "F"}.get(name))
    method.add_argument("--layers", action="append", metavar="SEL", help="candidate layers: a full module name, a block (every text layer inside it), a glob (\"up_blocks.0.*attn2\") or an index among the text layers, as `textloc layers` lists them (repeatable; default all)")
    method.add_argument("--patch-steps", metavar="START:STOP", help="patch only in this step window of the denoising steps, stop excluded, either bound may be left out: step indices (0:10, 4:; negative ones count from the end: --patch-steps=-2:) or fractions of the schedule, written with a point (0:0.5, 0.5:1.0)")
    method.add_argument("--heads", metavar="H,H", help="patch only these heads (comma-separated)")
    _add_config_option(method, LocalizeConfig, "kv")
    _add_config_option(method, LocalizeConfig, "branch")
    method.add_argument("--ocr", choices=OCR_ENGINES, default="rapidocr", help="OCR engine (default rapidocr)")
    run = parser.add_argument_group("generation")
    run.add_argument("--seed", type=int, help="seed of the noise shared by every row, and of which prompt pairs are drawn (default 0)")
    run.add_argument("--seeds", metavar="S,S,...", help="several noise seeds: the first serves as --seed, and the exact sweep is repeated at the others to report how stable the ranking is from seed to seed")
    _add_sampler_options(run)
    _add_config_option(run, LocalizeConfig, "max_batch", "B")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (resumes a run already there)")
    parser.set_defaults(run=run_localize)


def _add_config_option(group: argparse._ArgumentGroup, config: type, name: str, metavar: str | None = None) -> None:
    """``--<name>`` for the field ``name`` of a config dataclass, with its default, choices and help."""
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    choices, default = field.metadata["choices"], field.default
    # Numbers by their default's type (an unset top_k counts layers); choices are strings.
    kind = None if choices else float if isinstance(default, float) else _positive_int
    shown = "" if default is None else f" (default {default})"
    group.add_argument(
        f"--{name.replace('_', '-')}", choices=choices, type=kind, default=default, metavar=metavar,
        help=field.metadata["help"].replace("%", "%%") + shown,
    )


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
    try:
        window = tuple(_step_bound(part) for part in parts)
        check_step_window(window)
    except (CommandError, ValueError) as error:
        raise CommandError(f"--patch-steps {text}: {error}") from None
    return window


def _step_bound(text: str) -> int | float | None:
    """One bound of --patch-steps: empty (open), a step index (negative: from the end) or a fraction."""
    if not text:
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"\d+\.\d*|\.\d+", text) and float(text) <= 1.0:
        return float(text)
    raise CommandError(
        f"Step bounds are step indices (4, or -2 from the end) or fractions of the schedule from 0.0 to 1.0, "
        f"written with a point; not {text!r}."
    )


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

    # Options are checked before the model loads, which can take minutes.
    window, heads = _window(args.patch_steps), None if args.heads is None else _heads(args.heads)
    args.seed, *stability_seeds = _seeds(args)
    candidates = _layer_source(args.layers, default="all")
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
    result = localize(
        pipe, pairs, candidates, config,
        ocr=args.ocr, scene_judge=judge, out=str(args.out), model_name=args.model, **settings,
    )
    if is_main_process():  # every process of a launched run has the result; one prints it
        print(result.summary())
        print(f"\nwrote {args.out}/report.json, layers.csv, layers.png, examples.png")
    return 0


# --------------------------------------------------------------------------------------------
# textloc edit


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
        epilog=_examples(
            "textloc edit --model textloc-tiny --prompt 'A red sign on a blue background that says \"LAMP\".' \\",
            "    --new-text FISH --layers samples/tiny/localize --out runs/edit",
            "textloc edit --model stabilityai/stable-diffusion-xl-base-1.0 --prompt 'A sign that says \"OPEN\".' --new-text STOP --out runs/edit-sdxl",
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--prompt", required=True, help='the prompt, with the text to change in double quotes: A sign that says "OPEN".')
    parser.add_argument("--new-text", required=True, metavar="TEXT", help="the text the edited image should show instead")
    parser.add_argument(
        "--layers", action="append", metavar="SEL",
        help="the text layers: a localization's output folder, 'preset' (the paper's layers for SDXL base, SD3-medium, "
        "IF-I-XL; the default), or layer names, blocks, globs or indices as `textloc layers` lists them (repeatable)",
    )
    parser.add_argument("--start-step", type=_start_step, metavar="S", help=f"first patched step: an index, or a fraction of the schedule written with a point (default: the preset's, else {DEFAULT_START_STEP})")
    parser.add_argument("--method", choices=EDIT_METHODS, default="patch", help="textloc's patch (default), or a baseline through the same harness")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise the source and the edit share (default 0)")
    parser.add_argument(
        "--image", type=Path, metavar="PNG",
        help="edit this image instead of a generated one: --prompt describes it, its text included; it is inverted "
        "to noise with the model first (guidance defaults to 1 there, where inverted noise regenerates the image)",
    )
    _add_sampler_options(parser)
    parser.add_argument("--ocr", choices=OCR_ENGINES, default="rapidocr", help="OCR engine (default rapidocr)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.set_defaults(run=run_edit)


def _start_step(text: str) -> int | float:
    """--start-step: one step bound, as --patch-steps reads its START (negative: from the end)."""
    try:
        bound = _step_bound(text) if text else None
    except CommandError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if bound is None:
        raise argparse.ArgumentTypeError("a step index (4, or -2 from the end) or a fraction of the schedule from 0.0 to 1.0 (0.1)")
    return bound


def _layer_source(values: list[str] | None, default: str = "preset") -> Any:
    """--layers as the one layer resolver takes it: a localization folder, "preset", or a selector
    (digits are forward indices, "all" is all); ``default`` when none is given."""
    if not values:
        return default
    if len(values) == 1 and (values[0] == "preset" or Path(values[0]).is_dir()):
        return Path(values[0]) if values[0] != "preset" else "preset"
    if "all" in values:
        return "all"
    return [int(value) if re.fullmatch(r"-?\d+", value) else value for value in values]


def run_edit(args: argparse.Namespace) -> int:
    """Edit the quoted text of one prompt and save the pair with its scores."""
    from textloc.edit import edit_image, edit_text, replace_quoted

    replace_quoted(args.prompt, args.new_text)  # bad text or a missing image is refused before the model loads
    image = None if args.image is None else Image.open(args.image).convert("RGB")
    pipe = load_model(args)
    pipe.set_progress_bar_config(disable=False, leave=False)
    settings = generate_kwargs(pipe, args.model, args, num=None)
    settings.pop("output_type")
    layers = _layer_source(args.layers)
    if image is None:
        result = edit_text(pipe, args.prompt, args.new_text, layers, start_step=args.start_step, method=args.method, ocr=args.ocr, **settings)
    else:
        settings.pop("generator")
        settings["guidance_scale"] = args.guidance_scale or 1.0
        result = edit_image(pipe, image, args.prompt, args.new_text, layers, start_step=args.start_step, method=args.method, ocr=args.ocr, **settings)
    result.save(args.out)
    print(result.summary())
    if result.reconstruction is not None:
        print(f"the unedited regeneration of {args.image}: PSNR {result.reconstruction['psnr']:.1f} dB, SSIM {result.reconstruction['ssim']:.3f}")
    print(f"wrote {args.out}/edit.png and edit.json")
    return 0


# --------------------------------------------------------------------------------------------
# textloc guard


def add_guard(subcommands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Declare ``textloc guard``."""
    from textloc.edit import DETECTORS, GUARD_METHODS

    parser = subcommands.add_parser(
        "guard",
        parents=parents,
        help="generate a prompt with its toxic quoted words kept out of the text layers",
        description=(
            "Find toxic words in the quoted texts of PROMPT, replace them, and generate the prompt while only the "
            "text layers receive the cleaned one: the scene stays, the word changes. Prints what it found and "
            "replaced; writes guard.png (unguarded | guarded, from the same noise) and guard.json to --out."
        ),
        epilog=_examples(
            "textloc guard --model textloc-tiny --prompt 'A red sign on a blue background that says \"DAMN\".' \\",
            "    --layers samples/tiny/localize --out runs/guard",
            "textloc guard --model tiny-random-sd3 --prompt 'A sign that says \"DAMN\".' --layers all --replace mask --out runs/guard-sd3",
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--prompt", required=True, help='the prompt; the text to write is in double quotes: A sign that says "OPEN".')
    parser.add_argument(
        "--layers", action="append", metavar="SEL",
        help="the text layers: a localization's output folder, 'preset' (the default), or layer names, blocks, globs or indices (repeatable)",
    )
    parser.add_argument(
        "--detector", default="better-profanity", metavar="D",
        help=f"what finds toxic words: {', '.join(DETECTORS)} (default better-profanity), or a folder holding a transformers text-classification model",
    )
    parser.add_argument(
        "--replace", default="benign", metavar="R",
        help="what replaces a toxic word: benign (a harmless word of its length the model can write; the default), mask, "
        "mask:TEXT, drop, or WORD=NEW[,WORD=NEW...]",
    )
    parser.add_argument("--start-step", type=_start_step, metavar="S", help=f"first patched step: an index, or a fraction of the schedule written with a point (default: the preset's, else {DEFAULT_START_STEP})")
    parser.add_argument("--method", choices=[m for m in GUARD_METHODS if m != "unguarded"], default="patch", help="textloc's guard (default), or a baseline through the same call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise the unguarded and guarded images share (default 0)")
    _add_sampler_options(parser)
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.set_defaults(run=run_guard)


def run_guard(args: argparse.Namespace) -> int:
    """Generate one prompt unguarded and guarded from the same noise, print what was replaced, save both."""
    from dataclasses import asdict

    from textloc.edit import ToxicTextGuard
    from textloc.images import captioned_grid
    from textloc.scoring.quoted import quoted_spans

    pipe = load_model(args)
    pipe.set_progress_bar_config(disable=False, leave=False)
    guard = ToxicTextGuard(pipe, _layer_source(args.layers), detector=args.detector, replace=args.replace, start_step=args.start_step, method=args.method)
    # Each call gets a fresh generator of --seed: both images start from the same noise.
    unguarded = pipe(args.prompt, **generate_kwargs(pipe, args.model, args, num=None)).images[0]
    result = guard(args.prompt, **generate_kwargs(pipe, args.model, args, num=None))
    guarded, report = result.images[0], result.reports[0]
    print(report.summary())
    texts = [", ".join(span.text for span in quoted_spans(prompt)) for prompt in (args.prompt, report.cleaned_prompt)]
    args.out.mkdir(parents=True, exist_ok=True)
    row = [(unguarded, f"asked: {texts[0]}"), (guarded, f"written: {texts[1]}")]
    captioned_grid(("unguarded", f"guarded ({args.method})"), [row]).save(args.out / "guard.png")
    data = {**asdict(report), "method": args.method, "layers": [layer.name for layer in guard.layers], "start_step": guard.start_step, "seed": args.seed}
    (args.out / "guard.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out}/guard.png and guard.json")
    return 0


# --------------------------------------------------------------------------------------------
# textloc finetune


def add_finetune(subcommands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Declare ``textloc finetune``."""
    from textloc.finetune import JOINT_STREAMS

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
        epilog=_examples(
            "textloc finetune --model textloc-tiny --layers samples/tiny/localize --data textloc-tiny --max-train-steps 500 --out runs/lora",
            "textloc finetune --model textloc-tiny --layers samples/tiny/localize --data textloc-tiny:new_words.txt --max-train-steps 500 --out runs/lora-new",
            "textloc finetune --model stabilityai/stable-diffusion-xl-base-1.0 --layers preset --data ./mario --max-train-steps 10000 \\",
            "    --lr 1e-6 --batch-size 8 --grad-accum 8 --mixed-precision bf16 --out runs/lora-sdxl",
            "textloc generate --model textloc-tiny --lora runs/lora 'A sign that says \"LAMP\".' --out lamp.png",
        ),
        formatter_class=_HelpFormatter,
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
    parser.add_argument("--max-train-steps", type=_positive_int, required=True, metavar="N", help="optimizer steps (as diffusers' training scripts name them)")
    parser.add_argument("--steps", action=_Renamed, new="--max-train-steps")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (a new or empty one; with --resume, the run's own)")
    parser.add_argument("--rank", type=_positive_int, default=4, metavar="R", help="LoRA rank (default 4, the paper's)")
    parser.add_argument("--alpha", type=float, metavar="A", help="LoRA alpha (default: the rank, so the scale is 1)")
    parser.add_argument(
        "--targets", metavar="T",
        help=f"projections of each layer: for joint layers a stream ({', '.join(JOINT_STREAMS)}; default image), "
        "or comma-separated names such as to_k,to_v (default: q, k, v and out; IF also its text K/V)",
    )
    parser.add_argument("--lr", type=float, default=1e-4, metavar="LR", help="learning rate, constant (default 1e-4)")
    parser.add_argument("--batch-size", type=_positive_int, default=1, metavar="B", help="samples per process and micro-step (default 1)")
    parser.add_argument("--grad-accum", type=_positive_int, default=1, metavar="K", help="micro-steps per optimizer step (default 1)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no", help="accelerate's mixed precision (default no)")
    parser.add_argument("--resolution", type=_positive_int, metavar="PX", help="training image side (default: the model's native size)")
    parser.add_argument("--checkpoint-every", type=_positive_int, default=500, metavar="N", help="steps between checkpoints (default 500)")
    parser.add_argument("--validate-every", type=_positive_int, metavar="N", help="steps between validations (default: before and after training only)")
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
    from textloc.finetune import RenderedSigns, train_lora

    data = _training_data(args)  # a bad folder or word file is refused before the model loads
    prompts = args.validation_prompt
    if prompts is None and isinstance(data, RenderedSigns):
        prompts = data.held_out_captions(8)
    pipe = load_model(args)
    named = find_named_model(args.model)
    settings = call_kwargs(pipe, **({} if named is None else named.settings))
    result = train_lora(
        pipe, _layer_source(args.layers), data, rank=args.rank, alpha=args.alpha, targets=_targets(args.targets),
        steps=args.max_train_steps, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
        mixed_precision=args.mixed_precision, checkpoint_every=args.checkpoint_every, validate_every=args.validate_every,
        validation_prompts=prompts or (), output_dir=args.out, resume=args.resume, seed=args.seed,
        resolution=args.resolution, caption_column=args.caption_column, generate_kwargs=settings,
    )
    print(result.summary())
    return 0


# --------------------------------------------------------------------------------------------
# Entry point

AddCommand = Callable[[argparse._SubParsersAction, list[argparse.ArgumentParser]], None]
# Each entry declares one subcommand; the second item says whether it loads a model (--model).
COMMANDS: tuple[tuple[AddCommand, bool], ...] = (
    (add_layers, True), (add_generate, True), (add_localize, True), (add_edit, True), (add_guard, True), (add_finetune, True),
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser: global options and every subcommand of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Find and use the attention layers that render text in text-to-image diffusion models.",
        epilog=_examples(
            "textloc layers --model tiny-random-sdxl",
            "textloc generate --model tiny-random-sdxl 'A sign that says \"HELLO\".' --out hello.png",
            "textloc localize --model textloc-tiny --pairs 40 --out runs/localize-tiny",
            "textloc edit --model textloc-tiny --prompt 'A sign that says \"LAMP\".' --new-text FISH --layers samples/tiny/localize --out runs/edit",
            "textloc finetune --model textloc-tiny --layers samples/tiny/localize --data textloc-tiny --max-train-steps 500 --out runs/lora",
            "textloc COMMAND --help   (options and examples of one command)",
        ),
        formatter_class=_HelpFormatter,
    )
    _add_global_options(parser)
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common, model = _common_options(), _model_options()
    for add_command, loads_model in COMMANDS:
        add_command(subcommands, [common, model] if loads_model else [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 on an error)."""
    # Quiet before building the parser: listing the tiny architectures imports every pipeline class.
    _set_library_verbosity(debug=False)
    args = build_parser().parse_args(argv)
    _set_library_verbosity(args.debug)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the whole point: one line instead of a traceback
        if args.debug:
            raise
        # Errors textloc raises on bad input say what to do; anything else may be a bug.
        # A missing optional package's ImportError says which pip command installs it.
        known = isinstance(error, (CommandError, ValueError, OSError)) or (isinstance(error, ImportError) and "pip install" in str(error))
        hint = "" if known else f" ({type(error).__name__}; rerun with --debug for the traceback)"
        print(f"{PROG}: error: {_one_line(error)}{hint}", file=sys.stderr)
        return EXIT_ERROR
