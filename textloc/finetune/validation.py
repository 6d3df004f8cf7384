"""Validation during LoRA training: fixed prompts and seeds, OCR word accuracy, a CSV, a plot, sample grids."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textloc import seeding
from textloc.images import captioned_grid
from textloc.pipeline_calls import images_of
from textloc.scoring.metrics import text_scores
from textloc.scoring.ocr import OCR, get_ocr
from textloc.scoring.quoted import quoted_spans

VALIDATION_CSV = "validation.csv"
VALIDATION_PLOT = "validation.png"
SAMPLES_DIR = "validation"
COLUMNS = ("step", "word_accuracy", "edit_distance", "loss")


class Validation:
    """Generates ``prompts`` (prompt ``i`` from seed ``seed + i``) and scores the quoted text OCR reads.

    ``word_accuracy`` is the share of images whose read words equal the quoted ones,
    ``edit_distance`` the mean normalized edit distance to them (0 = exact). Each run appends a
    row to ``validation.csv``, redraws ``validation.png`` and saves ``validation/step_<step>.png``.
    """

    def __init__(
        self,
        pipe: Any,
        prompts: Sequence[str],
        directory: Path,
        generate_kwargs: dict[str, Any],
        seed: int = 0,
        ocr: str | OCR = "rapidocr",
    ):
        self.prompts = list(prompts)
        self.targets = []
        for prompt in self.prompts:
            spans = quoted_spans(prompt)
            if not spans:
                raise ValueError(f"The validation prompt {prompt!r} quotes no text: write the words it asks for in double quotes.")
            self.targets.append(" ".join(span.text for span in spans))
        self.pipe, self.directory, self.seed = pipe, directory, seed
        self.generate_kwargs = {**generate_kwargs, "output_type": "pil"}
        self.ocr = get_ocr(ocr)

    def history(self, up_to: int | None = None) -> list[dict[str, float]]:
        """The rows logged so far (at steps <= ``up_to``)."""
        path = self.directory / VALIDATION_CSV
        if not path.is_file():
            return []
        with path.open() as handle:
            rows = [{key: float(value) if value else None for key, value in row.items()} for row in csv.DictReader(handle)]
        return [row for row in rows if up_to is None or row["step"] <= up_to]

    def restart_at(self, step: int) -> None:
        """Forget rows after ``step``: a resumed run validates those steps again."""
        self._write(self.history(up_to=step))

    def __call__(self, step: int, loss: float | None) -> dict[str, float]:
        """Validate at ``step``; ``loss`` is the step's training loss (``None`` before training)."""
        generators = seeding.generators(range(self.seed, self.seed + len(self.prompts)))
        images = images_of(self.pipe(prompt=self.prompts, generator=generators, **self.generate_kwargs))
        reads = self.ocr.read(images)
        scores = [text_scores(read, target) for read, target in zip(reads, self.targets)]
        row = {
            "step": float(step),
            "word_accuracy": sum(score["accuracy"] for score in scores) / len(scores),
            "edit_distance": sum(score["ned"] for score in scores) / len(scores),
            "loss": loss,
        }
        self._write([*self.history(), row])
        samples = self.directory / SAMPLES_DIR
        samples.mkdir(parents=True, exist_ok=True)
        cells = [[(image, f"{target} -> {read or '-'}")] for image, target, read in zip(images, self.targets, reads)]
        captioned_grid([f"step {step}"], cells).save(samples / f"step_{step:06d}.png")
        return row

    def _write(self, rows: list[dict[str, float]]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / VALIDATION_CSV).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        if rows:
            plot_history(rows, self.directory / VALIDATION_PLOT)


def plot_history(rows: Sequence[dict[str, float]], path: Path) -> None:
    """Word accuracy and edit distance against the training step, the loss on a second axis."""
    import matplotlib.pyplot as plt

    figure = history_figure(rows)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def history_figure(rows: Sequence[dict[str, float]]) -> Any:
    """The figure of :func:`plot_history`. The loss gets its axis only with two or more trained
    validations: validated before and after training alone, it is one point, drawn as nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(steps, [row["word_accuracy"] for row in rows], "o-", label="word accuracy")
    axis.plot(steps, [row["edit_distance"] for row in rows], "s--", label="edit distance")
    axis.set_xlabel("training step")
    axis.set_ylim(-0.02, 1.02)
    axis.legend(loc="upper left")
    trained = [row for row in rows if row["loss"] is not None]
    if len(trained) >= 2:
        loss_axis = axis.twinx()
        loss_axis.plot([row["step"] for row in trained], [row["loss"] for row in trained], color="grey", alpha=0.6, label="training loss")
        loss_axis.set_ylabel("training loss")
    figure.tight_layout()
    return figure
