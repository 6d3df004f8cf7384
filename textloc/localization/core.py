"""``localize``: which attention layers render the text of a model's images."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import scipy.stats
from tqdm.auto import tqdm

from textloc.attention import AttentionLayer, LayerSelector, denoiser_parameter_count, select_layers
from textloc.localization.attribution import attribution_scores
from textloc.localization.prompts import PromptPair
from textloc.localization.report import Localization, ProgressLog
from textloc.localization.scoring import SceneJudge, mean_metrics, score_images
from textloc.distributed import Shards
from textloc.localization.sweep import PatchSettings, check_max_batch, generate_patched
from textloc.ocr import OCR, get_ocr
from textloc.patching import BranchChoice, StepWindow, window_steps
from textloc.pipelines import weights_fingerprint

Method = Literal["activation", "attribution", "screen+exact", "both"]
Selection = Literal["cumulative", "greedy"]
METHODS: tuple[str, ...] = ("activation", "attribution", "screen+exact", "both")
SELECTIONS: tuple[str, ...] = ("cumulative", "greedy")
# Arguments localize sets itself on every generation.
_RESERVED = ("prompt", "generator", "output_type", "num_images_per_prompt")
# Held-out pairs shown in the example grid (source | patched | target).
EXAMPLES = 6


def localize(
    pipe: Any,
    pairs: Sequence[PromptPair],
    layers: LayerSelector = "all",
    method: Method = "activation",
    *,
    selection: Selection = "cumulative",
    threshold: float = 0.8,
    held_out: float = 0.25,
    top_k: int | None = None,
    grad_steps: Sequence[float] = (0.25,),
    patch_steps: StepWindow = None,
    heads: Sequence[int] | None = None,
    branch: BranchChoice = "cond",
    seed: int = 0,
    max_batch: int = 16,
    ocr: str | OCR = "rapidocr",
    scene_judge: SceneJudge | None = None,
    out: str | None = None,
    model_name: str | None = None,
    progress: bool = True,
    **generate_kwargs: Any,
) -> Localization:
    """Find the smallest set of attention layers whose patch makes the model render the target text.

    For each prompt pair (source and target differ only in the quoted text), the source prompt is
    generated while candidate layers receive the target prompt's text signal, from the same noise;
    the OCR tells whether the image now shows the target text and the pixels whether the scene
    stayed the source's. ``method``:

    - ``"activation"``: the exact sweep, every layer patched alone (batched: one generation holds
      many layers), ranked by how often the target text appears;
    - ``"attribution"``: the fast screen, every layer ranked at once by attribution patching;
    - ``"screen+exact"``: the screen, then the exact sweep on its ``top_k`` layers;
    - ``"both"``: screen and full sweep, reporting their rank agreement and time ratio.

    Then layers are added in rank order (``selection="cumulative"``) or best-first
    (``"greedy"``) until the target text is read at ``threshold`` times the rate of the target
    prompt generated directly. The last ``held_out`` fraction of the pairs is kept out of all
    choices and scores the chosen set. ``patch_steps``/``heads``/``branch`` restrict the patch as in
    :func:`textloc.patch`; ``grad_steps`` are the fractions of the schedule where attribution takes
    its gradients. With ``out``, finished work is logged there pair by pair and a rerun with the same
    settings resumes; the report files are written at the end. ``generate_kwargs`` go to the
    pipeline (steps, guidance, size).

    Under ``accelerate launch`` (or ``torchrun``) the pairs are shared out among the processes,
    each with the pipeline on its own device; every process returns the same result and the main
    one writes the files.
    """
    pairs = _check_pairs(pairs)
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if selection not in SELECTIONS:
        raise ValueError(f"Unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}.")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold is a share of the directly prompted rate, in (0, 1]; got {threshold}.")
    if not 0.0 <= held_out < 1.0:
        raise ValueError(f"held_out is the share of the pairs kept to score the chosen set, in [0, 1); got {held_out}.")
    if top_k is not None and method != "screen+exact":
        raise ValueError(f"top_k only applies to method='screen+exact' (got method={method!r}).")
    check_max_batch(max_batch)  # before the screen runs, not at the sweep's first generation
    reserved = sorted(set(generate_kwargs) & set(_RESERVED))
    if reserved:
        raise ValueError(f"localize sets {', '.join(reserved)} itself; leave them out.")
    candidates = select_layers(pipe, layers)
    reader = get_ocr(ocr)
    settings = PatchSettings(patch_steps, None if heads is None else tuple(heads), branch)
    n_held = _held_out_count(held_out, len(pairs))
    choose_on, held = pairs[: len(pairs) - n_held], pairs[len(pairs) - n_held :]
    model = model_name or getattr(pipe, "name_or_path", None) or type(pipe).__name__
    recorded = {
        "model": model, "pairs": [(p.source, p.target) for p in pairs], "layers": [layer.name for layer in candidates],
        "method": method, "selection": selection, "threshold": threshold, "held_out": held_out, "top_k": top_k,
        "grad_steps": list(grad_steps), "patch_steps": patch_steps, "heads": settings.heads, "branch": branch, "seed": seed,
        "generate_kwargs": {key: repr(value) for key, value in sorted(generate_kwargs.items())},
        # Not choices of the method, but a resumed run must not mix their results either.
        "ocr": ocr if isinstance(ocr, str) else type(ocr).__name__,
        "scene_judge": None if scene_judge is None else getattr(scene_judge, "__qualname__", type(scene_judge).__name__),
        "dtype": str(getattr(pipe, "dtype", None)),
        "weights": weights_fingerprint(pipe),
    }
    shards = Shards()
    run = _Run(pipe, reader, scene_judge, settings, seed, max_batch, generate_kwargs, progress, ProgressLog(out, recorded, shards.index), shards)

    attribution = None
    if method != "activation":
        with run.timed("attribution"):
            attribution = run.attribution(choose_on, candidates, grad_steps)
    swept = candidates
    if method == "screen+exact":
        k = top_k or max(4, len(candidates) // 4)
        swept = sorted(candidates, key=lambda layer: -attribution[layer.name])[:k]
    exact, baselines = {}, None
    if method != "attribution":
        with run.timed("sweep"):
            exact, baselines = run.sweep(choose_on, swept)

    ranked = _rank(candidates, exact, attribution)
    with run.timed("selection"):
        sets, chosen, reached, set_baselines = run.select(choose_on, ranked, selection, threshold)
    baselines = baselines or set_baselines
    held_result, examples = None, []
    if chosen:
        with run.timed("held_out"):
            held_result, examples = run.evaluate(held or choose_on, chosen)

    total = denoiser_parameter_count(pipe)
    rank_of = {layer.name: position + 1 for position, layer in enumerate(ranked)}
    layer_rows = [
        {
            "name": layer.name, "kind": layer.kind, "index": layer.index, "num_text_kv_params": layer.num_text_kv_params,
            "param_share": layer.num_text_kv_params / total, "rank": rank_of[layer.name],
            "exact": exact.get(layer.name), "attribution": None if attribution is None else attribution[layer.name],
        }
        for layer in candidates
    ]
    result = Localization(
        model=model,
        settings={**{k: v for k, v in recorded.items() if k != "pairs"}, "held_out_pairs": len(held), "choice_pairs": len(choose_on)},
        layers=layer_rows, baselines=baselines, sets=sets, selected=chosen, reached=reached,
        held_out=held_result, agreement=_agreement(exact, attribution, chosen, run.timings) if method == "both" else None,
        timings=run.timings,
    )
    if out is not None and shards.is_main:
        result.save(out, examples)
    return result


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


def _rank(candidates: list[AttentionLayer], exact: dict[str, dict], attribution: dict[str, float] | None) -> list[AttentionLayer]:
    """Best first: the exact sweep's :func:`_merit`, else the attribution score."""
    unswept = (-np.inf,) * 4

    def key(layer: AttentionLayer) -> tuple:
        means = exact.get(layer.name)
        merit = _merit(means) if means else unswept
        return (*(-value for value in merit), -(attribution or {}).get(layer.name, 0.0), layer.index)

    return sorted(candidates, key=key)


def _agreement(exact: dict[str, dict], attribution: dict[str, float] | None, selected: Sequence[str], timings: dict[str, float]) -> dict[str, float | None] | None:
    """How well the attribution screen stands in for the exact sweep, on the layers both scored.

    - ``spearman``: against the exact sweep's ranking by :func:`_merit`, the one selection uses.
      Layers without an effect on the OCR tie there up to noise, so a model that puts its text in
      a few layers leaves most of this ranking to chance, in the screen and the sweep alike.
    - ``spearman_pixels``: against how close each exact patch brought the whole image to the
      target prompt's (``mse_to_target``): the effect that attribution estimates to first order,
      measured without the OCR's all-or-nothing reading.
    - ``screen_top_k``: the smallest ``top_k`` with which ``"screen+exact"`` sweeps every
      selected layer.
    """
    names = [name for name in exact if attribution and name in attribution]
    if len(names) < 3:
        return None
    screen = [attribution[name] for name in names]
    # Spearman needs numbers: each layer's position among the distinct merits (ties share one).
    merits = [_merit(exact[name]) for name in names]
    position = {merit: index for index, merit in enumerate(sorted(set(merits)))}
    distances = [exact[name].get("mse_to_target") for name in names]
    by_screen = sorted(names, key=lambda name: -attribution[name])
    return {
        "spearman": spearman([position[merit] for merit in merits], screen),
        "spearman_pixels": None if None in distances else spearman([-distance for distance in distances], screen),
        "screen_top_k": max((by_screen.index(name) + 1 for name in selected), default=None) if set(selected) <= set(names) else None,
        "time_ratio": timings["sweep"] / timings["attribution"],
        "layers": float(len(names)),
    }


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when either side is constant."""
    if np.ptp(np.asarray(a, float)) == 0 or np.ptp(np.asarray(b, float)) == 0:
        return 0.0
    return float(scipy.stats.spearmanr(a, b).statistic)


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
        owned = [(index, pair) for index, pair in enumerate(pairs) if self.shards.owns(index)]
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

    def _generate_and_score(self, pair: PromptPair, layer_sets: Sequence[Sequence[str]]) -> tuple[dict, dict, list[dict], Any]:
        images = generate_patched(self.pipe, pair, layer_sets, self.settings, self.seed, self.max_batch, self.generate_kwargs)
        rows = score_images([images.source, images.target, *images.patched], pair, images.source, images.target, self.ocr, self.judge)
        return rows[0], rows[1], rows[2:], images

    def _patch_sets(self, stage: str, pairs: Sequence[PromptPair], layer_sets: Sequence[Sequence[str]], examples: int = 0, desc: str | None = None) -> list[dict]:
        """Every pair's scores with each layer set patched. The first ``examples`` pairs also keep
        their images (for the example grid); the log does not keep images, so those are never logged."""
        # The sets of a selection stage follow the ranking, so a log written by another version
        # can hold other sets under the same stage: only the same sets are reused.
        layer_sets = [list(layers) for layers in layer_sets]

        def compute(index: int, pair: PromptPair) -> dict:
            source, target, patched, images = self._generate_and_score(pair, layer_sets)
            done = {"layer_sets": layer_sets, "source": source, "target": target, "patched": patched}
            if index < examples:
                done["images"] = images
            return done

        return self._map(stage, pairs, compute, valid=lambda done: done["layer_sets"] == layer_sets, logged=lambda index: index >= examples, desc=desc)

    def attribution(self, pairs: Sequence[PromptPair], layers: list[AttentionLayer], grad_steps: Sequence[float]) -> dict[str, float]:
        if not grad_steps:
            raise ValueError("Attribution needs at least one gradient step (grad_steps).")
        num_steps = self._num_steps()
        # A fraction names a step by the same rule as a patch window's bound.
        indices = sorted({min(num_steps - 1, int(fraction * num_steps)) for fraction in grad_steps})
        # The screen estimates the exact patch, so it takes gradients only where that patch acts.
        window = window_steps(self.settings.patch_steps, num_steps)
        indices = [index for index in indices if index in window]
        if not indices:
            raise ValueError(
                f"grad_steps {list(grad_steps)} fall outside the patch window {self.settings.patch_steps} of {num_steps} steps; "
                "choose gradient steps inside the window."
            )
        results = self._map("attribution", pairs, lambda index, pair: {
            "scores": attribution_scores(self.pipe, pair, layers, self.settings, self.seed, indices, self.generate_kwargs)})
        totals = np.sum([done["scores"] for done in results], axis=0)
        return {layer.name: float(total / len(pairs)) for layer, total in zip(layers, totals)}

    def _num_steps(self) -> int:
        steps = self.generate_kwargs.get("num_inference_steps")
        if steps is None:
            steps = inspect.signature(self.pipe.__call__).parameters["num_inference_steps"].default
        return int(steps)

    def sweep(self, pairs: Sequence[PromptPair], layers: list[AttentionLayer]) -> tuple[dict[str, dict], dict[str, dict]]:
        means, baselines = self._evaluate_sets("sweep", pairs, [[layer.name] for layer in layers], desc=f"exact sweep ({len(layers)} layers)")
        return {layer.name: m for layer, m in zip(layers, means)}, baselines

    def _evaluate_sets(self, stage: str, pairs: Sequence[PromptPair], layer_sets: list[list[str]], desc: str | None = None) -> tuple[list[dict], dict]:
        results = self._patch_sets(stage, pairs, layer_sets, desc=desc)
        means = [mean_metrics([done["patched"][i] for done in results]) for i in range(len(layer_sets))]
        return means, _baselines(results)

    def select(self, pairs, ranked: list[AttentionLayer], selection: str, threshold: float):
        names = [layer.name for layer in ranked]
        if selection == "cumulative":
            layer_sets = [names[: k + 1] for k in range(len(names))]
            means, baselines = self._evaluate_sets("cumulative sets", pairs, layer_sets)
            sets = [{"layers": layer_set, "means": m} for layer_set, m in zip(layer_sets, means)]
        else:
            sets, baselines = self._greedy(pairs, names, threshold)
        for entry in sets:
            if _reaches(entry["means"]["target_hit"], baselines, threshold):
                return sets, entry["layers"], True, baselines
        best = max(sets, key=lambda entry: (entry["means"]["target_hit"], -len(entry["layers"])), default=None)
        return sets, [] if best is None else best["layers"], False, baselines

    def _greedy(self, pairs, names: list[str], threshold: float):
        chosen: list[str] = []
        sets, baselines = [], None
        while len(chosen) < len(names):
            remaining = [name for name in names if name not in chosen]
            trials = [chosen + [name] for name in remaining]
            means, baselines = self._evaluate_sets(f"greedy set of {len(chosen) + 1}", pairs, trials)
            best = max(range(len(trials)), key=lambda i: _merit(means[i]))
            chosen = trials[best]
            sets.append({"layers": chosen, "means": means[best]})
            if _reaches(means[best]["target_hit"], baselines, threshold):
                break
        return sets, baselines

    def evaluate(self, pairs: Sequence[PromptPair], chosen: list[str]) -> tuple[dict[str, Any], list[dict]]:
        results = self._patch_sets("held out", pairs, [chosen], examples=EXAMPLES, desc="held-out pairs")
        floors = _baselines(results)
        result = {"patched": mean_metrics([done["patched"][0] for done in results]), "direct": floors["target"], "unpatched": floors["source"], "layers": chosen}
        examples = [
            {
                "source": done["images"].source, "patched": done["images"].patched[0], "target": done["images"].target,
                "source_read": done["source"]["read"], "patched_read": done["patched"][0]["read"], "target_read": done["target"]["read"],
            }
            for done in results if "images" in done
        ]
        return result, examples


def _reaches(hit_rate: float, baselines: dict[str, dict], threshold: float) -> bool:
    """Whether a set's target hit rate reaches ``threshold`` times the directly prompted rate (never
    when that rate is 0). Rates are counts over the same pairs, so the small tolerance keeps
    8/24 >= 0.8 * 10/24 true in floating point."""
    goal = threshold * (baselines["target"]["target_hit"] or 0.0)
    return goal > 0 and hit_rate >= goal - 1e-9


def _baselines(results: Sequence[dict]) -> dict[str, dict]:
    """The means of the unpatched source images (the floor) and the target prompt's (the ceiling)."""
    return {"source": mean_metrics([done["source"] for done in results]), "target": mean_metrics([done["target"] for done in results])}
