"""What each tab of the app shows, in plain Python: one call of textloc's API and its results, as
the tab lays them out. No gradio here: :mod:`textloc.app.ui` places these values and wires the buttons."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from PIL import Image

import textloc as tl
from textloc.architectures.spec import TEXT_KINDS
from textloc.cli.layers import layers_report
from textloc.cli.options import layer_source, step_bound
from textloc.layers import find_preset
from textloc.localization.report import GRID_FILE, PLOT_FILE
from textloc.models import find_named_model
from textloc.scoring.ocr import get_ocr
from textloc.scoring.prompts import DEFAULT_WORDS

#: The prompts the tabs open with: a word the embedded models write, and a toxic one they were taught.
SIGN_PROMPT = 'A red sign on a blue background that says "LAMP".'
TOXIC_PROMPT = 'A red sign on a blue background that says "DAMN".'
LAYER_COLUMNS = ["index", "name", "kind", "heads", "K/V params", "share"]


def parse_layers(text: str) -> Any:
    """A layers box as the one layer resolver takes it: ``preset``, ``all``, a localization's
    folder, or layer names, blocks, globs and indices separated by commas or spaces."""
    return layer_source([value for value in re.split(r"[,\s]+", text) if value])


def parse_start_step(text: str) -> int | float | None:
    """A start step box: blank (the layers' own), a step index, or a fraction written with a point."""
    return step_bound(text.strip())


def layers_view(pipe: Any, model: str) -> tuple[str, list[list[Any]], str]:
    """The model's text units (every row as ``textloc layers`` prints it), a line about the
    denoiser, and the layers its shipped localization (or the paper's) selected."""
    report = layers_report(pipe, model, TEXT_KINDS)
    rows = [
        [row["index"], row["name"], row["kind"], row["heads"], row["text_kv_params"], f"{100 * row['share']:.3f}%"]
        for row in report["layers"]
    ]
    total = report["total"]
    header = (
        f"**{model}**: {report['denoiser']}, {report['denoiser_params']:,} parameters; {total['layers']} text units "
        f"whose text K/V projections hold {total['text_kv_params']:,} ({100 * total['share']:.3f}%)"
    )
    try:
        preset = find_preset(pipe)
    except ValueError as error:  # a model with no preset: the error says what to do instead
        return header, rows, str(error)
    selected = "\n".join(f"- `{name}`" for name in preset.layers)
    return header, rows, f"Selected by {preset.source} (its `preset`; edits start at step {preset.start_step}):\n\n{selected}"


def localize_view(
    pipe: Any, model: str, pairs: int, layers: str, method: str, seed: int, settings: dict[str, Any], out: Path,
) -> tuple[str, Image.Image, Image.Image | None, str]:
    """Localize on ``pairs`` prompt pairs (a named model's own, else built-in words) into ``out``:
    the summary, the layer plot, the examples grid (none when no set was chosen) and the selected layers."""
    named = find_named_model(model)
    if named is not None and named.prompt_pairs is not None:
        prompt_pairs, judge = named.prompt_pairs(pairs, seed), named.scene_judge
    else:
        prompt_pairs, judge = tl.make_pairs(list(DEFAULT_WORDS), n=pairs, seed=seed), None
    result = tl.localize(
        pipe, prompt_pairs, parse_layers(layers), method=method, seed=seed, scene_judge=judge, out=str(out), model_name=model, **settings,
    )
    grid = out / GRID_FILE
    selected = "\n".join(result.selected) or "no set of layers reached the threshold"
    selected += f"\n\n(report.json, layers.csv and the plots are in {out})"
    return result.summary(), Image.open(out / PLOT_FILE), Image.open(grid) if grid.exists() else None, selected


def edit_view(
    pipe: Any, prompt: str, new_text: str, layers: str, start_step: str, method: str, seed: int, settings: dict[str, Any],
) -> tuple[Image.Image, Image.Image, str, str, str, dict[str, Any]]:
    """:func:`textloc.edit_text` of one prompt: the source and edited images, what the OCR read in
    each, the result's summary, and its scores."""
    result = tl.edit_text(
        pipe, prompt, new_text.strip(), parse_layers(layers), start_step=parse_start_step(start_step), method=method,
        generator=tl.generator(int(seed)), **settings,
    )
    scores = {
        "edited": result.scores, "unedited source (the floor)": result.floor,
        "layers": result.layers, "start_step": result.start_step, "seconds": round(result.seconds, 2),
    }
    return result.source_image, result.edited_image, result.source_read, result.edited_read, result.summary(), scores


def guard_view(
    pipe: Any, prompt: str, layers: str, start_step: str, replace: str, method: str, check_images: bool, seed: int, settings: dict[str, Any],
) -> tuple[Image.Image, Image.Image, str, str, str]:
    """One prompt generated unguarded and through :class:`textloc.ToxicTextGuard` from the same
    noise: both images, what the OCR read in each, and the guard's report (with its image check's)."""
    check = check_images and method == "patch"  # the image check regenerates through the text layers
    guard = tl.ToxicTextGuard(pipe, parse_layers(layers), replace=replace, start_step=parse_start_step(start_step), method=method, check_images=check)
    # The unguarded image is the same call's baseline, so both start from the same noise.
    unguarded = tl.ToxicTextGuard(pipe, None, method="unguarded")(prompt, generator=tl.generator(int(seed)), output_type="pil", **settings)
    guarded = guard(prompt, generator=tl.generator(int(seed)), output_type="pil", **settings)
    images = [unguarded.images[0], guarded.images[0]]
    reads = get_ocr().read(images)
    report = guarded.reports[0].summary()
    if check:
        report += "\n" + ("\n".join(c.describe() for c in guarded.image_checks) or "image check: no toxic word read in the guarded image")
    return images[0], images[1], reads[0], reads[1], report
