"""``textloc app``: the Gradio web app, served on this machine."""

from __future__ import annotations

import argparse
from typing import Any

from textloc.cli.options import HelpFormatter, examples, load_model


def add_app(subcommands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Declare ``textloc app``."""
    parser = subcommands.add_parser(
        "app",
        parents=parents,
        help="serve the web app: browse layers, localize, edit and guard in a browser",
        description=(
            "Serve a Gradio web app on --host:--port with four tabs on one model: its text layers and the ones its "
            "localization selected, localize (live progress, the layer plot), edit (source | edited, what the OCR "
            "read, the scores) and guard (unguarded | guarded, the guard's report). --model opens it; any other "
            "model named in the page loads there once, on --device in --dtype, and stays loaded. Needs the app "
            "extra: pip install 'textloc[app]'."
        ),
        epilog=examples(
            "textloc app --model textloc-tiny",
            "textloc --threads 1 app --model textloc-tiny-sd3 --port 7861",
            "textloc app --model stabilityai/stable-diffusion-xl-base-1.0 --host 0.0.0.0   (on a GPU machine, for others to reach)",
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.set_defaults(run=run_app)


def run_app(args: argparse.Namespace) -> int:
    """Load --model, then serve the app until interrupted."""
    from textloc.app.session import Pipelines

    def load(name: str) -> Any:
        # The command line's loader: --device and --dtype hold for every model named in the page.
        return load_model(argparse.Namespace(model=name, device=args.device, dtype=args.dtype))

    pipelines = Pipelines(load)
    pipelines(args.model)  # a model that cannot load fails here, in one line, before gradio is imported
    try:
        from textloc.app.ui import build_app, serve
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        raise ImportError("textloc app needs gradio: pip install 'textloc[app]'") from error
    serve(build_app(pipelines, args.model), args.host, args.port)
    return 0
