"""The ``textloc`` command line: a thin layer over the Python API.

Each subcommand is one module of this package holding an ``add_<name>(subcommands, parents)``
function that declares its arguments, help and examples and sets ``run`` to a
``run_<name>(args) -> exit status`` function; adding a command (edit, guard, finetune, demo) is
writing one such module and listing its ``add_<name>`` in :data:`COMMANDS`. What several commands
share is in :mod:`textloc.cli.options`.

Errors a user can fix (an unknown model, a bad layer selector, missing weights) print one line on
stderr and exit with status 2, the status argparse gives a usage error; ``--debug`` shows the
traceback and the libraries' warnings instead.

Options of the pipeline call take diffusers' names (``--num-inference-steps``,
``--guidance-scale``); a patch's step window is ``--patch-steps``. What a named model runs with
when they are left out comes from the registry (:mod:`textloc.models`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from textloc.cli.app import add_app
from textloc.cli.edit import add_edit
from textloc.cli.finetune import add_finetune
from textloc.cli.generate import add_generate
from textloc.cli.guard import add_guard
from textloc.cli.layers import add_layers
from textloc.cli.localize import add_localize
from textloc.cli.options import (
    EXIT_ERROR,
    CommandError,
    HelpFormatter,
    Parser,
    add_global_options,
    common_options,
    examples,
    model_options,
    one_line,
)

PROG = "textloc"


def _set_library_verbosity(debug: bool) -> None:
    """Show transformers/diffusers warnings (torchvision fallbacks, hub retries) only with --debug."""
    # Imported once a command runs: building the parser (and --help) imports none of them.
    import diffusers
    import transformers

    for library in (transformers, diffusers):
        library.logging.set_verbosity(logging.WARNING if debug else logging.ERROR)
        # Their "Loading pipeline components" bars say nothing a user acts on; textloc's own bars stay.
        if debug:
            library.utils.logging.enable_progress_bar()
        else:
            library.utils.logging.disable_progress_bar()


AddCommand = Callable[[argparse._SubParsersAction, list[argparse.ArgumentParser]], None]
# Each entry declares one subcommand; the second item says whether it loads a model (--model).
COMMANDS: tuple[tuple[AddCommand, bool], ...] = (
    (add_layers, True), (add_generate, True), (add_localize, True), (add_edit, True), (add_guard, True), (add_finetune, True),
    (add_app, True),
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser: global options and every subcommand of :data:`COMMANDS`."""
    parser = Parser(
        prog=PROG,
        description="Find and use the attention layers that render text in text-to-image diffusion models.",
        epilog=examples(
            "textloc layers --model tiny-random-sdxl",
            "textloc generate --model tiny-random-sdxl 'A sign that says \"HELLO\".' --out hello.png",
            "textloc localize --model textloc-tiny --pairs 40 --out runs/localize-tiny",
            "textloc edit --model textloc-tiny --prompt 'A sign that says \"LAMP\".' --new-text FISH --layers samples/tiny/localize --out runs/edit",
            "textloc finetune --model textloc-tiny --layers samples/tiny/localize --data textloc-tiny --max-train-steps 500 --out runs/lora",
            "textloc app --model textloc-tiny   (a web app: layers, localize, edit, guard)",
            "textloc COMMAND --help   (options and examples of one command)",
        ),
        formatter_class=HelpFormatter,
    )
    add_global_options(parser)
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common, model = common_options(), model_options()
    for add_command, loads_model in COMMANDS:
        add_command(subcommands, [common, model] if loads_model else [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 on an error)."""
    args = build_parser().parse_args(argv)
    _set_library_verbosity(args.debug)
    if args.threads is not None:
        import torch

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
        print(f"{PROG}: error: {one_line(error)}{hint}", file=sys.stderr)
        return EXIT_ERROR
