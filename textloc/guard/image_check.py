"""The guard's image side: read what each generated image shows, and keep a toxic word out anyway.

A prompt-side guard trusts that what it found is all the model will write. The image check does
not: it reads every output image with an OCR engine and judges the text read the way the prompt
side judges a prompt (:func:`textloc.guard.findings.find_toxic`: look-alikes, leet, spaced letters).
A row that shows a toxic word is generated again, from its own noise, with the text layers fed the
prompt with every text-like word made benign (the caller's ``regenerate``); if the OCR still reads
a toxic word there, the text boxes it read are blanked (filled with the colour around each box).
A row that reads clean is never touched: a clean prompt's image stays exactly the pipeline's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from textloc.guard.detectors import Detector
from textloc.guard.findings import find_toxic
from textloc.scoring.ocr import OCR, Box, readings


@dataclass
class ImageCheck:
    """What the image check did to one output row that showed a toxic word.

    ``read``: the text the OCR read in the generated image; ``found``: the toxic words in it;
    ``action``: ``"regenerated"`` (the regenerated image reads clean), ``"blanked"`` (its text boxes
    were blanked) or ``"unblanked"`` (the OCR engine gives no boxes to blank); ``read_after``: what
    the OCR reads in the image returned.
    """

    row: int
    read: str
    found: list[str]
    action: str
    read_after: str

    def describe(self) -> str:
        return f"image check: row {self.row} read {self.read!r} ({', '.join(self.found)}); {self.action}, now reads {self.read_after!r}"



def check_images(
    images: Any,
    detector: Detector,
    ocr: OCR,
    regenerate: Callable[[list[int]], Any],
    seconds: dict[str, float],
) -> list[ImageCheck]:
    """Read ``images`` (the output rows, changed in place) and guard each that shows a toxic word.

    ``regenerate(rows)`` returns those rows generated again with every text-like word made benign,
    in the same image type. ``seconds`` gains the time spent reading, regenerating and blanking.
    """
    clock = time.perf_counter()
    first = readings(ocr, images)
    seconds["ocr"] = seconds.get("ocr", 0.0) + time.perf_counter() - clock
    caught = {row: found for row, reading in enumerate(first) if (found := _toxic_words(reading.text, detector))}
    if not caught:
        return []
    clock = time.perf_counter()
    again = regenerate(list(caught))
    seconds["regenerate"] = time.perf_counter() - clock
    clock = time.perf_counter()
    second = readings(ocr, again)
    checks = []
    for number, (row, found) in enumerate(caught.items()):
        image, reading, action = again[number], second[number], "regenerated"
        if _toxic_words(reading.text, detector):
            if reading.boxes is None:
                action = "unblanked"
            else:
                image, action = blank(image, reading.boxes), "blanked"
                reading = readings(ocr, [image])[0]
        images[row] = image
        checks.append(ImageCheck(row, first[row].text, found, action, reading.text))
    seconds["recheck"] = time.perf_counter() - clock
    return checks


def _toxic_words(text: str, detector: Detector) -> list[str]:
    return list(dict.fromkeys(finding.word for finding in find_toxic(text, detector)))


def blank(image: Any, boxes: tuple[Box, ...]) -> Any:
    """``image`` (PIL, ``HWC`` numpy or ``CHW`` tensor, as a pipeline returns one row) with each box
    filled with the median colour of the pixels just around it, so a sign stays a sign, unwritten."""
    if isinstance(image, Image.Image):
        return Image.fromarray(_blank_array(np.asarray(image.convert("RGB")), boxes))
    if isinstance(image, torch.Tensor):
        filled = _blank_array(image.detach().permute(1, 2, 0).cpu().numpy(), boxes)
        return torch.from_numpy(filled).permute(2, 0, 1).to(image.device, image.dtype)
    return _blank_array(np.asarray(image), boxes)


def _blank_array(array: np.ndarray, boxes: tuple[Box, ...]) -> np.ndarray:
    filled = array.copy()
    height, width = array.shape[:2]
    for x0, y0, x1, y1 in boxes:
        left, top = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        right, bottom = min(int(np.ceil(x1)), width), min(int(np.ceil(y1)), height)
        if right <= left or bottom <= top:
            continue
        # The ring of pixels one past the box: the sign's own colour around the letters.
        outer_top, outer_left = max(top - 1, 0), max(left - 1, 0)
        outer = array[outer_top : bottom + 1, outer_left : right + 1]
        inside = np.zeros(outer.shape[:2], dtype=bool)
        inside[top - outer_top : bottom - outer_top, left - outer_left : right - outer_left] = True
        ring = outer[~inside] if not inside.all() else outer.reshape(-1, array.shape[-1])  # a box over the whole image
        filled[top:bottom, left:right] = np.median(ring, axis=0).astype(array.dtype)
    return filled
