"""What a localization will cost, before it runs: ``localize(..., estimate=True)``, ``textloc localize --estimate``.

Per stage, the generations and their prompt rows, the denoiser calls and a screen's backward
passes, and the images the OCR reads, counted by running the stages' own code with no image
generated (:mod:`.dry_run`); what one denoiser call, the rest of a generation and reading an image
cost at the run's size, from two short generations timed now (:mod:`.cost_probe`); from these,
each stage's wall time. And the memory: a pass's activations at the largest batch, with the
gradients a screen keeps, and the text K/V cache the run does without (every patch reads a live
row of its own batch).

Wall time is a model: a stage's time is its denoiser calls at their batch sizes, a backward pass
as :data:`BACKWARD_CALLS` forward calls, key-exact's replays of every layer as one more forward
call per gradient step, the rest of each full generation (text encoding, decoding) per prompt
row, and each new image read once. Resumed work and other processes are not modelled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from textloc.engine import STEP_INDEPENDENT_KINDS, AttentionLayer
from textloc.localization.config import LocalizeConfig
from textloc.localization.cost_probe import Probe, probe
from textloc.localization.dry_run import Generation, Ledger, dry_run
from textloc.localization.sweep import PatchSettings
from textloc.scoring.ocr import OCR
from textloc.scoring.prompts import PromptPair, SceneJudge

#: A backward pass through the denoiser, in forward calls (the usual rule: about twice a forward pass).
BACKWARD_CALLS = 2.0


@dataclass
class StageCost:
    """One stage of a localization: its generations, their prompt rows, denoiser calls, backward
    passes, the pairs whose images it scores, the images scored and, of them, read by the OCR (not
    read before), and estimated seconds."""

    stage: str
    generations: int
    rows: int
    denoiser_calls: int
    backward_passes: int
    pairs_scored: int
    images_scored: int
    images_read: int
    seconds: float


@dataclass
class Estimate:
    """A localization's cost, stage by stage, under the assumption that ``assumed_selected`` is
    what its selection chooses (the head stages and a greedy selection depend on it)."""

    stages: list[StageCost]
    assumed_selected: list[str]
    probe: Probe
    cache_bytes: dict[str, int]

    @property
    def seconds(self) -> float:
        return sum(stage.seconds for stage in self.stages)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": self.seconds}

    def summary(self) -> str:
        """A table per stage, the total, and what the times and memory rest on."""
        lines = [
            "| stage | generations | prompt rows | denoiser calls | backward passes | images scored (new) | estimated time |",
            "|---|---|---|---|---|---|---|",
        ]
        for stage in [*self.stages, self._total()]:
            lines.append(
                f"| {stage.stage} | {stage.generations:,} | {stage.rows:,} | {stage.denoiser_calls:,} | {stage.backward_passes:,} "
                f"| {stage.images_scored:,} ({stage.images_read:,}) | {_duration(stage.seconds)} |"
            )
        lines.append(f"\nAssumed selection ({len(self.assumed_selected)}): {', '.join(self.assumed_selected)}.")
        p = self.probe
        (small, at_small), (large, at_large) = p.call_seconds
        lines.append(
            f"Timed now on {p.device}: one denoiser call {1e3 * at_small:.1f} ms at {small} prompt rows, {1e3 * at_large:.1f} ms at {large}; "
            f"the rest of a generation {1e3 * p.fixed_seconds_per_row:.1f} ms per row; reading an image {1e3 * p.read_seconds:.1f} ms; "
            f"{sum(p.calls_per_step)} denoiser calls per full generation ({len(p.calls_per_step)} steps)."
        )
        lines.append(
            f"Activations: {_size(p.activation_bytes[1])} for one pass at {p.activation_bytes[0]} rows; "
            f"{_size(p.grad_activation_bytes[1])} at {p.grad_activation_bytes[0]} rows with the gradients a screen keeps."
        )
        lines.append(
            "Text K/V cache: none (every patch reads a live row of its batch); a TextCache of the candidates would hold "
            f"{_size(self.cache_bytes['per_step_and_branch'])} per prompt, step and branch and {_size(self.cache_bytes['once_per_branch'])} "
            "per prompt and branch for the prompt-only layers."
        )
        return "\n".join(lines)

    def _total(self) -> StageCost:
        return StageCost(
            "total", *(sum(getattr(stage, name) for stage in self.stages) for name in ("generations", "rows", "denoiser_calls", "backward_passes", "pairs_scored", "images_scored", "images_read")),
            self.seconds,
        )


def estimate_localization(
    pipe: Any,
    pairs: Sequence[PromptPair],
    candidates: list[AttentionLayer],
    config: LocalizeConfig,
    generate_kwargs: dict[str, Any],
    localize: Callable[..., Any],
    *,
    ocr: OCR,
    scene_judge: SceneJudge | None,
    selected: Sequence[AttentionLayer] | None = None,
) -> Estimate:
    """The cost of ``localize(pipe, pairs, candidates, config, **generate_kwargs)``.

    ``selected``: the layers its selection is assumed to choose (default the first quarter of the
    candidates, at least one).
    """
    chosen = list(selected) if selected is not None else candidates[: max(1, len(candidates) // 4)]
    heads = {layer.name: 0 if layer.kind == "pooled" else layer.num_heads for layer in candidates}
    with dry_run([layer.name for layer in chosen], heads) as ledger:
        localize(pipe, pairs, [layer.name for layer in candidates], config, ocr=_Unread(), progress=False, **generate_kwargs)
    settings = PatchSettings(config.patch_steps, config.heads, config.branch, config.kv)
    measured = probe(
        pipe, pairs[0], candidates, settings, config.seed, max(generation.rows for generation in ledger.generations),
        generate_kwargs, ocr, scene_judge,
    )
    return Estimate(
        stages=_stage_costs(ledger, measured),
        assumed_selected=[layer.name for layer in chosen],
        probe=measured,
        cache_bytes=_cache_bytes(candidates, measured.text_tokens, pipe),
    )


def _stage_costs(ledger: Ledger, measured: Probe) -> list[StageCost]:
    by_stage: dict[str, list[Generation]] = {}
    for generation in ledger.generations:
        by_stage.setdefault(generation.stage, []).append(generation)
    return [
        StageCost(
            stage, len(generations), sum(g.rows for g in generations), sum(_calls(g, measured) for g in generations),
            sum(_backward_passes(g, measured) for g in generations), ledger.pairs_scored.get(stage, 0),
            ledger.images_scored.get(stage, 0), ledger.images_read.get(stage, 0),
            sum(_seconds(g, measured) for g in generations) + ledger.images_read.get(stage, 0) * measured.read_seconds,
        )
        for stage, generations in by_stage.items()
    ]


def _calls(generation: Generation, measured: Probe) -> int:
    """Denoiser calls of a generation: every step's, or those before the step it stops at."""
    return sum(measured.calls_per_step[: generation.stop_at_step])


def _backward_passes(generation: Generation, measured: Probe) -> int:
    """One per call, at a gradient step, that holds the branch the screen differentiates."""
    return sum(measured.branch_calls_per_step[step] for step in generation.grad_steps)


def _seconds(generation: Generation, measured: Probe) -> float:
    per_call = measured.seconds_per_call(generation.rows)
    seconds = per_call * (_calls(generation, measured) + BACKWARD_CALLS * _backward_passes(generation, measured))
    if generation.replays:  # every replayed layer called once more: at most one more pass per gradient step
        seconds += per_call * len(generation.grad_steps)
    if generation.stop_at_step is None:  # a stopped screen neither decodes nor is read
        seconds += measured.fixed_seconds_per_row * generation.rows
    return seconds


def _cache_bytes(candidates: list[AttentionLayer], text_tokens: int | None, pipe: Any) -> dict[str, int]:
    """Bytes a TextCache of the candidates' text K/V would hold for one prompt (the pooled vector,
    one vector a row, left out): per step and branch for layers that rewrite the text each step,
    once per branch for the rest."""
    size = getattr(getattr(pipe, "dtype", None), "itemsize", 4)
    tokens = text_tokens or 0
    layers = [layer for layer in candidates if layer.kind != "pooled"]
    return {
        "per_step_and_branch": sum(layer.text_kv_width * tokens * size for layer in layers if layer.kind not in STEP_INDEPENDENT_KINDS),
        "once_per_branch": sum(layer.text_kv_width * tokens * size for layer in layers if layer.kind in STEP_INDEPENDENT_KINDS),
    }


class _Unread:
    """The dry run's OCR: never asked, since no image is scored."""

    def read(self, images: Any) -> list[str]:
        raise AssertionError("a dry run reads no image")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _size(num_bytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} B"
