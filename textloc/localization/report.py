"""The result of a localization, its files (JSON, CSV, PNG) and the progress log that lets it resume."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from textloc.images import captioned_grid

REPORT_FILE, LAYERS_FILE, PLOT_FILE, GRID_FILE = "report.json", "layers.csv", "layers.png", "examples.png"
PROGRESS_FILE = "progress.jsonl"
PROGRESS_PATTERN = "progress*.jsonl"


def progress_file(process: int) -> str:
    """The progress log of one process of a run: ``progress.jsonl`` for the main (or only) one."""
    return PROGRESS_FILE if process == 0 else f"progress.{process}.jsonl"


@dataclass
class Localization:
    """Which layers render text, with every score next to its unpatched baseline.

    ``layers``: one dict per candidate layer (name, kind, index, parameters, its share of the
    denoiser, exact-sweep means, attribution score, rank). ``baselines``: the means of the
    unpatched source images (the floor) and of the target prompt generated directly (the
    ceiling). ``sets``: the layer sets tried while selecting (cumulative or greedy), each with its
    means. ``selected``: the chosen layers; ``held_out``: that set on pairs not used to choose it.
    """

    model: str
    settings: dict[str, Any]
    layers: list[dict[str, Any]]
    baselines: dict[str, dict[str, float | None]]
    sets: list[dict[str, Any]] = field(default_factory=list)
    selected: list[str] = field(default_factory=list)
    reached: bool = False
    held_out: dict[str, Any] | None = None
    agreement: dict[str, float | None] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def selected_share(self) -> float:
        """Share of the denoiser's parameters in the selected layers' text K/V projections."""
        return sum(layer["param_share"] for layer in self.layers if layer["name"] in self.selected)

    def save(self, directory: str | Path, examples: Sequence[dict[str, Any]] = ()) -> Path:
        """Write report.json, layers.csv, the per-layer plot and (given examples) the image grid."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / REPORT_FILE, {**asdict(self), "selected_share": self.selected_share})
        self._write_csv(directory / LAYERS_FILE)
        plot_layers(self, directory / PLOT_FILE)
        if examples:
            example_grid(examples).save(directory / GRID_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Localization:
        """Read a saved localization (its report.json)."""
        data = json.loads((Path(directory) / REPORT_FILE).read_text())
        data.pop("selected_share", None)
        return cls(**data)

    def _write_csv(self, path: Path) -> None:
        metric_names = sorted({key for layer in self.layers for key in (layer.get("exact") or {})})
        temporary = path.with_suffix(".tmp")
        with temporary.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "name", "kind", "num_text_kv_params", "param_share", "rank", "attribution", *metric_names])
            for layer in self.layers:
                exact = layer.get("exact") or {}
                writer.writerow([
                    layer["index"], layer["name"], layer["kind"], layer["num_text_kv_params"], f"{layer['param_share']:.6g}",
                    layer.get("rank", ""), _cell(layer.get("attribution")), *(_cell(exact.get(name)) for name in metric_names),
                ])
            # The floor and the ceiling, so that no layer's numbers are read without them.
            for name, label in (("source", "(unpatched source)"), ("target", "(target prompted directly)")):
                means = (self.baselines or {}).get(name) or {}
                writer.writerow(["", label, "baseline", "", "", "", "", *(_cell(means.get(metric)) for metric in metric_names)])
        os.replace(temporary, path)

    def summary(self) -> str:
        """A plain-text table a person can read at the end of a run."""
        floor, ceiling = self.baselines["source"], self.baselines["target"]
        lines = [
            f"model {self.model}: {len(self.layers)} candidate layers",
            f"target word read: unpatched source {_pct(floor.get('target_hit'))}, target prompted directly {_pct(ceiling.get('target_hit'))}",
            "",
            f"{'rank':>4}  {'layer':<56} {'kind':<8} {'target hit':>10} {'source hit':>10} {'ssim':>6} {'attrib':>9}",
        ]
        ranked = sorted(self.layers, key=lambda layer: layer.get("rank") if layer.get("rank") is not None else 1e9)
        for layer in ranked:
            exact = layer.get("exact") or {}
            lines.append(
                f"{_cell(layer.get('rank')):>4}  {layer['name']:<56} {layer['kind']:<8} {_pct(exact.get('target_hit')):>10} "
                f"{_pct(exact.get('source_hit')):>10} {_num(exact.get('ssim')):>6} {_num(layer.get('attribution')):>9}"
            )
        if self.sets:
            lines += ["", f"{'layers':>6}  {'target hit':>10} {'source hit':>10} {'scene':>6} {'ssim':>6}  added"]
            for entry in self.sets:
                means = entry["means"]
                lines.append(
                    f"{len(entry['layers']):>6}  {_pct(means.get('target_hit')):>10} {_pct(means.get('source_hit')):>10} "
                    f"{_pct(means.get('scene')):>6} {_num(means.get('ssim')):>6}  {entry['layers'][-1]}"
                )
        verdict = "reaches" if self.reached else "does NOT reach"
        lines += ["", f"selected {len(self.selected)} layer(s), {self.selected_share:.2%} of the denoiser's parameters ({verdict} the target threshold):"]
        lines += [f"  {name}" for name in self.selected]
        if self.held_out:
            held = self.held_out
            where = "held-out pairs" if self.settings.get("held_out_pairs") else "the choice pairs again, none held out"
            lines.append(
                f"{where} ({int(held['patched']['n'])}): target read {_pct(held['patched']['target_hit'])} patched vs "
                f"{_pct(held['direct']['target_hit'])} prompted directly and {_pct(held['unpatched']['target_hit'])} unpatched; "
                f"scene kept {_pct(held['patched'].get('scene'))}, ssim {_num(held['patched']['ssim'])}"
            )
        if self.agreement:
            agreement = self.agreement
            lines.append(
                f"attribution screen vs exact sweep: {agreement['time_ratio']:.1f}x less time; Spearman {agreement['spearman']:.2f} "
                f"on the OCR ranking, {_num(agreement.get('spearman_pixels'))} on the pull toward the target image; "
                f"screen+exact needs top_k >= {agreement.get('screen_top_k') or '-'} to sweep the selected layers"
            )
        return "\n".join(lines)


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file, so an interrupted write never leaves half a file."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(temporary, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"Cannot write {type(value).__name__} to JSON")


class ProgressLog:
    """Append-only JSON lines of finished work units, keyed by (stage, pair); what makes runs resume.

    Each line is written whole and flushed; a last line cut by a crash is dropped when the log is
    opened again. The first line holds the settings: resuming with other settings is refused
    instead of mixing results. Each process of a launched run writes its own file
    (``progress.jsonl``, ``progress.1.jsonl``, ...) and reads them all, so that a run resumes
    whatever the number of processes before and now.
    """

    def __init__(self, directory: str | Path | None, settings: dict[str, Any], process: int = 0):
        self.path = None if directory is None else Path(directory) / progress_file(process)
        self.done: dict[tuple[str, int], Any] = {}
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        settings = json.loads(json.dumps(settings, default=_json_default))
        if self.path.exists():
            _drop_torn_tail(self.path)  # only this process's own file: the others may be mid-write
        for path in sorted(self.path.parent.glob(PROGRESS_PATTERN)):
            lines = list(_read_lines(path))
            if lines and lines[0].get("settings") != settings:
                raise ValueError(
                    f"{self.path.parent} holds a localization run with other settings; resume it with the "
                    "same settings, or choose another output directory."
                )
            self.done.update({(line["stage"], line["pair"]): line["result"] for line in lines[1:]})
        if not (self.path.exists() and self.path.stat().st_size):
            self._append({"settings": settings})

    def get(self, stage: str, pair: int) -> Any:
        """The logged result of ``stage`` on pair ``pair``, or ``None`` if it has not run yet."""
        return self.done.get((stage, pair))

    def put(self, stage: str, pair: int, result: Any) -> None:
        """Keep a result and append it to the log at once, so an interrupted run resumes after it."""
        self.done[stage, pair] = result
        self._append({"stage": stage, "pair": pair, "result": result})

    def _append(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, default=_json_default) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that an interruption left without its newline, so new lines start clean."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            return  # a line cut by an interruption: everything after it is redone


def plot_layers(result: Localization, path: Path) -> None:
    """Per-layer bars of the target hit rate (and attribution), baselines as lines; the set curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{layer['index']}: {_short(layer['name'])}" for layer in result.layers]
    hits = [((layer.get("exact") or {}).get("target_hit") or 0.0) for layer in result.layers]
    panels = 1 + bool(result.sets)
    figure, axes = plt.subplots(panels, 1, figsize=(max(6.0, 0.35 * len(names) + 2), 3.6 * panels), squeeze=False)
    axis = axes[0][0]
    colours = ["tab:red" if layer["name"] in result.selected else "tab:blue" for layer in result.layers]
    axis.bar(range(len(names)), hits, color=colours)
    for key, label, style in (("source", "unpatched source", ":"), ("target", "target prompted directly", "--")):
        value = result.baselines[key].get("target_hit")
        if value is not None:
            axis.axhline(value, color="black", linestyle=style, linewidth=1, label=label)
    attributions = [layer.get("attribution") for layer in result.layers]
    if any(value is not None for value in attributions):
        scale = max(abs(v) for v in attributions if v is not None) or 1.0
        axis.plot(range(len(names)), [(v or 0.0) / scale for v in attributions], "o", color="tab:orange", label="attribution (scaled)")
    axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axis.set_ylabel("target word read (rate)")
    axis.set_title(f"{result.model}: patching one layer at a time (red: selected)")
    axis.legend(fontsize=7, loc="upper left")
    if result.sets:
        axis = axes[1][0]
        sizes = [len(entry["layers"]) for entry in result.sets]
        for metric, label in (("target_hit", "target read"), ("source_hit", "source read"), ("ssim", "SSIM to source"), ("scene", "scene kept")):
            values = [entry["means"].get(metric) for entry in result.sets]
            if all(v is not None for v in values):
                axis.plot(sizes, values, marker="o", label=label)
        axis.set_xlabel(f"layers patched together ({result.settings.get('selection')})")
        axis.set_ylim(-0.05, 1.05)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _short(name: str) -> str:
    return name.replace("transformer_blocks", "tb").replace("attentions", "attn").replace("_blocks", "")


def example_grid(examples: Sequence[dict[str, Any]], scale: int = 3) -> Image.Image:
    """Rows of (source | patched | target) images with the OCR reading under each."""
    columns = ("source", "patched", "target")
    rows = [[(example[key], f"OCR: {example.get(key + '_read', '')}"[:24]) for key in columns] for example in examples]
    return captioned_grid(columns, rows, scale)
