"""The edit, guard and fine-tuning results pages, from what ``bench/bench_edit.py``,
``bench/bench_guard.py`` and ``bench/bench_finetune.py`` write to ``bench/results/``.

``edit*.json``: ``settings``, ``sweep`` (start step -> scores on the sweep pairs), ``methods``
(method -> scores on the held-out pairs), ``not_applicable``, ``cost`` (seconds and ratios to a
plain generation) and ``real`` (renderer signs, inverted and edited). ``guard*.json``:
``settings``, ``methods`` (method -> rates on the toxic prompts), ``clean`` and ``cost``;
``guard_adversarial*.json`` and ``guard_lora.json`` have sections of their own.
``finetune.json``: ``budget`` and one table per task (``A``, ``B``), variant -> scores.
"""

from __future__ import annotations

from typing import Any

from sitegen.markdown import DASH, accuracy, code, counted, num, pct, points_lost, source_note, table
from sitegen.sources import Sources

#: The model a results file without ``settings.model`` was measured on (runs before --model existed).
DEFAULT_MODEL = "textloc-tiny"


def pages(sources: Sources) -> dict[str, str]:
    """``results/edit.md``, ``results/guard.md`` and ``results/finetune.md``."""
    return {
        "results/edit.md": _edit_page(sources),
        "results/guard.md": _guard_page(sources),
        "results/finetune.md": _finetune_page(sources),
    }


def _model_first(path: str) -> tuple[int, str]:
    """textloc-tiny's results first, then textloc-tiny-sd3's, then textloc-tiny-flux's; each model's by name."""
    rank = 2 if "-tiny-flux" in path else 1 if "-tiny-sd3" in path else 0
    return rank, path


def _layers(settings: dict[str, Any]) -> str:
    layers = settings.get("layers")
    return code(layers) if isinstance(layers, str) else ", ".join(code(name) for name in layers)


def _settings_line(settings: dict[str, Any]) -> str:
    model_settings = ", ".join(f"{key}={value!r}" for key, value in settings["model_settings"].items())
    notes = "".join(f" Note: {settings[key]}." for key in ("layers_note", "sweep_runs") if key in settings)
    return (f"Layers {_layers(settings)}; pipeline {model_settings}; torch {settings.get('torch', DASH)}, "
            f"{settings.get('threads', DASH)} thread(s).{notes}")


# Edit ---------------------------------------------------------------------------------------------

EDIT_COLUMNS = ("new word read", "old word read", "scene kept", "MSE outside text", "SSIM outside text", "s per edit")


def _edit_cells(scores: dict[str, Any]) -> tuple[str, ...]:
    return (pct(scores["new_word_read"]), pct(scores["old_word_read"]), pct(scores["scene_kept"]),
            num(scores["mse_outside_text"], 4), num(scores["ssim_outside_text"], 3), num(scores["seconds_per_edit"], 1))


def _edit_page(sources: Sources) -> str:
    paths = sorted(sources.glob("bench/results/edit*.json"), key=_model_first)
    parts = ["# Editing results", source_note(*paths),
             ("Every method runs through `tl.edit_text` on the same held-out prompts and noise and is scored the same "
             "way; the background is compared to the source image with both images' OCR text boxes blanked out. "
             "The guide: [Editing text](../editing.md).")]
    for path in paths:
        parts.append(_edit_section(path, sources.json(path)))
    return "\n\n".join(parts) + "\n"


def _edit_section(path: str, results: dict[str, Any]) -> str:
    settings = results["settings"]
    model = settings.get("model", DEFAULT_MODEL)
    best = settings["best_start"]
    sweep = [(f"**{start}** (chosen)" if float(start) == best else start, *_edit_cells(scores)) for start, scores in results["sweep"].items()]
    methods = [(method, *_edit_cells(scores)) for method, scores in results["methods"].items()]
    methods += [(method, f"not applicable: {reason}", "", "", "", "", "") for method, reason in results.get("not_applicable", {}).items()]
    cost = results["cost"]
    cost_rows = [("plain generation", f"{cost['plain_s']:.2f} s", "1")]
    cost_rows += [(key.removesuffix("_ratio"), f"{cost[key.removesuffix('_ratio') + '_s']:.2f} s", f"{cost[key]:.2f}")
                  for key in cost if key.endswith("_ratio")]
    real = results.get("real")
    parts = [
        f"## {model}: {code(path)}", _settings_line(settings),
        f"### Start step\n\nOn {settings['sweep_pairs']} pairs of their own; the held-out edits start where the most new words are read "
        "with the scene kept on 95%, the background closest on a tie.\n\n" + table(("start step", *EDIT_COLUMNS), sweep),
        f"### {settings['pairs']} held-out pairs, from step {best}\n\n" + table(("method", *EDIT_COLUMNS), methods),
        f"### Cost\n\nOne edit against one plain generation in the same run (median of {settings['repeats']}).\n\n"
        + table(("", "seconds", "× a plain generation"), cost_rows),
    ]
    if real:
        parts.append(
            f"### Real images\n\n{real['edits']} signs drawn by the renderer (never generated), inverted and edited at "
            f"guidance {real['guidance_scale']} from step {real['start_step']}: the new word is read on "
            f"**{pct(real['new_word_read'])}** (old word {pct(real['old_word_read'])}, scene kept {pct(real['scene_kept'])}); "
            f"the unedited regeneration reads the old word on {pct(real['regeneration_reads_old_word'])}, at "
            f"{real['reconstruction_psnr']:.1f} dB PSNR (SSIM {real['reconstruction_ssim']:.3f}) against the real image."
        )
    return "\n\n".join(parts)


# Guard --------------------------------------------------------------------------------------------

def _guard_page(sources: Sources) -> str:
    adversarial = sorted(sources.glob("bench/results/guard_adversarial*.json"), key=_model_first)
    weights = sorted(sources.glob("bench/results/guard_lora*.json"))
    encoder = sorted(sources.glob("bench/results/guard_encoder*.json"))
    tokens = sorted(sources.glob("bench/results/guard_tokens*.json"))
    paths = sorted((path for path in sources.glob("bench/results/guard*.json") if path not in adversarial + weights + encoder + tokens), key=_model_first)
    parts = ["# Guard results", source_note(*paths, *adversarial, *weights, *encoder, *tokens),
             ("Every method runs through the same `ToxicTextGuard` call on the same toxic prompts and noise. Rates carry "
             "their count and exact 95% interval; MSE and SSIM are taken outside both images' OCR text boxes, against the "
             "unguarded image from the same noise. The guide: [The toxic-text guard](../guard.md).")]
    for path in paths:
        parts.append(_guard_section(path, sources.json(path)))
    for path in adversarial:
        parts.append(_adversarial_section(path, sources.json(path)))
    for path in weights:
        parts.append(_guard_lora_section(path, sources.json(path)))
    for path in encoder:
        parts.append(_guard_encoder_section(path, sources.json(path)))
    for path in tokens:
        parts.append(_guard_tokens_section(path, sources.json(path)))
    return "\n\n".join(parts) + "\n"


def _guard_tokens_section(path: str, results: dict[str, Any]) -> str:
    """``bench/bench_guard_tokens.py``'s file: per tokenizer and form, the toxic words with a token no benign word has."""
    tokenizers = results["tokenizers"]
    forms = list(next(iter(tokenizers.values())))
    count = len(results["toxic_words"])
    rows = [(name, *(f"{per_form[form]['words_with_an_own_token']} of {count}" for form in forms)) for name, per_form in tokenizers.items()]
    return "\n\n".join([
        f"## Toxic words' own tokens, per tokenizer and form: {code(path)}",
        ("Toxic words with at least one token that no benign word of the vocabulary has, written in the same form "
         "(the frame every word gets, quotes and start and end, left out): what an edit of each text token on its own can tell apart."),
        table(("tokenizer", *forms), rows),
    ])


def _guard_encoder_section(path: str, results: dict[str, Any]) -> str:
    """``bench/bench_guard_encoder.py``'s file: per model, how close each toxic letter's text K/V come to a benign word's."""
    models = results["models"]
    rows = [(name, len(m["layers"]), f"{m['toxic_letters_with_a_benign_twin']} of {m['toxic_letters']}", m["identical_to_a_benign_twin"],
             f"{m['closest_same_letter_cos_median']:.3f} ({m['closest_same_letter_cos_min']:.3f})", pct(m["share_at_least_0.99"]),
             f"{m['other_letter_cos_median']:.3f}") for name, m in models.items()]
    letters = list(next(iter(models.values()))["closest_same_letter_cos"])
    per_letter = [(letter, *(f"{m['closest_same_letter_cos'][letter]:.3f}" for m in models.values())) for letter in letters]
    return "\n\n".join([
        f"## The text layers' K/V of toxic and benign letters: {code(path)}",
        (f"Cosine similarity of each toxic word's letter token (keys and values side by side, at the shipped localization's layers, "
         f"first denoiser pass) to the closest benign word's token with the same letter in the same slot, over "
         f"{next(iter(models.values()))['captions_per_word']} captions per word."),
        table(("model", "text layers", "toxic letters with a benign twin", "identical to it", "closest twin's cosine, median (min)",
               "at least 0.99", "other letters' cosine, median"), rows),
        "### Per toxic letter\n\n" + table(("letter [slot]", *models), per_letter),
    ])


def _guard_lora_section(path: str, results: dict[str, Any]) -> str:
    """``bench/bench_guard_lora.py``'s file: ``budget``, ``pairs``, ``variants`` (variant -> rates over the
    adversarial set, per form, and ``benign``: accuracy on held-out benign captions)."""
    budget, variants = results["budget"], results["variants"]
    forms = list(next(iter(variants.values()))["forms"])
    read = [(form, *(counted(v["forms"][form]["toxic_word_read"], v["forms"][form]["images"]) for v in variants.values())) for form in forms]
    rows = [(name, _trainable(v), pct(v["toxic_word_read"]), pct(v["replacement_read"]), pct(v["scene_kept"]), num(v["mse_outside_text"], 4),
             accuracy(v["benign"]["word_acc"], v["benign"]["n"]), points_lost(v.get("benign_drop")),
             f"{pct(v['benign']['sign_acc'])}, {pct(v['benign']['background_acc'])}")
            for name, v in variants.items()]
    trained = [name for name in variants if name not in ("base", "closed-form")]
    made = (f"LoRAs trained by `tl.train_guard_lora` ({budget['steps']} steps, batch {budget['batch_size']}, lr {budget['lr']}{_pair_options(budget)})"
            if trained else "Weights changed")
    if "closed-form" in variants:
        edit = variants["closed-form"]
        made += ((" and" if trained else "") + f" by `tl.closed_form_edit` (closed-form, no training; preserve weight {budget['preserve_weight']}: "
                 f"reaches {pct(edit['reached'])} of the replacement captions' text keys and values, moves the ordinary signs' by "
                 f"{edit['preserved_moved']:.2%})")
    return "\n\n".join([
        f"## {results.get('model', 'textloc-tiny')}, the guard in the weights: {code(path)}",
        (f"{made} on {results['pairs'].split(';')[0]}; scored with the runtime guard off on the adversarial set "
         f"({budget['scenes']} held-out scene(s) per toxic word) and on {budget['benign']} held-out captions of the benign words."),
        "### Toxic word read, per form\n\n" + table(("form", *variants), read),
        "### Per variant\n\n" + table(("variant", "trainable parameters", "toxic word read", "replacement read", "scene kept",
                                         "MSE outside text", "benign word accuracy", "benign points lost [95% CI]", "colours (sign, background)"), rows),
        *([_sweep_table(variants["closed-form"]["sweep"])] if "sweep" in variants.get("closed-form", {}) else []),
    ])


def _sweep_table(sweep: dict[str, dict[str, float]]) -> str:
    """The closed-form edit's two numbers at each preserve weight of the bench's sweep."""
    rows = [(weight, f"{100 * v['reached']:.1f}%", f"{v['preserved_moved']:.3%}") for weight, v in sweep.items()]
    return ("### The closed-form edit over preserve weights\n\nHow much of the change from the toxic captions' text keys and values "
            "to the replacement captions' the edit makes, and how far it moves the ordinary signs' (no images).\n\n"
            + table(("preserve weight", "reached", "ordinary signs moved"), rows))


def _pair_options(budget: dict[str, Any]) -> str:
    """The pairs' and trainer's options a guard-LoRA budget records, as the bench's flags name them."""
    options = [f"toxic fraction {budget['toxic_fraction']}"] if "toxic_fraction" in budget else []
    if budget.get("rank", 4) != 4:
        options.append(f"rank {budget['rank']}")
    if budget.get("replace"):
        options.append(f"replacements {budget['replace']}")
    if budget.get("twin_fraction"):
        options.append(f"twin fraction {budget['twin_fraction']}")
    if budget.get("targets"):
        options.append(f"targets {budget['targets']}")
    if budget.get("anchor_weight") is not None:
        options.append(f"anchor weight {budget['anchor_weight']}")
    if budget.get("preserve"):
        options.append("ordinary signs preserved")
    if budget.get("ema_decay") is not None:
        options.append(f"EMA decay {budget['ema_decay']}")
    return "".join(f", {option}" for option in options)


def _adversarial_section(path: str, results: dict[str, Any]) -> str:
    """``bench/bench_guard_adversarial.py``'s file: ``run``, ``methods`` (method -> seconds, × unguarded and
    per form the rates), ``clean`` (per guard method: flagged, caught, bit-identical)."""
    run, methods, clean = results["run"], results["methods"], results["clean"]
    forms = list(next(iter(methods.values()))["forms"])
    guarded = next(name for name in methods if name != "unguarded")  # every guarded method reads the same prompt side
    read = [(form, *(counted(m["forms"][form]["toxic_word_read"], m["forms"][form]["images"]) for m in methods.values()),
             pct(methods[guarded]["forms"][form]["found_in_prompt"])) for form in forms]
    per_method = []
    for name, method in methods.items():
        scores = list(method["forms"].values())
        mean = lambda key: sum(s[key] for s in scores) / len(scores)  # noqa: E731 (every form has as many prompts)
        per_method.append((name, pct(mean("replacement_read")), pct(mean("scene_kept")), pct(mean("caught_by_image_check")),
                           f"{method['x_unguarded']:.2f}"))
    clean_lines = [f"{name}: flagged {pct(c['flagged'])}, caught by the image check {pct(c['caught_by_image_check'])}, "
                   f"bit-identical to the plain pipeline's {pct(c['bit_identical'])}" for name, c in clean.items() if name != "prompts"]
    return "\n\n".join([
        f"## {run['model']}, adversarial prompts: {code(path)}",
        (f"Every toxic word in {run['scenes']} held-out scene(s), asked for in each form, the same noise for every method; "
         f"layers {code(run['layers'])}."),
        "### Toxic word read, per form\n\n" + table(("form", *methods, "found in the prompt"), read),
        "### Per method, over every form\n\n" + table(("method", "replacement read", "scene kept", "caught by the image check", "× unguarded"), per_method),
        f"Clean prompts ({clean['prompts']}): " + "; ".join(clean_lines) + ".",
    ])


def _guard_section(path: str, results: dict[str, Any]) -> str:
    settings, cost, clean = results["settings"], results["cost"], results["clean"]
    model = settings.get("model", DEFAULT_MODEL)
    rows = []
    for method, scores in results["methods"].items():
        n = scores["images"]
        rows.append((method, counted(scores["toxic_word_read"], n), pct(scores["read_text_flagged"]), counted(scores["replacement_read"], n),
                     pct(scores["scene_kept"]), num(scores["mse_outside_text"], 4), num(scores["ssim_outside_text"], 3),
                     num(scores["seconds_per_image"], 2)))
    header = ("method", "toxic word read", "read text flagged", "replacement read", "scene kept", "MSE outside text",
              "SSIM outside text", "s per image")
    cost_rows = [(f"plain generation ({cost['plain_s']:.2f} s)", "1.00")]
    cost_rows += [(key.removesuffix("_ratio"), f"{value:.2f}") for key, value in cost.items() if key.endswith("_ratio") and not key.startswith("joint")]
    if "joint_patch_ratio" in cost:
        cost_rows.append((f"patch on tiny-random-sd3, a live row (plain {cost['joint_plain_s']:.2f} s)", f"{cost['joint_patch_ratio']:.2f}"))
    return "\n\n".join([
        f"## {model}: {code(path)}",
        f"{settings['prompts']} toxic prompts, start step {settings['start_step']}, detector {code(settings['detector'])} "
        f"(it flags {pct(results['detector_on_raw_words'])} of the raw toxic words). " + _settings_line(settings),
        table(header, rows),
        (f"Clean prompts ({clean['prompts']}): flagged {pct(clean['flagged'])}; guarded images bit-identical to the plain "
        f"pipeline's: {pct(clean['bit_identical'])}."),
        f"### Cost\n\nOne image, × a plain generation: the median ratio of {settings['repeats']} back-to-back pairs.\n\n"
        + table(("method", "× plain"), cost_rows),
    ])


# Fine-tuning --------------------------------------------------------------------------------------

def _trainable(scores: dict[str, Any]) -> str:
    if "edited_parameters" in scores:  # a closed-form edit: whole projections changed, none trained
        return f"{scores['edited_parameters']:,} edited"
    if "trainable_parameters" not in scores:
        return "0"
    share = scores.get("trainable_share", 1.0)
    return f"{scores['trainable_parameters']:,} ({share:.2%})"


def _finetune_page(sources: Sources) -> str:
    path = "bench/results/finetune.json"
    results = sources.json(path)
    budget = results["budget"]
    a_rows = [(variant, _trainable(s), accuracy(s["word_acc"], s["n"]), num(s["edit_distance"], 3),
               f"{pct(s['sign_acc'])}, {pct(s['background_acc'])}", num(s["diversity"], 3), num(s.get("seconds_per_step"), 1))
              for variant, s in results.get("A", {}).items()]
    b_rows = [(variant, _trainable(s), accuracy(s["new_word_acc"], s["new_n"]), num(s["new_edit_distance"], 3),
               accuracy(s["retained_word_acc"], s["retained_n"]), num(s["drift_mse"], 4), num(s.get("seconds_per_step"), 1))
              for variant, s in results.get("B", {}).items()]
    return "\n\n".join([
        "# Fine-tuning results", source_note(path),
        (f"LoRA rank 4 (alpha 4, lr {budget['lr']}; full fine-tuning lr {budget['full_lr']}), batch {budget['batch_size']}, "
        "the same samples and draws for every variant; rates with exact 95% intervals. The guide: "
        "[Fine-tuning the text layers](../finetune.md)."),
        f"## Task A: write the known words better ({budget['steps']['A']} steps)\n\n"
        + table(("variant", "trainable parameters", "word accuracy", "edit distance", "colours (sign, background)",
                 "diversity", "s per step"), a_rows),
        f"## Task B: learn new words ({budget['steps']['B']} steps)\n\n"
        + table(("variant", "trainable parameters", "new words read", "their edit distance", "retention", "drift", "s per step"), b_rows),
    ]) + "\n"
