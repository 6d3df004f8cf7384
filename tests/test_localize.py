"""localize end to end on every tiny architecture, its files, its resume, its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ONE_IMAGE_UNDER_CFG, _pipeline, skip_one_prompt
from textloc.architectures import family_of
from textloc.engine import AttentionLayer, select_layers
from textloc.localization import Localization, PromptPair, core, localize, make_pairs, selection, spearman, stats
from textloc.localization import stages as running
from textloc.localization.results import ImageScores, Means, PairScores, Share
from textloc.localization.scoring import mean_metrics
from textloc.localization.report import PROGRESS_FILE, REPORT_FILE
from textloc.pipeline_calls import images_of
from textloc.testing import ARCHITECTURES, tiny_call_kwargs

WORDS = ["HELLO", "WORLD", "LAMP", "STOP"]
# Short prompts: the tiny text encoders keep 48 tokens, which cuts some templates' quoted word off.
SIGNS = [PromptPair.from_template('A sign that says "{}".', source, target) for source, target in (("HELLO", "WORLD"), ("LAMP", "STOP"), ("OPEN", "SHUT"))]
# Denoisers that see the prompt only through the text K/V of the layers localize patches: no
# pooled text embedding (SDXL, SD3, FLUX) and no text in the time embedding (IF).
TEXT_ONLY_IN_ATTENTION = ("sd15", "pixart-alpha", "pixart-sigma", "sana")


def kwargs(pipe):
    settings = tiny_call_kwargs(pipe)
    del settings["output_type"]
    if family_of(pipe).name in ONE_IMAGE_UNDER_CFG:  # its sweeps are batches: unguided
        settings["guidance_scale"] = 1.0
    return settings


def pairs(n=3):
    return make_pairs(WORDS, n=n, seed=0)


class ReadsNearestKnownImage:
    """A stand-in OCR whose readings are facts about pixels: an image reads as the quoted text of
    the prompt whose direct generation from localize's noise (seed 0) lies nearest to it. A prompt's
    own image, generated in another batch, differs from it by float rounding only (MSE ~1e-13 on the
    tiny pipelines, against ~1e-6 between prompts), so the floors read exactly; a patched image
    reads as whichever text it was moved closest to. Each prompt is generated alone: in a plain
    batch, GLM-Image pads the shorter prompts' glyph texts and samples its prior tokens for the
    batch as a whole, so a row there is not its prompt's own image."""

    def __init__(self, pipe, pairs: list[PromptPair]):
        texts = {prompt: text for pair in pairs for prompt, text in ((pair.source, pair.source_text), (pair.target, pair.target_text))}
        self.known = [
            (images_of(pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(0), **{**tiny_call_kwargs(pipe), **kwargs(pipe)}))[0], text)
            for prompt, text in texts.items()
        ]

    def read(self, images):
        return [min(self.known, key=lambda known: mse(image, known[0]))[1] for image in images]


def mse(a, b) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def merit(means: Means) -> tuple[float, ...]:
    """localize's ranking rule: target hits, then word F1, then how much closer (edit distance) the
    reading came to the target than to the source, then how close the image came to the target's."""
    return (means.target_hit, means.target_f1, means.source_ned - means.target_ned, -means.mse_to_target)


def reads(means: Means, text: str) -> bool:
    """Whether every image behind ``means`` read exactly the ``text`` ("source" or "target") and never the other."""
    other = "target" if text == "source" else "source"
    return getattr(means, f"{text}_exact") == 1.0 and getattr(means, f"{other}_hit") == 0.0


def image(**scores: float) -> ImageScores:
    """One image's scores: those given, the rest nothing read and no distance."""
    return ImageScores(**{"read": "", **dict.fromkeys(ImageScores.__dataclass_fields__, 0.0), "scene": None, **scores})


def means_of(**values: float) -> Means:
    """Means of a set: those given, the rest nothing read and no distance."""
    return Means(**{**dict.fromkeys(Means.__dataclass_fields__, 0.0), "scene": None, "ci": {}, "mse_to_source": None, **values})


#: Where the necessity sweep runs too: one family of each way text reaches attention (U-Net cross and
#: added K/V, the pooled vector, joint, joint + single, single as a list of rows, text-only refiners with
#: separate CFG passes, a masked joint, text after the image, a prefix, text after left padding). It is
#: the sufficiency sweep with the pair's roles swapped, through the same patches: on the other
#: families the suite's time goes to what differs between them.
NECESSITY_ON = ("sd15", "deepfloyd-if", "sdxl", "sd3", "flux", "z-image", "lumina2", "qwenimage", "hunyuan-image", "qwenimage21", "ideogram4")


# Screens and the exact sweep on every family; the sweep alone, a part of it, on one U-Net with
# cross, one with added K/V and one joint transformer.
@pytest.mark.parametrize(("arch", "method"), [(arch, "both") for arch in ARCHITECTURES] + [(arch, "activation") for arch in ("sdxl", "deepfloyd-if", "flux")])
def test_localize_runs_end_to_end_and_writes_its_files(arch, method, tmp_path):
    skip_one_prompt(arch)
    pipe = _pipeline(arch)
    direction = "both" if method == "both" and arch in NECESSITY_ON else "sufficiency"
    result = localize(pipe, SIGNS, method=method, direction=direction, ocr=ReadsNearestKnownImage(pipe, SIGNS), out=tmp_path, progress=False, **kwargs(pipe))
    assert all(layer.exact is not None for layer in result.layers)
    assert (method == "both") == all(layer.attribution is not None for layer in result.layers)
    # The floors sit in the right rows: the unpatched source reads the source's text, the target
    # prompted directly the target's; on the held-out pair (the last of 3) as well.
    assert reads(result.baselines.source, "source") and reads(result.baselines.target, "target")
    assert reads(result.held_out.sufficiency.unpatched, "source") and reads(result.held_out.sufficiency.direct, "target")
    assert result.held_out.sufficiency.patched.n == 1.0

    # Ranks follow the per-layer scores, cumulative sets follow the ranks, and the chosen set is the
    # first whose target rate reaches 0.8 of the direct one (else the best-scoring, smallest).
    ranked = sorted(result.layers, key=lambda layer: layer.rank)
    assert [layer.rank for layer in ranked] == list(range(1, len(ranked) + 1))
    assert [merit(layer.exact) for layer in ranked] == sorted((merit(layer.exact) for layer in ranked), reverse=True)
    names = [layer.name for layer in ranked]
    assert [entry.layers for entry in result.sets] == [names[: k + 1] for k in range(len(names))]
    reaching = [entry.layers for entry in result.sets if entry.means.target_hit >= 0.8 * result.baselines.target.target_hit]
    best = max(result.sets, key=lambda entry: (entry.means.target_hit, -len(entry.layers))).layers
    assert result.reached == bool(reaching) and result.selected == (reaching[0] if reaching else best)
    assert result.held_out.layers == result.selected
    if arch in TEXT_ONLY_IN_ATTENTION:
        # Every layer patched from the target: the denoiser sees only the target's text, so the
        # image is the target's, and the chosen set writes the target on the held-out pair too.
        everything = result.sets[-1].means
        assert reads(everything, "target") and everything.mse_to_target < 1e-9
        assert result.reached and reads(result.held_out.sufficiency.patched, "target")
    for name in ("report.json", "layers.csv", "layers.png", "examples.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "(unpatched source)" in (tmp_path / "layers.csv").read_text()  # every layer's floor beside it
    if direction == "both":  # necessity too: the target generated with the source's text
        assert all(layer.necessity is not None for layer in result.layers)
        necessity = result.held_out.necessity
        assert reads(necessity.unpatched, "target") and reads(necessity.direct, "source")
        assert "necessity_target_hit_low" in (tmp_path / "layers.csv").read_text().splitlines()[0]
    loaded = Localization.load(tmp_path)
    assert loaded.selected == result.selected and loaded == result  # the types read back whole
    assert "selected" in result.summary()
    assert "choice pair(s) only" in result.summary()  # a few pairs: the summary says what that is worth


def test_a_summary_over_enough_pairs_has_no_few_pairs_note():
    shipped = Localization.load(Path(__file__).resolve().parent.parent / "samples" / "tiny" / "localize")
    assert shipped.settings["choice_pairs"] >= 10 and "choice pair(s) only" not in shipped.summary()


@pytest.mark.parametrize("arch", ["sdxl", "deepfloyd-if", "sana"])  # U-Net cross, added K/V, DiT cross
def test_a_patch_that_carries_the_same_text_scores_like_the_unpatched_source(arch):
    # Both rows' unconditional branch encodes the same empty negative prompt, and these layers'
    # text K/V depend on the prompt alone: patching that branch from the target changes nothing.
    pipe = _pipeline(arch)
    chosen_on = SIGNS[:2]
    result = localize(pipe, chosen_on, branch="uncond", held_out=0.0, ocr=ReadsNearestKnownImage(pipe, chosen_on), progress=False, **kwargs(pipe))
    for scored in [layer.exact for layer in result.layers] + [entry.means for entry in result.sets]:
        assert reads(scored, "source") and scored.mse < 1e-12
    assert not result.reached


def test_necessity_generates_the_target_with_the_sources_text_and_selects_what_removes_its_word():
    pipe = _pipeline("sd15")  # the prompt reaches its denoiser only through the patched layers
    ocr = ReadsNearestKnownImage(pipe, SIGNS)
    result = localize(pipe, SIGNS, direction="necessity", ocr=ocr, progress=False, **kwargs(pipe))
    assert all(layer.necessity is not None and layer.exact is None for layer in result.layers)
    survival = [layer.necessity.target_hit for layer in sorted(result.layers, key=lambda layer: layer.rank)]
    assert survival == sorted(survival)  # the layers whose patch removes the target word most rank first
    # The source's text at every layer: the target's run becomes the source's image, word and all.
    everything = result.sets[-1]
    assert reads(everything.means, "source") and everything.means.mse_to_source < 1e-9
    assert everything.share_of_direct == (1.0, 1.0, 1.0)  # every target word the prompt wrote is gone
    assert result.reached and result.held_out.necessity.share_of_direct[0] is not None
    # Sufficiency's question of the swapped pairs is necessity's: the same images, other names.
    swapped = localize(pipe, [pair.swapped() for pair in SIGNS], ocr=ocr, progress=False, **kwargs(pipe))
    by_name = {layer.name: layer.exact for layer in swapped.layers}
    for layer in result.layers:
        assert layer.necessity.target_hit == by_name[layer.name].source_hit
        assert layer.necessity.mse_to_source == by_name[layer.name].mse_to_target


# Head units on one family of each text layout, and on each way a layer's heads are laid out (fused
# QKV+MLP columns, grouped K/V, a fused text K/V projection, a pooled unit among the heads); the
# engine's head patches themselves are checked on every family (test_engine.py).
HEADS_ON = NECESSITY_ON + ("flux2", "krea2", "prx", "kandinsky3")


@pytest.mark.parametrize("arch", HEADS_ON)
def test_head_units_patch_single_heads_and_all_of_them_patch_the_layers(arch):
    skip_one_prompt(arch)
    pipe = _pipeline(arch)
    ocr = ReadsNearestKnownImage(pipe, SIGNS)
    result = localize(pipe, SIGNS, unit="head", ocr=ocr, progress=False, **kwargs(pipe))
    heads = result.heads
    in_model_order = [layer for layer in core.select_layers(pipe, "all") if layer.name in result.selected]
    # The pooled vector, where it is selected, has no heads: it stays one unit among them.
    assert [row.name for row in heads.units] == [
        name for layer in in_model_order
        for name in ([layer.name] if layer.kind == "pooled" else [f"{layer.name}@{h}" for h in range(layer.num_heads)])
    ]
    assert sorted(row.rank for row in heads.units) == list(range(1, len(heads.units) + 1))
    # One head is not the whole layer, and the heads of a layer differ from each other.
    whole = {layer.name: layer.exact.mse for layer in result.layers}
    for layer in (layer for layer in in_model_order if layer.kind != "pooled"):
        of_layer = [row.exact.mse for row in heads.units if row.layer == layer.name]
        assert all(mse != pytest.approx(whole[layer.name], rel=1e-6, abs=1e-15) for mse in of_layer), layer.name
        assert len(set(of_layer)) == len(of_layer) > 1
    # Every head of the selected layers is the selected layers' patch: the same images.
    every_head = heads.sets[-1]
    assert len(every_head.layers) == len(heads.units)
    as_layers = next(entry for entry in result.sets if entry.layers == result.selected)
    assert every_head.means.mse == pytest.approx(as_layers.means.mse, rel=1e-4, abs=1e-12)
    assert every_head.means.target_hit == as_layers.means.target_hit
    assert (heads.held_out is not None) == bool(heads.selected)
    assert "heads of the selected layers" in result.summary()


# The seed sweeps are localize's own bookkeeping over the sweep every family runs (end to end,
# above): a U-Net with cross, one with added K/V, a joint and a FLUX-style transformer.
@pytest.mark.parametrize("arch", ["sdxl", "deepfloyd-if", "sd3", "flux"])
def test_stability_seeds_repeat_the_sweep_at_each_seed_and_compare_the_rankings(arch, tmp_path):
    pipe = _pipeline(arch)
    ocr = ReadsNearestKnownImage(pipe, SIGNS)
    result = localize(pipe, SIGNS, stability_seeds=[1], ocr=ocr, out=tmp_path, progress=False, **kwargs(pipe))
    at_seed_1 = localize(pipe, SIGNS, seed=1, ocr=ocr, progress=False, **kwargs(pipe))
    stability = result.seed_stability

    def ranking(run: Localization) -> list[str]:
        return [layer.name for layer in sorted(run.layers, key=lambda layer: layer.rank)]

    def effect(run: Localization) -> np.ndarray:  # each layer's mean pull toward the target's image
        return np.array([run.baselines.source.mse_to_target - layer.exact.mse_to_target for layer in run.layers])

    # The second sweep is seed 1's own: the same images as a localization at seed 1 (its pixels
    # differ from seed 0's), so the same ranking.
    assert not np.allclose(effect(result), effect(at_seed_1), rtol=1e-6, atol=0)
    assert stability.seeds == [0, 1]
    assert stability.rankings == {"0": ranking(result), "1": ranking(at_seed_1)}
    k = len(result.selected)
    assert stability.same_top_k == float(set(ranking(result)[:k]) == set(ranking(at_seed_1)[:k]))
    # The correlation is taken on the layers whose per-pair effect is distinguishable from 0 at either seed.
    stages: dict[str, dict[int, dict]] = {}
    for line in (tmp_path / PROGRESS_FILE).read_text().splitlines()[1:]:
        line = json.loads(line)
        stages.setdefault(line["stage"], {})[line["pair"]] = line["result"]
    per_pair = [running.exact_effects([PairScores.from_json(done[i]) for i in sorted(done)]) for done in (stages["sweep"], stages["sweep at seed 1"])]
    keep = [i for i in range(len(result.layers)) if any(stats.excludes_zero(effects[:, i], 0) for effects in per_pair)]
    assert stability.distinguishable == [result.layers[i].name for i in keep]
    expected = spearman(effect(result)[keep], effect(at_seed_1)[keep]) if len(keep) >= 2 else None
    assert stability.spearman == (pytest.approx(expected) if expected is not None else None)
    assert "sufficiency ranking from seed to seed (0, 1)" in result.summary()
    assert Localization.load(tmp_path).seed_stability == stability
    # Nothing else changes: the selection and its scores are seed 0's.
    plain = localize(pipe, SIGNS, ocr=ocr, progress=False, **kwargs(pipe))
    assert plain.selected == result.selected and plain.held_out == result.held_out
    with pytest.raises(ValueError, match="differ"):
        localize(pipe, SIGNS, stability_seeds=[0], ocr=ocr, progress=False, **kwargs(pipe))
    with pytest.raises(ValueError, match="differ"):
        localize(pipe, SIGNS, stability_seeds=[2, 2], ocr=ocr, progress=False, **kwargs(pipe))
    with pytest.raises(TypeError, match="integer"):
        localize(pipe, SIGNS, stability_seeds=[True], ocr=ocr, progress=False, **kwargs(pipe))
    with pytest.raises(ValueError, match="exact sweep"):
        localize(pipe, SIGNS, method="attribution", stability_seeds=[1], ocr=ocr, progress=False, **kwargs(pipe))


def test_a_finished_layer_run_goes_on_to_heads_without_redoing_its_layers(tmp_path, monkeypatch):
    pipe = _pipeline("sd15")
    first = localize(pipe, pairs(3), out=tmp_path, progress=False, **kwargs(pipe))
    calls = []
    real = running.generate_patched
    monkeypatch.setattr(running, "generate_patched", lambda *args, **kw: calls.append(args[2]) or real(*args, **kw))
    again = localize(pipe, pairs(3), unit="head", out=tmp_path, progress=False, **kwargs(pipe))
    assert again.selected == first.selected and again.heads.units
    # Only head units were generated, but for the example grid's pairs, whose images the log never keeps.
    assert all("@" in unit for sets in calls for units in sets for unit in units if sets != [first.selected])


def test_another_screen_resumes_a_finished_run_and_adds_only_its_own_stage(tmp_path, monkeypatch):
    pipe = _pipeline("sd15")
    first = localize(pipe, pairs(3), method="both", screen_points=2, out=tmp_path, progress=False, **kwargs(pipe))
    # Older versions checked the screen on resume, so their logs name it in the settings line.
    log = tmp_path / PROGRESS_FILE
    header, *rest = log.read_text().splitlines()
    older = {"settings": {**json.loads(header)["settings"], "screen": "integrated", "screen_points": 2}}
    log.write_text("\n".join([json.dumps(older), *rest]) + "\n")
    calls = []
    real = running.generate_patched
    monkeypatch.setattr(running, "generate_patched", lambda *args, **kw: calls.append(args[2]) or real(*args, **kw))
    again = localize(pipe, pairs(3), method="both", screen_points=3, out=tmp_path, progress=False, **kwargs(pipe))
    # No sweep or selection was generated again, only the example grid's pairs, whose images the log never keeps.
    assert all(sets == [first.selected] for sets in calls)
    assert again.layers[0].exact == first.layers[0].exact and again.settings["screen_points"] == 3
    stages = {json.loads(line).get("stage") for line in (tmp_path / PROGRESS_FILE).read_text().splitlines()}
    assert {"attribution at strengths 0.25, 0.75", "attribution at strengths 0.166667, 0.5, 0.833333"} <= stages


def test_screen_then_exact_sweeps_only_the_top_layers():
    pipe = _pipeline("sdxl")
    result = localize(pipe, pairs(2), method="screen+exact", top_k=3, progress=False, **kwargs(pipe))
    swept = [layer for layer in result.layers if layer.exact is not None]
    assert len(swept) == 3
    top = sorted(result.layers, key=lambda layer: -layer.attribution)[:3]
    assert {layer.name for layer in swept} == {layer.name for layer in top}


def test_greedy_selection_reports_every_round():
    pipe = _pipeline("pixart-alpha")
    result = localize(pipe, pairs(2), selection="greedy", progress=False, **kwargs(pipe))
    assert [len(entry.layers) for entry in result.sets] == list(range(1, len(result.sets) + 1))


def test_an_interrupted_run_resumes_from_its_log(tmp_path, monkeypatch):
    pipe = _pipeline("sd15")
    calls = []
    real = running.generate_patched

    def failing_after_two(*args, **kw):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(running, "generate_patched", failing_after_two)
    with pytest.raises(KeyboardInterrupt):
        localize(pipe, pairs(4), out=tmp_path, progress=False, **kwargs(pipe))
    lines = (tmp_path / PROGRESS_FILE).read_text().splitlines()
    assert [json.loads(line).get("pair") for line in lines] == [None, 0, 1]  # settings, then two pairs
    assert not (tmp_path / REPORT_FILE).exists()  # no half-written report

    calls.clear()
    monkeypatch.setattr(running, "generate_patched", lambda *args, **kw: calls.append(args[1]) or real(*args, **kw))
    resumed = localize(pipe, pairs(4), out=tmp_path, progress=False, **kwargs(pipe))
    assert calls[0] == pairs(4)[2]  # the sweep went on from the third pair
    fresh = localize(pipe, pairs(4), progress=False, **kwargs(pipe))
    assert resumed.layers == fresh.layers and resumed.selected == fresh.selected

    with pytest.raises(ValueError, match="other settings"):
        localize(pipe, pairs(4), out=tmp_path, threshold=0.5, progress=False, **kwargs(pipe))
    with torch.no_grad():  # the same model name with other weights: nothing logged may be reused
        next(pipe.unet.parameters()).flatten()[0] += 1.0
    with pytest.raises(ValueError, match="other settings"):
        localize(pipe, pairs(4), out=tmp_path, progress=False, **kwargs(pipe))


def test_a_logged_result_for_other_layer_sets_is_redone(tmp_path, monkeypatch):
    pipe = _pipeline("sd15")
    first = localize(pipe, pairs(2), out=tmp_path, held_out=0.0, progress=False, **kwargs(pipe))
    log = tmp_path / PROGRESS_FILE
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    for line in lines[1:]:
        if line["stage"] == "cumulative sets":  # as if another ranking had chosen these sets
            line["result"]["layer_sets"] = [["elsewhere"]]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    calls = []
    real = running.generate_patched
    monkeypatch.setattr(running, "generate_patched", lambda *args, **kw: calls.append(args[2]) or real(*args, **kw))
    again = localize(pipe, pairs(2), out=tmp_path, held_out=0.0, progress=False, **kwargs(pipe))
    swept_or_selected = [sets for sets in calls if len(sets) > 1]  # the final check patches one set
    assert swept_or_selected == [[layer.layers for layer in first.sets]] * 2  # the sweep was reused
    assert again.sets == first.sets


def test_a_resumed_run_counts_the_logged_compute_in_its_timings(tmp_path):
    pipe = _pipeline("sd15")
    localize(pipe, pairs(2), method="both", out=tmp_path, progress=False, **kwargs(pipe))
    # Each timed stage and the log stage of its work: the plain gradient, the integrated path's strengths, key-exact.
    stages = {
        "sweep": "sweep", "gradient screen": "attribution", "integrated screen": "attribution at strengths 0.166667, 0.5, 0.833333",
        "key-exact screen": "key-exact attribution",
    }
    logged = dict.fromkeys(stages.values(), 0.0)
    for line in (tmp_path / PROGRESS_FILE).read_text().splitlines()[1:]:
        line = json.loads(line)
        if line["stage"] in logged:
            logged[line["stage"]] += line["result"]["seconds"]
    again = localize(pipe, pairs(2), method="both", out=tmp_path, progress=False, **kwargs(pipe))
    for timed, stage in stages.items():
        assert again.timings[timed] >= logged[stage] > 0, timed
    assert list(again.agreement.screens) == list(core.SCREENS)  # every screen judged beside the sweep
    assert all(entry.time_ratio > 0 for entry in again.agreement.screens.values())


def test_an_interrupted_greedy_selection_resumes_at_its_round(tmp_path, monkeypatch):
    pipe = _pipeline("sd15")
    real = running.generate_patched
    rounds = []

    def failing_in_round_two(*args, **kw):
        sets = args[2]
        if len(sets[0]) == 2:  # the second greedy round tries sets of two layers
            raise KeyboardInterrupt
        return real(*args, **kw)

    settings = dict(selection="greedy", threshold=1.0, held_out=0.0, progress=False, **kwargs(pipe))
    monkeypatch.setattr(running, "generate_patched", failing_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        localize(pipe, pairs(2), out=tmp_path, **settings)
    monkeypatch.setattr(running, "generate_patched", lambda *args, **kw: rounds.append(len(args[2][0])) or real(*args, **kw))
    resumed = localize(pipe, pairs(2), out=tmp_path, **settings)
    assert rounds[0] >= 2  # neither the sweep nor the first round was generated again
    fresh = localize(pipe, pairs(2), **settings)
    assert resumed.sets == fresh.sets and resumed.selected == fresh.selected


def test_step_window_and_heads_reach_every_patch(monkeypatch):
    from textloc.localization import attribution, sweep

    pipe = _pipeline("sd15")
    plans = {}
    for module in (sweep, attribution):  # the exact sweep's patches and the screens'
        real = module.run_with_patches
        monkeypatch.setattr(module, "run_with_patches", lambda pipe, prompts, plan, real=real, name=module.__name__, **kw: plans.setdefault(name, []).append([*plan, *kw.get("replays", ())]) or real(pipe, prompts, plan, **kw))
    localize(pipe, pairs(2), method="both", direction="both", patch_steps=(1, None), heads=[0], kv="k", branch="both", grad_steps=(0.99,), held_out=0.0, progress=False, **kwargs(pipe))
    assert len(plans) == 2
    patches = [patch for module_plans in plans.values() for plan in module_plans for patch in plan]
    assert {(patch.patch_steps, patch.heads, patch.branch, patch.kv) for patch in patches} == {((1, None), (0,), "both", "k")}


def test_a_sweep_split_over_several_batches_gives_the_same_images():
    from textloc.localization.sweep import PatchSettings, generate_patched

    pipe = _pipeline("sd15")
    layer_sets = [[layer.name] for layer in core.select_layers(pipe, "all")]
    whole = generate_patched(pipe, pairs(1)[0], layer_sets, PatchSettings(), 0, len(layer_sets) + 2, kwargs(pipe))
    split = generate_patched(pipe, pairs(1)[0], layer_sets, PatchSettings(), 0, 3, kwargs(pipe))
    assert len(split.patched) == len(layer_sets)
    for a, b in zip([whole.source, whole.target, *whole.patched], [split.source, split.target, *split.patched]):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_bad_input_is_refused_clearly():
    pipe = _pipeline("sdxl")
    with pytest.raises(ValueError, match="no quoted text"):
        PromptPair.from_template("A sign that says {}.", "A", "B")
    with pytest.raises(ValueError, match="same"):
        PromptPair.from_template('A sign that says "{}".', "LAMP", "lamp")
    with pytest.raises(ValueError, match="No prompt pairs"):
        localize(pipe, [], progress=False)
    with pytest.raises(ValueError, match="Unknown OCR engine|known"):
        localize(pipe, pairs(2), ocr="no-such-engine", progress=False)
    with pytest.raises(ValueError, match="Empty layer selection"):
        localize(pipe, pairs(2), layers=[], progress=False)
    with pytest.raises(ValueError, match="Unknown method"):
        localize(pipe, pairs(2), method="magic", progress=False)
    with pytest.raises(ValueError, match="sets generator"):
        localize(pipe, pairs(2), generator=None, progress=False)
    with pytest.raises(ValueError, match="held_out"):
        localize(pipe, pairs(2), held_out=1.0, progress=False)
    with pytest.raises(ValueError, match="top_k only"):
        localize(pipe, pairs(2), top_k=3, progress=False)
    with pytest.raises(ValueError, match="max_batch"):
        localize(pipe, pairs(2), max_batch=2, progress=False)
    with pytest.raises(ValueError, match="outside the patch window"):
        localize(pipe, pairs(2), method="attribution", patch_steps=(0, 0.25), grad_steps=(0.5,), progress=False, **kwargs(pipe))
    for option, value in (("direction", "reverse"), ("screen", "magic"), ("rule", "mean"), ("unit", "neuron")):
        with pytest.raises(ValueError, match=f"Unknown {option}"):
            localize(pipe, pairs(2), progress=False, **{option: value})
    with pytest.raises(ValueError, match="necessity needs the exact sweep"):
        localize(pipe, pairs(2), method="attribution", direction="necessity", progress=False)
    with pytest.raises(ValueError, match="at least 1 point"):
        localize(pipe, pairs(2), screen_points=0, progress=False)
    with pytest.raises(ValueError, match="leave heads unset"):
        localize(pipe, pairs(2), unit="head", heads=[0], progress=False)
    with pytest.raises(ValueError, match="Unknown kv .keys.; choose one of k, v, both"):
        localize(pipe, pairs(2), kv="keys", progress=False, **kwargs(pipe))


def test_a_share_of_the_pairs_is_held_out_but_never_all_of_them():
    assert [core._held_out_count(0.25, n) for n in (1, 2, 3, 32)] == [0, 1, 1, 8]
    assert core._held_out_count(0.0, 10) == 0 and core._held_out_count(0.9, 3) == 2


def test_attribution_takes_gradients_only_inside_the_patch_window():
    from textloc.localization.attribution import attribution_scores
    from textloc.localization.sweep import PatchSettings

    pipe = _pipeline("sd15")
    layers = core.select_layers(pipe, "all")
    pair = pairs(1)[0]
    inside = attribution_scores(pipe, pair, layers, PatchSettings(), 0, [0], kwargs(pipe))
    outside = attribution_scores(pipe, pair, layers, PatchSettings(patch_steps=(1, None)), 0, [0], kwargs(pipe))
    assert any(score != 0 for score in inside) and all(score == 0 for score in outside)


def test_a_log_line_cut_by_a_crash_is_dropped_and_the_log_goes_on(tmp_path):
    from textloc.localization.report import ProgressLog

    log = ProgressLog(tmp_path, {"a": 1})
    log.put("sweep", 0, {"x": 1})
    with (tmp_path / PROGRESS_FILE).open("a") as handle:
        handle.write('{"stage": "sweep", "pair": 1, "res')  # killed mid-write
    ProgressLog(tmp_path, {"a": 1}).put("sweep", 1, {"x": 2})
    reopened = ProgressLog(tmp_path, {"a": 1})
    assert reopened.get("sweep", 0) == {"x": 1} and reopened.get("sweep", 1) == {"x": 2}


def test_the_selection_rule_asks_the_share_of_the_direct_rate_or_its_lower_bound():
    direct = [1.0] * 10 + [0.0] * 14
    eight = stats.share_interval([1.0] * 8 + [0.0] * 16, direct)
    assert eight[0] == 0.8 and eight[1] < 0.8 <= eight[2]  # 8 of the 10 direct hits: 80%, uncertain
    assert selection.reaches(eight, 0.8, "point") and not selection.reaches(eight, 0.8, "lower-bound")
    assert not selection.reaches(stats.share_interval([1.0] * 7 + [0.0] * 17, direct), 0.8, "point")
    # A set that hits wherever the direct prompt does holds its share in every resample of the pairs.
    assert stats.share_interval(direct, direct) == Share(1.0, 1.0, 1.0) and selection.reaches(Share(1.0, 1.0, 1.0), 0.8, "lower-bound")
    # With no direct hit there is no share, and nothing reaches a share of it.
    nothing = Share(None, None, None)
    assert stats.share_interval([0.0] * 4, [0.0] * 4) == nothing and not selection.reaches(nothing, 0.8, "point")


def test_rates_carry_a_seeded_bootstrap_interval_over_pairs():
    rows = [image(target_hit=float(i % 3 == 0), mse_to_target=0.1) for i in range(24)]
    means = mean_metrics(rows, seed=3)
    low, high = means.ci["target_hit"]
    assert low < means.target_hit < high and high - low > 0.2  # 8 of 24: wide
    assert means == mean_metrics(rows, seed=3) and means.ci != mean_metrics(rows, seed=4).ci
    assert "mse_to_target" not in means.ci  # pixel distances are no rates
    assert mean_metrics([image(target_hit=1.0)] * 5).ci["target_hit"] == [1.0, 1.0]


def test_spearman_matches_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)


def test_ranking_falls_back_on_edit_distances_when_no_patch_hits_the_target():
    layers = [AttentionLayer(f"block.{i}", "cross", i, num_heads=1, num_text_kv_params=1, module=None) for i in range(4)]
    unpatched = {"target_hit": 0.0, "target_f1": 0.0, "target_ned": 0.9, "source_ned": 0.5, "mse_to_target": 0.1}
    exact = {
        "block.0": means_of(**unpatched),  # no effect
        "block.1": means_of(**{**unpatched, "target_ned": 0.95, "source_ned": 0.8, "mse_to_target": 0.05}),  # garbles the source word
        "block.2": means_of(**{**unpatched, "target_ned": 0.6, "source_ned": 0.8, "mse_to_target": 0.05}),  # moves it toward the target
        "block.3": means_of(**{**unpatched, "target_hit": 0.5, "target_f1": 0.5, "target_ned": 0.5, "mse_to_target": 0.01}),
    }
    assert [layer.name for layer in selection.rank_layers(layers, exact, None)] == ["block.3", "block.2", "block.1", "block.0"]


def sweep_of(effects: np.ndarray, unpatched: float = 0.1) -> list[PairScores]:
    """Exact sweep results whose per-pair effects (``[pairs, layers]``: how much a patch brought the
    image closer to the target's) are ``effects``."""
    source = image(mse_to_target=unpatched)
    return [PairScores([], source, image(), [image(mse_to_target=unpatched - e) for e in row]) for row in effects]


def test_screens_are_judged_on_the_layers_whose_exact_effect_is_not_noise():
    rng = np.random.default_rng(0)
    pairs_, names = 12, ["a", "b", "c", "d", "z"]
    # Four layers with steady effects of different sizes, and one (z) whose effect is noise around 0.
    effects = np.column_stack([np.full(pairs_, size) + rng.normal(0, 1e-4, pairs_) for size in (0.04, 0.03, 0.02, 0.01)] + [rng.normal(0, 1e-3, pairs_)])
    faithful = effects + rng.normal(0, 1e-5, effects.shape)
    faithful[:, 4] = 1.0  # what a screen says about a noise layer does not count in the correlations
    backwards = -effects
    timings = {"sweep": 10.0, "faithful screen": 2.0, "backwards screen": 5.0}
    agreement = core._agreement(sweep_of(effects), {"faithful": faithful, "backwards": backwards}, names, ["a", "b"], timings, seed=0)
    assert agreement.distinguishable == ["a", "b", "c", "d"]
    assert agreement.exact_split_half[0] == pytest.approx(1.0)
    good, bad = agreement.screens["faithful"], agreement.screens["backwards"]
    assert good.spearman == pytest.approx(1.0) and good.split_half[0] == pytest.approx(1.0) and good.same_half[0] == pytest.approx(1.0)
    assert bad.spearman == pytest.approx(-1.0) and bad.split_half[0] == pytest.approx(-1.0)
    # Over every layer the faithful screen's top 2 holds z, so it recalls one of the exact top 2.
    assert good.top_k_recall == 0.5 and bad.top_k_recall == 0.0
    assert good.screen_top_k == 3 and good.time_ratio == 5.0 and bad.time_ratio == 2.0
    # Two layers that matter are ranked by their order; with one there is no ranking to compare.
    two = core._agreement(sweep_of(effects[:, [0, 1, 4]]), {"backwards": backwards[:, [0, 1, 4]]}, ["a", "b", "z"], ["a"], timings, seed=0)
    assert two.distinguishable == ["a", "b"] and two.screens["backwards"].spearman == pytest.approx(-1.0)
    one = core._agreement(sweep_of(effects[:, [0, 4]]), {"faithful": faithful[:, [0, 4]]}, ["a", "z"], ["a"], timings, seed=0)
    assert one.screens["faithful"].spearman is None and one.exact_split_half is None


def test_cli_localize_writes_a_report_and_refuses_bad_windows(tmp_path, capsys):
    from textloc.cli import main

    status = main(["--threads", "1", "localize", "--model", "tiny-random-sd3", "--pairs", "2", "--out", str(tmp_path),
                   "--patch-steps", "0:0.5", "--layers", "0", "--layers", "-1"])
    assert status == 0
    report = Localization.load(tmp_path)
    assert report.settings["patch_steps"] == [0, 0.5]
    text_layers = [layer.name for layer in select_layers(_pipeline("sd3"))]
    assert [layer.name for layer in report.layers] == [text_layers[0], text_layers[-1]]  # --layers takes forward indices as `textloc layers` shows
    assert "selected" in capsys.readouterr().out
    assert main(["localize", "--model", "tiny-random-sd3", "--out", str(tmp_path / "x"), "--patch-steps", "late"]) == 2
    assert "START:STOP" in capsys.readouterr().err
    assert main(["localize", "--model", "tiny-random-sd3", "--out", str(tmp_path / "x"), "--heads", "first"]) == 2
    assert "head indices" in capsys.readouterr().err
    for seeds in ("0", "1,01", "1,x"):
        assert main(["localize", "--model", "tiny-random-sd3", "--out", str(tmp_path / "x"), "--seeds", seeds]) == 2
        assert "two or more distinct seeds" in capsys.readouterr().err
    assert main(["localize", "--model", "tiny-random-sd3", "--out", str(tmp_path / "x"), "--seed", "0", "--seeds", "1,2"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["localize", "--model", "tiny-random-sd3", "--out", str(tmp_path / "x"), "--method", "attribution", "--seeds", "1,2"]) == 2
    assert "--method attribution" in capsys.readouterr().err
    # The first of --seeds is the seed, the others repeat the sweep.
    status = main(["--threads", "1", "localize", "--model", "tiny-random-sd3", "--pairs", "2", "--out", str(tmp_path / "seeds"),
                   "--layers", "0", "--layers", "-1", "--seeds", "3,1"])
    assert status == 0
    report = Localization.load(tmp_path / "seeds")
    assert report.settings["seed"] == 3 and report.seed_stability.seeds == [3, 1]


def test_tiny_colour_judge_goes_only_with_tiny_captions(tmp_path):
    from textloc.cli import build_parser
    from textloc.cli.localize import localization_pairs
    from textloc.tiny.pairs import scene_judge

    words = tmp_path / "words.txt"
    words.write_text("LAMP\nDOOR\n")
    own = build_parser().parse_args(["localize", "--model", "textloc-tiny", "--pairs", "2", "--out", "x"])
    assert localization_pairs("textloc-tiny", own)[1] is scene_judge
    for extra in (["--words", str(words)], ["--template", 'a poster that says "{}"']):
        args = build_parser().parse_args(["localize", "--model", "textloc-tiny", "--pairs", "2", "--out", "x", *extra])
        pairs, judge = localization_pairs("textloc-tiny", args)
        assert judge is None and len(pairs) == 2


def test_a_launched_run_shares_the_pairs_out_and_gives_the_single_process_result(tmp_path, monkeypatch):
    # torchrun is what accelerate launch runs on GPUs; without GPUs the processes meet over gloo.
    command = ["localize", "--model", "tiny-random-sd15", "--pairs", "4", "--method", "both", "--threads", "1"]
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "textloc", *command, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert launched.stdout.count("wrote ") == 1  # one summary, from the main process
    from textloc.cli import main

    assert main([*command, "--out", str(tmp_path / "one")]) == 0
    one, two = Localization.load(tmp_path / "one"), Localization.load(tmp_path / "two")
    assert (two.layers, two.sets, two.selected, two.held_out) == (one.layers, one.sets, one.selected, one.held_out)
    second = [json.loads(line) for line in (tmp_path / "two" / "progress.1.jsonl").read_text().splitlines()[1:]]
    assert {line["pair"] for line in second} == {2}  # the second half of the 3 choice pairs (accelerate splits them in order)

    # Either log resumes the other's work: a plain rerun in the launched run's folder generates nothing.
    calls = []
    real = running.generate_patched
    monkeypatch.setattr(running, "generate_patched", lambda *args, **kw: calls.append(args[2]) or real(*args, **kw))
    assert main([*command, "--out", str(tmp_path / "two")]) == 0
    assert calls == [[one.selected]]  # only the held-out example pair, whose images are not logged


def test_tiny_pairs_keep_the_scene_and_change_the_word():
    from textloc.tiny.data import COLOUR_TEMPLATES, HELD_OUT_COMBOS, caption_for, make_example
    from textloc.tiny.pairs import localization_pairs, scene_colours, scene_judge

    chosen = localization_pairs(12, seed=3)
    assert chosen == localization_pairs(12, seed=3)
    held_out = {(sign, background, word) for sign, background, word in HELD_OUT_COMBOS}
    for pair in chosen:
        assert pair.source_text != pair.target_text
        assert scene_colours(pair.source) == scene_colours(pair.target)
        assert (*scene_colours(pair.source), pair.source_text) in held_out
    for template in COLOUR_TEMPLATES:  # every template parses, articles included
        assert scene_colours(caption_for("LAMP", "orange", "red", template)) == ("orange", "red")
    examples = [e for e in (make_example(7, i, held_out=True) for i in range(24)) if e.sign]
    assert all(scene_judge([e.image for e in examples], [e.caption for e in examples]))
    wrong = [caption_for(e.word, e.background, e.sign, COLOUR_TEMPLATES[0]) for e in examples]
    assert not any(scene_judge([e.image for e in examples], wrong))
