"""Score generated images against a prompt pair: what the OCR reads, and how much of the scene stayed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from textloc.localization.results import TEXT_METRICS, ImageScores, Means
from textloc.localization.stats import interval
from textloc.scoring.prompts import PromptPair, SceneJudge
from textloc.scoring.metrics import image_scores, mse, text_scores
from textloc.scoring.ocr import OCR

# The per-image numbers every report carries; all are floats so they average honestly.
METRICS = (
    *(f"target_{name}" for name in TEXT_METRICS),
    *(f"source_{name}" for name in TEXT_METRICS),
    "mse",
    "ssim",
    "scene",
    "mse_to_target",
)
# The metrics that are rates (a share of images), which carry a bootstrap interval over pairs.
RATES = ("target_hit", "target_exact", "source_hit", "source_exact", "scene")


def score_images(
    images: Sequence[np.ndarray],
    pair: PromptPair,
    source_image: np.ndarray,
    target_image: np.ndarray,
    ocr: OCR,
    scene_judge: SceneJudge | None = None,
) -> list[ImageScores]:
    """One :class:`ImageScores` per image: OCR reading, word-level scores against both texts, and scene scores.

    ``target_hit`` is 1.0 when the OCR reads the target text among its words; ``mse`` and ``ssim``
    compare the image with the unpatched source image, ``mse_to_target`` with the target prompt's
    image, and ``scene`` (with a judge, else ``None``) is whether it still shows the source
    prompt's scene.
    """
    readings = ocr.read(list(images))
    judged = scene_judge(images, [pair.source] * len(images)) if scene_judge is not None else [None] * len(images)
    scores = []
    for image, read, scene in zip(images, readings, judged):
        row: dict[str, Any] = {"read": read}
        for prefix, text in (("target", pair.target_text), ("source", pair.source_text)):
            measured = text_scores(read, text)
            row.update({
                f"{prefix}_hit": float(measured["contains"]),
                f"{prefix}_exact": float(measured["accuracy"]),
                f"{prefix}_f1": float(measured["f1"]),
                f"{prefix}_ned": float(measured["ned"]),
            })
        pixels = image_scores(image, source_image)
        row["mse"], row["ssim"] = float(pixels["mse"]), float(pixels["ssim"])
        row["scene"] = None if scene is None else float(scene)
        row["mse_to_target"] = mse(image, target_image)
        scores.append(ImageScores(**row))
    return scores


def mean_metrics(rows: Sequence[ImageScores], seed: int = 0) -> Means:
    """The mean of every metric over rows (one per pair), ``None`` where no row has it (no scene
    judge), and under ``ci`` each rate's bootstrap interval over the rows (seeded by ``seed``)."""
    means: dict[str, Any] = {}
    intervals: dict[str, list[float]] = {}
    for name in METRICS:
        values = [getattr(row, name) for row in rows if getattr(row, name) is not None]
        means[name] = float(np.mean(values)) if values else None
        if values and name in RATES:
            intervals[name] = interval(values, seed)
    return Means(**means, n=float(len(rows)), ci=intervals)
