"""``textloc layers``: the text-conditioned attention layers of a model, as a table or JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from textloc.architectures.spec import KINDS, TEXT_KINDS
from textloc.cli.options import HelpFormatter, examples, load_model

if TYPE_CHECKING:
    from textloc.engine import AttentionLayer


def add_layers(subcommands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Declare ``textloc layers``."""
    parser = subcommands.add_parser(
        "layers",
        parents=parents,
        help="list the text-conditioned attention layers of a model (and its pooled text vector)",
        description=(
            "List the attention layers of a model's denoiser that read the prompt, in forward order, then "
            "the module that reads its pooled text vector where it has one: index (what a layer "
            "selector's integer means), full module name, kind, heads, the parameters of its text K/V "
            "projections (of the pooled vector's reader) and their share of the denoiser's parameters. "
            "Kinds: cross (U-Net/PixArt/Sana/Lumina-Next attn2), added_kv (DeepFloyd IF, NucleusMoE-Image), joint (SD3, FLUX/FLUX.2/Chroma/AuraFlow "
            "double-stream), single (their single-stream blocks, Lumina 2's, Ideogram 4's and Krea 2's main layers), refiner (a text "
            "refiner's text-only attention, Lumina 2, Krea 2), prefix (block-causal single-stream layers whose text "
            "depends on the prompt alone, Qwen-Image 2.1), pooled (the pooled text vector: SD3, FLUX, SDXL, IF, Lumina-Next, "
            "HiDream; select it as 'pooled'), self (no text; only with --all or --kind self)."
        ),
        epilog=examples(
            "textloc layers --model tiny-random-sdxl",
            "textloc layers --model tiny-random-flux --kind single",
            "textloc layers --model stabilityai/stable-diffusion-xl-base-1.0 --json > layers.json",
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--kind", nargs="+", choices=KINDS, metavar="KIND", help=f"only these kinds ({', '.join(KINDS)})")
    parser.add_argument("--all", action="store_true", help="also list the self-attention layers")
    parser.add_argument("--json", action="store_true", help="print JSON: {model, denoiser, denoiser_params, layers: [...], total}")
    parser.set_defaults(run=run_layers)


def layers_report(pipe: Any, model: str, kinds: Sequence[str]) -> dict[str, Any]:
    """The layers of ``kinds`` with their parameter shares, and the total over the text layers."""
    from textloc.engine import attention_layers, denoiser, denoiser_parameter_count

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
        "heads": None if layer.kind == "pooled" else layer.num_heads,
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
            "-" if row["heads"] is None else str(row["heads"]),
            "-" if row["kind"] == "self" else f"{row['text_kv_params']:,}",
            "-" if row["kind"] == "self" else f"{100 * row['share']:.3f}%",
        )
        for row in report["layers"]
    ]
    total = report["total"]
    footer = ("total", f"{total['layers']} text units", "", "", f"{total['text_kv_params']:,}", f"{100 * total['share']:.3f}%")
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
