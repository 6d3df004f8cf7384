"""One results page per embedded model's localization, from ``samples/<model>/localize*/report.json``.

A report is what :class:`textloc.localization.Localization` saves (``report.json``): its settings,
every unit's exact sweep (``exact``: sufficiency; ``necessity``), the cumulative sets, the
selection, the held-out scores, the screens' agreement, the heads, the ranking's stability over
noise seeds and each stage's time. A model's folder may hold variants beside ``localize/``
(``localize-kv-k/``: keys only); each gets a section of the same page.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from sitegen.markdown import DASH, code, num, pct, rate, source_note, table
from sitegen.sources import Sources

#: Settings a variant section names when they differ from the main localization's.
VARIANT_SETTINGS = ("kv", "layers", "direction", "method", "unit", "patch_steps", "heads", "branch")


def pages(sources: Sources) -> dict[str, str]:
    """``results/localization-<model>.md`` for each ``samples/<model>/localize/report.json``."""
    out = {}
    for main in sources.glob("samples/*/localize/report.json"):
        folder = PurePosixPath(main).parent.parent
        variants = [path for path in sources.glob(f"{folder}/localize-*/report.json")]
        reports = {path: sources.json(path) for path in (main, *variants)}
        model = reports[main]["model"]
        out[f"results/localization-{model}.md"] = _page(model, main, reports)
    return out


def _page(model: str, main: str, reports: dict[str, dict[str, Any]]) -> str:
    report = reports[main]
    parts = [f"# Localization of {model}", source_note(*reports), _summary(report), _settings(report)]
    parts += [_ranking(report), _sets(report), _heads(report), _agreement(report), _stability(report), _timings(report)]
    for path, variant in reports.items():
        if path != main:
            parts.append(_variant(path, variant, report))
    return "\n\n".join(part for part in parts if part) + "\n"


def _short(name: str) -> str:
    """A unit's name without the inner module path its block always has (``.transformer_blocks.0.attn2``)."""
    return name.replace(".transformer_blocks.0.attn2", "")


def _units(names: list[str]) -> str:
    return ", ".join(code(name) for name in names)


def _summary(report: dict[str, Any]) -> str:
    settings, held = report["settings"], report["held_out"]
    total = len(report["layers"])
    rows = [
        ("selected", f"{_units([_short(name) for name in report['selected']])} ({len(report['selected'])} of {total} units)"),
        ("their share of the denoiser's parameters", f"{report['selected_share']:.2%}"),
        (f"the set reached {settings['threshold']} of the direct rate ({settings['rule']} rule)", "yes" if report["reached"] else "no"),
        ("choice pairs: target prompted directly, target word read", rate(*_hit(report["baselines"]["target"]))),
        ("choice pairs: source unpatched, target word read", rate(*_hit(report["baselines"]["source"]))),
    ]
    if held:
        share = held["share_of_direct"]
        rows += [
            (f"held out ({settings['held_out_pairs']} pairs): target word read, selected units patched", rate(*_hit(held["patched"]))),
            ("held out: target prompted directly", rate(*_hit(held["direct"]))),
            ("held out: share of the direct rate", rate(share[0], share[1:])),
            ("held out: source unpatched", rate(*_hit(held["unpatched"]))),
            ("held out: edit distance of the reads to the target, patched / direct / unpatched",
             " / ".join(num(held[k]["target_ned"], 2) for k in ("patched", "direct", "unpatched"))),
            ("held out: scene kept, patched", pct(held["patched"].get("scene"))),
        ]
        if "necessity" in held:
            necessity = held["necessity"]
            rows.append(("held out, necessity: target word survives with the source's text at the units, against unpatched",
                         f"{rate(*_hit(necessity['patched']))} against {rate(*_hit(necessity['unpatched']))}"))
    return "## Summary\n\n" + table(("", ""), rows)


def _hit(means: dict[str, Any]) -> tuple[float, list[float] | None]:
    """The target word's rate and its interval, from a ``means`` entry of a report."""
    return means["target_hit"], means.get("ci", {}).get("target_hit")


def _settings(report: dict[str, Any]) -> str:
    settings = report["settings"]
    generate = ", ".join(f"{key}={value}" for key, value in sorted(settings["generate_kwargs"].items()))
    rows = [
        ("method / direction / unit", f"{settings['method']} / {settings['direction']} / {settings['unit']}"),
        ("selection, rule, threshold", f"{settings['selection']}, {settings['rule']}, {settings['threshold']}"),
        ("pairs: to choose on / held out", f"{settings['choice_pairs']} / {settings['held_out_pairs']}"),
        ("noise seed; more seeds for the ranking's stability", f"{settings['seed']}; {', '.join(map(str, settings['stability_seeds'])) or DASH}"),
        ("pipeline settings", generate or DASH),
        ("patched: branch, keys/values, steps, heads",
         f"{settings['branch']}, {settings['kv']}, {settings['patch_steps'] or 'all'}, {settings['heads'] or 'all'}"),
        ("screen (points), gradient steps", f"{settings['screen']} ({settings['screen_points']}), {settings['grad_steps']}"),
        ("OCR, scene judge, dtype", f"{settings['ocr']}, {settings['scene_judge'] or DASH}, {settings['dtype']}"),
        ("weights' fingerprint", code(settings["weights"])),
    ]
    return "## Settings\n\n" + table(("", ""), rows)


def _ranking(report: dict[str, Any]) -> str:
    selected = set(report["selected"])
    rows = []
    for unit in sorted(report["layers"], key=lambda unit: unit["rank"]):
        exact, necessity = unit.get("exact") or {}, unit.get("necessity") or {}
        name = code(_short(unit["name"]))
        rows.append((
            unit["rank"], f"**{name}**" if unit["name"] in selected else name, unit["kind"],
            f"{unit['num_text_kv_params']:,} ({unit['param_share']:.2%})",
            rate(*_hit(exact)) if exact else DASH,
            pct(exact.get("source_hit")),
            rate(*_hit(necessity)) if necessity else DASH,
            DASH if unit.get("attribution") is None else f"{unit['attribution']:.3g}",
        ))
    header = ("rank", "unit (**selected**)", "kind", "K/V parameters (share)", "sufficiency: target word read",
              "source word still read", "necessity: target word survives", "screen score")
    return ("## Every unit, patched alone, in rank order\n\nOn the choice pairs; brackets are 95% bootstrap intervals "
            "over pairs.\n\n" + table(header, rows))


def _sets(report: dict[str, Any], key: str = "sets", title: str = "## The cumulative sets") -> str:
    sets = report[key] if key == "sets" else report["heads"]["sets"]
    selected = report["selected"] if key == "sets" else report["heads"]["selected"]
    rows, previous = [], set()
    for entry in sets:
        added = [name for name in entry["layers"] if name not in previous]
        previous = set(entry["layers"])
        means, share = entry["means"], entry["share_of_direct"]
        mark = " (**selected**)" if sorted(entry["layers"]) == sorted(selected) else ""
        rows.append((
            f"{len(entry['layers'])}{mark}", "+ " + _units([_short(name) for name in added]), rate(*_hit(means)),
            rate(share[0], share[1:]), num(means.get("target_ned"), 2), num(means.get("mse_to_target"), 4), pct(means.get("scene")),
        ))
    header = ("units", "added", "target word read", "share of the direct rate", "edit distance to the target",
              "MSE to the target's image", "scene kept")
    return f"{title}\n\nOn the choice pairs, units added in rank order.\n\n" + table(header, rows)


def _heads(report: dict[str, Any]) -> str:
    heads = report.get("heads")
    if not heads:
        return ""
    held = heads.get("held_out") or {}
    lines = [(f"## Heads\n\nEach head of the selected layers patched alone, then cumulatively in rank order: "
             f"**{len(heads['selected'])} of {len(heads['units'])}** units (heads, and the pooled vector where it was "
             "selected) reach the threshold"
             f"{'' if heads['reached'] else ' (not reached: the best set)'}.")]
    if held:
        share = held["share_of_direct"]
        lines.append(f"On the held-out pairs they write the target word on {rate(*_hit(held['patched']))}, against "
                     f"{rate(*_hit(held['direct']))} prompted directly ({rate(share[0], share[1:])} of the direct rate).")
    return "\n\n".join([*lines, _sets(report, "heads", "### The cumulative head sets")])


def _agreement(report: dict[str, Any]) -> str:
    agreement = report.get("agreement")
    if not agreement or not agreement.get("screens"):
        return ""
    own = agreement["exact_split_half"]
    rows = [("exact sweep, against itself", DASH, f"{own[0]:.2f} [{own[1]:.2f}, {own[2]:.2f}]", DASH, "1")]
    for screen, scores in agreement["screens"].items():
        half = scores["split_half"]
        rows.append((screen, f"{scores['spearman']:.2f}", f"{half[0]:.2f} [{half[1]:.2f}, {half[2]:.2f}]",
                     f"{scores['top_k_recall']:.0%} (top {scores['screen_top_k']})", f"{scores['time_ratio']:.1f}×"))
    header = ("screen", "Spearman with the sweep", "split-half agreement [95% range]", "recall of the exact top k", "sweep's time / the screen's")
    return (f"## The screens against the exact sweep\n\nJudged on the {len(agreement['distinguishable'])} of "
            f"{agreement['layers']} units whose exact effect is distinguishable from zero.\n\n" + table(header, rows))


def _stability(report: dict[str, Any]) -> str:
    stability = report.get("seed_stability")
    if not stability:
        return ""
    low, high = stability["spearman_range"]
    top = stability["rankings"][str(stability["seeds"][0])][: stability["k"]]
    return (f"## Over noise seeds\n\nThe exact sweep at seeds {', '.join(map(str, stability['seeds']))}: the same top "
            f"{stability['k']} ({_units([_short(name) for name in top])} at seed {stability['seeds'][0]}) in "
            f"{stability['same_top_k']:.0%} of the pairs of seeds; Spearman of the units' mean effects "
            f"{stability['spearman']:.2f} ({low:.2f} to {high:.2f}) on the {len(stability['distinguishable'])} units "
            "distinguishable from zero.")


def _timings(report: dict[str, Any]) -> str:
    timings = report.get("timings") or {}
    rows = [(stage, f"{seconds / 60:.1f}") for stage, seconds in timings.items()]
    rows.append(("**all stages**", f"**{sum(timings.values()) / 60:.1f}**"))
    return "## Time per stage\n\n" + table(("stage", "minutes"), rows)


def _variant(path: str, report: dict[str, Any], main: dict[str, Any]) -> str:
    changed = [f"{key}={report['settings'][key]!r}" for key in VARIANT_SETTINGS
               if report["settings"].get(key) != main["settings"].get(key) and key != "layers"]
    if report["settings"]["layers"] != main["settings"]["layers"]:
        changed.append(f"{len(report['settings']['layers'])} units")
    title = f"## Variant: {code(str(PurePosixPath(path).parent))} ({', '.join(changed) or 'same settings'})"
    return "\n\n".join([title, _summary(report).replace("## Summary\n\n", ""), _ranking(report).replace("## ", "### "),
                        _sets(report, title="### The cumulative sets")])
