"""Edit the text in an image by patching only the layers that write it.

The edited image is the *source* prompt generated from the source's noise while the text layers
receive the prompt with the new text, from ``start_step`` on; everything else the model draws
follows the source prompt. Source and edit are rows of one batched generation
(:func:`textloc.run_with_patches`): ``cross``/``added_kv`` layers get the new prompt injected
(one text encoding, no extra denoising row); ``joint``/``single`` layers, whose text changes with
every step, read it from a third row that generates the new prompt alongside (no cache to hold).

The baselines run through the same harness, on the same prompts and noise, scored the same way:
``"prompt-swap"`` (the new prompt generated directly: the edit's ceiling for the text, and what
an edit must beat on the background) and ``"prompt-to-prompt"`` (Prompt-to-Prompt's word swap).
"""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from textloc import seeding
from textloc.architectures import family_of, image_size_multiple
from textloc.edit.inversion import invert, starting_from
from textloc.edit.methods import EDIT_METHODS, EditMethod
from textloc.edit.p2p import prompt_to_prompt
from textloc.engine import AttentionLayer, plan_text_swap, run_with_patches
from textloc.images import captioned_grid
from textloc.layers import LayerSource, resolve_layers, start_step_for
from textloc.models import embedded_model_of
from textloc.pipeline_calls import images_of, refuse_modular
from textloc.pipelines import model_image_side
from textloc.scoring.metrics import background_mask, image_scores, text_scores
from textloc.scoring.ocr import OCR, Reading, get_ocr, readings, to_pil_list
from textloc.scoring.quoted import replace_quoted


EDIT_FILE, PAIR_FILE = "edit.json", "edit.png"


@dataclass
class EditResult:
    """One edit: the source and edited images from the same noise, what OCR read, and the scores.

    ``scores`` rate the edited image: the new text (``new_contains`` 1.0 when the OCR read it,
    ``new_f1`` word F1, ``new_ned`` normalized edit distance), the old text (``old_contains``),
    and the image against the source in float (``mse``/``psnr``/``ssim`` on the whole image,
    ``*_outside_text`` with both images' OCR text boxes blanked out; ``None`` where the OCR
    engine reports no boxes). ``floor`` holds the same text scores of the unedited source image:
    what reading the new text is worth without any edit. For a user's own image
    (:func:`edit_image`) the source is its regeneration from the inverted noise, and
    ``reconstruction`` says how close that came to the image (``psnr``, ``ssim``): the part of the
    change that is the inversion's, not the edit's. ``generation`` records what made the pair:
    the pipeline class, its ``name_or_path``, the noise's seed (``None`` when it cannot be told: a
    generator that had advanced, or a user's image, whose noise is its inversion), and the steps
    and guidance.
    """

    method: str
    prompt: str
    new_prompt: str
    old_text: str
    new_text: str
    layers: list[str]
    start_step: int | float | None
    source_image: Image.Image = field(repr=False)
    edited_image: Image.Image = field(repr=False)
    source_read: str
    edited_read: str
    scores: dict[str, float | None]
    floor: dict[str, float]
    seconds: float
    reconstruction: dict[str, float] | None = None  # edit_image: the unedited regeneration vs the user's image
    generation: dict[str, Any] = field(default_factory=dict)
    given_image: Image.Image | None = field(default=None, repr=False)  # edit_image: the user's image, as given

    def summary(self) -> str:
        """One line: what the OCR read before and after, and whether the edit took."""
        took = "new text read" if self.scores["new_contains"] else "new text NOT read"
        return f"{self.method}: read {self.source_read!r} -> {self.edited_read!r} ({took}; wanted {self.new_text!r})"

    def save(self, directory: str | Path) -> Path:
        """Write ``edit.png`` (source | edited, what OCR read under each; for a user's image, the
        image | its regeneration | edited) and ``edit.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        titles = ["source", f"edited ({self.method})"]
        row = [(self.source_image, f"OCR: {self.source_read}"), (self.edited_image, f"OCR: {self.edited_read}")]
        if self.given_image is not None:
            # The source a user's image is edited from is its regeneration, which may differ from it.
            titles = ["your image", "regenerated source", titles[1]]
            row.insert(0, (self.given_image.resize(self.source_image.size), ""))
        captioned_grid(tuple(titles), [row]).save(directory / PAIR_FILE)
        data = {key: value for key, value in asdict(self).items() if not key.endswith("_image")}
        (directory / EDIT_FILE).write_text(json.dumps(data, indent=2) + "\n")
        return directory


class EditResults(list[EditResult]):
    """The :class:`EditResult` of each edit of a batch, in order: a list, that also summarizes and
    saves the batch as a single result does."""

    def summary(self) -> str:
        """One line per edit, numbered as the batch was given."""
        return "\n".join(f"{i}: {result.summary()}" for i, result in enumerate(self))

    def save(self, directory: str | Path) -> Path:
        """Write each edit's ``edit.png`` and ``edit.json`` to its own folder, ``0``, ``1``, ... of ``directory``."""
        directory = Path(directory)
        width = len(str(len(self) - 1))  # zero-padded, so the folders list in the batch's order
        for i, result in enumerate(self):
            result.save(directory / f"{i:0{width}d}")
        return directory


def edit_text(
    pipe: Any,
    prompt: str | Sequence[str],
    new_text: str | Sequence[str],
    layers: LayerSource = "preset",
    *,
    start_step: int | float | None = None,
    method: EditMethod = "patch",
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ocr: str | OCR = "rapidocr",
    **generate_kwargs: Any,
) -> EditResult | EditResults:
    """Change the quoted text of ``prompt`` to ``new_text`` in the generated image, keeping the rest.

    ``layers``: a :class:`~textloc.localization.Localization` (or its folder), ``"preset"`` (the
    paper's layers for SDXL, SD3-medium, IF-I-XL) or any layer selector. ``start_step``: the
    first patched step, an index or a fraction of the schedule; default: the preset's when
    ``layers="preset"``, else :data:`textloc.engine.choices.DEFAULT_START_STEP`. ``generator``: one generator whose noise
    every edit starts from (default seed 0), or one per edit. ``method`` picks textloc's patch or
    a baseline run through the same harness. Lists of prompts and new texts edit a batch at once
    and return an :class:`EditResults`, a list with ``summary()`` and ``save()``.
    ``generate_kwargs`` go to the pipeline (``num_inference_steps``, ``guidance_scale``,
    ``height``, ...).
    """
    refuse_modular(pipe, "edit_text")
    single = isinstance(prompt, str)
    prompts, new_texts = _as_batch(prompt, new_text)
    if method not in EDIT_METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(EDIT_METHODS)}.")
    if "output_type" in generate_kwargs:
        raise ValueError("edit_text sets output_type itself (it scores float images); leave it out.")
    swaps = [replace_quoted(p, t) for p, t in zip(prompts, new_texts)]
    selected = resolve_layers(pipe, layers) if method == "patch" else []
    start = start_step_for(pipe, layers, start_step) if method == "patch" else None
    generators = seeding.per_row(generator, len(prompts))
    reader = get_ocr(ocr)

    began = time.perf_counter()
    new_prompts = [new_prompt for _, new_prompt in swaps]
    if method == "patch":
        sources, edited = _patched(pipe, prompts, new_prompts, selected, start, generators, generate_kwargs)
    elif method == "prompt-swap":
        sources, edited = _generate_rows(pipe, prompts + new_prompts, generators * 2, [], generate_kwargs, len(prompts))
    else:
        pairs = [prompt_to_prompt(pipe, p, n, generator=g, output_type="np", **generate_kwargs) for p, n, g in zip(prompts, new_prompts, generators)]
        sources, edited = [np.asarray(s) for s, _ in pairs], [np.asarray(e) for _, e in pairs]
    seconds = (time.perf_counter() - began) / len(prompts)

    reads = readings(reader, list(sources) + list(edited))
    results = EditResults()
    for i, (old_text, new_prompt) in enumerate(swaps):
        source_reading, edited_reading = reads[i], reads[len(prompts) + i]
        results.append(
            EditResult(
                method=method, prompt=prompts[i], new_prompt=new_prompt, old_text=old_text, new_text=new_texts[i],
                layers=[layer.name for layer in selected], start_step=start,
                source_image=_pil(sources[i]), edited_image=_pil(edited[i]),
                source_read=source_reading.text, edited_read=edited_reading.text,
                scores=score_edit(sources[i], edited[i], source_reading, edited_reading, old_text, new_texts[i]),
                floor=_text_scores(source_reading.text, old_text, new_texts[i]),
                seconds=seconds, generation=_generation(pipe, generators[i], generate_kwargs),
            )
        )
    return results[0] if single else results


def edit_image(
    pipe: Any,
    image: Any,
    prompt: str,
    new_text: str,
    layers: LayerSource = "preset",
    *,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    start_step: int | float | None = None,
    method: EditMethod = "patch",
    ocr: str | OCR = "rapidocr",
    **generate_kwargs: Any,
) -> EditResult:
    """Change the quoted text in a user's own ``image`` (a PIL image, an array, or an image file's
    path), which ``prompt`` describes (text included).

    The image is inverted to the model's starting noise with the model itself (deterministic DDIM,
    or the flow ODE backwards; :mod:`textloc.edit.inversion`), then edited as :func:`edit_text`
    edits a generation, from that noise. Guidance defaults to the family's scale that turns
    classifier-free guidance off (``Training.unguided_scale``: 1 for most, 0 for Z-Image): inverted
    noise regenerates the image only without it (textloc-tiny: 17-34 dB at guidance 1, about 10 dB
    at its usual 5); an embedded model's guidance and start step default to those its real-image
    figure was measured at (``EmbeddedModel.image_edit``). Without ``height``/``width`` the image
    is resized to the model's size (an embedded model's, else the pipeline's default), its aspect
    kept. The result's ``reconstruction`` scores the unedited regeneration against the image.
    """
    refuse_modular(pipe, "edit_image")
    replace_quoted(prompt, new_text)  # bad text is refused before the inversion runs
    if isinstance(image, (str, os.PathLike)):
        image = _open_image(image)
    defaults = _image_edit_defaults(pipe, image)
    guidance_scale = defaults["guidance_scale"] if guidance_scale is None else guidance_scale
    start_step = defaults.get("start_step") if start_step is None else start_step
    settings = {"num_inference_steps": num_inference_steps, **{k: defaults[k] for k in ("height", "width")}, **generate_kwargs}
    latents = invert(pipe, image, prompt, **settings)
    if "guidance_scale" in inspect.signature(pipe.__call__).parameters:  # HunyuanImage's guiders hold their own
        settings["guidance_scale"] = guidance_scale
    with starting_from(pipe, latents):
        result = edit_text(pipe, prompt, new_text, layers, start_step=start_step, method=method, ocr=ocr, **settings)
    result.given_image = to_pil_list(image)[0]
    # Colours against colours: Qwen-Image 2.1 generates RGBA, and inversion encodes an image opaque.
    original = np.asarray(result.given_image.convert("RGB").resize(result.source_image.size), dtype=np.float32) / 255
    regenerated = np.asarray(result.source_image.convert("RGB"), dtype=np.float32) / 255
    result.reconstruction = {key: value for key, value in image_scores(original, regenerated).items() if key != "mse"}
    result.generation["seed"] = None  # the noise is the image's inversion, not a seed's
    return result


def _image_edit_defaults(pipe: Any, image: Any) -> dict[str, Any]:
    """Guidance, start step and size an edit of ``image`` runs with where the caller does not say."""
    embedded = embedded_model_of(pipe)
    defaults = {"guidance_scale": family_of(pipe).training.unguided_scale, **(embedded.image_edit if embedded is not None else {})}
    side = model_image_side(pipe)
    width, height = to_pil_list(image)[0].size
    # The longer side becomes the model's; the other keeps the aspect, rounded to a size it takes.
    multiple = image_size_multiple(pipe)
    scale = side / max(width, height)
    defaults["height"], defaults["width"] = (max(multiple, round(length * scale / multiple) * multiple) for length in (height, width))
    return defaults


def score_edit(source: Any, edited: Any, source_reading: Reading, edited_reading: Reading, old_text: str, new_text: str) -> dict[str, float | None]:
    """The scores of :class:`EditResult`: text of the edited image, and its pixels against the source."""
    scores: dict[str, float | None] = {**_text_scores(edited_reading.text, old_text, new_text), **image_scores(source, edited)}
    outside = {f"{key}_outside_text": None for key in ("mse", "psnr", "ssim")}
    if source_reading.boxes is not None and edited_reading.boxes is not None:
        height, width = np.asarray(source).shape[:2]
        mask = background_mask(height, width, source_reading.boxes + edited_reading.boxes)
        if mask.sum() > mask.size // 4:  # enough background left to score it
            outside = {f"{key}_outside_text": value for key, value in image_scores(source, edited, mask).items()}
    return {**scores, **outside}


def _generation(pipe: Any, row: torch.Generator, generate_kwargs: dict[str, Any]) -> dict[str, Any]:
    """What :attr:`EditResult.generation` records: the model, the seed of ``row``'s noise, and the
    steps and guidance the call ran with (the pipeline's defaults where not given)."""
    fresh = seeding.generator(row.initial_seed())
    # initial_seed() names the noise only while the generator has drawn nothing from it.
    seed = row.initial_seed() if torch.equal(fresh.get_state(), row.get_state()) else None
    where = getattr(pipe, "name_or_path", None)  # a folder may be a Path: JSON writes it as a string
    data: dict[str, Any] = {"pipeline": type(pipe).__name__, "name_or_path": None if where is None else str(where), "seed": seed}
    parameters = inspect.signature(pipe.__call__).parameters
    for name in ("num_inference_steps", "guidance_scale", "true_cfg_scale"):
        if name in parameters:
            data[name] = generate_kwargs.get(name, parameters[name].default)
    return data



def _text_scores(read: str, old_text: str, new_text: str) -> dict[str, float]:
    new = text_scores(read, new_text)
    return {"new_contains": new["contains"], "new_f1": new["f1"], "new_ned": new["ned"], "old_contains": text_scores(read, old_text)["contains"]}


def _open_image(path: str | os.PathLike) -> Image.Image:
    """The image file at ``path``, in RGB; a one-line error if there is none."""
    try:
        return Image.open(path).convert("RGB")
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read an image from {os.fspath(path)!r}: {error}") from None


def _as_batch(prompt: str | Sequence[str], new_text: str | Sequence[str]) -> tuple[list[str], list[str]]:
    for name, value in (("prompt", prompt), ("new_text", new_text)):
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, (list, tuple)) or not all(isinstance(text, str) for text in texts):
            raise TypeError(f"{name} is a string or a list of strings, not {value!r}.")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    new_texts = [new_text] if isinstance(new_text, str) else list(new_text)
    if isinstance(prompt, str) != isinstance(new_text, str) or len(prompts) != len(new_texts):
        raise ValueError("Give one prompt and one new text, or two lists of the same length.")
    if not prompts:
        raise ValueError("No prompt to edit.")
    return prompts, new_texts


def _patched(
    pipe: Any,
    prompts: list[str],
    new_prompts: list[str],
    layers: list[AttentionLayer],
    start: int | float,
    generators: list[torch.Generator],
    generate_kwargs: dict[str, Any],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Rows: the sources, then the edits (source prompt, patched), then any live new-prompt rows."""
    n = len(prompts)
    swap = plan_text_swap(pipe, layers, [[n + i] for i in range(n)], new_prompts, 2 * n, start, **generate_kwargs)
    noise = generators * 2
    return _generate_rows(pipe, prompts * 2 + swap.extra_prompts, noise + [noise[row] for row in swap.extra_noise_rows], swap.patches, generate_kwargs, n)


def _generate_rows(pipe, prompts, generators, plan, generate_kwargs, edits: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One batch, every row from its generator's noise: ``edits`` source rows, then ``edits``
    edited rows (a third block, if any, only feeds the patches)."""
    rows = [seeding.copies(g, 1)[0] for g in generators]  # the caller's generators do not advance
    images = np.asarray(images_of(run_with_patches(pipe, prompts, plan, generator=rows, output_type="np", **generate_kwargs)))
    return list(images[:edits]), list(images[edits : 2 * edits])


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
