"""``localize``: which attention layers render the text of a model's images."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from textloc.distributed import Shards
from textloc.engine import LayerSelector, RowPatch, denoiser_parameter_count, select_layers, validate_patch
from textloc.fingerprint import weights_fingerprint
from textloc.layers import LayerSource, resolve_layers
from textloc.localization import stats
from textloc.localization.config import SCREENS, LocalizeConfig
from textloc.localization.directions import NECESSITY, SUFFICIENCY
from textloc.localization.estimate import Estimate, estimate_localization
from textloc.localization.report import Localization, ProgressLog
from textloc.localization.results import Agreement, Means, PairScores, ScreenAgreement, UnitScores
from textloc.localization.selection import rank_layers
from textloc.localization.stages import Stages, exact_effects, screen_scorer
from textloc.models import embedded_model_of
from textloc.localization.sweep import PatchSettings
from textloc.pipeline_calls import refuse_modular
from textloc.scoring.ocr import OCR, get_ocr
from textloc.scoring.prompts import PromptPair, SceneJudge
from textloc.settings import split_settings

# Arguments localize sets itself on every generation.
_RESERVED = ("prompt", "generator", "output_type", "num_images_per_prompt")


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
    estimate: bool = False,
    assume_selected: LayerSource | None = None,
    **kwargs: Any,
) -> Localization | Estimate:
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

    ``estimate=True`` runs nothing: it prints and returns what the run would cost (an
    :class:`~textloc.localization.estimate.Estimate`: generations, denoiser calls and images per
    stage, memory, wall time from a denoiser call timed now), assuming the selection chooses
    ``assume_selected`` (layers as edits take them: a selector, a localization or its folder;
    default: the first quarter of the candidates).
    """
    refuse_modular(pipe, "localize")
    if config is not None and not isinstance(config, LocalizeConfig):
        raise TypeError(f"config is a LocalizeConfig, not {type(config).__name__}: give the method as method={config!r}.")
    overrides, generate_kwargs = split_settings(LocalizeConfig, kwargs)
    config = dataclasses.replace(config or LocalizeConfig(), **overrides)  # checked as it is made
    pairs = _check_pairs(pairs)
    reserved = sorted(set(generate_kwargs) & set(_RESERVED))
    if reserved:
        raise ValueError(f"localize sets {', '.join(reserved)} itself; leave them out.")
    candidates = select_layers(pipe, layers)
    # A heads or keys-only setting that some candidate cannot take (the pooled vector) fails here, not mid-run.
    whole = RowPatch(tuple(layer.name for layer in candidates), source=0, patch_steps=config.patch_steps, heads=config.heads, branch=config.branch, kv=config.kv)
    validate_patch(whole, {layer.name: layer for layer in candidates})
    reader = get_ocr(ocr)
    if estimate:
        assumed = None if assume_selected is None else resolve_layers(pipe, assume_selected)
        cost = estimate_localization(pipe, pairs, candidates, config, generate_kwargs, localize, ocr=reader, scene_judge=scene_judge, selected=assumed)
        print(cost.summary())
        return cost
    method, direction, screen, unit, seed = config.method, config.direction, config.screen, config.unit, config.seed
    selection, threshold, rule = config.selection, config.threshold, config.rule
    settings = PatchSettings(config.patch_steps, config.heads, config.branch, config.kv)
    n_held = _held_out_count(config.held_out, len(pairs))
    choose_on, held = pairs[: len(pairs) - n_held], pairs[len(pairs) - n_held :]
    model = model_name or _model_name(pipe)
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
    run = Stages(pipe, reader, scene_judge, settings, seed, config.max_batch, generate_kwargs, progress, log, shards)

    screens: dict[str, np.ndarray] = {}  # per screen, its [pairs, layers] scores
    if method != "activation":
        for name in SCREENS if method == "both" else (screen,):
            with run.timed(f"{name} screen"):
                screens[name] = run.attribution(choose_on, candidates, config.grad_steps, *screen_scorer(name, config.screen_points))
    attribution = None if screen not in screens else dict(zip((layer.name for layer in candidates), map(float, screens[screen].mean(axis=0))))
    swept = candidates
    if method == "screen+exact":
        k = config.top_k or max(4, len(candidates) // 4)
        swept = sorted(candidates, key=lambda layer: -attribution[layer.name])[:k]
    directions = [SUFFICIENCY, NECESSITY] if direction == "both" else [NECESSITY if direction == "necessity" else SUFFICIENCY]
    chooser = directions[0]  # sufficiency whenever it is measured
    exact: dict[str, dict[str, Means]] = {}  # per direction, per layer, its means
    baselines, sweeps = None, {}
    if method != "attribution":
        for way in directions:
            with run.timed(way.stage("sweep")):
                exact[way.name], way_baselines, sweeps[way.name] = run.sweep(choose_on, swept, way)
            baselines = baselines or way_baselines

    ranked = [layer.name for layer in rank_layers(candidates, exact.get(chooser.name, {}), attribution, chooser)]
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
        UnitScores(
            layer.name, layer.kind, layer.index, layer.num_text_kv_params, layer.num_text_kv_params / total, rank=rank_of[layer.name],
            exact=exact.get("sufficiency", {}).get(layer.name), necessity=exact.get("necessity", {}).get(layer.name),
            attribution=None if attribution is None else attribution[layer.name],
        )
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


def _model_name(pipe: Any) -> str:
    """What a report calls the model: an embedded model's name, else the id or folder it was
    loaded from (a folder may be a ``Path``: the report is JSON), else the pipeline's class."""
    embedded = embedded_model_of(pipe)
    if embedded is not None:
        return embedded.name
    loaded_from = getattr(pipe, "name_or_path", None)
    return str(loaded_from) if loaded_from else type(pipe).__name__


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


def _agreement(
    sweep: Sequence[PairScores], screens: dict[str, np.ndarray], names: list[str], selected: Sequence[str], timings: dict[str, float], seed: int
) -> Agreement:
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
    agreements = {}
    for name, scores in screens.items():
        by_screen = [names[i] for i in np.argsort(-scores.mean(axis=0), kind="stable")]
        agreements[name] = ScreenAgreement(
            spearman=stats.spearman(scores.mean(axis=0)[keep], effect.mean(axis=0)[keep]) if ranked else None,
            split_half=stats.split_half(scores[:, keep], effect[:, keep], seed) if ranked else None,
            same_half=stats.split_half(scores[:, keep], effect[:, keep], seed, across=False) if ranked else None,
            top_k_recall=stats.top_k_recall(scores.mean(axis=0), effect.mean(axis=0), len(selected)),
            screen_top_k=max((by_screen.index(layer) + 1 for layer in selected), default=None),
            time_ratio=timings["sweep"] / timings[f"{name} screen"],
        )
    return Agreement(
        [names[i] for i in keep], len(names), stats.split_half(effect[:, keep], effect[:, keep], seed) if ranked else None, agreements,
    )


