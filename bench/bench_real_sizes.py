"""Text layers at real size: every family's published denoisers, built on the meta device.

    python bench/bench_real_sizes.py

No weights and no download: each family's published configs (``Family.published``, with where
their values come from) are built as shapes only, and the engine lists their text units as it
lists a loaded pipeline's. Per model: its text layers by kind, their text K/V parameters and share
of the denoiser, the pooled vector's reader where it has one, and what a cache of its text K/V
holds in bfloat16 at the text length its pipeline feeds: per step and CFG branch for the layers
that rewrite the text at every step (joint, single), once per branch for the prompt-only ones
(cross, added-K/V, refiner, pooled). A live source row (``tl.run_with_patches``) needs no cache: it
costs one more batch row per source prompt instead.

Writes bench/results/real_sizes.json and prints the README's table.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import torch

import textloc as tl
from textloc.architectures import FAMILIES
from textloc.architectures.spec import STEP_INDEPENDENT_KINDS, TEXT_KINDS, PublishedDenoiser
from textloc.engine import AttentionLayer
from embedded import ROOT  # beside this script

BYTES = 2  # bfloat16


def output_width(layer: AttentionLayer) -> int:
    """The width of one text token's keys plus values in ``layer`` (of the pooled vector, its width)."""
    if layer.kind == "pooled":
        return next(module for module in reversed(list(layer.module.modules())) if isinstance(module, torch.nn.Linear)).out_features
    return layer.text_kv_width


def measure(family: str, published: PublishedDenoiser) -> dict[str, Any]:
    model = published.build_on_meta()
    units = tl.attention_layers(model, TEXT_KINDS)
    total = sum(parameter.numel() for parameter in model.parameters())
    layers = [unit for unit in units if unit.kind != "pooled"]
    pooled = next((unit for unit in units if unit.kind == "pooled"), None)
    per_token = {unit.name: output_width(unit) * BYTES for unit in units}
    stepwise = [unit for unit in layers if unit.kind not in STEP_INDEPENDENT_KINDS]
    once = [unit for unit in units if unit.kind in STEP_INDEPENDENT_KINDS]
    kv_params = sum(unit.num_text_kv_params for unit in layers)
    return {
        "family": family, "model": published.model, "denoiser": published.denoiser, "source": published.source,
        "denoiser_params": total, "text_tokens": published.text_tokens,
        "text_layers": dict(Counter(unit.kind for unit in layers)), "text_kv_params": kv_params, "text_kv_share": kv_params / total,
        "pooled": None if pooled is None else {"name": pooled.name, "params": pooled.num_text_kv_params},
        # The pooled vector is one per row: its bytes do not grow with the text.
        "cache_bytes_per_step_and_branch": sum(per_token[unit.name] * published.text_tokens for unit in stepwise),
        "cache_bytes_once_per_branch": sum(per_token[unit.name] * (1 if unit.kind == "pooled" else published.text_tokens) for unit in once),
    }


def _size(num_bytes: int) -> str:
    return "—" if not num_bytes else f"{num_bytes / 2**20:.0f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:.0f} KiB"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | denoiser | text layers | text K/V params (share) | pooled vector | text tokens | cache per step and branch | prompt-only, once per branch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        kinds = ", ".join(f"{count} {kind}" for kind, count in row["text_layers"].items())
        pooled = "—" if row["pooled"] is None else f"`{row['pooled']['name']}` ({row['pooled']['params'] / 1e6:.1f}M)"
        lines.append(
            f"| {row['model']} | {row['denoiser_params'] / 1e9:.2f}B | {kinds} | {row['text_kv_params'] / 1e6:.1f}M ({100 * row['text_kv_share']:.2f}%) "
            f"| {pooled} | {row['text_tokens']} | {_size(row['cache_bytes_per_step_and_branch'])} | {_size(row['cache_bytes_once_per_branch'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    rows = [measure(family.name, published) for family in FAMILIES for published in family.published]
    out = ROOT / "bench" / "results" / "real_sizes.json"
    out.write_text(json.dumps({"dtype": "bfloat16", "models": rows}, indent=2) + "\n")
    print(table(rows))
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
