"""The numbers the hand-written docs pages quote from results files agree with those files.

Each check rebuilds a piece of a page (a table row, a phrase) from a results file, with the
formatting the generated results pages use (``docs/sitegen/markdown.py``), and the piece must be
in the page word for word (line breaks aside). A number changed on a page, or a results file
rerun without its page, fails here and names the page's nearest line. The generated results
pages show every number of every file; these checks hold the prose that quotes them.

Not checked here, because no results file holds them: the embedded models' training and held-out
evaluation figures in models.md (``samples/*/heldout_step*.txt`` and the trainer's logs), and the
earlier runs benchmarks.md and localization.md name as history.
"""

from __future__ import annotations

import difflib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))

from sitegen.bench_results import real_size_rows
from sitegen.markdown import accuracy, bound, bracket, count, counted, exact_interval, num, pct, points_lost, rate, table

#: page -> the function that yields what it must say.
CHECKS: dict[str, Callable[[], Iterator[str]]] = {}


def quotes(page: str) -> Callable[[Callable[[], Iterator[str]]], Callable[[], Iterator[str]]]:
    def register(function: Callable[[], Iterator[str]]) -> Callable[[], Iterator[str]]:
        CHECKS[page] = function
        return function

    return register


@functools.cache
def results(path: str) -> Any:
    return json.loads((ROOT / path).read_text())


def ratio(a: float, b: float, digits: int = 2) -> str:
    return f"{a / b:.{digits}f}"


def share(entry: list[float]) -> str:
    """A ``[share, low, high]`` entry of a report: ``108% [93, 129]``."""
    return rate(entry[0], entry[1:])


def json_rate(run: dict[str, Any], method: str = "unguarded") -> float:
    """A bench_guard_adversarial method's toxic-word rate over every form (each form's prompts weighed)."""
    forms = run["methods"][method]["forms"].values()
    return sum(form["toxic_word_read"] * form["images"] for form in forms) / sum(form["images"] for form in forms)


def span(rates: list[float]) -> str:
    """The range of some rates: ``62–75%``."""
    return f"{min(rates) * 100:.0f}–{pct(max(rates))}"


def hit(means: dict[str, Any]) -> str:
    """The target word's rate with its bootstrap interval."""
    return rate(means["target_hit"], means["ci"]["target_hit"])


def unit(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(entry for entry in report["layers"] if entry["name"] == name)


def cumulative(report: dict[str, Any], size: int, key: str = "sets") -> dict[str, Any]:
    sets = report[key] if key == "sets" else report["heads"]["sets"]
    return next(entry for entry in sets if len(entry["layers"]) == size)


def tiny_layer(block: int) -> str:
    return f"up_blocks.1.attentions.{block}.transformer_blocks.0.attn2"


# The toxic-text guard -----------------------------------------------------------------------------

#: The anchor weights of docs/guard.md's anchor table (bench/results/guard_lora-anchor<weight>.json).
ANCHOR_WEIGHTS = ("0.03", "0.1", "0.3", "1")


@quotes("guard.md")
def _guard() -> Iterator[str]:
    tiny, sd3, pooled = (results(f"bench/results/{name}.json") for name in ("guard", "guard-tiny-sd3", "guard-tiny-sd3-pooled"))
    t, s, p = (r["methods"] for r in (tiny, sd3, pooled))

    def cells(m: dict[str, Any], bold: tuple[int, ...] = ()) -> list[str]:
        values = [counted(m["toxic_word_read"], 48), counted(m["replacement_read"], 48), pct(m["scene_kept"]),
                  num(m["mse_outside_text"], 4), num(m["ssim_outside_text"], 3)]
        return [f"**{v}**" if i in bold else v for i, v in enumerate(values)]

    def unguarded(m: dict[str, Any]) -> str:  # the floor: no replacement, nothing moved
        return f"{counted(m['toxic_word_read'], 48)} | {pct(m['replacement_read'])} | {pct(m['scene_kept'])} | 0 | 1"

    def zero(m: dict[str, Any]) -> str:  # a replacement rate the table gives without a count
        return pct(m["replacement_read"])

    settings = tiny["settings"]
    yield f"({settings['prompts']} toxic prompts"
    yield f"from step {settings['start_step']} of {settings['model_settings']['num_inference_steps']})"
    yield f"its first localization from step {sd3['settings']['start_step']}"
    yield f"| unguarded (the floor) | {unguarded(t['unguarded'])} |"
    c = cells(t["patch"], (0, 3, 4))
    yield f"| **guard** (`method=\"patch\"`) | {' | '.join(c)} |"
    c = cells(t["negative-prompt"])
    yield f"| negative prompt `text \"<word>\"` | {c[0]} | {zero(t['negative-prompt'])} | {' | '.join(c[2:])} |"
    yield f"| prompt swap (the benign prompt, generated directly) | {' | '.join(cells(t['prompt-swap']))} |"
    yield f"(MSE {num(t['patch']['mse_outside_text'], 4)} against {num(t['prompt-swap']['mse_outside_text'], 4)})"
    yield f"it still writes the word on {pct(t['negative-prompt']['toxic_word_read'])}"
    yield f"On {tiny['clean']['prompts']} clean held-out prompts the detector flags none"
    yield f"bit-identical to the plain pipeline's ({pct(tiny['clean']['bit_identical'])})"
    cost = tiny["cost"]
    yield (f"generation takes **{cost['patch_ratio']:.2f}×** a plain one ({cost['plain_s']:.2f} s; negative prompt "
           f"{cost['negative-prompt_ratio']:.2f}×, prompt swap {cost['prompt-swap_ratio']:.2f}×")
    yield f"the cost does not depend on the weights) {cost['joint_patch_ratio']:.2f}×"
    def model_rows(model: str, m: dict[str, Any], cost: dict[str, Any], guard: str, bold: tuple[int, ...]) -> Iterator[str]:
        """A model's rows of the table of every model: the floor, the guard and the two baselines."""
        yield f"| {model} | unguarded (the floor) | {unguarded(m['unguarded'])} | 1 |"
        yield f"| | {guard} | {' | '.join(cells(m['patch'], bold))} | {cost['patch_ratio']:.2f} |"
        c = cells(m["negative-prompt"])
        yield f"| | negative prompt | {c[0]} | {zero(m['negative-prompt'])} | {' | '.join(c[2:])} | {cost['negative-prompt_ratio']:.2f} |"
        yield f"| | prompt swap | {' | '.join(cells(m['prompt-swap']))} | {cost['prompt-swap_ratio']:.2f} |"

    # The table of every model.
    yield from model_rows("textloc-tiny", t, cost, "**guard**", (0, 3, 4))
    yield from model_rows("textloc-tiny-sd3", s, sd3["cost"], "**guard** (the 3 blocks)", (0, 3, 4))
    yield f"| | **guard** (the 3 blocks and the pooled vector) | {' | '.join(cells(p['patch'], (0, 1)))} | {pooled['cost']['patch_ratio']:.2f} |"
    flux = results("bench/results/guard-tiny-flux.json")
    f, fcost = flux["methods"], flux["cost"]
    yield from model_rows("textloc-tiny-flux", f, fcost, "**guard** (its 2 double-stream blocks)", (0,))
    yield f"localization's two double-stream blocks from step {flux['settings']['start_step']}"
    yield f"(0 of 48, against {pct(f['unguarded']['toxic_word_read'])} unguarded)"
    yield f"and all {flux['clean']['prompts']} clean prompts bit-identical" if flux["clean"]["bit_identical"] == 1 else "(not all clean prompts bit-identical)"
    yield f"it writes the benign word on {pct(f['patch']['replacement_read'])} against the prompt swap's {pct(f['prompt-swap']['replacement_read'])}"
    yield f"(MSE {num(f['patch']['mse_outside_text'], 4)} against {num(f['prompt-swap']['mse_outside_text'], 4)})"
    yield f"(a plain image took {fcost['plain_s']:.2f} s"
    yield f"the prompt swap's {fcost['prompt-swap_ratio']:.2f}× is that noise"
    yield f"keeps every toxic word out ({round(s['patch']['toxic_word_read'] * 48)} of 48"
    yield f"prompt swap (MSE {num(s['patch']['mse_outside_text'], 4)} against {num(s['prompt-swap']['mse_outside_text'], 4)})"
    yield f"the replacement is read on {pct(s['patch']['replacement_read'])} against the prompt swap's {pct(s['prompt-swap']['replacement_read'])}"
    yield f"cost {sd3['cost']['patch_ratio']:.2f}× a plain one ({sd3['cost']['plain_s']:.2f} s)"
    yield f"does ({pct(p['patch']['replacement_read'])} against {pct(p['prompt-swap']['replacement_read'])})"
    yield (f"swap's (MSE {num(p['patch']['mse_outside_text'], 4)} against {num(p['prompt-swap']['mse_outside_text'], 4)}), "
           f"where the blocks alone moved it less ({num(s['patch']['mse_outside_text'], 4)})")

    yield from _guard_adversarial()


def _guard_adversarial() -> Iterator[str]:
    """The adversarial-prompt table (toxic words read, per form, on both models) and its prose."""
    tiny, sd3 = (results(f"bench/results/{name}.json") for name in ("guard_adversarial", "guard_adversarial-tiny-sd3"))
    shown = ("unguarded", "patch + image check", "negative-prompt", "prompt-swap")

    def read(run: dict[str, Any], method: str, forms: list[str]) -> tuple[int, int]:
        entries = [run["methods"][method]["forms"][form] for form in forms]
        return sum(count(e["toxic_word_read"], e["images"]) for e in entries), sum(e["images"] for e in entries)

    def overall(run: dict[str, Any], method: str, key: str) -> float:
        entries = [e for e in run["methods"][method]["forms"].values() if e[key] is not None]
        return sum(e[key] * e["images"] for e in entries) / sum(e["images"] for e in entries)

    forms = list(tiny["methods"]["unguarded"]["forms"])
    for form in forms:
        cells = [f"{k}/{n}" for run in (tiny, sd3) for k, n in (read(run, method, [form]) for method in shown)]
        cells[1], cells[5] = f"**{cells[1]}**", f"**{cells[5]}**"
        yield "| " + " | ".join(cells) + " |"
    totals = []
    for run in (tiny, sd3):
        (k0, n), (k1, _), (k2, _), (k3, _) = (read(run, method, forms) for method in shown)
        low, high = exact_interval(k1, n)
        totals += [f"{k0}/{n} ({pct(k0 / n)})", f"**{k1}/{n}** {bracket(low, high) if low else f'[0, {bound(high)}]'}", f"{k2}/{n}", f"{k3}/{n}"]
    yield "| all forms | " + " | ".join(totals) + " |"
    found = [e["found_in_prompt"] for run in (tiny, sd3) for e in run["methods"]["patch"]["forms"].values()]
    assert min(found) == 1, "the page says the guard found the word in every prompt"
    yield f"in every one of the {2 * len(forms) * 12} prompts"
    yield f"is read on {pct(overall(tiny, 'patch', 'replacement_read'))} of textloc-tiny's guarded images"
    yield f"and on {pct(overall(sd3, 'patch', 'replacement_read'))} of textloc-tiny-sd3's"
    for run, model in ((tiny, "textloc-tiny"), (sd3, "textloc-tiny-sd3")):
        floor = f"{pct(overall(run, 'unguarded', 'scene_kept'))}{' unguarded' if run is tiny else ''}"
        yield f"{pct(overall(run, 'patch + image check', 'scene_kept'))} {'guarded against' if run is tiny else 'against'} {floor} ({model})"
        assert run["clean"]["patch"]["bit_identical"] == run["clean"]["patch + image check"]["bit_identical"] == 1
        assert run["clean"]["patch"]["flagged"] == run["clean"]["patch + image check"]["flagged"] == 0
    yield (f"costs {tiny['methods']['patch + image check']['x_unguarded']:.2f}× a plain one on textloc-tiny and "
           f"{sd3['methods']['patch + image check']['x_unguarded']:.2f}× on textloc-tiny-sd3")
    yield f"On {tiny['clean']['prompts']} clean held-out prompts"
    # The default guard and its floor on 4 held-out scenes a word (bench_guard_adversarial.py --scenes 4).
    wider = {model: results(f"bench/results/guard_adversarial{suffix}-scenes4.json") for model, suffix in (("tiny", ""), ("sd3", "-tiny-sd3"))}
    for model, run in wider.items():
        assert run["run"]["scenes"] == 4 and set(run["methods"]) == {"unguarded", "patch + image check"}
        assert all(form["found_in_prompt"] == 1 for form in run["methods"]["patch + image check"]["forms"].values())
        assert run["clean"]["patch + image check"] == {"flagged": 0.0, "caught_by_image_check": 0.0, "bit_identical": 1.0}
    def over_forms(run: dict[str, Any], method: str) -> str:
        forms = run["methods"][method]["forms"].values()
        n = sum(form["images"] for form in forms)
        return counted(sum(form["toxic_word_read"] * form["images"] for form in forms) / n, n)

    assert {over_forms(run, "patch + image check") for run in wider.values()} == {"0% (0/216) [0, 1.7]"}
    caught = {(model, form): count(scores["caught_by_image_check"], scores["images"]) for model, run in wider.items()
              for form, scores in run["methods"]["patch + image check"]["forms"].items() if scores["caught_by_image_check"]}
    assert caught == {("sd3", "leet"): 1}, "guard.md: the image check caught one row, a leet prompt on textloc-tiny-sd3"
    yield "prompts a model, 24 a form, the first 108 the ones above): **0/216** toxic words read on either"
    yield "bounds the rate below **1.7%** (95%)"
    tiny_floor, sd3_floor = (over_forms(run, "unguarded").split(" ", 1)[1] for run in wider.values())
    yield f"writes it on {pct(json_rate(wider['tiny']))} {tiny_floor} and textloc-tiny-sd3 on {pct(json_rate(wider['sd3']))} {sd3_floor}"
    # The guard in the weights (bench_guard_lora.py).
    lora = results("bench/results/guard_lora.json")
    v, budget = lora["variants"], lora["budget"]
    n = sum(form["images"] for form in v["base"]["forms"].values())
    yield f"{budget['steps']} steps,\nbatch {budget['batch_size']}, lr {budget['lr']}"
    yield f"on {budget['benign']} held-out captions of the benign words"

    def lora_row(name: str, label: str, bold: bool) -> str:
        m, b = v[name], v[name]["benign"]
        toxic = f"{pct(m['toxic_word_read'])} ({count(m['toxic_word_read'], n)}/{n})" if name != "base" else pct(m["toxic_word_read"])
        cells = [f"**{toxic}**" if bold else toxic, pct(m["replacement_read"]), pct(m["scene_kept"]),
                 num(m["mse_outside_text"], 4) if name != "base" else "0", accuracy(b["word_acc"], b["n"])]
        return f"| {label} | " + " | ".join(cells) + " |"

    yield lora_row("base", "base model", False)
    yield lora_row("text-layers", f"**LoRA on the {v['text-layers']['layers']} text layers**", True)
    if "all-attention" in v:
        yield lora_row("all-attention", f"LoRA on all {v['all-attention']['layers']} attention layers", False)
    slower = results("bench/results/guard_lora-lr1e-3.json")
    yield f"A lower learning\nrate ({slower['budget']['lr']}, the same steps)"
    yield f"({slower['variants']['text-layers']['benign']['word_acc']:.1%}, `bench/results/guard_lora-lr1e-3.json`)"
    # Why the benign words fall: the same bench, one pairs option changed a file.
    control = results("bench/results/guard_lora-toxic0.json")["variants"]["text-layers"]["benign"]
    yield f"keeps them, {accuracy(control['word_acc'], control['n']).split(' [')[0]} against the base model's {v['base']['benign']['word_acc']:.1%}"

    def pairs_row(path: str, label: str) -> str:
        run = results(path)
        m = run["variants"]["text-layers"]
        toxic = pct(m["toxic_word_read"]) if run["budget"]["toxic_fraction"] == 0 else f"{pct(m['toxic_word_read'])} ({count(m['toxic_word_read'], n)}/{n})"
        cells = [toxic, pct(m["replacement_read"]), pct(m["scene_kept"]), accuracy(m["benign"]["word_acc"], m["benign"]["n"]), f"{m['seconds_per_step']:.2f}"]
        return f"| {label} | " + " | ".join(cells) + " |"

    base = v["base"]
    yield f"| base model | {pct(base['toxic_word_read'])} | {pct(base['replacement_read'])} | {pct(base['scene_kept'])} | {accuracy(base['benign']['word_acc'], base['benign']['n'])} | - |"
    runs_1000 = results("bench/results/guard_lora-1000steps.json")["variants"]["text-layers"]
    yield pairs_row("bench/results/guard_lora-toxic0.json", "toxic fraction 0 (control: ordinary signs only)")
    yield pairs_row("bench/results/guard_lora-toxic0.25.json", "toxic fraction 0.25")
    yield pairs_row("bench/results/guard_lora.json", "toxic fraction 0.5 (the default)")
    yield pairs_row("bench/results/guard_lora-lr1e-3.json", "toxic fraction 0.5, lr 0.001")
    yield pairs_row("bench/results/guard_lora-preserve.json", "toxic fraction 0.5, ordinary signs preserved")
    yield pairs_row("bench/results/guard_lora-1000steps.json", "toxic fraction 0.5, 1000 steps")
    yield pairs_row("bench/results/guard_lora-1500steps.json", "toxic fraction 0.5, 1500 steps")
    yield pairs_row("bench/results/guard_lora-rank16.json", "toxic fraction 0.5, rank 16")
    yield pairs_row("bench/results/guard_lora-ema.json", "toxic fraction 0.5, 1000 steps, EMA 0.99")
    yield pairs_row("bench/results/guard_lora-prefix.json", "the same, replacements keeping first letters")
    kept_letters = results("bench/results/guard_lora-prefix.json")
    assert {k: v for k, v in kept_letters["budget"].items() if k != "replace"} == {**results("bench/results/guard_lora-ema.json")["budget"], "rank": 4}
    assert kept_letters["budget"]["replace"] == "DAMN=DOOR,HELL=HOTEL,CRAP=CAKE,SHIT=SHOP,PISS=PIZZA,PORN=PARK"
    prefix = kept_letters["variants"]["text-layers"]
    ema = results("bench/results/guard_lora-ema.json")["variants"]["text-layers"]
    yield f"write the replacement more often ({pct(prefix['replacement_read'])} against {pct(ema['replacement_read'])})"
    yield f"keep no more benign words ({prefix['benign']['word_acc']:.1%} against {ema['benign']['word_acc']:.1%}"
    averaged = results("bench/results/guard_lora-ema.json")
    assert averaged["budget"]["ema_decay"] == 0.99 and averaged["budget"]["steps"] == 1000
    ema_benign = averaged["variants"]["text-layers"]["benign"]["word_acc"]
    yield f"keeps {ema_benign:.1%} of\nthe benign words at 1000 steps, against {runs_1000['benign']['word_acc']:.1%}"
    yield f"{100 * (v['base']['benign']['word_acc'] - ema_benign):.1f} points short of the base model"
    # The same LoRA on 512 benign captions, each variant against the base on the same captions and noise.
    wide = results("bench/results/guard_lora-ema-benign512.json")
    defaults = {"rank": 4, "replace": None, "twin_fraction": 0.0, "targets": None}
    assert wide["budget"] == {**averaged["budget"], **defaults, "benign": 512}
    wide_base, wide_ema = wide["variants"]["base"]["benign"], wide["variants"]["text-layers"]
    assert wide_base["n"] == 512 and wide_ema["toxic_word_read"] == 0
    yield (f"on 512 held-out\nbenign captions it reads {wide_ema['benign']['word_acc']:.1%} of the words against the base model's {wide_base['word_acc']:.1%} "
           f"on the same captions\nand noise: {points_lost(wide_ema['benign_drop']).replace(' [', ' points lost [')}, where the bar is 3 (the first 64 captions had shown "
           f"{100 * (v['base']['benign']['word_acc'] - ema_benign):.1f})")

    def paired_row(path: str, label: str, **budget: Any) -> str:
        run = results(path)
        unset = {"anchor_weight": None}  # files from before --anchor-weight
        assert {**unset, **run["budget"]} == {**unset, **wide["budget"], **budget}, f"{path}: the 512-caption table's budget, {budget} apart"
        m = run["variants"]["text-layers"]
        assert run["variants"]["base"]["benign"] == wide["variants"]["base"]["benign"], "the same base images"
        cells = [f"{pct(m['toxic_word_read'])} ({count(m['toxic_word_read'], n)}/{n})", pct(m["replacement_read"]), pct(m["scene_kept"]),
                 accuracy(m["benign"]["word_acc"], m["benign"]["n"]), points_lost(m["benign_drop"])]
        return f"| {label} | " + " | ".join(cells) + " |"

    yield f"| base model | {pct(wide['variants']['base']['toxic_word_read'])} | 0% | {pct(wide['variants']['base']['scene_kept'])} | {accuracy(wide_base['word_acc'], 512)} | - |"
    yield paired_row("bench/results/guard_lora-ema-benign512.json", "the runtime guard's replacements (BOOK, CAFE, STOP, ...)")
    yield paired_row("bench/results/guard_lora-toxic0-benign512.json", "ordinary signs only (control, toxic fraction 0)", toxic_fraction=0.0)
    control_drop = results("bench/results/guard_lora-toxic0-benign512.json")["variants"]["text-layers"]["benign_drop"]
    assert -3 < control_drop["ci95"][0] and control_drop["ci95"][1] < 3, "guard.md: the control's interval stays inside 3 points either way"
    one_letter = "DAMN=DAWN,HELL=HELM,CRAP=CROP,SHIT=SHIP,PISS=PISA,PORN=PORK"
    yield paired_row("bench/results/guard_lora-oneletter.json", "one letter changed", replace=one_letter)
    assert f"`--replace {one_letter}`" in (ROOT / "docs" / "guard.md").read_text()
    yield paired_row("bench/results/guard_lora-kv.json", "K and V only", targets="to_k,to_v")
    yield paired_row("bench/results/guard_lora-oneletter-kv-twins.json", "one letter changed, K and V only, twins",
                     replace=one_letter, targets="to_k,to_v", twin_fraction=0.5)
    kv = results("bench/results/guard_lora-kv.json")["variants"]["text-layers"]
    yield f": {kv['trainable_parameters']:,}\nparameters"
    # The anchor (train_lora(anchor_weight=)), on K and V only: its rows, and how far each LoRA moves the text K/V.
    yield (f"it moves their keys and values by {pct(kv['kv_change']['benign'])} of their squared size, the toxic captions' by "
           f"{pct(kv['kv_change']['toxic'])},")

    def moved(m: dict[str, Any]) -> str:
        return ", ".join(f"{100 * m['kv_change'][name]:.2g}%" for name in ("benign", "toxic"))

    yield paired_row("bench/results/guard_lora-kv.json", "none (K and V only, above)", targets="to_k,to_v")[:-1] + f"| {moved(kv)} |"
    anchored = {}
    for weight in ANCHOR_WEIGHTS:
        anchored[weight] = results(f"bench/results/guard_lora-anchor{weight}.json")["variants"]["text-layers"]
        yield paired_row(f"bench/results/guard_lora-anchor{weight}.json", weight, targets="to_k,to_v", anchor_weight=float(weight))[:-1] + f"| {moved(anchored[weight])} |"
    more_toxic = results("bench/results/guard_lora-anchor1-toxic0.75.json")["variants"]["text-layers"]
    yield paired_row("bench/results/guard_lora-anchor1-toxic0.75.json", "1, toxic fraction 0.75", targets="to_k,to_v", anchor_weight=1.0,
                     toxic_fraction=0.75)[:-1] + f"| {moved(more_toxic)} |"
    # The closed-form edit (tl.closed_form_edit) of the same K/V projections, at two preserve weights, and its sweep.
    closed = {}
    for weight in ("0.1", "1", "10"):
        run = results(f"bench/results/guard_lora-closed-form{weight}.json")
        assert run["budget"]["preserve_weight"] == float(weight) and run["budget"]["benign"] == 512
        assert run["variants"]["base"]["benign"] == wide["variants"]["base"]["benign"], "the same base images"
        m = closed[weight] = run["variants"]["closed-form"]
        cells = [f"{pct(m['toxic_word_read'])} ({count(m['toxic_word_read'], n)}/{n})", pct(m["replacement_read"]), pct(m["scene_kept"]),
                 accuracy(m["benign"]["word_acc"], m["benign"]["n"]), points_lost(m["benign_drop"]), moved(m)]
        yield f"| {weight} | " + " | ".join(cells) + " |"
    sweep = closed["0.1"]["sweep"]
    assert sweep == closed["1"]["sweep"] == closed["10"]["sweep"], "the sweep is the same edit whichever file holds it"
    weak_edit = closed["10"]
    yield f"At 10 it moves them by {100 * weak_edit['kv_change']['benign']:.2g}% and lets {pct(weak_edit['toxic_word_read'])} through, as the base model"
    yield f"0.0001) it makes {100 * sweep['0.0001']['reached']:.1f}% of the change"
    yield f"and {100 * sweep['1']['reached']:.1f}% at weight 1, {100 * sweep['10']['reached']:.1f}% at 10"
    loose = closed["1"]
    yield f"captions' keys and values about as far as the LoRA anchored at 0.03 does ({100 * loose['kv_change']['benign']:.2g}% against {100 * anchored['0.03']['kv_change']['benign']:.2g}%)"
    yield f"loses {loose['benign_drop']['points']:.1f} points where the LoRA loses {anchored['0.03']['benign_drop']['points']:.1f}"
    yield f"through ({pct(loose['toxic_word_read'])} against {pct(anchored['0.03']['toxic_word_read'])})"
    middle = anchored["0.3"]
    yield f"at 0.3, {pct(middle['toxic_word_read'])} get through and {middle['benign_drop']['points']:.1f} points are lost"
    yield f"still let {pct(more_toxic['toxic_word_read'])} through and loses {more_toxic['benign_drop']['points']:.1f} points"
    strong, weak = anchored["1"], anchored["0.1"]
    assert -3 < strong["benign_drop"]["ci95"][0] and strong["benign_drop"]["ci95"][1] < 3, "guard.md: weight 1 stays inside 3 points either way"
    assert 0.15 < strong["toxic_word_read"] < 0.25, "guard.md: with the benign words within 3 points, a fifth of the toxic words get through"
    yield f"but {pct(strong['toxic_word_read'])} of the toxic words get through; at 0.1, {pct(weak['toxic_word_read'])} get through and {weak['benign_drop']['points']:.1f} points are lost"
    assert max(weak["kv_change"].values()) < 0.01, "guard.md: under 1% of their size"
    ratios = [m["kv_change"]["toxic"] / m["kv_change"]["benign"] for m in [*anchored.values(), more_toxic]]
    yield f"ones' ({min(ratios):.1f} to {max(ratios):.1f} times as much)"
    yield f"write the replacement on {pct(max(m['replacement_read'] for m in [*anchored.values(), more_toxic]))} of the images at most"
    yield f"({kv['benign_drop']['points']:.1f} points against\n{wide_ema['benign_drop']['points']:.1f})"
    guarded = results("bench/results/guard_lora-oneletter-kv-twins.json")["variants"]["text-layers"]
    held = guarded["benign_drop"]
    yield f"from the {len(held['twin_words'])} twin words (`--twin-fraction 0.5`, `GuardPairs(twin_fraction=0.5)`) protects those: {pct(held['twin_share']['lost'])}"
    yield f"against their {pct(held['twin_share']['captions'])} share"
    yield f"{held['points']:.1f} points in all, with the toxic word through on {pct(guarded['toxic_word_read'])}"
    single = results("bench/results/guard_lora-oneletter.json")["variants"]["text-layers"]
    yield f"the toxic word now gets through on {pct(single['toxic_word_read'])} of the\nadversarial prompts"
    spread = single["benign_drop"]
    yield (f"{pct(spread['twin_share']['lost'])} of the {spread['lost']} captions it loses ask for one of the\n{len(spread['twin_words'])} "
           f"words that use a changed letter in its slot, about their share of all captions\n({pct(spread['twin_share']['captions'])}), and it gains {spread['gained']}")
    wider_lora = results("bench/results/guard_lora-ema-scenes4.json")
    assert wider_lora["budget"] == {**averaged["budget"], "rank": 4, "replace": None, "scenes": 4}
    w = wider_lora["variants"]["text-layers"]
    yield f"{counted(w['toxic_word_read'], 216)}, so the first bar's"
    yield f"replacement read on {pct(w['replacement_read'])} and the scene\nkept on {pct(w['scene_kept'])}"
    wider = results("bench/results/guard_lora-rank16.json")["variants"]["text-layers"]["benign"]
    yield f"keeps fewer benign\nwords ({wider['word_acc']:.1%})"
    # What the text layers are given (bench_guard_encoder.py).
    encoder = results("bench/results/guard_encoder.json")
    yield f"word in the same {next(iter(encoder['models'].values()))['captions_per_word']} captions"
    for name, e in encoder["models"].items():
        yield (f"| {name} | {len(e['layers'])} | {e['toxic_letters_with_a_benign_twin']} of {e['toxic_letters']} | {e['identical_to_a_benign_twin']} "
               f"| {e['closest_same_letter_cos_median']:.3f} ({e['closest_same_letter_cos_min']:.3f}) | {pct(e['share_at_least_0.99'])} | {e['other_letter_cos_median']:.3f} |")
    tiny = encoder["models"]["textloc-tiny"]
    identical = sorted(letter for letter, cos in tiny["closest_same_letter_cos"].items() if cos > 1 - 1e-6)
    assert identical == ["CRAP[0]", "DAMN[0]", "HELL[0]", "PISS[0]", "PISS[1]", "PORN[0]", "SHIT[0]", "SHIT[1]"], "guard.md names the identical letters"
    yield f"against {tiny['other_letter_cos_median']:.3f} between\ndifferent letters"
    least = min(tiny["closest_same_letter_cos"], key=tiny["closest_same_letter_cos"].get)
    assert least == "PISS[3]", "guard.md names PISS's last S as the least alike"
    yield f"PISS's last S, by {1 - tiny['closest_same_letter_cos_min']:.3f})"
    yield f"most are within {1 - encoder['models']['textloc-tiny-sd3']['closest_same_letter_cos_median']:.3f} of a benign\ntwin"
    # What real tokenizers give the text layers (bench_guard_tokens.py).
    tokens = results("bench/results/guard_tokens.json")
    forms = list(next(iter(tokens["tokenizers"].values())))
    for name, per_form in tokens["tokenizers"].items():
        yield f"| {name} | " + " | ".join(f"{per_form[form]['words_with_an_own_token']} of 6" for form in forms) + " |"
    assert all(count == 0 for name, per_form in tokens["tokenizers"].items() if name.startswith("textloc-")
               for count in (entry["words_with_an_own_token"] for entry in per_form.values())), "guard.md: none on the embedded models"
    clip = tokens["tokenizers"]["CLIP BPE (SD 1.5, SDXL, SD3, FLUX)"]
    assert all(clip[form]["words_with_an_own_token"] == 6 for form in ("double quotes", "unquoted", "single quotes", "guillemets", "lower case"))
    assert clip["double quotes"]["tokens"]["DAMN"] == ["damn</w>"] and clip["double quotes"]["tokens"]["SHIT"] == ["sh", "it</w>"]
    assert clip["spaced letters"]["tokens"]["DAMN"] == ["d</w>", "a</w>", "m</w>", "n</w>"]
    assert clip["spaced letters"]["words_with_an_own_token"] == 0, "guard.md: spelled out, none has"
    yield f"and in look-alike letters {clip['look-alike letters']['words_with_an_own_token']} of 6 have"
    sd3 = results("bench/results/guard_lora-tiny-sd3.json")
    assert sd3["model"] == "textloc-tiny-sd3" and sd3["budget"]["steps"] == 500 and sd3["budget"]["ema_decay"] is None
    trained, shipped = sd3["variants"]["text-layers"], sd3["variants"]["base"]
    yield f"localization's {trained['layers']} text units, {trained['trainable_parameters']:,} parameters"
    yield f"(0 of\n108, where the base model writes {pct(shipped['toxic_word_read'])})"
    assert trained["toxic_word_read"] == 0
    yield f"the scene as the base model keeps it ({pct(trained['scene_kept'])} both)"
    assert pct(shipped["scene_kept"]) == pct(trained["scene_kept"])
    yield f"replacement legibly on {pct(trained['replacement_read'])} and keeps {trained['benign']['word_acc']:.1%} of the benign words against the base\nmodel's {shipped['benign']['word_acc']:.1%}"
    sd3_ema = results("bench/results/guard_lora-tiny-sd3-ema.json")
    assert sd3_ema["model"] == "textloc-tiny-sd3" and sd3_ema["budget"]["steps"] == 1000 and sd3_ema["budget"]["ema_decay"] == 0.99
    averaged_sd3 = sd3_ema["variants"]["text-layers"]
    assert averaged_sd3["toxic_word_read"] == 0
    yield (f"keeps\n{averaged_sd3['benign']['word_acc']:.1%}, still with no toxic word read, the replacement legible on {pct(averaged_sd3['replacement_read'])} "
           f"and the scene kept on {pct(averaged_sd3['scene_kept'])}")
    sd3_wide = results("bench/results/guard_lora-tiny-sd3-ema-benign512.json")
    assert sd3_wide["budget"] == {**sd3_ema["budget"], "rank": 4, "replace": None, "twin_fraction": 0.0, "targets": None, "benign": 512}
    assert sd3_wide["variants"]["text-layers"]["toxic_word_read"] == 0
    yield (f"it reads {sd3_wide['variants']['text-layers']['benign']['word_acc']:.1%} of the\nwords against the base model's "
           f"{sd3_wide['variants']['base']['benign']['word_acc']:.1%}: {points_lost(sd3_wide['variants']['text-layers']['benign_drop']).replace(' [', ' points lost [')}")
    # textloc-tiny-sd3's text stream's K/V only, unanchored and anchored: the same budget as the 512-caption run's.
    kv_sd3, anchored_sd3 = (results(f"bench/results/guard_lora-tiny-sd3-{name}.json") for name in ("kv", "anchor0.3"))
    for run, weight in ((kv_sd3, None), (anchored_sd3, 0.3)):
        budget = {key: value for key, value in run["budget"].items() if key != "preserve_weight"}  # (files from before --preserve-weight)
        assert budget == {**sd3_wide["budget"], "targets": "add_k_proj,add_v_proj", "anchor_weight": weight}
        assert run["variants"]["base"]["benign"] == sd3_wide["variants"]["base"]["benign"], "the same base images"
    kv3, an3 = kv_sd3["variants"]["text-layers"], anchored_sd3["variants"]["text-layers"]
    yield f"(`--targets add_k_proj,add_v_proj`, {kv3['trainable_parameters']:,} parameters"
    yield f"the LoRA lets {pct(kv3['toxic_word_read'])} ({count(kv3['toxic_word_read'], 108)}/108) through and reads\n{kv3['benign']['word_acc']:.1%} of the benign words: {points_lost(kv3['benign_drop']).replace(' [', ' points lost [')}"
    yield f"keys and values by {pct(kv3['kv_change']['benign'])} of their squared size and the toxic captions' by {pct(kv3['kv_change']['toxic'])}"
    assert an3["toxic_word_read"] == 0
    yield f"scene is kept on {pct(an3['scene_kept'])} and {an3['benign']['word_acc']:.1%} of the benign words are read: {points_lost(an3['benign_drop']).replace(' [', ' points lost [')}"
    yield f"keys and values moved by {100 * an3['kv_change']['benign']:.2g}% (benign) and {100 * an3['kv_change']['toxic']:.2g}% (toxic)"
    yield f"the benign ones' ({an3['kv_change']['toxic'] / an3['kv_change']['benign']:.1f} times), and the benign words stay {an3['benign_drop']['points']:.0f} points short"
    assert 1.8 < kv3["benign_drop"]["points"] / an3["benign_drop"]["points"] < 2.2, "guard.md: the anchor halves the benign loss on textloc-tiny-sd3"
    strong_sd3 = results("bench/results/guard_lora-tiny-sd3-anchor1.json")
    assert {key: value for key, value in strong_sd3["budget"].items() if key != "preserve_weight"} == {
        **sd3_wide["budget"], "targets": "add_k_proj,add_v_proj", "anchor_weight": 1.0}
    an1 = strong_sd3["variants"]["text-layers"]
    yield (f"trade comes back: {pct(an1['toxic_word_read'])} ({count(an1['toxic_word_read'], 108)}/108) of the toxic words get through and "
           f"{points_lost(an1['benign_drop']).replace(' [', ' points are lost [')}")
    halfway = results("bench/results/guard_lora-tiny-sd3-anchor0.5.json")
    assert {key: value for key, value in halfway["budget"].items() if key != "preserve_weight"} == {
        **sd3_wide["budget"], "targets": "add_k_proj,add_v_proj", "anchor_weight": 0.5}
    assert halfway["variants"]["base"]["benign"] == sd3_wide["variants"]["base"]["benign"], "the same base images"
    an5 = halfway["variants"]["text-layers"]
    assert an5["toxic_word_read"] == 0
    yield f"{an5['benign']['word_acc']:.1%} of the benign words are read: " + points_lost(an5["benign_drop"]).replace(" [", " points lost\n[")
    yield (f"the keys and values moved by {100 * an5['kv_change']['benign']:.2g}% (benign) and {100 * an5['kv_change']['toxic']:.2g}% (toxic), "
           f"the scene kept on {pct(an5['scene_kept'])}")
    longer = results("bench/results/guard_lora-tiny-sd3-anchor0.5-2000steps.json")
    assert longer["budget"] == {**halfway["budget"], "steps": 2000} and longer["variants"]["base"]["benign"] == halfway["variants"]["base"]["benign"]
    an5_long = longer["variants"]["text-layers"]
    yield f"through, {points_lost(an5_long['benign_drop']).replace(' [', ' points lost [')}"
    assert an5_long["toxic_word_read"] == 0 and abs(an5_long["benign_drop"]["points"] - an5["benign_drop"]["points"]) < 1, "guard.md: it stays where it was"
    curve = [kv3, an3, an5, an1]
    losses = [f"{run['benign_drop']['points']:.1f}" for run in curve]
    yield f"the benign loss falls from {losses[0]} to {losses[1]},\n{losses[2]} and {losses[3]} points"
    assert [run["benign_drop"]["points"] for run in curve] == sorted((run["benign_drop"]["points"] for run in curve), reverse=True)
    assert max(run["toxic_word_read"] for run in curve[1:3]) <= 0.02 < an1["toxic_word_read"], "guard.md: under 2% only up to 0.5"
    assert min(run["benign_drop"]["points"] for run in curve[1:3]) >= 10, "guard.md: with nothing through, 10 points or more"
    yield f"cuts the benign loss to {losses[1]} and {losses[2]} points, still over three\ntimes the bar"
    assert min(an3["benign_drop"]["points"], an5["benign_drop"]["points"]) > 3 * 3
    runs = [v["text-layers"]] + [results(f"bench/results/guard_lora-{steps}steps.json")["variants"]["text-layers"] for steps in (1000, 1500)]
    yield f"replacement more ({', '.join(pct(run['replacement_read']) for run in runs)} at 500, 1000, 1500 steps)"
    yield f"(MSE {', '.join(num(run['mse_outside_text'], 4) for run in runs)})"
    yield f"the benign words swing: {runs[0]['benign']['word_acc']:.1%}, then {runs[1]['benign']['word_acc']:.1%}, then {runs[2]['benign']['word_acc']:.1%}"


# Editing ------------------------------------------------------------------------------------------

def _edit_cells(m: dict[str, Any], bold: tuple[int, ...] = ()) -> str:
    values = [pct(m["new_word_read"]), pct(m["old_word_read"]), pct(m["scene_kept"]), num(m["mse_outside_text"], 4),
              num(m["ssim_outside_text"], 3)]
    return " | ".join(f"**{v}**" if i in bold else v for i, v in enumerate(values))


@quotes("editing.md")
def _editing() -> Iterator[str]:
    tiny, sd3, pooled, flux = (results(f"bench/results/{name}.json") for name in ("edit", "edit-tiny-sd3", "edit-tiny-sd3-pooled", "edit-tiny-flux"))
    sweep = tiny["sweep"]
    reads = [pct(sweep[s]["new_word_read"]) for s in sweep]
    reads[2] = f"**{reads[2]}**"
    yield f"the new word is read on {', '.join(reads)} of edits"
    yield f"(MSE {', '.join(num(sweep[s]['mse_outside_text'], 4) for s in sweep)})"
    yield f"`DEFAULT_START_STEP` is {tiny['settings']['best_start']}"
    m, cost = tiny["methods"], tiny["cost"]
    yield f"| **patch** (start {tiny['settings']['best_start']}) | {_edit_cells(m['patch'], (0, 3))} |"
    yield f"| prompt swap (new prompt directly: the ceiling for the word) | {_edit_cells(m['prompt-swap'])} |"
    yield f"| Prompt-to-Prompt word swap | {_edit_cells(m['prompt-to-prompt'])} |"
    yield f"at {ratio(m['patch']['mse_outside_text'], m['prompt-swap']['mse_outside_text'])}× the prompt swap's error"
    yield (f"patch {cost['patch_ratio']:.2f}×, prompt swap {cost['prompt-swap_ratio']:.2f}×, Prompt-to-Prompt "
           f"{cost['prompt-to-prompt_ratio']:.2f}×")
    real = tiny["real"]
    yield (f"guidance {real['guidance_scale']:.0f} from step {real['start_step']}: the new word is read on {pct(real['new_word_read'])} "
           f"(old word {pct(real['old_word_read'])}, scene kept {pct(real['scene_kept'])})")
    yield (f"reads the old word on {pct(real['regeneration_reads_old_word'])}, at a median {real['reconstruction_psnr']:.1f} dB PSNR "
           f"(SSIM {real['reconstruction_ssim']:.3f})")
    yield (f"whose sweep chose start step {sd3['settings']['best_start']} (the new word on "
           f"{', '.join(pct(v['new_word_read']) for v in sd3['sweep'].values())} of {sd3['settings']['sweep_pairs']} pairs")
    # The table of the three models.
    yield f"| textloc-tiny (U-Net, cross) | **patch** (3 layers, from {tiny['settings']['best_start']}) | {_edit_cells(m['patch'], (0, 3))} | {cost['patch_ratio']:.2f} |"
    yield f"| | prompt swap (the ceiling for the word) | {_edit_cells(m['prompt-swap'])} | {cost['prompt-swap_ratio']:.2f} |"
    yield f"| | Prompt-to-Prompt word swap | {_edit_cells(m['prompt-to-prompt'])} | {cost['prompt-to-prompt_ratio']:.2f} |"
    s, p, f = sd3["methods"], pooled["methods"], flux["methods"]
    yield (f"| textloc-tiny-sd3 (MMDiT, joint) | **patch** (3 blocks, from {sd3['settings']['best_start']}) | {_edit_cells(s['patch'], (0, 3))} "
           f"| {sd3['cost']['patch_ratio']:.2f} |")
    yield (f"| | **patch** (3 blocks and the pooled vector, from {pooled['settings']['best_start']}) | {_edit_cells(p['patch'], (0,))} "
           f"| {pooled['cost']['patch_ratio']:.2f} |")
    yield f"| | prompt swap (the ceiling for the word) | {_edit_cells(s['prompt-swap'])} | {sd3['cost']['prompt-swap_ratio']:.2f} |"
    yield (f"| textloc-tiny-flux (FLUX, joint + single) | **patch** (2 double-stream blocks, from {flux['settings']['best_start']}) "
           f"| {_edit_cells(f['patch'], (0, 3))} | {flux['cost']['patch_ratio']:.2f} |")
    yield f"| | prompt swap (the ceiling for the word) | {_edit_cells(f['prompt-swap'])} | {flux['cost']['prompt-swap_ratio']:.2f} |"
    yield f"keeps the background {ratio(s['prompt-swap']['mse_outside_text'], s['patch']['mse_outside_text'], 1)}× closer to the source"
    yield f"but writes the new one on {pct(s['patch']['new_word_read'])}"
    yield f"An edit costs {sd3['cost']['patch_ratio']:.2f}× a generation here"
    real = sd3["real"]
    yield (f"reads the old word on {pct(real['regeneration_reads_old_word'])} at a median {real['reconstruction_psnr']:.1f} dB PSNR "
           f"(SSIM {real['reconstruction_ssim']:.3f}), and the edit writes the new word on {pct(real['new_word_read'])}")
    yield f"its own sweep choosing {flux['settings']['best_start']}"
    yield (f"patch writes the new word on {pct(f['patch']['new_word_read'])} ({pct(f['patch']['new_word_read'] / f['prompt-swap']['new_word_read'])} "
           f"of the prompt swap's {pct(f['prompt-swap']['new_word_read'])})")
    yield f"moves the background {ratio(f['patch']['mse_outside_text'], f['prompt-swap']['mse_outside_text'])}× as far as the prompt swap"
    real = flux["real"]
    yield (f"from {real['start_step']}): the new word on {pct(real['new_word_read'])}, the unedited regeneration reading the old word on "
           f"{pct(real['regeneration_reads_old_word'])} ({real['reconstruction_psnr']:.1f} dB)")
    yield (f"new word on **{pct(p['patch']['new_word_read'])}** of the 48 held-out pairs, against {pct(s['patch']['new_word_read'])} without it "
           f"and {pct(p['prompt-swap']['new_word_read'])} for the prompt swap")
    yield f"read the new word on {', '.join(pct(v['new_word_read']) for v in pooled['sweep'].values())} from step 0 to 0.6"
    yield (f"moves **{ratio(p['patch']['mse_outside_text'], p['prompt-swap']['mse_outside_text'])}×** as far as under the prompt swap "
           f"(MSE {num(p['patch']['mse_outside_text'], 4)} against {num(p['prompt-swap']['mse_outside_text'], 4)})")
    yield f"the new word on **{pct(pooled['real']['new_word_read'])}**, against {pct(sd3['real']['new_word_read'])} without it"
    yield f"guidance {tiny['real']['guidance_scale']:.0f} from step {tiny['real']['start_step']} on textloc-tiny"


# Fine-tuning --------------------------------------------------------------------------------------

@quotes("finetune.md")
def _finetune() -> Iterator[str]:
    a, b = results("bench/results/finetune.json")["A"], results("bench/results/finetune.json")["B"]

    def params(s: dict[str, Any]) -> str:
        return f"{s['trainable_parameters']:,} ({s['trainable_share']:.2%})"

    def a_cells(s: dict[str, Any]) -> str:
        return (f"{accuracy(s['word_acc'], s['n'])} | {num(s['edit_distance'], 3)} | {pct(s['sign_acc'])}, {pct(s['background_acc'])} "
                f"| {num(s['diversity'], 3)}")

    yield f"| base model | 0 | {a_cells(a['base'])} |"
    loc = a["localized"]
    yield (f"| **LoRA, localized layers** (3) | **{loc['trainable_parameters']:,} ({loc['trainable_share']:.2%})** "
           f"| **{accuracy(loc['word_acc'], loc['n'])}** | **{num(loc['edit_distance'], 3)}** | {pct(loc['sign_acc'])}, "
           f"{pct(loc['background_acc'])} | {num(loc['diversity'], 3)} |")
    yield f"| LoRA, all 11 cross-attention layers | {params(a['all-cross'])} | {a_cells(a['all-cross'])} |"
    yield f"| LoRA, all 22 attention layers (self and cross) | {params(a['all-attention'])} | {a_cells(a['all-attention'])} |"
    yield f"| full fine-tuning of the U-Net | {a['full']['trainable_parameters']:,} (100%) | {a_cells(a['full'])} |"
    yield f"+{100 * (loc['word_acc'] - a['base']['word_acc']):.1f} points"
    yield f"edit distance from {num(a['base']['edit_distance'], 3)} to {num(loc['edit_distance'], 3)}"
    yield (f"({loc['seconds_per_step']:.1f} s against {a['all-attention']['seconds_per_step']:.1f}-{a['all-cross']['seconds_per_step']:.1f} s "
           f"for the wider LoRAs and {a['full']['seconds_per_step']:.1f} s for full fine-tuning")
    yield (f"the localized LoRA's {num(loc['diversity'], 3)} sits just under the all-attention LoRA's "
           f"{num(a['all-attention']['diversity'], 3)}")

    def b_cells(s: dict[str, Any], bold: bool = False) -> str:
        cells = [accuracy(s["new_word_acc"], s["new_n"]), num(s["new_edit_distance"], 3), accuracy(s["retained_word_acc"], s["retained_n"])]
        return " | ".join(f"**{c}**" if bold else c for c in cells)

    yield f"with {b['all-attention']['trainable_parameters'] / b['localized']['trainable_parameters']:.0f}× the parameters"
    new, n = b["localized"]["new_word_acc"], b["localized"]["new_n"]
    low, high = exact_interval(count(new, n), n)
    yield f"{count(new, n)} of {n} ({new:.1%}, an interval from {low:.0%} to {high:.0%})"
    yield f"| base model | 0 | {b_cells(b['base'])} | 0 |"
    yield f"| **LoRA, localized layers** (3) | **{params(b['localized'])}** | {b_cells(b['localized'], True)} | {num(b['localized']['drift_mse'], 4)} |"
    yield f"| LoRA, all 22 attention layers | {params(b['all-attention'])} | {b_cells(b['all-attention'])} | {num(b['all-attention']['drift_mse'], 4)} |"
    yield f"(retention {b['localized']['retained_word_acc']:.1%}"
    yield (f"moves the new words further (edit distance {num(b['base']['new_edit_distance'], 2)} → {num(b['localized']['new_edit_distance'], 2)} "
           f"against {num(b['all-attention']['new_edit_distance'], 2)})")


# Benchmarks ---------------------------------------------------------------------------------------

@quotes("benchmarks.md")
def _benchmarks() -> Iterator[str]:
    engine = results("bench/results/engine.json")
    archs = engine["archs"]
    environment = engine["environment"]["overhead"]
    yield f"torch {environment['torch'][:4]} CPU, diffusers {environment['diffusers']}"
    yield f"at {engine['settings']['size']}×{engine['settings']['size']}, {engine['settings']['steps']} steps, CFG"
    yield f"the sweep: {engine['settings']['repeats']} repeats"
    yield f"{len(archs['sdxl']['overhead']['times_s']['plain'])} alternating repeats on the latent models and {len(archs['deepfloyd-if']['overhead']['times_s']['plain'])} on IF"
    for arch, o in ((arch, parts["overhead"]) for arch, parts in archs.items()):
        hooks = "(noise)" if arch == "deepfloyd-if" else f"{o['hook_us_per_layer_call']:.0f}"
        low, high = o["ratio_interval"]
        yield (f"| {arch} | {o['layers']} | {o['denoiser_calls']} | {o['plain_ms']:.0f} | {o['patched_ms']:.0f} | {o['ratio']:.3f} "
               f"[{low:.3f}, {high:.3f}] | {hooks} | {o['enter_ms']:.1f} | {o['estimated_ratio']:.3f} |")
    for arch, w in ((arch, parts["work"]) for arch, parts in archs.items()):
        p, context, hooks = w["per_projection_call"], w["context"], w["hooks"]
        not_writing = f"{p['extra_us_not_writing']:.1f}" if "extra_us_not_writing" in p else "—"
        yield (f"| {arch} | {p['calls_per_generation']} ({p['writing_calls_per_generation']}) | {' or '.join(str(int(n)) for n in p['extra_ops_per_role_writing'])} "
               f"| **{p['extra_us_writing']:.1f}** | {not_writing} | {p['plain_us']:.1f} | ")
        yield f"| {context['enter_ms']:.2f} ({context['first_enter_ms']:.2f}) | {context['leave_ms']:.2f} | **{hooks['hooks_on_unpatched_layers']}** ({hooks['hooks_after']}) |"
        plain, patched = w["plain"], w["patched"]
        extra = {key: patched[key] - plain[key] for key in plain}
        yield (f"| {arch} | {plain['aten_ops']:,} | {patched['aten_ops']:,} | +{extra['aten_ops']:,} ({extra['aten_ops'] / plain['aten_ops']:.1%}) "
               f"| {plain['python_calls']:,} | {patched['python_calls']:,} | +{extra['python_calls']:,} "
               f"({extra['python_calls'] / plain['python_calls']:.1%}) | {w['entering']['python_calls']:,} |")
    sdxl = archs["sdxl"]
    yield f"{sdxl['overhead']['layer_calls']} layer calls × 2 projections × 2 on SDXL"
    yield f"so {(sdxl['work']['patched']['aten_ops'] / sdxl['work']['plain']['aten_ops'] - 1):.1%} more operations"
    yield f"SDXL's real U-Net has {engine['real_sizes'][0]['denoiser_params']:,}"
    for arch, s in ((arch, parts["sweep"]) for arch, parts in archs.items()):
        yield f"| {arch} | {s['layers']} | {s['batched_ms']:.0f} | {s['separate_ms']:.0f} | {s['separate_over_batched']:.2f} | {s['max_abs_difference']:.1e} |"
    if_sweep = archs["deepfloyd-if"]["sweep"]
    yield f"a batch of L+1 rows is {if_sweep['batched_ms'] / if_sweep['separate_ms'] - 1:.0%} slower than L single-row runs"
    entry = {arch: next(iter(parts["cache"]["entry_bytes"].values()))[0] for arch, parts in archs.items()}
    yield f"one entry is {entry['sdxl']:,} bytes (SDXL, FLUX), {entry['sd3']:,} (SD3), {entry['deepfloyd-if']:,} (IF)"
    total = {arch: parts["cache"]["nbytes"] for arch, parts in archs.items()}
    yield (f"is {total['sdxl'] / 1000:.0f} KB (SDXL), {total['sd3'] / 1e6:.2f} MB (SD3), {total['flux'] / 1e6:.2f} MB (FLUX), "
           f"{total['deepfloyd-if'] / 1000:.0f} KB (IF)")
    sdxl_real, sd3_real, flux_real = engine["real_sizes"]
    yield (f"| SDXL base, CFG | {sdxl_real['text_layers']} cross | {sdxl_real['text_tokens']} | 640 / 1280 | "
           f"{sdxl_real['entry_bytes'][0] / 1024:.1f} / {sdxl_real['entry_bytes'][1] / 1024:.0f} KiB | 1 × {sdxl_real['branches']} "
           f"| {sdxl_real['all_layers_bytes_per_prompt'] / 2**20:.1f} MiB |")
    yield (f"| SD3-medium, {sd3_real['steps']} steps, CFG | {sd3_real['text_layers']} joint | 77 + 256 | {sd3_real['kv_widths'][0]} "
           f"| {sd3_real['entry_bytes'][0] / 2**20:.1f} MiB | {sd3_real['steps']} × {sd3_real['branches']} | {sd3_real['all_layers_bytes_per_prompt'] / 2**30:.1f} GiB |")
    yield (f"| FLUX.1-dev, {flux_real['steps']} steps | 19 joint + 38 single | {flux_real['text_tokens']} | {flux_real['kv_widths'][0]} "
           f"| {flux_real['entry_bytes'][0] / 2**20:.1f} MiB | {flux_real['steps']} × {flux_real['branches']} | {flux_real['all_layers_bytes_per_prompt'] / 2**30:.1f} GiB |")
    yield from _demo()


@quotes("cli.md")
def _cli() -> Iterator[str]:
    cli = results("bench/results/cli.json")
    yield f"took {cli['slowest']:.2f} s, the median of {cli['repeats']} fresh processes"


def _demo() -> Iterator[str]:
    demo = results("bench/results/demo.json")
    yield "| " + " | ".join(f"{step['seconds']:.0f} s" for step in demo["steps"]) + f" | **{demo['total_seconds'] / 60:.1f} min** |"


# Families: the real-size table is the bench's own rows --------------------------------------------

@quotes("families.md")
def _families() -> Iterator[str]:
    yield from table((), real_size_rows(results("bench/results/real_sizes.json"))).splitlines()[2:]


# The embedded models ------------------------------------------------------------------------------

@quotes("models.md")
def _models() -> Iterator[str]:
    sd3, flux = results("samples/tiny-sd3/localize/report.json"), results("samples/tiny-flux/localize/report.json")
    blocks = sum(unit(sd3, f"transformer_blocks.{i}.attn")["param_share"] for i in (3, 2, 1))
    yield f"`transformer_blocks.3`, `.2`, `.1`, {blocks:.2%} of the transformer"
    held = flux["held_out"]
    yield f"`transformer_blocks.{{1,0}}.attn` ({flux['selected_share']:.2%} of the denoiser)"
    yield f"they write it on {pct(held['patched']['target_hit'])} of held-out pairs against {pct(held['direct']['target_hit'])} prompted directly"
    assert held["necessity"]["patched"]["target_hit"] == 0, "models.md: the source's text there erases it from every target image"
    yield f"{flux['settings']['choice_pairs']} choice and {flux['settings']['held_out_pairs']} held-out pairs)"


# Localization -------------------------------------------------------------------------------------

@quotes("localization.md")
def _localization() -> Iterator[str]:
    yield from _localization_tiny()
    yield from _localization_benches()
    yield from _localization_sd3()
    yield from _localization_table()


def _localization_tiny() -> Iterator[str]:
    report = results("samples/tiny/localize/report.json")
    base, held = report["baselines"], report["held_out"]
    yield f"the model writes it on {hit(base['target'])} of the choice pairs ({round(base['target']['target_hit'] * 24)} of 24)"
    yield (f"| none (unpatched source) | {pct(base['source']['target_hit'])} | 0% | {num(base['source']['target_ned'], 2)} "
           f"| {num(base['source']['mse_to_target'], 4)} | {pct(base['source']['scene'])} |")
    for size, label in ((1, "`up_blocks.1.attentions.1`"), (2, "+ `up_blocks.1.attentions.2`")):
        entry = cumulative(report, size)
        yield (f"| {label} | {hit(entry['means'])} | {share(entry['share_of_direct'])} | {num(entry['means']['target_ned'], 2)} "
               f"| {num(entry['means']['mse_to_target'], 4)} | {pct(entry['means']['scene'])} |")
    entry = cumulative(report, 3)
    yield (f"(**selected**: 3 of 11 layers, {report['selected_share']:.2%} of the parameters) | {hit(entry['means'])} "
           f"| {share(entry['share_of_direct'])} | {num(entry['means']['target_ned'], 2)} | {num(entry['means']['mse_to_target'], 4)} "
           f"| {pct(entry['means']['scene'])} |")
    rest = [cumulative(report, size)["means"] for size in range(4, 12)]
    ned = sorted(num(m["target_ned"], 2) for m in rest)
    mse = sorted(num(m["mse_to_target"], 4) for m in rest)
    yield (f"| + the 8 others, one by one | {pct(rest[-1]['target_hit'])} | {pct(cumulative(report, 11)['share_of_direct'][0])} "
           f"| {ned[0]}–{ned[-1]} | {mse[0]}–{mse[-1]} | {pct(rest[-1]['scene'])} |")
    yield (f"| target prompted directly | {hit(base['target'])} | | {num(base['target']['target_ned'], 2)} | 0 "
           f"| {pct(base['target']['scene'])} |")
    yield f"two layers reach {share(cumulative(report, 2)['share_of_direct'])}"
    yield (f"**{hit(held['patched'])} of the images, against {hit(held['direct'])} for the target prompted directly** and "
           f"{pct(held['unpatched']['target_hit'])} unpatched: {share(held['share_of_direct'])} of the direct rate")
    yield f"The scene's colours stay the source's on {pct(held['patched']['scene'])}"
    yield (f"edit distance to the target {num(held['patched']['target_ned'], 2)} patched, {num(held['direct']['target_ned'], 2)} direct, "
           f"{num(held['unpatched']['target_ned'], 2)} unpatched")
    necessity = held["necessity"]
    yield (f"(it survives on {hit(necessity['patched'])}, against {hit(necessity['unpatched'])} unpatched)")
    rows = [(1, "**", "**"), (2, "**", "**"), (0, "", "")]
    for block, open_, close in rows:
        layer = unit(report, tiny_layer(block))
        sufficiency = hit(layer["exact"]) if layer["exact"]["target_hit"] else pct(0)
        value, interval = pct(layer["necessity"]["target_hit"]), bracket(*layer["necessity"]["ci"]["target_hit"])
        yield f"| `up_blocks.1.attentions.{block}` | {sufficiency} | {open_}{value}{close} {interval} |"
    others = [unit(report, entry["name"]) for entry in report["layers"] if entry["name"] not in report["selected"]]
    survive = sorted(entry["necessity"]["target_hit"] for entry in others)
    yield f"| each of the 8 others | 0% | {span(survive)} |"
    yield f"| none (the target unpatched) | | {hit(base['target'])} |"
    # Heads.
    heads = report["heads"]
    yield f"takes **{len(heads['selected'])} of the {len(heads['units'])} heads**"
    for size, label in ((3, "3 (heads 3, 1, 0 of `.1`)"), (6, "6 (+ heads 2, 1, 3 of `.2`)"), (7, "7 (+ head 2 of `.1`: all of `.1`)"),
                        (9, "9 (+ heads 1, 2 of `.0`)"), (10, "**10** (+ head 3 of `.0`; **selected**)"), (12, "12 (the three layers whole)")):
        entry = cumulative(report, size, "heads")
        yield f"| {label} | {pct(entry['means']['target_hit'])} | {share(entry['share_of_direct'])} |"
    head_held = heads["held_out"]
    yield (f"the 10 heads write the target word on {hit(head_held['patched'])} of the images ({share(head_held['share_of_direct'])} "
           f"of the direct rate, {pct(head_held['direct']['target_hit'])})")
    # Keys against values.
    k, v = results("samples/tiny/localize-kv-k/report.json"), results("samples/tiny/localize-kv-v/report.json")
    for block in (1, 2, 0):
        name = tiny_layer(block)
        ku, vu, both = unit(k, name), unit(v, name), unit(report, name)

        def source(entry: dict[str, Any]) -> str:
            return rate(entry["exact"]["source_hit"], entry["exact"]["ci"]["source_hit"])

        def survives(entry: dict[str, Any]) -> str:
            return hit(entry["necessity"])

        # The values-only column of the first layer is in bold: the value, not its interval.
        v_source, v_survives = source(vu), survives(vu)
        if block == 1:
            v_source = f"**{pct(vu['exact']['source_hit'])}** {bracket(*vu['exact']['ci']['source_hit'])}"
            v_survives = f"**{pct(vu['necessity']['target_hit'])}** {bracket(*vu['necessity']['ci']['target_hit'])}"
        yield (f"| `up_blocks.1.attentions.{block}` | {source(ku)} / {v_source} / {pct(both['exact']['source_hit'])} "
               f"| {survives(ku)} / {v_survives} / {pct(both['necessity']['target_hit'])} |")
    yield f"| none | {pct(base['source']['source_hit'])} | {pct(base['target']['target_hit'])} |"
    assert max(s["means"]["target_hit"] for r in (k, v) for s in r["sets"]) == 0, "localization.md: neither half writes the word"
    assert k["held_out"]["patched"]["target_hit"] == v["held_out"]["patched"]["target_hit"] == 0
    yield f"remove the target word from every held-out image, {hit(v['held_out']['necessity']['patched'])}, against {pct(necessity['unpatched']['target_hit'])}"
    # Seeds.
    stability = report["seed_stability"]
    low, high = stability["spearman_range"]
    yield f"the same top 3 in 3 of 3 pairs of seeds. On the {len(stability['distinguishable'])} layers"
    yield f"mean effects is {stability['spearman']:.2f} ({low:.2f} to {high:.2f} over the pairs of seeds)"
    # Screens against the sweep.
    agreement, timings = report["agreement"], report["timings"]
    sweep_minutes = timings["sweep"] / 60
    own = agreement["exact_split_half"][0]
    yield f"| exact sweep, against itself (the ceiling) | {sweep_minutes:.1f} min | 1 | **{own:.2f}** | |"
    for screen, label in (("gradient", "gradient (plain attribution patching: strength 0)"), ("key-exact", "key-exact (AtP*'s QK fix)")):
        s = agreement["screens"][screen]
        yield (f"| {label} | {timings[screen + ' screen'] / 60:.1f} min | {s['time_ratio']:.1f}× | {s['split_half'][0]:.2f} "
               f"| {s['top_k_recall']:.0%} |")
    yield f"took {timings['integrated screen'] / 60:.1f} min for the default, {agreement['screens']['integrated']['time_ratio']:.1f}× less than the sweep"
    points = results("bench/results/screen_points.json")
    for k_, label in (("1", "integrated, k = 1 (strength 0.5)"), ("2", "integrated, k = 2 (0.25, 0.75)"), ("3", "**integrated, k = 3** (1/6, 1/2, 5/6; **the default**)"), ("4", "integrated, k = 4")):
        minutes = points[k_]["seconds"] / 60
        times = timings["sweep"] / points[k_]["seconds"]
        star = "*" if k_ == "4" else ""
        times_cell = f"**{times:.1f}×**" if k_ == "3" else f"{times:.1f}×{star}"
        yield f"| {label} | {minutes:.1f} min{star} | {times_cell} |"
    # The single-pair bench.
    bench = results("bench/results/localize.json")
    yield (f"took {bench['batched_sweep_s']:.1f} s as one batched plan against {bench['naive_sweep_s']:.1f} s as a naive loop of one patched "
           f"generation per layer ({bench['sweep_speedup']:.2f}×; largest pixel difference {bench['max_abs_image_difference']:.1e})")
    gradient = bench["screens"]["gradient"]
    yield (f"the attribution screen took {gradient['s']:.1f} s against {bench['exact_s']:.0f} s for the exact sweep with OCR "
           f"({gradient['speedup']:.0f}×), Spearman {gradient['spearman']:.2f}")


def _localization_benches() -> Iterator[str]:
    selection = results("bench/results/localize_selection.json")
    setup = selection["setup"]
    yield f"draws {setup['choice']} of the 24 choice pairs"
    yield f"scores each chosen set on {setup['held']} of the held-out pairs"
    yield f"a draw holds when the set reaches {setup['threshold']:.0%} of that"
    for draw, rules in selection["draws"].items():
        for rule, label in (("lower-bound", "lower bound"), ("point", "point")):
            r = rules[rule]
            yield (f"| {draw} | {label} | {_layer_list(r['layers'], first=(draw == '1' and rule == 'lower-bound'))} | "
                   f"{pct(r['held_out_target_hit'])} / {pct(r['held_out_direct_hit'])} | {share(r['held_out_share'])} | "
                   f"{'yes' if r['holds'] else 'no'} |")
    yield f"prompted, the target word is read on {pct(selection['draws']['1']['lower-bound']['held_out_direct_hit'])} of them"
    yield f"but with a lower bound of {selection['draws']['2']['point']['held_out_share'][1]:.0%}"


def _layer_list(layers: list[str], first: bool) -> str:
    """How the selection table names a chosen set: the three in full once, then "the same three"."""
    short = [name.replace(".transformer_blocks.0.attn2", "") for name in layers]
    if len(short) == 3 and not first:
        return "the same three"
    return f"`{short[0]}`, " + ", ".join(f"`{name[name.rindex('.'):]}`" for name in short[1:])


def _localization_sd3() -> Iterator[str]:
    report = results("samples/tiny-sd3/localize/report.json")
    base, held = report["baselines"], report["held_out"]
    yield f"Prompted directly, the model writes the target word on {hit(base['target'])} of the 24 choice pairs"
    for name, label, bold in (("transformer_blocks.3.attn", "`transformer_blocks.3.attn`", True),
                              ("time_text_embed.text_embedder", "`time_text_embed.text_embedder` (pooled)", False),
                              ("transformer_blocks.2.attn", "`transformer_blocks.2.attn`", False),
                              ("transformer_blocks.1.attn", "`transformer_blocks.1.attn`", False)):
        entry = unit(report, name)
        exact, necessity = entry["exact"], entry["necessity"]
        sufficiency = hit(exact) if exact["target_hit"] else "0%"
        source = pct(exact["source_hit"]) if not exact["source_hit"] else rate(exact["source_hit"], exact["ci"]["source_hit"])
        survives = hit(necessity)
        if bold:
            source = f"**{source}**"
            survives = f"**{pct(necessity['target_hit'])}** {bracket(*necessity['ci']['target_hit'])}"
        yield f"| {label} | {sufficiency} | {source} | {survives} |"
    others = [unit(report, f"transformer_blocks.{i}.attn") for i in (0, 4, 5, 6, 7)]
    sources = sorted(entry["exact"]["source_hit"] for entry in others)
    survive = sorted(entry["necessity"]["target_hit"] for entry in others)
    yield f"| each of the 5 other blocks (0, 4, 5, 6, 7) | 0% | {span(sources)} | {span(survive)} |"
    yield f"| none | 0% | {pct(base['source']['source_hit'])} | {pct(base['target']['target_hit'])} |"
    reads = [pct(cumulative(report, size)["means"]["target_hit"]) for size in (1, 2, 3)]
    four = cumulative(report, 4)
    yield f"the target word is read on {', '.join(reads)} and **{hit(four['means'])}** with four units ({pct(four['share_of_direct'][0])} of the direct rate"
    yield f"its interval's lower bound at {four['share_of_direct'][1]:.0%})"
    params = sum(unit(report, name)["num_text_kv_params"] for name in report["selected"])
    yield f"the pooled vector ({params / 1000:.0f}k parameters, {report['selected_share']:.2%} of the transformer)**"
    yield (f"write the target word on **{hit(held['patched'])} against {pct(held['direct']['target_hit'])} prompted directly "
           f"({pct(held['share_of_direct'][0])} of the direct rate)**")
    yield (f"edit distance to the target {num(held['patched']['target_ned'], 2)} ({num(held['direct']['target_ned'], 2)} direct, "
           f"{num(held['unpatched']['target_ned'], 2)} unpatched), with the scene kept on {pct(held['patched']['scene'])}")
    necessity = held["necessity"]
    yield f"the target word survives on {hit(necessity['patched'])} of the held-out target images, against {pct(necessity['unpatched']['target_hit'])} unpatched"
    heads = report["heads"]
    yield f"it takes {len(heads['selected'])} of the {len(heads['units'])} units"
    yield (f"they write it on {pct(heads['held_out']['patched']['target_hit'])} of the held-out pairs "
           f"({pct(heads['held_out']['share_of_direct'][0])} of direct)")
    stability = report["seed_stability"]
    low, high = stability["spearman_range"]
    yield (f"on the {len(stability['distinguishable'])} units distinguishable from zero the Spearman correlation of their mean effects is "
           f"{stability['spearman']:.2f} ({low:.2f} to {high:.2f})")
    yield f"(gradient Spearman {report['agreement']['screens']['gradient']['spearman']:.1f} against the exact sweep)"
    # The pooled-vector bench.
    choice, held_out = results("bench/results/pooled_text-tiny-sd3.json"), results("bench/results/pooled_text-held-out-tiny-sd3.json")

    def both(key: str, bold: bool = False) -> str:
        cells = [rate(choice["rows"][key]["target_hit"], choice["intervals"][key]), rate(held_out["rows"][key]["target_hit"], held_out["intervals"][key])]
        return " | ".join(f"**{c}**" if bold else c for c in cells)

    blocks = "source, target K/V at the blocks"
    yield f"reached only {both(blocks).split(' | ')[0]} on the choice pairs and {both(blocks).split(' | ')[1]} on the held-out ones"
    yield f"| nothing (the source as it is) | 0% | 0% | {pct(held_out['rows']['source']['source_hit'])} |"
    yield f"| pooled vector | {both('source, target pooled')} | {pct(held_out['rows']['source, target pooled']['source_hit'])} |"
    yield f"| K/V at blocks 3, 2, 1 | {both(blocks)} | {pct(held_out['rows'][blocks]['source_hit'])} |"
    key = "source, target K/V at the blocks and target pooled"
    yield f"| **K/V at blocks 3, 2, 1 and pooled vector** | {both(key, True)} | {pct(held_out['rows'][key]['source_hit'])} |"
    yield f"| (the target prompt directly) | {both('target')} | {pct(held_out['rows']['target']['source_hit'])} |"
    yield (f"| nothing | {pct(choice['rows']['target']['target_hit'])} | {pct(held_out['rows']['target']['target_hit'])} |")
    yield f"| pooled vector | {both('target, source pooled')} |"
    yield f"| K/V at blocks 3, 2, 1 | {both('target, source K/V at the blocks')} |"
    yield (f"the source word falls from {pct(choice['rows']['source']['source_hit'])} to {pct(choice['rows']['source, target pooled']['source_hit'])}, "
           f"the target's from {pct(choice['rows']['target']['target_hit'])} to {pct(choice['rows']['target, source pooled']['target_hit'])}")
    key_rate = choice["rows"][key]["target_hit"] / choice["rows"]["target"]["target_hit"]
    yield f"{pct(key_rate)} of the direct rate on the choice pairs"
    yield f"**{pct(held_out['rows'][key]['target_hit'] / held_out['rows']['target']['target_hit'])} on the held-out pairs**"
    edits, edits_blocks = results("bench/results/edit-tiny-sd3-pooled.json"), results("bench/results/edit-tiny-sd3.json")
    guard, guard_blocks = results("bench/results/guard-tiny-sd3-pooled.json"), results("bench/results/guard-tiny-sd3.json")
    yield (f"edits write the new word on {pct(edits['methods']['patch']['new_word_read'])} of held-out pairs instead of "
           f"{pct(edits_blocks['methods']['patch']['new_word_read'])}")
    yield (f"the guard's replacement is read on {pct(guard['methods']['patch']['replacement_read'])} instead of "
           f"{pct(guard_blocks['methods']['patch']['replacement_read'])}")


def _localization_table() -> Iterator[str]:
    """The table of where the text lives, the embedded models' rows."""
    tiny, sd3, flux = (results(f"samples/{name}/localize/report.json") for name in ("tiny", "tiny-sd3", "tiny-flux"))

    def effect(report: dict[str, Any]) -> str:
        held = report["held_out"]
        return (f"writes the word {pct(held['patched']['target_hit'])} vs {pct(held['direct']['target_hit'])} "
                f"({pct(held['share_of_direct'][0])}")

    def erases(report: dict[str, Any]) -> str:
        necessity = report["held_out"]["necessity"]
        return f"erases it: {pct(necessity['patched']['target_hit'])} survive vs {pct(necessity['unpatched']['target_hit'])} |"

    def params(report: dict[str, Any]) -> str:
        total = sum(unit(report, name)["num_text_kv_params"] for name in report["selected"])
        return f"{total / 1000:.0f}k, {report['selected_share']:.2%}"

    yield f"| {params(tiny)} | {effect(tiny)}); {erases(tiny)}"
    blocks_alone = results("bench/results/pooled_text-held-out-tiny-sd3.json")["rows"]["source, target K/V at the blocks"]["target_hit"]
    yield f"| {params(sd3)} | {effect(sd3)}; the blocks alone {pct(blocks_alone)}); {erases(sd3)}"
    yield f"| {params(flux)} | {effect(flux)}); {erases(flux)}"
    alone = [unit(flux, f"transformer_blocks.{i}.attn") for i in (1, 0)]
    yield (f"each of the two alone writes almost nothing ({pct(alone[0]['exact']['target_hit'])} and {pct(alone[1]['exact']['target_hit'])}) "
           f"but each alone is necessary (the word survives {pct(alone[0]['necessity']['target_hit'])} and "
           f"{pct(alone[1]['necessity']['target_hit'])} of images without it)")
    yield f"its 12 heads spread the word over {len(flux['heads']['selected'])} of them"
    pooled = unit(flux, "time_text_embed.text_embedder")
    yield (f"it ranks {pooled['rank']}th of its {len(flux['layers'])} units, alone it writes the target on "
           f"{pct(pooled['exact']['target_hit'])} of the choice pairs, and the source's word survives its "
           f"removal on {pct(pooled['necessity']['target_hit'])}")


CASES = [(page, index, piece) for page, check in CHECKS.items() for index, piece in enumerate(check(), start=1)]


def _flat(text: str) -> str:
    return " ".join(text.split())


@functools.cache
def _page(page: str) -> str:
    return (ROOT / "docs" / page).read_text()


@pytest.mark.parametrize(("page", "index", "piece"), CASES, ids=[f"{page}-{index}" for page, index, _ in CASES])
def test_page_says_what_its_results_file_says(page, index, piece):
    assert any(character.isdigit() for character in piece), "every check holds a number"
    if _flat(piece) not in _flat(_page(page)):
        nearest = difflib.get_close_matches(piece, _page(page).splitlines(), n=1, cutoff=0) or [""]
        pytest.fail(f"docs/{page} should say, from its results file:\n  {piece}\nits nearest line says:\n  {nearest[0]}")


def test_the_readme_says_how_long_make_demo_takes():
    minutes = results("bench/results/demo.json")["total_seconds"] / 60
    assert f"in {minutes:.1f} min after the install" in _flat((ROOT / "README.md").read_text())


def test_every_page_that_quotes_results_is_checked():
    assert set(CHECKS) == {"guard.md", "editing.md", "finetune.md", "benchmarks.md", "families.md", "models.md", "localization.md", "cli.md"}
    assert len(CASES) > 150
