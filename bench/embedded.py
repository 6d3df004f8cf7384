"""Where the benchmarks of an embedded model read and write.

Each embedded model keeps its samples under ``samples/<short name>/`` (``samples/tiny``,
``samples/tiny-sd3``): its localization (``localize/``, the layers the uses patch) and each use's
grids. Results go to ``bench/results/<use>.json`` for the default model, textloc-tiny, and to
``bench/results/<use>-<short name>.json`` for the others.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Union

from textloc.models import DEFAULT_MODEL, EMBEDDED_MODELS

ROOT = Path(__file__).resolve().parent.parent


def short_name(model: str) -> str:
    """``textloc-tiny-sd3`` -> ``tiny-sd3``."""
    return model.removeprefix("textloc-")


def samples_dir(model: str) -> Path:
    return ROOT / "samples" / short_name(model)


def layers_dir(model: str) -> Path:
    """The model's shipped localization, whose layers the uses patch."""
    return samples_dir(model) / "localize"


def add_layers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", help="a layer selector, comma-separated, patched instead of the shipped localization's "
                                         "(e.g. transformer_blocks.3.attn,pooled); give --results and --grid with it")


def bench_layers(args: argparse.Namespace) -> Union[Path, list[str]]:
    """What the uses patch: ``--layers``, else the model's shipped localization."""
    if args.layers is None:
        return layers_dir(args.model)
    if args.results is None or args.grid is None:
        raise SystemExit("--layers writes results of its own: give --results and --grid too, so the shipped ones stay.")
    return args.layers.split(",")


def layers_label(layers: Union[Path, list[str]]) -> Union[str, list[str]]:
    """How a results file names what was patched: the localization folder, or the selector."""
    return str(layers.relative_to(ROOT)) if isinstance(layers, Path) else layers


def results_file(use: str, model: str) -> Path:
    suffix = "" if model == DEFAULT_MODEL else f"-{short_name(model)}"
    return ROOT / "bench" / "results" / f"{use}{suffix}.json"


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=[model.name for model in EMBEDDED_MODELS],
                        help=f"the embedded model benched (default {DEFAULT_MODEL}); its layers are "
                             "samples/<tiny or tiny-sd3>/localize")
