"""``localize``: which attention layers render the text of a model's images."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from textloc.engine import AttentionLayer, LayerSelector, StepWindow, denoiser_parameter_count, select_layers, window_steps
from textloc.localization import stats
from textloc.localization.attribution import attribution_scores, key_exact_scores, path_points
from textloc.localization.config import SCREENS, LocalizeConfig
from textloc.scoring.prompts import PromptPair
from textloc.localization.report import Localization, ProgressLog
from textloc.localization.scoring import mean_metrics, score_images
from textloc.scoring.prompts import SceneJudge
from textloc.distributed import Shards
from textloc.localization.sweep import PatchSettings, generate_patched, head_unit, split_unit
from textloc.scoring.ocr import OCR, get_ocr
from textloc.fingerprint import weights_fingerprint

# A screen's scores for one pair: (pipe, pair, layers, settings, seed, gradient step indices, generate_kwargs) -> one per layer.
Scorer = Callable[[Any, PromptPair, Sequence[AttentionLayer], PatchSettings, int, Sequence[int], dict[str, Any]], list[float]]

# Arguments localize sets itself on every generation.
_RESERVED = ("prompt", "generator", "output_type", "num_images_per_prompt")
# Held-out pairs shown in the example grid (source | patched | target).
EXAMPLES = 6


def localize(
    pipe: Any,
    pairs: Sequence[PromptPair],
    layers: LayerSelector = "all",
    config: LocalizeConfig | None = None,
    *,
    ocr: str | OCR = "rapidocr",
    scene_judge: SceneJudge | None = None,
    out: str | None = None,
    model_name: str | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> Localization:
    """Find the smallest set of attention layers whose patch makes the model render the target text.

    How is a :class:`LocalizeConfig`, whose fields may also be given as keywords (they override
    ``config``'s); every other keyword goes to the pipeline (steps, guidance, size).

    For each prompt pair (source and target differ only in the quoted text), the source prompt is
    generated while candidate layers receive the target prompt's text signal, from the same noise;
    the OCR tells whether the image now shows the target text and the pixels whether the scene
    stayed the source's. That is sufficiency: which layers suffice to write the text.
    ``direction="necessity"`` asks the other question: the *target* prompt is generated while
    candidate layers receive the *source's* text signal, and the score is how often the target
    word survives (a layer the text needs removes it); ``"both"`` measures both, ranking and
    selecting by sufficiency. ``method``:

    - ``"activation"``: the exact sweep, every layer patched alone (batched: one generation holds
      many layers), ranked by how often the target text appears (or, for necessity alone, vanishes);
    - ``"attribution"``: the fast screen alone, every layer ranked at once by ``screen``
      (``"integrated"``: gradients averaged over ``screen_points`` strengths along the path from
      no patch to a full one; ``"gradient"``: plain attribution patching, the gradient at no patch;
      ``"key-exact"``: each layer's patched attention output computed exactly, what follows it linearized);
    - ``"screen+exact"``: the screen, then the exact sweep on its ``top_k`` layers;
    - ``"both"``: every screen and the full sweep, each screen's agreement with the sweep and
      time beside it (``Localization.agreement``).

    Then layers are added in rank order (``selection="cumulative"``) or best-first
    (``"greedy"``) until the set's target rate reaches ``threshold`` times the rate of the target
    prompt generated directly (for necessity: until it removes that share of the target's words):
    with ``rule="lower-bound"`` the lower end of the share's bootstrap interval over pairs must
    reach it, with ``"point"`` the share itself. Every rate carries its interval (``"ci"``). The
    last ``held_out`` fraction of the pairs is kept out of all choices and scores the chosen set.
    ``patch_steps``/``heads``/``branch``/``kv`` restrict the patch as in :func:`textloc.patch`
    (``kv="k"``: the text's keys only, where the image attends; ``"v"``: its values, what it
    reads); ``grad_steps`` are the fractions of the schedule where the screens take their
    gradients. ``unit="head"`` goes on from the selected layers to their heads: each head patched
    alone (batched like the layer sweep), then the smallest head set that carries the word, by the
    same rule, scored on the held-out pairs (``Localization.heads``). ``seed`` is the noise every
    generation starts from; ``stability_seeds`` are more noise seeds at which the exact sweep is
    repeated on the choice pairs, to say how far the ranking holds from one seed to another
    (``Localization.seed_stability``); they change nothing else. With ``out``, finished work is
    logged there pair by pair and a rerun with the same settings resumes; the report files are
    written at the end.

    Under ``accelerate launch`` (or ``torchrun``) the pairs are shared out among the processes,
    each with the pipeline on its own device; every process returns the same result and the main
    one writes the files.
    """
    if config is not None and not isinstance(config, LocalizeConfig):
        raise TypeError(f"config is a LocalizeConfig, not {type(config).__name__}: give the method as method={config!r}.")
    overrides, generate_kwargs = LocalizeConfig.split(kwargs)
    config = dataclasses.replace(config or LocalizeConfig(), **overrides)  # checked as it is made
    pairs = _check_pairs(pairs)
    reserved = sorted(set(generate_kwargs) & set(_RESERVED))
    if reserved:
        raise ValueError(f"localize sets {', '.join(reserved)} itself; leave them out.")
    candidates = select_layers(pipe, layers)
    reader = get_ocr(ocr)
    method, direction, screen, unit, seed = config.method, config.direction, config.screen, config.unit, config.seed
    selection, threshold, rule = config.selection, config.threshold, config.rule
    settings = PatchSettings(config.patch_steps, config.heads, config.branch, config.kv)
    n_held = _held_out_count(config.held_out, len(pairs))
    choose_on, held = pairs[: len(pairs) - n_held], pairs[len(pairs) - n_held :]
    model = model_name or getattr(pipe, "name_or_path", None) or type(pipe).__name__
    checked = config.checked()
    recorded = {
        "model": model, "pairs": [(p.source, p.target) for p in pairs], "layers": [layer.name for layer in candidates],
        **checked, "generate_kwargs": {key: repr(value) for key, value in sorted(generate_kwargs.items())},
        # Not choices of the method, but a resumed run must not mix their results either.
        "ocr": ocr if isinstance(ocr, str) else type(ocr).__name__,
        "scene_judge": None if scene_judge is None else getattr(scene_judge, "__qualname__", type(scene_judge).__name__),
        "dtype": str(getattr(pipe, "dtype", None)),
        "weights": weights_fingerprint(pipe),
    }
    unchecked_on_resume = config.unchecked()
    shards = Shards()
    log = ProgressLog(out, recorded, shards.index, unchecked=unchecked_on_resume)
    run = _Run(pipe, reader, scene_judge, settings, seed, config.max_batch, generate_kwargs, progress, log, shards)

    screens: dict[str, np.ndarray] = {}  # per screen, its [pairs, layers] scores
    if method != "activation":
        for name in SCREENS if method == "both" else (screen,):
            with run.timed(f"{name} screen"):
                screens[name] = run.attribution(choose_on, candidates, config.grad_steps, *_screen(name, config.screen_points))
    attribution = None if screen not in screens else dict(zip((layer.name for layer in candidates), map(float, screens[screen].mean(axis=0))))
    swept = candidates
    if method == "screen+exact":
        k = config.top_k or max(4, len(candidates) // 4)
        swept = sorted(candidates, key=lambda layer: -attribution[layer.name])[:k]
    directions = [_SUFFICIENCY, _NECESSITY] if direction == "both" else [_NECESSITY if direction == "necessity" else _SUFFICIENCY]
    chooser = directions[0]  # sufficiency whenever it is measured
    exact: dict[str, dict[str, dict]] = {}  # per direction, per layer, its means
    baselines, sweeps = None, {}
    if method != "attribution":
        for way in directions:
            with run.timed(way.stage("sweep")):
                exact[way.name], way_baselines, sweeps[way.name] = run.sweep(choose_on, swept, way)
            baselines = baselines or way_baselines

    ranked = [layer.name for layer in _rank(candidates, exact.get(chooser.name, {}), attribution, chooser)]
    with run.timed("selection"):
        sets, chosen, reached, set_baselines = run.select(choose_on, ranked, selection, threshold, rule, chooser)
    baselines = baselines or set_baselines
    held_result, examples = None, []
    if chosen:
        with run.timed("held_out"):
            held_result, examples = run.evaluate(held or choose_on, chosen, directions)
    seed_stability = None
    if config.stability_seeds:
        with run.timed("seed sweeps"):
            seed_stability = run.seed_stability(choose_on, swept, chooser, sweeps[chooser.name], list(config.stability_seeds), len(chosen), attribution)
    head_result = None
    if unit == "head" and chosen:
        with run.timed("heads"):
            head_result = run.heads(choose_on, held or choose_on, [layer for layer in candidates if layer.name in chosen], selection, threshold, rule, chooser)

    total = denoiser_parameter_count(pipe)
    rank_of = {name: position + 1 for position, name in enumerate(ranked)}
    layer_rows = [
        {
            "name": layer.name, "kind": layer.kind, "index": layer.index, "num_text_kv_params": layer.num_text_kv_params,
            "param_share": layer.num_text_kv_params / total, "rank": rank_of[layer.name],
            "exact": exact.get("sufficiency", {}).get(layer.name), "necessity": exact.get("necessity", {}).get(layer.name),
            "attribution": None if attribution is None else attribution[layer.name],
        }
        for layer in candidates
    ]
    agreement = None
    if method == "both" and "sufficiency" in sweeps:
        agreement = _agreement(sweeps["sufficiency"], screens, [layer.name for layer in candidates], chosen, run.timings, seed)
    result = Localization(
        model=model,
        settings={
            **{k: v for k, v in recorded.items() if k != "pairs"}, **unchecked_on_resume, "held_out_pairs": len(held), "choice_pairs": len(choose_on),
        },
        layers=layer_rows, baselines=baselines, sets=sets, selected=chosen, reached=reached,
        held_out=held_result, agreement=agreement, heads=head_result, seed_stability=seed_stability, timings=run.timings,
    )
    if out is not None and shards.is_main:
        result.save(out, examples)
    return result


def _screen(screen: str, points: int) -> tuple[str, Scorer]:
    """A screen's log stage and its scoring function; ``points`` are the integrated screen's."""
    if screen == "key-exact":
        return "key-exact attribution", key_exact_scores
    strengths = (0.0,) if screen == "gradient" else path_points(points)
    # The plain gradient keeps the stage name it always had, so its logs still resume.
    stage = "attribution" if screen == "gradient" else f"attribution at strengths {', '.join(f'{a:g}' for a in strengths)}"
    return stage, functools.partial(attribution_scores, points=strengths)


def _held_out_count(share: float, num_pairs: int) -> int:
    """How many pairs to hold out: ``share`` of them, rounded half up, but at least one when
    ``share`` asks for any and at least one left to choose on."""
    if share == 0 or num_pairs < 2:
        return 0
    return min(num_pairs - 1, max(1, int(share * num_pairs + 0.5)))


def _check_pairs(pairs: Sequence[PromptPair]) -> list[PromptPair]:
    pairs = list(pairs)
    if not pairs:
        raise ValueError("No prompt pairs: localization needs at least one source/target pair.")
    for pair in pairs:
        if not isinstance(pair, PromptPair):
            raise TypeError(f"Pairs are PromptPair objects (see textloc.localization.make_pairs), not {type(pair).__name__}.")
    return pairs


def _merit(means: dict[str, float]) -> tuple[float, ...]:
    """How well a patch renders the target, larger is better: the target's hit rate, then its
    word F1, then how much closer by edit distance the reading came to the target than to the
    source, then how close the image came to the target prompt's. The edit distances still order
    layers when a model rarely writes a word exactly; their difference, not the target's alone,
    because a layer that only garbles the source's word moves the reading away from both, and a
    layer without effect must not rank above it. The pixels break the ties left among layers the
    OCR sees no effect from: a layer that moves the image toward the target's ranks above one that
    does nothing."""
    return (means["target_hit"], means["target_f1"], means["source_ned"] - means["target_ned"], -means["mse_to_target"])


def _necessity_merit(means: dict[str, float]) -> tuple[float, ...]:
    """How much a necessity patch takes the target's text away, larger is better: how rarely the
    target word survives, then its word F1, then how far the reading moved from it by edit
    distance, then how far the image moved from the target prompt's own."""
    return (-means["target_hit"], -means["target_f1"], means["target_ned"], means["mse"])


def _swap_roles(means: dict[str, Any]) -> dict[str, Any]:
    """Scores of a swapped pair (see :meth:`PromptPair.swapped`) named after the original pair:
    ``target_*`` is again about the target's text. Pixel scores keep their sense: ``mse``/``ssim``
    against the unpatched image of the prompt generated (the target's), and ``mse_to_source``
    against the image of the prompt whose text was patched in."""
    def name(key: str) -> str:
        for a, b in (("target_", "source_"), ("source_", "target_")):
            if key.startswith(a):
                return b + key[len(a):]
        return key

    swapped = {("mse_to_source" if key == "mse_to_target" else name(key)): value for key, value in means.items() if key != "ci"}
    swapped["ci"] = {name(key): value for key, value in means.get("ci", {}).items()}
    return swapped


@dataclass(frozen=True)
class _Direction:
    """Sufficiency (the source generated with the target's text at the patched layers: does the
    target word appear?) or necessity (the target generated with the source's text: does the
    target word survive?). Necessity is sufficiency's machinery run on the swapped pairs."""

    name: str

    @property
    def sufficiency(self) -> bool:
        return self.name == "sufficiency"

    def pairs(self, pairs: Sequence[PromptPair]) -> list[PromptPair]:
        return list(pairs) if self.sufficiency else [pair.swapped() for pair in pairs]

    def stage(self, stage: str) -> str:
        return stage if self.sufficiency else f"necessity {stage}"

    def means(self, rows: Sequence[dict], seed: int) -> dict[str, Any]:
        means = mean_metrics(rows, seed)
        return means if self.sufficiency else _swap_roles(means)

    def baselines(self, results: Sequence[dict], seed: int) -> dict[str, dict]:
        """The unpatched source's means (the floor) and the target prompted directly (the ceiling),
        whichever of the two a direction generated as its own prompt."""
        source, target = ("source", "target") if self.sufficiency else ("target", "source")
        return {"source": self.means([done[source] for done in results], seed), "target": self.means([done[target] for done in results], seed)}

    def outcomes(self, results: Sequence[dict], k: int) -> tuple[list[float], list[float]]:
        """Per pair, layer set ``k``'s success and the directly prompted reference it is a share of:
        the target word read vs read when prompted directly; or the target word removed vs read
        unpatched (a pair whose target never shows its word has nothing to remove)."""
        if self.sufficiency:
            return [done["patched"][k]["target_hit"] for done in results], [done["target"]["target_hit"] for done in results]
        present = [done["source"]["source_hit"] for done in results]
        return [there * (1 - done["patched"][k]["source_hit"]) for there, done in zip(present, results)], present

    def merit(self, means: dict[str, float]) -> tuple[float, ...]:
        return _merit(means) if self.sufficiency else _necessity_merit(means)


_SUFFICIENCY, _NECESSITY = _Direction("sufficiency"), _Direction("necessity")


def _rank(candidates: list[AttentionLayer], exact: dict[str, dict], attribution: dict[str, float] | None, way: _Direction = _SUFFICIENCY) -> list[AttentionLayer]:
    """Best first: the exact sweep's merit in the choosing direction, else the attribution score."""
    unswept = (-np.inf,) * 4

    def key(layer: AttentionLayer) -> tuple:
        means = exact.get(layer.name)
        merit = way.merit(means) if means else unswept
        return (*(-value for value in merit), -(attribution or {}).get(layer.name, 0.0), layer.index)

    return sorted(candidates, key=key)


def _agreement(
    sweep: Sequence[dict], screens: dict[str, np.ndarray], names: list[str], selected: Sequence[str], timings: dict[str, float], seed: int
) -> dict[str, Any]:
    """How well each screen stands in for the exact sweep, judged so that ties cannot flatter it.

    The exact effect of a layer on a pair is how much its patch brought the image closer to the
    target prompt's (``mse_to_target`` of the unpatched source minus the patched one's): the
    continuous quantity the screens estimate. Layers whose mean effect is not distinguishable from
    zero (its bootstrap interval holds 0) tie up to noise and are left out of the rank correlations,
    which need two layers that matter (then a correlation says whether they are in the same order):

    - ``spearman``: the screen's mean score against the mean exact effect, on all pairs;
    - ``split_half``: the screen on half the pairs against the exact effect on the other half,
      over random halvings (mean and 95% range); ``same_half``: against the same half;
    - ``exact_split_half`` (beside the screens): the exact sweep against itself the same way, the
      ceiling a screen scored by ``split_half`` can reach;
    - ``top_k_recall``: the share of the exact top ``k`` (k: the selected set's size) in the screen's
      top ``k``, over every layer; ``screen_top_k``: the smallest ``top_k`` with which
      ``"screen+exact"`` sweeps every selected layer; ``time_ratio``: the sweep's time over the screen's.
    """
    effect = exact_effects(sweep)
    keep = [i for i in range(len(names)) if stats.excludes_zero(effect[:, i], seed)]
    ranked = len(keep) >= 2
    result: dict[str, Any] = {
        "distinguishable": [names[i] for i in keep],
        "layers": len(names),
        "exact_split_half": stats.split_half(effect[:, keep], effect[:, keep], seed) if ranked else None,
        "screens": {},
    }
    for name, scores in screens.items():
        by_screen = [names[i] for i in np.argsort(-scores.mean(axis=0), kind="stable")]
        result["screens"][name] = {
            "spearman": stats.spearman(scores.mean(axis=0)[keep], effect.mean(axis=0)[keep]) if ranked else None,
            "split_half": stats.split_half(scores[:, keep], effect[:, keep], seed) if ranked else None,
            "same_half": stats.split_half(scores[:, keep], effect[:, keep], seed, across=False) if ranked else None,
            "top_k_recall": stats.top_k_recall(scores.mean(axis=0), effect.mean(axis=0), len(selected)),
            "screen_top_k": max((by_screen.index(layer) + 1 for layer in selected), default=None),
            "time_ratio": timings["sweep"] / timings[f"{name} screen"],
        }
    return result


def exact_effects(sweep: Sequence[dict]) -> np.ndarray:
    """Each pair's exact effect of each layer, ``[pairs, layers]``: how much closer its patch
    brought the image to that of the prompt whose text was patched in (unpatched ``mse_to_target``
    minus patched), the continuous quantity behind a ranking."""
    return np.array([[done["source"]["mse_to_target"] - row["mse_to_target"] for row in done["patched"]] for done in sweep])


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


class _Run:
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

    def _generate_and_score(self, pair: PromptPair, layer_sets: Sequence[Sequence[str]], seed: int) -> tuple[dict, dict, list[dict], Any]:
        images = generate_patched(self.pipe, pair, layer_sets, self.settings, seed, self.max_batch, self.generate_kwargs)
        rows = score_images([images.source, images.target, *images.patched], pair, images.source, images.target, self.ocr, self.judge)
        return rows[0], rows[1], rows[2:], images

    def _patch_sets(
        self, stage: str, pairs: Sequence[PromptPair], layer_sets: Sequence[Sequence[str]], examples: int = 0, desc: str | None = None, seed: int | None = None,
    ) -> list[dict]:
        """Every pair's scores with each layer set patched, from the noise of ``seed`` (default the
        run's). The first ``examples`` pairs also keep their images (for the example grid); the log
        does not keep images, so those are never logged."""
        # The sets of a selection stage follow the ranking, so a log written by another version
        # can hold other sets under the same stage: only the same sets are reused.
        layer_sets = [list(layers) for layers in layer_sets]

        def compute(index: int, pair: PromptPair) -> dict:
            source, target, patched, images = self._generate_and_score(pair, layer_sets, self.seed if seed is None else seed)
            done = {"layer_sets": layer_sets, "source": source, "target": target, "patched": patched}
            if index < examples:
                done["images"] = images
            return done

        return self._map(stage, pairs, compute, valid=lambda done: done["layer_sets"] == layer_sets, logged=lambda index: index >= examples, desc=desc)

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
        self, pairs: Sequence[PromptPair], layers: list[AttentionLayer], way: _Direction, seed: int | None = None
    ) -> tuple[dict[str, dict], dict[str, dict], list[dict]]:
        """Every layer patched alone in direction ``way``: per layer its means, the baselines, and
        each pair's results; from another noise ``seed`` than the run's under its own stage."""
        at = "" if seed is None else f" at seed {seed}"
        means, baselines, results = self._evaluate_sets(
            way.stage(f"sweep{at}"), pairs, [[layer.name] for layer in layers], way, desc=f"{way.stage('exact sweep')}{at} ({len(layers)} layers)", seed=seed,
        )
        return {layer.name: m for layer, m in zip(layers, means)}, baselines, results

    def seed_stability(
        self, pairs: Sequence[PromptPair], layers: list[AttentionLayer], way: _Direction, sweep: Sequence[dict], seeds: Sequence[int],
        selected: int, attribution: dict[str, float] | None,
    ) -> dict[str, Any]:
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
            means = {name: way.means([done["patched"][i] for done in results], self.seed) for i, name in enumerate(names)}
            rankings[seed] = [layer.name for layer in _rank(layers, means, attribution, way)]
            effects[seed] = exact_effects(results)
        keep = [i for i in range(len(names)) if any(stats.excludes_zero(effect[:, i], self.seed) for effect in effects.values())]
        pairwise = []
        for a, b in itertools.combinations(rankings, 2):
            rho = stats.spearman(effects[a].mean(axis=0)[keep], effects[b].mean(axis=0)[keep]) if len(keep) >= 2 else None
            same = set(rankings[a][:k]) == set(rankings[b][:k]) if k else None
            pairwise.append({"seeds": [a, b], "spearman": rho, "same_top_k": same})
        correlations = [entry["spearman"] for entry in pairwise if entry["spearman"] is not None]
        return {
            "direction": way.name, "seeds": list(rankings), "rankings": {str(seed): ranked for seed, ranked in rankings.items()},
            "distinguishable": [names[i] for i in keep], "k": k, "pairwise": pairwise,
            "spearman": float(np.mean(correlations)) if correlations else None,
            "spearman_range": [float(min(correlations)), float(max(correlations))] if correlations else None,
            "same_top_k": sum(entry["same_top_k"] for entry in pairwise) / len(pairwise) if k else None,
        }

    def _evaluate_sets(
        self, stage: str, pairs: Sequence[PromptPair], layer_sets: list[list[str]], way: _Direction, desc: str | None = None, seed: int | None = None
    ) -> tuple[list[dict], dict, list[dict]]:
        results = self._patch_sets(stage, way.pairs(pairs), layer_sets, desc=desc, seed=seed)
        means = [way.means([done["patched"][i] for done in results], self.seed) for i in range(len(layer_sets))]
        return means, way.baselines(results, self.seed), results

    def _scored_sets(self, stage: str, pairs, layer_sets: list[list[str]], way: _Direction) -> tuple[list[dict], dict]:
        """Each layer set with its means and its share of the directly prompted rate (with interval)."""
        means, baselines, results = self._evaluate_sets(stage, pairs, layer_sets, way)
        entries = [
            {"layers": layers, "means": m, "share_of_direct": stats.share_interval(*way.outcomes(results, k), seed=self.seed)}
            for k, (layers, m) in enumerate(zip(layer_sets, means))
        ]
        return entries, baselines

    def select(self, pairs, names: list[str], selection: str, threshold: float, rule: str, way: _Direction, prefix: str = ""):
        """The sets tried (in rank order of ``names``, or greedily), the chosen one, whether it
        reached the threshold, and the baselines. ``prefix`` names the stages of another unit's selection."""
        if selection == "cumulative":
            sets, baselines = self._scored_sets(way.stage(f"{prefix}cumulative sets"), pairs, [names[: k + 1] for k in range(len(names))], way)
        else:
            sets, baselines = self._greedy(pairs, names, threshold, rule, way, prefix)
        for entry in sets:
            if _reaches(entry["share_of_direct"], threshold, rule):
                return sets, entry["layers"], True, baselines
        best = max(sets, key=lambda entry: (_or_lowest(entry["share_of_direct"][0]), -len(entry["layers"])), default=None)
        return sets, [] if best is None else best["layers"], False, baselines

    def _greedy(self, pairs, names: list[str], threshold: float, rule: str, way: _Direction, prefix: str = ""):
        chosen: list[str] = []
        sets, baselines = [], None
        while len(chosen) < len(names):
            remaining = [name for name in names if name not in chosen]
            trials, baselines = self._scored_sets(way.stage(f"{prefix}greedy set of {len(chosen) + 1}"), pairs, [chosen + [name] for name in remaining], way)
            best = max(trials, key=lambda entry: way.merit(entry["means"]))
            chosen = best["layers"]
            sets.append(best)
            if _reaches(best["share_of_direct"], threshold, rule):
                break
        return sets, baselines

    def evaluate(self, pairs: Sequence[PromptPair], chosen: list[str], directions: Sequence[_Direction], prefix: str = "") -> tuple[dict[str, Any], list[dict]]:
        """The chosen set on ``pairs`` in every measured direction, and the example grid's images."""
        result: dict[str, Any] = {"layers": chosen}
        examples: list[dict] = []
        for way in directions:
            results = self._patch_sets(
                way.stage(f"{prefix}held out"), way.pairs(pairs), [chosen], examples=EXAMPLES, desc=way.stage(f"{prefix}held-out pairs")
            )
            floors = way.baselines(results, self.seed)
            # Unpatched: the prompt generated, as it is; direct: the prompt whose text is patched in.
            unpatched, direct = ("source", "target") if way.sufficiency else ("target", "source")
            scores = {
                "patched": way.means([done["patched"][0] for done in results], self.seed), "direct": floors[direct],
                "unpatched": floors[unpatched], "share_of_direct": stats.share_interval(*way.outcomes(results, 0), seed=self.seed),
            }
            if way.sufficiency:
                result.update(scores)
            else:
                result["necessity"] = scores
            if not examples:
                examples = [
                    {
                        "source": done["images"].source, "patched": done["images"].patched[0], "target": done["images"].target,
                        "source_read": done["source"]["read"], "patched_read": done["patched"][0]["read"], "target_read": done["target"]["read"],
                    }
                    for done in results if "images" in done
                ]
        return result, examples


    def heads(self, pairs, held, layers: list[AttentionLayer], selection: str, threshold: float, rule: str, way: _Direction) -> dict[str, Any]:
        """Every head of ``layers`` patched alone, ranked, the smallest head set that carries the
        word (by the layers' selection and rule), and that set on the held-out pairs."""
        units = [head_unit(layer.name, head) for layer in layers for head in range(layer.num_heads)]
        means, _, _ = self._evaluate_sets(way.stage("head sweep"), pairs, [[unit] for unit in units], way, desc=f"head sweep ({len(units)} heads)")
        by_unit = dict(zip(units, means))
        ranked = sorted(units, key=lambda unit: tuple(-value for value in way.merit(by_unit[unit])))  # stable: ties keep layer order
        sets, chosen, reached, _ = self.select(pairs, ranked, selection, threshold, rule, way, prefix="head ")
        held_result = self.evaluate(held, chosen, [way], prefix="head ")[0] if chosen else None
        rows = [{"name": unit, "layer": split_unit(unit)[0], "head": split_unit(unit)[1], "rank": ranked.index(unit) + 1, "exact": by_unit[unit]} for unit in units]
        return {"units": rows, "sets": sets, "selected": chosen, "reached": reached, "held_out": held_result}


def _or_lowest(value: float | None) -> float:
    return -np.inf if value is None else value


def _reaches(share: Sequence[float | None], threshold: float, rule: str) -> bool:
    """Whether a set's share of the directly prompted rate (``[share, low, high]``) reaches
    ``threshold``: its interval's lower bound (``rule="lower-bound"``) or the share itself
    (``"point"``); never when there is no share (no directly prompted hit). Shares are ratios of
    counts over the same pairs, so the small tolerance keeps 8/10 >= 0.8 true in floating point."""
    value = share[1] if rule == "lower-bound" else share[0]
    return value is not None and value >= threshold - 1e-9
