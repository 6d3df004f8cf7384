"""The stages of a localization (screens, exact sweeps, selection, held-out scoring, heads, seed
sweeps), each logged pair by pair so that an interrupted run resumes, and shared out over launched
processes."""

from __future__ import annotations

import functools
import inspect
import itertools
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from textloc.distributed import Shards
from textloc.engine import AttentionLayer, StepWindow, window_steps
from textloc.localization import stats
from textloc.localization.attribution import attribution_scores, key_exact_scores, path_points
from textloc.localization.directions import Direction
from textloc.localization.report import ProgressLog
from textloc.localization.results import (
    Baselines, HeadScores, Heads, HeldOut, ImageScores, Means, Outcome, PairScores, SeedPair, SeedStability, SetScores,
)
from textloc.localization.scoring import score_images
from textloc.localization.selection import rank_layers, reaches, share_or_lowest
from textloc.localization.sweep import PatchSettings, Unit, generate_patched
from textloc.scoring.ocr import OCR
from textloc.scoring.prompts import PromptPair, SceneJudge

# Held-out pairs shown in the example grid (source | patched | target).
EXAMPLES = 6
# A screen's scores for one pair: (pipe, pair, layers, settings, seed, gradient step indices, generate_kwargs) -> one per layer.
Scorer = Callable[[Any, PromptPair, Sequence[AttentionLayer], PatchSettings, int, Sequence[int], dict[str, Any]], list[float]]


def screen_scorer(screen: str, points: int) -> tuple[str, Scorer]:
    """A screen's log stage and its scoring function; ``points`` are the integrated screen's."""
    if screen == "key-exact":
        return "key-exact attribution", key_exact_scores
    strengths = (0.0,) if screen == "gradient" else path_points(points)
    # The plain gradient keeps the stage name it always had, so its logs still resume.
    stage = "attribution" if screen == "gradient" else f"attribution at strengths {', '.join(f'{a:g}' for a in strengths)}"
    return stage, functools.partial(attribution_scores, points=strengths)


def exact_effects(sweep: Sequence[PairScores]) -> np.ndarray:
    """Each pair's exact effect of each layer, ``[pairs, layers]``: how much closer its patch
    brought the image to that of the prompt whose text was patched in (unpatched ``mse_to_target``
    minus patched), the continuous quantity behind a ranking."""
    return np.array([[done.source.mse_to_target - row.mse_to_target for row in done.patched] for done in sweep])


def gradient_step_indices(grad_steps: Sequence[float], num_steps: int, patch_steps: StepWindow) -> list[int]:
    """The step indices where a screen takes its gradients: each fraction of the schedule names a
    step by the same rule as a patch window's bound, and only steps inside the patch window count,
    because the screen estimates the exact patch, which acts nowhere else."""
    indices = sorted({min(num_steps - 1, int(fraction * num_steps)) for fraction in grad_steps})
    window = window_steps(patch_steps, num_steps)
    indices = [index for index in indices if index in window]
    if not indices:
        raise ValueError(
            f"grad_steps {list(grad_steps)} fall outside the patch window {patch_steps} of {num_steps} steps; "
            "choose gradient steps inside the window."
        )
    return indices


class Stages:
    """One localization's shared state: the pipeline, the scorer, the log, the timings.

    A stage's timing is the compute it took, also when a resumed run takes part of it from the
    log: every logged unit keeps its own seconds, and reusing it counts them again, so the
    attribution/sweep time ratio means the same whether or not the run was interrupted. Units
    that other processes of a launched run computed are counted the same way.
    """

    def __init__(self, pipe, ocr: OCR, judge: SceneJudge | None, settings: PatchSettings, seed: int, max_batch: int, generate_kwargs: dict, progress: bool, log: ProgressLog, shards: Shards):
        self.pipe, self.ocr, self.judge, self.settings = pipe, ocr, judge, settings
        self.seed, self.max_batch, self.generate_kwargs = seed, max_batch, generate_kwargs
        self.progress = progress and shards.is_main
        self.log, self.shards = log, shards
        self.timings: dict[str, float] = {}
        self.reused_seconds = 0.0

    @contextmanager
    def timed(self, name: str):
        start, reused = time.perf_counter(), self.reused_seconds
        yield
        spent = time.perf_counter() - start + self.reused_seconds - reused
        self.timings[name] = self.timings.get(name, 0.0) + spent

    def _map(
        self,
        stage: str,
        pairs: Sequence[PromptPair],
        compute: Callable[[int, PromptPair], dict],
        valid: Callable[[dict], bool] = lambda done: True,
        logged: Callable[[int], bool] = lambda index: True,
        desc: str | None = None,
    ) -> list[dict]:
        """Each pair's result of ``stage``: logged earlier and ``valid``, else ``compute``d, timed and
        (where ``logged``) logged. This process does the pairs it owns; every process gets all results."""
        mine = {}
        owned = self.shards.owned(list(enumerate(pairs)))
        for index, pair in tqdm(owned, desc=desc or stage, disable=not self.progress, leave=False):
            done = self.log.get(stage, index) if logged(index) else None
            if done is not None and valid(done):
                self.reused_seconds += done["seconds"]
            else:
                start = time.perf_counter()
                done = {**compute(index, pair), "seconds": time.perf_counter() - start}
                if logged(index):
                    self.log.put(stage, index, done)
            mine[index] = done
        everyone = self.shards.merge(mine)
        self.reused_seconds += sum(done["seconds"] for index, done in everyone.items() if index not in mine)
        return [everyone[index] for index in range(len(pairs))]

    def _generate_and_score(self, pair: PromptPair, layer_sets: Sequence[Sequence[str]], seed: int) -> tuple[ImageScores, ImageScores, list[ImageScores], Any]:
        images = generate_patched(self.pipe, pair, layer_sets, self.settings, seed, self.max_batch, self.generate_kwargs)
        rows = score_images([images.source, images.target, *images.patched], pair, images.source, images.target, self.ocr, self.judge)
        return rows[0], rows[1], rows[2:], images

    def _patch_sets(
        self, stage: str, pairs: Sequence[PromptPair], layer_sets: Sequence[Sequence[str]], examples: int = 0, desc: str | None = None, seed: int | None = None,
    ) -> list[PairScores]:
        """Every pair's scores with each layer set patched, from the noise of ``seed`` (default the
        run's). The first ``examples`` pairs also keep their images (for the example grid); the log
        does not keep images, so those are never logged."""
        # The sets of a selection stage follow the ranking, so a log written by another version
        # can hold other sets under the same stage: only the same sets are reused.
        layer_sets = [list(layers) for layers in layer_sets]

        def compute(index: int, pair: PromptPair) -> dict:
            source, target, patched, images = self._generate_and_score(pair, layer_sets, self.seed if seed is None else seed)
            done = PairScores(layer_sets, source, target, patched).to_json()
            return {**done, "images": images} if index < examples else done

        results = self._map(stage, pairs, compute, valid=lambda done: done["layer_sets"] == layer_sets, logged=lambda index: index >= examples, desc=desc)
        return [PairScores.from_json(done) for done in results]

    def attribution(self, pairs: Sequence[PromptPair], layers: list[AttentionLayer], grad_steps: Sequence[float], stage: str, score: Scorer) -> np.ndarray:
        """Each pair's screen scores, ``[pairs, layers]``, by ``score``, logged under ``stage``."""
        if not grad_steps:
            raise ValueError("Attribution needs at least one gradient step (grad_steps).")
        indices = gradient_step_indices(grad_steps, self._num_steps(), self.settings.patch_steps)
        results = self._map(stage, pairs, lambda index, pair: {
            "scores": score(self.pipe, pair, layers, self.settings, self.seed, indices, self.generate_kwargs)}, desc=stage)
        return np.array([done["scores"] for done in results], dtype=float)

    def _num_steps(self) -> int:
        steps = self.generate_kwargs.get("num_inference_steps")
        if steps is None:
            steps = inspect.signature(self.pipe.__call__).parameters["num_inference_steps"].default
        return int(steps)

    def sweep(
        self, pairs: Sequence[PromptPair], layers: list[AttentionLayer], way: Direction, seed: int | None = None
    ) -> tuple[dict[str, Means], Baselines, list[PairScores]]:
        """Every layer patched alone in direction ``way``: per layer its means, the baselines, and
        each pair's results; from another noise ``seed`` than the run's under its own stage."""
        at = "" if seed is None else f" at seed {seed}"
        means, baselines, results = self._evaluate_sets(
            way.stage(f"sweep{at}"), pairs, [[layer.name] for layer in layers], way, desc=f"{way.stage('exact sweep')}{at} ({len(layers)} layers)", seed=seed,
        )
        return {layer.name: m for layer, m in zip(layers, means)}, baselines, results

    def seed_stability(
        self, pairs: Sequence[PromptPair], layers: list[AttentionLayer], way: Direction, sweep: Sequence[PairScores], seeds: Sequence[int],
        selected: int, attribution: dict[str, float] | None,
    ) -> SeedStability:
        """The exact sweep (of the swept ``layers``, in the choosing direction ``way``) repeated at
        each of ``seeds``, against the run's own (``sweep``): each seed's ranking (by the run's rule,
        ``attribution`` breaking ties), and per pair of seeds the Spearman correlation of the
        layers' mean exact effects (over the layers distinguishable from zero at some seed; ``None``
        with fewer than two) and whether their top k layers are the same, k being the selected
        set's size within the swept layers (``None`` when nothing was selected)."""
        names = [layer.name for layer in layers]
        k = min(selected, len(layers))
        rankings, effects = {}, {}
        for seed, results in [(self.seed, sweep), *((other, self.sweep(pairs, layers, way, seed=other)[2]) for other in seeds)]:
            means = {name: way.means([done.patched[i] for done in results], self.seed) for i, name in enumerate(names)}
            rankings[seed] = [layer.name for layer in rank_layers(layers, means, attribution, way)]
            effects[seed] = exact_effects(results)
        keep = [i for i in range(len(names)) if any(stats.excludes_zero(effect[:, i], self.seed) for effect in effects.values())]
        pairwise = []
        for a, b in itertools.combinations(rankings, 2):
            rho = stats.spearman(effects[a].mean(axis=0)[keep], effects[b].mean(axis=0)[keep]) if len(keep) >= 2 else None
            same = set(rankings[a][:k]) == set(rankings[b][:k]) if k else None
            pairwise.append(SeedPair([a, b], rho, same))
        correlations = [entry.spearman for entry in pairwise if entry.spearman is not None]
        return SeedStability(
            direction=way.name, seeds=list(rankings), rankings={str(seed): ranked for seed, ranked in rankings.items()},
            distinguishable=[names[i] for i in keep], k=k, pairwise=pairwise,
            spearman=float(np.mean(correlations)) if correlations else None,
            spearman_range=[float(min(correlations)), float(max(correlations))] if correlations else None,
            same_top_k=sum(entry.same_top_k for entry in pairwise) / len(pairwise) if k else None,
        )

    def _evaluate_sets(
        self, stage: str, pairs: Sequence[PromptPair], layer_sets: list[list[str]], way: Direction, desc: str | None = None, seed: int | None = None
    ) -> tuple[list[Means], Baselines, list[PairScores]]:
        results = self._patch_sets(stage, way.pairs(pairs), layer_sets, desc=desc, seed=seed)
        means = [way.means([done.patched[i] for done in results], self.seed) for i in range(len(layer_sets))]
        return means, way.baselines(results, self.seed), results

    def _scored_sets(self, stage: str, pairs, layer_sets: list[list[str]], way: Direction) -> tuple[list[SetScores], Baselines]:
        """Each layer set with its means and its share of the directly prompted rate (with interval)."""
        means, baselines, results = self._evaluate_sets(stage, pairs, layer_sets, way)
        entries = [
            SetScores(layers, m, stats.share_interval(*way.outcomes(results, k), seed=self.seed))
            for k, (layers, m) in enumerate(zip(layer_sets, means))
        ]
        return entries, baselines

    def select(self, pairs, names: list[str], selection: str, threshold: float, rule: str, way: Direction, prefix: str = ""):
        """The sets tried (in rank order of ``names``, or greedily), the chosen one, whether it
        reached the threshold, and the baselines. ``prefix`` names the stages of another unit's selection."""
        if selection == "cumulative":
            sets, baselines = self._scored_sets(way.stage(f"{prefix}cumulative sets"), pairs, [names[: k + 1] for k in range(len(names))], way)
        else:
            sets, baselines = self._greedy(pairs, names, threshold, rule, way, prefix)
        for entry in sets:
            if reaches(entry.share_of_direct, threshold, rule):
                return sets, entry.layers, True, baselines
        best = max(sets, key=lambda entry: (share_or_lowest(entry.share_of_direct.value), -len(entry.layers)), default=None)
        return sets, [] if best is None else best.layers, False, baselines

    def _greedy(self, pairs, names: list[str], threshold: float, rule: str, way: Direction, prefix: str = ""):
        chosen: list[str] = []
        sets, baselines = [], None
        while len(chosen) < len(names):
            remaining = [name for name in names if name not in chosen]
            trials, baselines = self._scored_sets(way.stage(f"{prefix}greedy set of {len(chosen) + 1}"), pairs, [chosen + [name] for name in remaining], way)
            best = max(trials, key=lambda entry: way.merit(entry.means))
            chosen = best.layers
            sets.append(best)
            if reaches(best.share_of_direct, threshold, rule):
                break
        return sets, baselines

    def evaluate(self, pairs: Sequence[PromptPair], chosen: list[str], directions: Sequence[Direction], prefix: str = "") -> tuple[HeldOut, list[dict]]:
        """The chosen set on ``pairs`` in every measured direction, and the example grid's images."""
        outcomes: dict[str, Outcome] = {}
        examples: list[dict] = []
        for way in directions:
            results = self._patch_sets(
                way.stage(f"{prefix}held out"), way.pairs(pairs), [chosen], examples=EXAMPLES, desc=way.stage(f"{prefix}held-out pairs")
            )
            floors = way.baselines(results, self.seed)
            # Unpatched: the prompt generated, as it is; direct: the prompt whose text is patched in.
            unpatched, direct = ("source", "target") if way.sufficiency else ("target", "source")
            outcomes[way.name] = Outcome(
                way.means([done.patched[0] for done in results], self.seed), getattr(floors, direct), getattr(floors, unpatched),
                stats.share_interval(*way.outcomes(results, 0), seed=self.seed),
            )
            if not examples:
                examples = [
                    {
                        "source": done.images.source, "patched": done.images.patched[0], "target": done.images.target,
                        "source_read": done.source.read, "patched_read": done.patched[0].read, "target_read": done.target.read,
                    }
                    for done in results if done.images is not None
                ]
        return HeldOut(chosen, outcomes.get("sufficiency"), outcomes.get("necessity")), examples


    def heads(self, pairs, held, layers: list[AttentionLayer], selection: str, threshold: float, rule: str, way: Direction) -> Heads:
        """Every head of ``layers`` patched alone, ranked, the smallest head set that carries the
        word (by the layers' selection and rule), and that set on the held-out pairs."""
        # The pooled vector has no heads: it stays one unit among them.
        units = [
            unit.name for layer in layers
            for unit in ([Unit(layer.name)] if layer.kind == "pooled" else [Unit(layer.name, head) for head in range(layer.num_heads)])
        ]
        means, _, _ = self._evaluate_sets(way.stage("head sweep"), pairs, [[unit] for unit in units], way, desc=f"head sweep ({len(units)} heads)")
        by_unit = dict(zip(units, means))
        ranked = sorted(units, key=lambda unit: tuple(-value for value in way.merit(by_unit[unit])))  # stable: ties keep layer order
        sets, chosen, reached, _ = self.select(pairs, ranked, selection, threshold, rule, way, prefix="head ")
        held_result = self.evaluate(held, chosen, [way], prefix="head ")[0] if chosen else None
        rows = [HeadScores(name, unit.layer, unit.head, ranked.index(name) + 1, by_unit[name]) for name, unit in zip(units, map(Unit.parse, units))]
        return Heads(rows, sets, chosen, reached, held_result)
