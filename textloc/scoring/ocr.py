"""Read the text in generated images.

Every engine follows the :class:`OCR` protocol, ``read(images) -> list[str]``: one string per
image, the recognized boxes in reading order (top-to-bottom, then left-to-right) joined by
spaces, ``""`` where no text is found.

The default, :class:`RapidOCR`, runs offline: the ``rapidocr`` wheel ships its ONNX models.
Measured here (2 CPU cores, rapidocr 3.10, PP-OCRv6 small): one 64x64 image (upscaled to 256 px)
takes about 0.07 s on idle cores, 0.35 s while other work shares them; loading the models takes
1-1.5 s once; a repeated image costs nothing (cache). It read 20 of 20 Pillow-rendered 64x64
words exactly (coloured signs, DejaVuSans-Bold or Pillow's default font), 24 of 25 after blur
and noise.
"""

from __future__ import annotations

import abc
import hashlib
import io
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Reading:
    """What an engine read in one image: the text, and its boxes ``(x0, y0, x1, y1)`` in the
    image's own pixels (``None`` from an engine that reports no boxes)."""

    text: str
    boxes: tuple[Box, ...] | None


@runtime_checkable
class OCR(Protocol):
    """Anything that reads one string per image."""

    def read(self, images: Any) -> list[str]:
        """Text of each image; ``images`` as :func:`to_pil_list` accepts them."""
        ...


def readings(ocr: OCR, images: Any) -> list[Reading]:
    """What ``ocr`` reads in each image, with text boxes where the engine reports them (any
    :class:`OCR` works: one that only reads text gives no boxes)."""
    if hasattr(ocr, "readings"):
        return list(ocr.readings(images))
    return [Reading(text, None) for text in ocr.read(images)]


def to_pil_list(images: Any) -> list[Image.Image]:
    """A list of RGB PIL images from a PIL image, a list of images, or a batch.

    A batch is a numpy array or torch tensor with a leading batch axis, channels first or last,
    uint8 or float in [0, 1] (diffusers' ``output_type="np"`` and ``"pt"`` both work).
    """
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if getattr(images, "ndim", None) is not None:  # a numpy array or a torch tensor
        if images.ndim == 4:
            return [_to_pil(image) for image in images]
        return [_to_pil(images)]
    return [_to_pil(image) for image in images]


def _to_pil(image: Any) -> Image.Image:
    # Here, not at the top: the engines' names (the command line's --ocr) come without torch.
    from textloc.scoring.metrics import to_float_array

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.rint(to_float_array(image) * 255).astype(np.uint8)
    if array.shape[-1] == 1:
        return Image.fromarray(array[:, :, 0]).convert("RGB")
    return Image.fromarray(array[:, :, :3])


def _image_key(image: Image.Image) -> bytes:
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(repr(image.size).encode())
    return digest.digest()


def _upscale(image: Image.Image, min_side: int) -> Image.Image:
    short = min(image.size)
    if short >= min_side:
        return image
    scale = min_side / short
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.BICUBIC)


def _in_reading_order(boxes: Sequence[Box], texts: Sequence[str]) -> str:
    """Join texts line by line: a box whose vertical centre falls inside a line's first box
    belongs to that line."""
    lines: list[tuple[Box, list[tuple[float, str]]]] = []
    for box, text in sorted(zip(boxes, texts), key=lambda item: (item[0][1] + item[0][3]) / 2):
        centre = (box[1] + box[3]) / 2
        if lines and lines[-1][0][1] <= centre <= lines[-1][0][3]:
            lines[-1][1].append((box[0], text))
        else:
            lines.append((box, [(box[0], text)]))
    return " ".join(text for _, line in lines for _, text in sorted(line) if text)


class _CachedOCR(abc.ABC):
    """Shared by the engines: conversion, upscaling and a cache keyed by the image bytes."""

    def __init__(self, min_side: int) -> None:
        self.min_side = min_side
        self._cache: dict[bytes, Reading] = {}

    def read(self, images: Any) -> list[str]:
        """Text of each image (see :class:`OCR`); images read before are not read again."""
        return [reading.text for reading in self.readings(images)]

    def readings(self, images: Any) -> list[Reading]:
        """Text and text boxes of each image, the boxes in the image's own pixels."""
        results = []
        for image in to_pil_list(images):
            key = _image_key(image)
            if key not in self._cache:
                upscaled = _upscale(image, self.min_side)
                reading = self._read_one(upscaled)
                scale = image.width / upscaled.width
                boxes = None if reading.boxes is None else tuple(tuple(v * scale for v in box) for box in reading.boxes)
                self._cache[key] = Reading(reading.text, boxes)
            results.append(self._cache[key])
        return results

    @abc.abstractmethod
    def _read_one(self, image: Image.Image) -> Reading:
        """The text in one image, already upscaled, with boxes in its pixels."""


class RapidOCR(_CachedOCR):
    """Offline OCR with rapidocr's bundled ONNX models (detection + recognition).

    ``min_side``: images whose short side is smaller are upscaled to it first, since a 64x64
    image is too small for the detector. The text-direction classifier is off: generated text
    is upright, so the classifier could only cost time (about 20% here) or turn a crop upside down.
    """

    def __init__(self, min_side: int = 256, min_confidence: float = 0.5) -> None:
        try:
            from rapidocr import RapidOCR as Engine
        except ImportError as error:
            raise ImportError('RapidOCR needs the rapidocr package: pip install "textloc[ocr]"') from error
        super().__init__(min_side)
        self._engine = Engine(
            params={
                "Global.log_level": "error",
                "Global.use_cls": False,
                "Global.text_score": min_confidence,
                # The detector would otherwise upscale again, to 736 px: 3-6x slower, no better.
                "Det.limit_side_len": min_side,
            }
        )

    def _read_one(self, image: Image.Image) -> Reading:
        result = self._engine(image)
        if not result.txts:
            return Reading("", ())
        boxes = [(*corners.min(axis=0), *corners.max(axis=0)) for corners in np.asarray(result.boxes)]
        return Reading(_in_reading_order(boxes, result.txts), tuple(tuple(map(float, box)) for box in boxes))


class TesseractOCR(_CachedOCR):
    """The ``tesseract`` command (Debian: ``apt install tesseract-ocr``); good on clean renders.

    ``psm`` is tesseract's page segmentation mode: 6 reads a block of lines, 7 a single line.
    """

    def __init__(self, min_side: int = 256, psm: int = 6, lang: str = "eng") -> None:
        executable = shutil.which("tesseract")
        if executable is None:
            raise ImportError(
                "TesseractOCR needs the tesseract program: apt install tesseract-ocr "
                "(macOS: brew install tesseract)"
            )
        super().__init__(min_side)
        self._command = [executable, "stdin", "stdout", "--psm", str(psm), "-l", lang]

    def _read_one(self, image: Image.Image) -> Reading:
        png = io.BytesIO()
        image.save(png, format="PNG")
        done = subprocess.run(self._command, input=png.getvalue(), capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"tesseract failed: {done.stderr.decode(errors='replace').strip()}")
        # tesseract already emits lines in reading order; its plain-text output has no boxes.
        return Reading(" ".join(done.stdout.decode().split()), None)


class EasyOCR(_CachedOCR):
    """EasyOCR (``pip install easyocr``). It downloads its weights on first use."""

    def __init__(self, min_side: int = 256, languages: Sequence[str] = ("en",), gpu: bool = False) -> None:
        try:
            import easyocr
        except ImportError as error:
            raise ImportError("EasyOCR needs the easyocr package: pip install easyocr") from error
        super().__init__(min_side)
        self._reader = easyocr.Reader(list(languages), gpu=gpu, verbose=False)

    def _read_one(self, image: Image.Image) -> Reading:
        found = self._reader.readtext(np.asarray(image))
        boxes = [tuple(map(float, (*np.min(corners, axis=0), *np.max(corners, axis=0)))) for corners, _, _ in found]
        return Reading(_in_reading_order(boxes, [text for _, text, _ in found]), tuple(boxes))


ENGINES = {"rapidocr": RapidOCR, "tesseract": TesseractOCR, "easyocr": EasyOCR}


@lru_cache(maxsize=None)
def _shared_engine(name: str) -> OCR:
    return ENGINES[name]()


def get_ocr(name: str | OCR = "rapidocr") -> OCR:
    """An OCR engine by name (``rapidocr``, ``tesseract``, ``easyocr``), or ``name`` itself when
    it already is one. Engines by name are shared within the process, so the models load once and
    the read cache is common to all callers."""
    if not isinstance(name, str):
        if not isinstance(name, OCR):
            raise TypeError(f"expected an engine name or an object with read(images), got {type(name)}")
        return name
    key = name.lower()
    if key not in ENGINES:
        raise ValueError(f"unknown OCR engine {name!r}; known engines: {', '.join(ENGINES)}")
    return _shared_engine(key)
