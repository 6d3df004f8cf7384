"""The result of a localization, its files (JSON, CSV, PNG) and the progress log that lets it resume."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from textloc.files import json_default, write_json_atomic
from textloc.images import captioned_grid
from textloc.localization.results import Agreement, Baselines, Heads, HeldOut, Means, SeedStability, SetScores, Share, UnitScores, optional, to_json

REPORT_FILE, LAYERS_FILE, PLOT_FILE, GRID_FILE = "report.json", "layers.csv", "layers.png", "examples.png"
PROGRESS_FILE = "progress.jsonl"
# Below this many choice pairs a selection's interval says little (one pair moves a share by 10% or more).
FEW_PAIRS = 10
PROGRESS_PATTERN = "progress*.jsonl"


def progress_file(process: int) -> str:
    """The progress log of one process of a run: ``progress.jsonl`` for the main (or only) one."""
    return PROGRESS_FILE if process == 0 else f"progress.{process}.jsonl"


@dataclass
class Localization:
    """Which layers render text, with every score next to its unpatched baseline.

    ``layers``: one :class:`UnitScores` per candidate unit (name, kind, index, parameters, its
    share of the denoiser, rank, exact-sweep means for sufficiency (``exact``) and necessity
    (``necessity``: the target generated with the source's text there; ``target_hit`` is how often
    the target word survived), attribution score). ``baselines``: the means of the unpatched
    source images (the floor) and of the target prompt generated directly (the ceiling). ``sets``:
    the unit sets tried while selecting (cumulative or greedy), each with its means and its
    :class:`Share` of the directly prompted rate. ``selected``: the chosen units; ``held_out``:
    that set on pairs not used to choose it. Every rate carries a bootstrap interval over pairs
    (``means.ci[rate]``, ``[low, high]``). ``agreement``: how well each screen stands in for the
    exact sweep (see ``localize``'s ``method="both"``). ``heads`` (with ``unit="head"``): every
    head of the selected layers patched alone, the head sets tried, the chosen heads and their
    held-out scores. ``seed_stability`` (with ``stability_seeds``): each noise seed's ranking and,
    per pair of seeds, the rank correlation of the layers' exact effects and whether the top layers agree.
    """

    model: str
    settings: dict[str, Any]
    layers: list[UnitScores]
    baselines: Baselines | None
    sets: list[SetScores] = field(default_factory=list)
    selected: list[str] = field(default_factory=list)
    reached: bool = False
    held_out: HeldOut | None = None
    agreement: Agreement | None = None
    heads: Heads | None = None
    seed_stability: SeedStability | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def selected_share(self) -> float:
        """Share of the denoiser's parameters in the selected layers' text K/V projections."""
        return sum(layer.param_share for layer in self.layers if layer.name in self.selected)

    def layer(self, name: str) -> UnitScores:
        """The scores of candidate unit ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{name!r} was not a candidate of this localization; its candidates: {', '.join(layer.name for layer in self.layers)}.")

    def save(self, directory: str | Path, examples: Sequence[dict[str, Any]] = ()) -> Path:
        """Write report.json, layers.csv, the per-layer plot and (given examples) the image grid."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / REPORT_FILE, {**to_json(self), "selected_share": self.selected_share})
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
        return cls(**{
            **data, "layers": [UnitScores.from_json(layer) for layer in data["layers"]], "sets": [SetScores.from_json(entry) for entry in data["sets"]],
            "baselines": optional(Baselines, data.get("baselines")), "held_out": optional(HeldOut, data.get("held_out")),
            "agreement": optional(Agreement, data.get("agreement")), "heads": optional(Heads, data.get("heads")),
            "seed_stability": optional(SeedStability, data.get("seed_stability")),
        })

    def _write_csv(self, path: Path) -> None:
        """One row per layer: its sufficiency means, each rate's interval, and (if measured) the
        necessity means prefixed ``necessity_``; then the baselines."""
        columns = _columns([layer.exact for layer in self.layers])
        necessity = _columns([layer.necessity for layer in self.layers])
        temporary = path.with_suffix(".tmp")
        with temporary.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "name", "kind", "num_text_kv_params", "param_share", "rank", "attribution", *columns, *(f"necessity_{c}" for c in necessity)])
            for layer in self.layers:
                writer.writerow([
                    layer.index, layer.name, layer.kind, layer.num_text_kv_params, f"{layer.param_share:.6g}",
                    _cell(layer.rank), _cell(layer.attribution), *_values(layer.exact, columns), *_values(layer.necessity, necessity),
                ])
            # The floor and the ceiling, so that no layer's numbers are read without them.
            for name, label in (("source", "(unpatched source)"), ("target", "(target prompted directly)")):
                means = getattr(self.baselines, name) if self.baselines else None
                writer.writerow(["", label, "baseline", "", "", "", "", *_values(means, columns), *[""] * len(necessity)])
        os.replace(temporary, path)

    def summary(self) -> str:
        """A plain-text table a person can read at the end of a run."""
        floor, ceiling = self.baselines.source, self.baselines.target
        necessity = any(layer.necessity for layer in self.layers)
        lines = [
            f"model {self.model}: {len(self.layers)} candidate layers",
            f"target word read: unpatched source {_rate(floor, 'target_hit')}, target prompted directly {_rate(ceiling, 'target_hit')}",
            "",
            f"{'rank':>4}  {'layer':<56} {'kind':<8} {'target hit':>16} {'source hit':>16} {'ssim':>6} {'attrib':>9}"
            + (f" {'target survives':>16}" if necessity else ""),
        ]
        ranked = sorted(self.layers, key=lambda layer: layer.rank if layer.rank is not None else 1e9)
        for layer in ranked:
            exact = layer.exact
            lines.append(
                f"{_cell(layer.rank):>4}  {layer.name:<56} {layer.kind:<8} {_rate(exact, 'target_hit'):>16} "
                f"{_rate(exact, 'source_hit'):>16} {_num(exact and exact.ssim):>6} {_num(layer.attribution):>9}"
                + (f" {_rate(layer.necessity, 'target_hit'):>16}" if necessity else "")
            )
        if self.sets:
            direction = "removed" if self.settings.get("direction") == "necessity" else "read"
            lines += ["", f"{'layers':>6}  {'target ' + direction:>26} {'target hit':>16} {'scene':>6} {'ssim':>6}  added"]
            for entry in self.sets:
                means = entry.means
                lines.append(
                    f"{len(entry.layers):>6}  {_share(entry.share_of_direct):>26} {_rate(means, 'target_hit'):>16} "
                    f"{_pct(means.scene):>6} {_num(means.ssim):>6}  {entry.layers[-1]}"
                )
        verdict = "reaches" if self.reached else "does NOT reach"
        rule = "its interval's lower bound" if self.settings.get("rule", "point") == "lower-bound" else "its point estimate"
        lines += ["", f"selected {len(self.selected)} layer(s), {self.selected_share:.2%} of the denoiser's parameters ({rule} {verdict} the threshold):"]
        lines += [f"  {name}" for name in self.selected]
        choice = self.settings.get("choice_pairs")
        if choice is not None and choice < FEW_PAIRS:
            lines.append(
                f"note: {choice} choice pair(s) only; a share's 95% interval over so few pairs is wide (one pair moves it "
                f"by {1 / choice:.0%}), so read the selection as a hint, and localize on {FEW_PAIRS} or more pairs to rely on it"
            )
        if self.held_out:
            held = self.held_out
            where = "held-out pairs" if self.settings.get("held_out_pairs") else "the choice pairs again, none held out"
            if held.sufficiency:
                read = held.sufficiency
                lines.append(
                    f"{where} ({int(read.patched.n)}): target read {_rate(read.patched, 'target_hit')} patched "
                    f"({_share(read.share_of_direct)}) vs {_rate(read.direct, 'target_hit')} prompted directly and "
                    f"{_rate(read.unpatched, 'target_hit')} unpatched; scene kept {_pct(read.patched.scene)}, ssim {_num(read.patched.ssim)}"
                )
            if held.necessity:
                removed = held.necessity
                lines.append(
                    f"{where}, necessity: the target word survives {_rate(removed.patched, 'target_hit')} of the target's images "
                    f"with the source's text at the selected layers (removed: {_share(removed.share_of_direct)}), "
                    f"against {_rate(removed.unpatched, 'target_hit')} unpatched"
                )
        lines += self._agreement_lines() + self._seed_lines() + self._head_lines()
        return "\n".join(lines)

    def _seed_lines(self) -> list[str]:
        stability = self.seed_stability
        if not stability:
            return []
        seeds, pairs = stability.seeds, len(stability.pairwise)
        spread = stability.spearman_range
        correlation = _num(stability.spearman) + (f" (pairs of seeds: {spread[0]:.2f} to {spread[1]:.2f})" if spread and pairs > 1 else "")
        top = (
            f"the same top {stability.k} in {round(stability.same_top_k * pairs)} of {pairs} pairs of seeds"
            if stability.same_top_k is not None else "no layer selected to compare"
        )
        return [
            "",
            f"{stability.direction} ranking from seed to seed ({', '.join(map(str, seeds))}): Spearman {correlation} "
            f"on the {len(stability.distinguishable)} layers distinguishable from 0; {top}",
        ]

    def _head_lines(self) -> list[str]:
        if not self.heads:
            return []
        heads = self.heads
        verdict = "carry" if heads.reached else "do NOT carry"
        lines = ["", f"heads of the selected layers, each patched alone ({len(heads.units)}); the best:"]
        for row in sorted(heads.units, key=lambda row: row.rank)[: max(5, len(heads.selected))]:
            lines.append(f"{row.rank:>4}  {row.name:<60} target hit {_rate(row.exact, 'target_hit'):>16}")
        lines.append(f"selected {len(heads.selected)} of {len(heads.units)} heads, which {verdict} the word at the threshold: {', '.join(heads.selected)}")
        read = heads.held_out and heads.held_out.sufficiency
        if read:
            lines.append(
                f"  on the held-out pairs: target read {_rate(read.patched, 'target_hit')} ({_share(read.share_of_direct)}) "
                f"vs {_rate(read.direct, 'target_hit')} prompted directly"
            )
        return lines

    def _agreement_lines(self) -> list[str]:
        agreement = self.agreement
        if not agreement:
            return []
        lines = [
            "",
            f"screens vs the exact sweep, on the {len(agreement.distinguishable)} of {agreement.layers} layers whose exact pull "
            f"toward the target image is distinguishable from 0 (exact sweep vs itself, split-half: {_split(agreement.exact_split_half)}):",
        ]
        for name, entry in agreement.screens.items():
            lines.append(
                f"  {name:<11} {entry.time_ratio:.1f}x less time; Spearman {_num(entry.spearman)}, split-half {_split(entry.split_half)}; "
                f"top-{len(self.selected) or 1} recall {_pct(entry.top_k_recall)}; screen+exact needs top_k >= {entry.screen_top_k or '-'}"
            )
        return lines


def _split(values: Sequence[float] | None) -> str:
    """A split-half agreement: its mean over halvings and their 95% range."""
    return "-" if not values else f"{values[0]:.2f} [{values[1]:.2f}, {values[2]:.2f}]"


def _columns(all_means: Sequence[Means | None]) -> list[str]:
    """The CSV columns of some means: every metric, and ``<rate>_low``/``<rate>_high`` per interval."""
    names, rates = set(), set()
    for means in filter(None, all_means):
        names.update(key for key in means.to_json() if key != "ci")
        rates.update(means.ci)
    return sorted(names) + [f"{rate}_{end}" for rate in sorted(rates) for end in ("low", "high")]


def _values(means: Means | None, columns: Sequence[str]) -> list[str]:
    values = {} if means is None else means.to_json()
    intervals = {f"{rate}_{end}": bounds[i] for rate, bounds in values.get("ci", {}).items() for i, end in enumerate(("low", "high"))}
    return [_cell(values.get(column, intervals.get(column))) for column in columns]


def _rate(means: Means | None, name: str) -> str:
    """A rate with its interval when it has one: ``84% [70, 95]``."""
    value = None if means is None else getattr(means, name)
    if value is None:
        return "-"
    bounds = means.ci.get(name)
    return _pct(value) if bounds is None else f"{_pct(value)} [{bounds[0]:.0%}, {bounds[1]:.0%}]".replace("%,", ",")


def _share(share: Share | None) -> str:
    """A share of the directly prompted rate with its interval: ``108% of direct [96, 121]``."""
    if not share or share.value is None:
        return "-"
    return f"{share.value:.0%} of direct [{share.low:.0%}, {share.high:.0%}]".replace("%,", ",")


def _cell(value: Any) -> str:
    return "" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


class ProgressLog:
    """Append-only JSON lines of finished work units, keyed by (stage, pair); what makes runs resume.

    Each line is written whole and flushed; a last line cut by a crash is dropped when the log is
    opened again. The first line holds the settings: resuming with other settings is refused
    instead of mixing results. Each process of a launched run writes its own file
    (``progress.jsonl``, ``progress.1.jsonl``, ...) and reads them all, so that a run resumes
    whatever the number of processes before and now.
    """

    def __init__(self, directory: str | Path | None, settings: dict[str, Any], process: int = 0, unchecked: Collection[str] = ()):
        """``unchecked``: settings that never change a logged result, left out of ``settings``; a
        log whose first line still holds them (written when they were checked) resumes all the same."""
        self.path = None if directory is None else Path(directory) / progress_file(process)
        self.done: dict[tuple[str, int], Any] = {}
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        settings = json.loads(json.dumps(settings, default=json_default))
        if self.path.exists():
            _drop_torn_tail(self.path)  # only this process's own file: the others may be mid-write
        for path in sorted(self.path.parent.glob(PROGRESS_PATTERN)):
            lines = list(_read_lines(path))
            logged = {key: value for key, value in (lines[0].get("settings") or {}).items() if key not in unchecked} if lines else None
            if lines and logged != settings:
                raise ValueError(
                    f"{self.path.parent} holds a localization run with other settings ({_differences(logged, settings)}); "
                    "resume it with the same settings, or choose another output directory."
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
            handle.write(json.dumps(record, default=json_default) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


_UNSET = object()


def _differences(logged: dict[str, Any], settings: dict[str, Any], prefix: str = "") -> str:
    """Which settings of a logged run differ from this run's, each as name, logged value, this run's
    value: what a user must change to resume, or why a new folder is needed."""
    parts = []
    for key in dict.fromkeys([*logged, *settings]):
        old, new, name = logged.get(key, _UNSET), settings.get(key, _UNSET), prefix + key
        if old == new:
            continue
        if name == "weights":  # fingerprints mean nothing to read; what matters is that the weights changed
            parts.append("the model's weights differ (another model, or a fine-tune of it)")
        elif name == "model":
            parts.append(f"the model differs: logged {_shown(old)}, this run {_shown(new)}")
        elif isinstance(old, dict) and isinstance(new, dict):  # generate_kwargs: name the keyword, not the whole call
            parts.append(_differences(old, new, f"{name}."))
        elif isinstance(old, list) and isinstance(new, list) and len(old) != len(new):
            parts.append(f"{name}: {len(old)} logged, {len(new)} in this run")
        elif isinstance(old, list) and isinstance(new, list):
            i = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
            parts.append(f"{name}[{i}]: logged {_shown(old[i])}, this run {_shown(new[i])}")
        else:
            parts.append(f"{name}: logged {_shown(old)}, this run {_shown(new)}")
    return "; ".join(parts)


def _shown(value: Any, width: int = 60) -> str:
    text = "(not set)" if value is _UNSET else repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


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

    names = [f"{layer.index}: {_short(layer.name)}" for layer in result.layers]
    panels = 1 + bool(result.sets) + bool(result.heads)
    figure, axes = plt.subplots(panels, 1, figsize=(max(6.0, 0.35 * len(names) + 2), 3.6 * panels), squeeze=False)
    axis = axes[0][0]
    colours = ["tab:red" if layer.name in result.selected else "tab:blue" for layer in result.layers]
    necessity = any(layer.necessity for layer in result.layers)
    width = 0.4 if necessity else 0.8
    positions = np.arange(len(names)) - (width / 2 if necessity else 0)
    hits, errors = _bars([layer.exact for layer in result.layers])
    axis.bar(positions, hits, width, yerr=errors, color=colours, capsize=2, label="target read (sufficiency; red: selected)")
    if necessity:
        survives, errors = _bars([layer.necessity for layer in result.layers])
        axis.bar(positions + width, survives, width, yerr=errors, color="tab:gray", capsize=2, label="target survives (necessity)")
    for key, label, style in (("source", "unpatched source", ":"), ("target", "target prompted directly", "--")):
        value = getattr(result.baselines, key).target_hit
        if value is not None:
            axis.axhline(value, color="black", linestyle=style, linewidth=1, label=label)
    attributions = [layer.attribution for layer in result.layers]
    if any(value is not None for value in attributions):
        scale = max(abs(v) for v in attributions if v is not None) or 1.0
        axis.plot(range(len(names)), [(v or 0.0) / scale for v in attributions], "o", color="tab:orange", label="attribution (scaled)")
    axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axis.set_ylabel("target word (rate, 95% interval)")
    axis.set_title(f"{result.model}: patching one layer at a time")
    axis.set_ylim(-0.05, 1.5)  # room above the bars for the legend
    axis.legend(fontsize=7, loc="upper left", ncol=2)
    if result.sets:
        axis = axes[1][0]
        sizes = [len(entry.layers) for entry in result.sets]
        for metric, label in (("target_hit", "target read"), ("source_hit", "source read"), ("ssim", "SSIM to source"), ("scene", "scene kept")):
            values = [getattr(entry.means, metric) for entry in result.sets]
            if all(v is not None for v in values):
                axis.plot(sizes, values, marker="o", label=label)
        shares = [entry.share_of_direct for entry in result.sets]
        if all(share is not None for share in shares):
            shares = np.array(shares, dtype=float)
            axis.plot(sizes, shares[:, 0], marker="s", color="black", label="share of the direct rate")
            axis.fill_between(sizes, shares[:, 1], shares[:, 2], color="black", alpha=0.12, label="its 95% interval")
            axis.axhline(result.settings.get("threshold", 0.8), color="black", linestyle="--", linewidth=1)
        axis.set_xlabel(f"layers patched together ({result.settings.get('selection')})")
        axis.set_ylim(-0.05, 1.3)
        axis.legend(fontsize=7)
    if result.heads:
        axis = axes[-1][0]
        units = result.heads.units
        hits, errors = _bars([row.exact for row in units])
        colours = ["tab:red" if row.name in result.heads.selected else "tab:blue" for row in units]
        axis.bar(range(len(units)), hits, yerr=errors, color=colours, capsize=2)
        axis.set_xticks(range(len(units)), [f"{_short(row.layer)} h{row.head}" for row in units], rotation=90, fontsize=6)
        axis.set_ylabel("target read (rate)")
        axis.set_ylim(-0.05, 1.05)  # a rate, on the same scale as the layers' (all heads may read 0)
        axis.set_title("heads of the selected layers, each patched alone (red: the selected head set)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _bars(all_means: Sequence[Means | None]) -> tuple[list[float], np.ndarray]:
    """Target-word rates and their interval as error bar lengths (``[2, layers]``)."""
    rates, below, above = [], [], []
    for means in all_means:
        rate = (means and means.target_hit) or 0.0
        low, high = means.ci.get("target_hit", (rate, rate)) if means else (rate, rate)
        rates.append(rate)
        below.append(max(0.0, rate - low))
        above.append(max(0.0, high - rate))
    return rates, np.array([below, above])


def _short(name: str) -> str:
    return name.replace("transformer_blocks", "tb").replace("attentions", "attn").replace("_blocks", "")


def example_grid(examples: Sequence[dict[str, Any]], scale: int = 3) -> Image.Image:
    """Rows of (source | patched | target) images with the OCR reading under each."""
    columns = ("source", "patched", "target")
    rows = [[(example[key], f"OCR: {example.get(key + '_read', '')}"[:24]) for key in columns] for example in examples]
    return captioned_grid(columns, rows, scale)
