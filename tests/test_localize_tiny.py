"""The localizations of the embedded models committed in samples/tiny/localize (textloc-tiny) and
samples/tiny-sd3/localize (textloc-tiny-sd3), checked against what they did not compute
themselves: the shipped model (its layers, their sizes, its weights), the raw OCR readings in the
run's committed progress log, and a fresh run of its selected layers on pairs and noise it never
saw."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

import textloc as tl
from textloc.engine import DEFAULT_START_STEP, denoiser_parameter_count
from textloc.layers import find_preset, resolve_layers
from textloc.localization import Localization
from textloc.localization import LocalizeConfig
from textloc.scoring.prompts import quoted_text
from textloc.localization.report import PROGRESS_FILE
from textloc.localization.results import ImageScores, SetScores
from textloc.localization.scoring import mean_metrics, score_images
from textloc.localization.stats import share_interval
from textloc.localization.sweep import SOURCE_ROW, PatchSettings, unit_patches
from textloc.scoring.metrics import contains, text_scores
from textloc.scoring.ocr import get_ocr
from textloc.fingerprint import weights_fingerprint
from textloc.pipelines import recommended_settings
from textloc.tiny.pairs import localization_pairs, scene_judge

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FINDINGS = {model: SAMPLES / model.removeprefix("textloc-") / "localize" for model in ("textloc-tiny", "textloc-tiny-sd3", "textloc-tiny-flux")}
#: The edit bench whose best start step an embedded model's preset starts from; textloc's default without one.
EDIT_BENCHES = {"textloc-tiny": "edit.json", "textloc-tiny-sd3": "edit-tiny-sd3-pooled.json", "textloc-tiny-flux": "edit-tiny-flux.json"}
# The share of images on which the source's scene (sign and background colours) must stay.
SHARE = 0.8
# Held-out pairs whose images went to the example grid: the log keeps no images, so not these.
EXAMPLES = 6


@pytest.fixture(scope="module", params=list(FINDINGS))
def model(request) -> str:
    if not (FINDINGS[request.param] / "report.json").exists():
        pytest.skip(f"no localization of {request.param} committed")
    return request.param


@pytest.fixture(scope="module")
def finding(model: str) -> Localization:
    return Localization.load(FINDINGS[model])


@pytest.fixture(scope="module")
def pipe(model: str):
    return tl.load_pipeline(model)


@pytest.fixture(scope="module")
def log(model: str) -> tuple[dict, dict[str, dict[int, dict]]]:
    return read_log(FINDINGS[model])


def read_log(folder: Path) -> tuple[dict, dict[str, dict[int, dict]]]:
    """A run's settings and, per stage and pair, what it logged (OCR readings and pixel scores)."""
    lines = [json.loads(line) for line in (folder / PROGRESS_FILE).read_text().splitlines()]
    stages: dict[str, dict[int, dict]] = {}
    for line in lines[1:]:
        stages.setdefault(line["stage"], {})[line["pair"]] = line["result"]
    return lines[0]["settings"], stages


def rescored(rows: list[dict], pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Mean scores of logged images, the text scores recomputed from each image's OCR reading."""
    scores = []
    for row, (source, target) in zip(rows, pairs, strict=True):
        on_target, on_source = text_scores(row["read"], quoted_text(target)), text_scores(row["read"], quoted_text(source))
        scores.append({
            "target_hit": on_target["contains"], "target_f1": on_target["f1"], "target_ned": on_target["ned"],
            "source_hit": on_source["contains"], "source_ned": on_source["ned"], "mse_to_target": row["mse_to_target"],
        })
    return {name: float(np.mean([score[name] for score in scores])) for name in scores[0]}


def first_set_reaching(finding: Localization, cumulative: list[dict], choice: list, ranked: list[str], sets: list[SetScores]) -> int | None:
    """Check the report's cumulative ``sets`` (of layers or heads, in ``ranked`` order) against their
    logged readings; return the index of the first set whose share of the direct rate reaches the
    threshold by the report's rule, or ``None``."""
    assert cumulative[0]["layer_sets"] == [ranked[: k + 1] for k in range(len(ranked))] == [entry.layers for entry in sets]
    direct_rate = rescored([done["target"] for done in cumulative], choice)["target_hit"]
    rates = [rescored([done["patched"][k] for done in cumulative], choice)["target_hit"] for k in range(len(ranked))]
    assert rates == pytest.approx([entry.means.target_hit for entry in sets])
    threshold = finding.settings["threshold"]
    if finding.settings.get("rule", "point") == "point":
        return next((k for k, rate in enumerate(rates) if rate >= threshold * direct_rate), None)
    # The lower end of the share's interval over pairs, resampled from the readings.
    direct_hits = [float(contains(done["target"]["read"], quoted_text(target))) for done, (_, target) in zip(cumulative, choice)]
    shares = [
        share_interval([float(contains(done["patched"][k]["read"], quoted_text(target))) for done, (_, target) in zip(cumulative, choice)],
                       direct_hits, seed=finding.settings["seed"])
        for k in range(len(ranked))
    ]
    np.testing.assert_allclose(shares, [list(entry.share_of_direct) for entry in sets], rtol=1e-9)
    return next((k for k, share in enumerate(shares) if share[1] >= threshold), None)


def check_selected(reached: bool, selected: list[str], ranked: list[str], first: int | None, sets: list[SetScores]) -> None:
    """The selection rule: the first cumulative set that reaches the threshold; when none does,
    the set with the highest lower bound of its share of the direct rate, the smallest of equals."""
    assert reached == (first is not None)
    if reached:
        assert selected == ranked[: first + 1]
    else:
        assert selected == max(sets, key=lambda entry: (entry.share_of_direct.value, -len(entry.layers))).layers


def merit(means: dict) -> tuple[float, ...]:
    """localize's ranking rule: target hits, word F1, edit distance moved toward the target, pixels."""
    return (means["target_hit"], means["target_f1"], means["source_ned"] - means["target_ned"], -means["mse_to_target"])


def test_the_committed_finding_is_about_the_shipped_model(model: str, finding: Localization, pipe) -> None:
    assert finding.model == model
    assert finding.settings["weights"] == weights_fingerprint(pipe)  # made on these weights, not older ones
    # Every unit it swept is one of the model's, and it swept every attention layer (a report made
    # before the pooled vector was a unit swept the attention layers alone).
    shipped = tl.select_layers(pipe, finding.settings["layers"])
    assert set(tl.select_layers(pipe, "attention")) <= set(shipped)
    assert [(layer.name, layer.kind, layer.index, layer.num_text_kv_params) for layer in finding.layers] == [
        (layer.name, layer.kind, layer.index, layer.num_text_kv_params) for layer in shipped
    ]
    total = denoiser_parameter_count(pipe)
    assert [layer.param_share for layer in finding.layers] == pytest.approx([layer.num_text_kv_params / total for layer in shipped])
    assert set(finding.selected) < {layer.name for layer in shipped}


@pytest.mark.parametrize("folder", [*FINDINGS.values(), *(FINDINGS["textloc-tiny"].parent / f"localize-kv-{kv}" for kv in "kv")], ids=lambda folder: folder.parent.name + "/" + folder.name)
def test_a_committed_report_reads_into_its_types_and_writes_back_byte_for_byte(folder: Path, tmp_path: Path) -> None:
    """The typed results keep report.json's layout: every committed report loads and is written
    again as the same file (its CSV too), so results written before the types stay readable."""
    Localization.load(folder).save(tmp_path)
    for name in ("report.json", "layers.csv"):
        assert (tmp_path / name).read_bytes() == (folder / name).read_bytes(), name


def test_the_preset_of_an_embedded_model_is_its_committed_localization(model: str, finding: Localization, pipe) -> None:
    assert find_preset(pipe).model == model
    assert list(find_preset(pipe).layers) == finding.selected
    assert {layer.name for layer in resolve_layers(pipe, "preset")} == set(finding.selected)
    # Its edits start where its own edit bench found them best.
    if model not in EDIT_BENCHES:
        assert find_preset(pipe).start_step == DEFAULT_START_STEP
        return
    bench = SAMPLES.parent / "bench" / "results" / EDIT_BENCHES[model]
    assert find_preset(pipe).start_step == json.loads(bench.read_text())["settings"]["best_start"]


def check_necessity(finding: Localization, stages: dict, choice: list) -> None:
    """Each layer's necessity row, recomputed from the logged readings."""
    # Necessity generates the target prompt with the source's text: its log rows are the swapped pair's.
    swapped = [(target, source) for source, target in choice]
    sweep = [stages["necessity sweep"][index] for index in range(len(choice))]
    for k, row in enumerate(finding.layers):
        assert sweep[0]["layer_sets"][k] == [row.name]
        survives = rescored([done["patched"][k] for done in sweep], swapped)["source_hit"]  # the target's word, still read
        assert row.necessity.target_hit == pytest.approx(survives), row.name


def check_layers(finding: Localization, settings: dict, stages: dict) -> tuple[list, list[str], int | None]:
    """The report's settings, floors, layer scores, ranks and cumulative sets against its log; the
    choice pairs, the ranked layers and the index of the first set that reaches the threshold."""
    # The log's settings are the report's, but for those a resume does not check (the log keeps the
    # values of the run that began it) and the counts the report adds.
    checked = [k for k in settings if k != "pairs" and k not in LocalizeConfig().unchecked()]
    assert {k: settings[k] for k in checked} == {k: finding.settings[k] for k in checked}
    choice, held = settings["pairs"][: finding.settings["choice_pairs"]], settings["pairs"][finding.settings["choice_pairs"] :]
    assert len(held) == finding.settings["held_out_pairs"] and sorted(stages["sweep"]) == list(range(len(choice)))

    # Every layer's scores and the floors, recomputed from the readings; the ranks follow from them.
    sweep = [stages["sweep"][index] for index in range(len(choice))]
    for floor in ("source", "target"):
        recomputed = rescored([done[floor] for done in sweep], choice)
        assert recomputed == pytest.approx({name: getattr(getattr(finding.baselines, floor), name) for name in recomputed})
    means = {layer: rescored([done["patched"][i] for done in sweep], choice) for i, (layer,) in enumerate(sweep[0]["layer_sets"])}
    for row in finding.layers:
        assert means[row.name] == pytest.approx({name: getattr(row.exact, name) for name in means[row.name]}), row.name
    ranked = [row.name for row in sorted(finding.layers, key=lambda row: row.rank)]
    assert [merit(means[name]) for name in ranked] == sorted(map(merit, means.values()), reverse=True)
    first = first_set_reaching(finding, [stages["cumulative sets"][index] for index in range(len(choice))], choice, ranked, finding.sets)
    return choice, ranked, first


def test_the_committed_necessity_follows_from_its_logged_readings(finding: Localization, log) -> None:
    settings, stages = log
    if "necessity sweep" not in stages:
        pytest.skip("the committed localization measured sufficiency only")
    check_necessity(finding, stages, settings["pairs"][: finding.settings["choice_pairs"]])
    # The held-out survival rate, from the readings of the held-out pairs the log keeps (the
    # necessity run generates each target prompt with the source's text: the swapped pair).
    held = settings["pairs"][finding.settings["choice_pairs"] :]
    logged = sorted(stages["necessity held out"])
    assert logged == list(range(EXAMPLES, len(held)))
    done = [stages["necessity held out"][index] for index in logged]
    survives = rescored([entry["patched"][0] for entry in done], [(held[i][1], held[i][0]) for i in logged])["source_hit"]
    hits_in_report = finding.held_out.necessity.patched.target_hit * len(held)
    assert 0 <= round(hits_in_report - survives * len(logged)) <= EXAMPLES


@pytest.mark.parametrize("kv", ["k", "v"])
def test_the_committed_keys_only_and_values_only_runs_follow_from_their_logs(kv: str) -> None:
    folder = FINDINGS["textloc-tiny"].parent / f"localize-kv-{kv}"
    finding, (settings, stages) = Localization.load(folder), read_log(folder)
    assert finding.settings["kv"] == kv and finding.settings["direction"] == "both"
    choice, ranked, first = check_layers(finding, settings, stages)
    assert finding.reached == (first is not None)
    if finding.reached:
        assert finding.selected == ranked[: first + 1]
    check_necessity(finding, stages, choice)


def test_the_committed_report_follows_from_its_logged_readings(finding: Localization, log) -> None:
    settings, stages = log
    choice, ranked, first = check_layers(finding, settings, stages)
    held = settings["pairs"][len(choice) :]
    check_selected(finding.reached, finding.selected, ranked, first, finding.sets)

    # The report's held-out rates, recomputed from the readings of the held-out pairs the log keeps.
    # The report's rates count the grid's pairs too, so they exceed the log's by at most those pairs.
    held_out = finding.held_out.sufficiency
    logged = sorted(stages["held out"])
    assert logged == list(range(EXAMPLES, len(held)))
    done = [stages["held out"][index] for index in logged]
    assert all(entry["layer_sets"] == [finding.selected] for entry in done)
    held_pairs = [held[index] for index in logged]
    unpatched, direct, patched = (rescored(rows, held_pairs) for rows in (
        [entry["source"] for entry in done], [entry["target"] for entry in done], [entry["patched"][0] for entry in done]))
    for name, means in (("unpatched", unpatched), ("direct", direct), ("patched", patched)):
        hits_in_report, hits_logged = getattr(held_out, name).target_hit * len(held), means["target_hit"] * len(logged)
        assert 0 <= round(hits_in_report - hits_logged) <= EXAMPLES
    assert direct["target_hit"] > unpatched["target_hit"] == held_out.unpatched.target_hit == 0
    assert np.mean([entry["patched"][0]["scene"] for entry in done]) >= SHARE
    if finding.reached:
        # The claim: the set writes the target word where the unpatched prompt never does, at 80% or
        # more of the rate of the target prompted directly, and takes the reading most of the way
        # (edit distance) to the target prompt's.
        assert held_out.patched.target_hit >= 0.8 * held_out.direct.target_hit
        assert patched["target_hit"] >= 0.8 * direct["target_hit"]
        assert unpatched["target_ned"] - patched["target_ned"] >= 0.8 * (unpatched["target_ned"] - direct["target_ned"]) > 0


def test_the_committed_seed_stability_follows_from_its_logged_sweeps(finding: Localization, log) -> None:
    settings, stages = log
    stability = finding.seed_stability
    if stability is None:
        pytest.skip("the committed localization swept no other seeds")
    choice = settings["pairs"][: finding.settings["choice_pairs"]]
    sweeps = {seed: stages["sweep" if seed == finding.settings["seed"] else f"sweep at seed {seed}"] for seed in stability.seeds}
    names = [name for (name,) in sweeps[finding.settings["seed"]][0]["layer_sets"]]
    effects = {}
    for seed, sweep in sweeps.items():
        done = [sweep[index] for index in range(len(choice))]
        means = {name: rescored([entry["patched"][i] for entry in done], choice) for i, name in enumerate(names)}
        ranked = stability.rankings[str(seed)]
        assert sorted(ranked) == sorted(names)
        assert [merit(means[name]) for name in ranked] == sorted(map(merit, means.values()), reverse=True), seed
        # How much closer each layer's patch brought the image to the target's, per pair.
        effects[seed] = np.array([[entry["source"]["mse_to_target"] - row["mse_to_target"] for row in entry["patched"]] for entry in done])
    keep = [names.index(name) for name in stability.distinguishable]
    k = stability.k
    for entry in stability.pairwise:
        a, b = entry.seeds
        rho = scipy.stats.spearmanr(effects[a].mean(axis=0)[keep], effects[b].mean(axis=0)[keep]).statistic
        assert entry.spearman == pytest.approx(rho)
        assert entry.same_top_k == (set(stability.rankings[str(a)][:k]) == set(stability.rankings[str(b)][:k]))
    assert stability.spearman == pytest.approx(np.mean([entry.spearman for entry in stability.pairwise]))


def test_the_committed_head_set_follows_from_its_logged_readings(finding: Localization, log) -> None:
    settings, stages = log
    if not finding.heads:
        pytest.skip("the committed localization swept no heads")
    heads = finding.heads
    choice, held = settings["pairs"][: finding.settings["choice_pairs"]], settings["pairs"][finding.settings["choice_pairs"] :]
    # Each head of the selected layers patched alone: its scores and rank from the readings.
    sweep = [stages["head sweep"][index] for index in range(len(choice))]
    # Every head of each selected layer; the pooled vector, which has none, as one unit.
    kinds = {layer.name: layer.kind for layer in finding.layers}
    heads_of = (len(sweep[0]["layer_sets"]) - sum(kinds[layer] == "pooled" for layer in finding.selected)) // sum(
        kinds[layer] != "pooled" for layer in finding.selected)
    assert sorted(name for (name,) in sweep[0]["layer_sets"]) == sorted(
        layer if kinds[layer] == "pooled" else f"{layer}@{head}" for layer in finding.selected
        for head in (range(1) if kinds[layer] == "pooled" else range(heads_of)))
    means = {name: rescored([done["patched"][i] for done in sweep], choice) for i, (name,) in enumerate(sweep[0]["layer_sets"])}
    for unit in heads.units:
        assert means[unit.name] == pytest.approx({name: getattr(unit.exact, name) for name in means[unit.name]}), unit.name
    ranked = [unit.name for unit in sorted(heads.units, key=lambda unit: unit.rank)]
    assert [merit(means[name]) for name in ranked] == sorted(map(merit, means.values()), reverse=True)
    first = first_set_reaching(finding, [stages["head cumulative sets"][index] for index in range(len(choice))], choice, ranked, heads.sets)
    check_selected(heads.reached, heads.selected, ranked, first, heads.sets)
    # The head set's held-out rates, from the held-out pairs the log keeps (the grid's are not).
    logged = sorted(stages["head held out"])
    assert logged == list(range(EXAMPLES, len(held)))
    done = [stages["head held out"][index] for index in logged]
    assert all(entry["layer_sets"] == [heads.selected] for entry in done)
    patched = rescored([entry["patched"][0] for entry in done], [held[index] for index in logged])
    hits_in_report, hits_logged = heads.held_out.sufficiency.patched.target_hit * len(held), patched["target_hit"] * len(logged)
    assert 0 <= round(hits_in_report - hits_logged) <= EXAMPLES


def test_the_selected_layers_carry_the_word_on_new_pairs(model: str, finding: Localization, pipe) -> None:
    """What the report claims of its selected layers holds on pairs and noise it never used (it
    ran on seed 0): that they write the target word (when the selection reached the threshold),
    and that they erase it (when held-out necessity removed it from nearly every image)."""
    pytest.importorskip("rapidocr")
    settings = recommended_settings(model)
    ocr = get_ocr("rapidocr")
    pairs = localization_pairs(4, seed=1)  # 16 rows: 48 s on textloc-tiny at 1 thread
    sufficiency = finding.reached
    necessity = finding.held_out.necessity is not None and finding.held_out.necessity.patched.target_hit <= 0.1
    assert sufficiency or necessity, "the committed localization claims nothing this test can check"
    # Both directions from one batch and one noise (every row starts from it, as in a localization's
    # own batches): the source and the target unpatched, the source reading the target's text at
    # the selected layers (sufficiency) and the target reading the source's (necessity).
    writes = unit_patches(finding.selected, 2, PatchSettings())
    erases = [dataclasses.replace(patch, source=SOURCE_ROW, row=3) for patch in unit_patches(finding.selected, 3, PatchSettings())]
    rows: dict[tuple[str, str], list[ImageScores]] = {}
    for pair in pairs:
        output = tl.run_with_patches(pipe, [pair.source, pair.target] * 2, writes + erases, generator=tl.generator(1), output_type="np", **settings)
        source, target, written, erased = np.asarray(output.images)
        directions = [("sufficiency", pair, (source, target, written))] if sufficiency else []
        directions += [("necessity", pair.swapped(), (target, source, erased))] if necessity else []
        for direction, scored_pair, images in directions:
            scored = score_images(list(images), scored_pair, images[0], images[1], ocr, scene_judge)
            for name, row in zip(("unpatched", "direct", "patched"), scored):
                rows.setdefault((direction, name), []).append(row)
    means = {key: mean_metrics(value) for key, value in rows.items()}
    if sufficiency:
        unpatched, direct, patched = (means["sufficiency", name] for name in ("unpatched", "direct", "patched"))
        assert unpatched.target_hit == 0 and patched.source_hit == 0
        assert patched.target_hit >= 0.8 * direct.target_hit > 0
        # Over 4 pairs one misread flips a hit, so the edit distance is checked too: the patch must
        # take the reading at least half of the way from the source prompt's to the target prompt's
        # (a set that does not carry the word takes it nowhere, or further away).
        gap = unpatched.target_ned - direct.target_ned
        assert gap > 0 and unpatched.target_ned - patched.target_ned >= 0.5 * gap
        assert patched.scene >= SHARE
    if necessity:
        # The swapped pair's source is the target prompt: its word is the swapped pair's source text.
        unpatched, patched = means["necessity", "unpatched"], means["necessity", "patched"]
        assert unpatched.source_hit >= 0.5 and patched.source_hit <= 0.1  # the claim checked: necessity at most 0.1
