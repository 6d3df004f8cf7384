"""What several ``textloc`` commands share: the error a user can fix, the global, model and sampler
options, the readers of --layers and step bounds, loading ``--model`` and the pipeline call's settings."""

from __future__ import annotations

import argparse
import dataclasses
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textloc.engine.choices import DEFAULT_START_STEP
from textloc.models import DEFAULT_MODEL, UnknownModelError, find_named_model, model_names

EXIT_ERROR = 2
DTYPES = ("auto", "float32", "float16", "bfloat16")


class CommandError(Exception):
    """A failure the user can fix; printed as one line, without a traceback."""


def one_line(error: BaseException) -> str:
    return re.sub(r"\s+", " ", str(error)).strip() or type(error).__name__


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, keeping descriptions and examples as written, that never breaks a
    line inside a hyphenated name (``tiny-random-sdxl``, ``--num-inference-steps``), so that
    names in the help can be copied."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_global_options(parser: argparse.ArgumentParser, suppress_defaults: bool = False) -> None:
    """Options accepted before and after the subcommand (``textloc --debug layers`` = ``textloc layers --debug``)."""
    # On a subcommand the defaults are suppressed: its defaults would overwrite the values given
    # before it.
    debug_default, threads_default = (argparse.SUPPRESS, argparse.SUPPRESS) if suppress_defaults else (False, None)
    parser.add_argument("--debug", action="store_true", default=debug_default, help="show tracebacks and library warnings")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=threads_default,
        metavar="N",
        help="CPU threads for torch (default: torch's choice); on busy or shared cores 1 is often fastest",
    )


class _StoreOnce(argparse._StoreAction):
    """argparse's ``store``, but an option given twice is an error: argparse would keep the last
    and drop the first without a word (two --prompt, the first never generated)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        given = namespace.__dict__.setdefault("_options_given", {})
        if option_string is not None and self.dest in given:
            parser.exit(EXIT_ERROR, f"{parser.prog}: error: {option_string} was given twice ({given[self.dest]!r}, then {values!r}); give it once.\n")
        given[self.dest] = values
        super().__call__(parser, namespace, values, option_string)


class Parser(argparse.ArgumentParser):
    """textloc's argument parser: its subcommands' parsers are of this class too (argparse makes
    them of the parent's), so every single-valued option of every command is taken once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes, as an argparse parent."""
    common = Parser(add_help=False)
    add_global_options(common, suppress_defaults=True)
    return common


def model_options() -> argparse.ArgumentParser:
    """``--model``, shared by every subcommand that loads a pipeline."""
    model = Parser(add_help=False)
    # Listing the named models imports every pipeline class, whose warnings main() silences first.
    model.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="M",
        help=f"a named model ({', '.join(model_names())}; default {DEFAULT_MODEL}, the embedded model), "
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


def add_sampler_options(group: argparse._ActionsContainer) -> None:
    """The pipeline-call options of every command that generates, under diffusers' names; options
    left out take the model's own settings (see textloc.models), else the pipeline's defaults."""
    group.add_argument("--num-inference-steps", type=positive_int, metavar="N", help="number of denoising steps")
    group.add_argument(
        "--guidance-scale", type=float, metavar="G", help="classifier-free guidance scale (FLUX.1-dev: its distilled guidance)"
    )
    group.add_argument("--size", type=positive_int, metavar="PX", help="image height and width in pixels")
    group.add_argument("--steps", action=Renamed, new="--num-inference-steps")
    group.add_argument("--guidance", action=Renamed, new="--guidance-scale")


class Renamed(argparse.Action):
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


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def add_config_option(group: argparse._ArgumentGroup, config: type, name: str, metavar: str | None = None) -> None:
    """``--<name>`` for the field ``name`` of a config dataclass, with its default, choices and help."""
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    choices, default = field.metadata["choices"], field.default
    # Numbers by the field's declared type (an unset top_k counts layers, an unset alpha is a float); choices are strings.
    kind = None if choices else float if "float" in str(field.type) else positive_int
    shown = "" if default is None else f" (default {default})"
    group.add_argument(
        f"--{name.replace('_', '-')}", choices=choices, type=kind, default=default, metavar=metavar,
        help=field.metadata["help"].replace("%", "%%") + shown,
    )


def step_bound(text: str) -> int | float | None:
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


def start_step(text: str) -> int | float:
    """--start-step: one step bound, as --patch-steps reads its START (negative: from the end)."""
    try:
        bound = step_bound(text) if text else None
    except CommandError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if bound is None:
        raise argparse.ArgumentTypeError("a step index (4, or -2 from the end) or a fraction of the schedule from 0.0 to 1.0 (0.1)")
    return bound


def layer_source(values: list[str] | None, default: str = "preset") -> Any:
    """--layers as the one layer resolver takes it: a localization folder, "preset", or a selector
    (digits are forward indices, "all" is all); ``default`` when none is given."""
    if not values:
        return default
    if len(values) == 1 and (values[0] == "preset" or Path(values[0]).is_dir()):
        return Path(values[0]) if values[0] != "preset" else "preset"
    if "all" in values:
        return "all"
    return [int(value) if re.fullmatch(r"-?\d+", value) else value for value in values]


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that cannot become the output folder (it, or a folder above it, is a
    file), before the model loads: otherwise the error comes only after the work is done."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out else f"is inside {path}, which is a file"
                raise CommandError(f"--out {out} {where}; give a folder (a new one, or one that exists).")
            return


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~"))


def load_model(args: argparse.Namespace) -> Any:
    """:func:`textloc.load_pipeline` of ``--model`` on ``--device`` in ``--dtype``, with any loading
    failure turned into a :class:`CommandError`."""
    # Here, not at the top: building the parser (and --help) imports no torch, diffusers or transformers.
    import torch

    from textloc.distributed import default_dtype, resolve_device
    from textloc.pipelines import load_pipeline

    name = args.model
    if _looks_like_path(name) and not Path(name).expanduser().is_dir():
        raise CommandError(f"cannot load model {name!r}: no such folder.")
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise CommandError(f"--device {one_line(error)}") from error
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
        raise CommandError(f"cannot load model {name!r}: {one_line(error)}{hint}") from error


def generate_kwargs(pipe: Any, model: str, args: argparse.Namespace, num: int | None = 1) -> dict[str, Any]:
    """The pipeline call's keyword arguments: a named model's own settings, overridden by the options given."""
    from textloc.pipeline_calls import call_kwargs
    from textloc.seeding import generator

    named = find_named_model(model)
    kwargs = {} if named is None else dict(named.settings)
    options = {"num_inference_steps": args.num_inference_steps, "guidance_scale": args.guidance_scale, "height": args.size, "width": args.size}
    kwargs.update({key: value for key, value in options.items() if value is not None})
    kwargs.update(output_type="pil", generator=generator(args.seed))
    if num is not None:
        kwargs["num_images_per_prompt"] = num
    return call_kwargs(pipe, **kwargs)


def add_text_layer_options(parser: argparse.ArgumentParser) -> None:
    """``--layers`` and ``--start-step`` of the commands that patch text layers from a step on
    (edit, guard): the one layer resolver's sources, and the step window's start."""
    parser.add_argument(
        "--layers", action="append", metavar="SEL",
        help="the text layers: a localization's output folder, 'preset' (the paper's layers for SDXL base, SD3-medium, "
        "IF-I-XL, or an embedded model's; the default), or layer names, blocks, globs or indices as `textloc layers` "
        "lists them (repeatable)",
    )
    parser.add_argument(
        "--start-step", type=start_step, metavar="S",
        help=f"first patched step: an index, or a fraction of the schedule written with a point (default: the preset's, else {DEFAULT_START_STEP})",
    )
