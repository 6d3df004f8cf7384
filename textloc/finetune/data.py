"""The captioned images a LoRA trains on, and the order it sees them in.

Three sources, one interface (``example(index) -> (PIL image, caption)``):

- :class:`ImageFolder`: the ``imagefolder`` layout diffusers' LoRA scripts read, a folder of
  images with a ``metadata.jsonl`` whose lines name a ``file_name`` and a caption column;
- :class:`RowsDataset`: a ``datasets.Dataset`` (or any sequence of rows with an image and a caption);
- :class:`RenderedSigns`: textloc-tiny's own renderer with any word list, an endless stream, so new
  words need no files.

Every check runs when the source is built, before any training step: a missing folder, no
images, an image that does not open, a row without a caption.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from textloc import seeding
from textloc.tiny.data import EVAL_SEED, VOCABULARY, make_example

METADATA_FILE = "metadata.jsonl"
DEFAULT_CAPTION_COLUMN = "text"
DEFAULT_IMAGE_COLUMN = "image"


class CaptionedImages(Protocol):
    """A training set: ``example(i)`` is the ``i``-th (image, caption); ``size`` is ``None`` for a
    stream (every index is a new example)."""

    size: int | None

    def example(self, index: int) -> tuple[Image.Image, str]: ...


class ImageFolder:
    """An ``imagefolder`` directory: images and a ``metadata.jsonl`` naming each ``file_name`` and its caption."""

    def __init__(self, folder: str | os.PathLike, caption_column: str = DEFAULT_CAPTION_COLUMN):
        self.folder = Path(folder)
        metadata = self.folder / METADATA_FILE
        if not self.folder.is_dir():
            raise ValueError(f"The dataset folder {self.folder} does not exist.")
        if not metadata.is_file():
            raise ValueError(f"{self.folder} has no {METADATA_FILE}: one JSON line per image, e.g. {{\"file_name\": \"0001.png\", \"{caption_column}\": \"A sign that says \\\"OPEN\\\".\"}}.")
        self.rows: list[tuple[Path, str]] = []
        for number, line in enumerate(metadata.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{metadata}, line {number}: not JSON ({error.msg}).") from None
            self.rows.append((self.folder / _field(row, "file_name", metadata, number), _caption(row, caption_column, f"{metadata}, line {number}")))
        if not self.rows:
            raise ValueError(f"{metadata} lists no image: the dataset is empty.")
        for path, _ in self.rows:
            _check_image(path)
        self.size: int | None = len(self.rows)

    def example(self, index: int) -> tuple[Image.Image, str]:
        path, caption = self.rows[index]
        with Image.open(path) as image:
            return image.convert("RGB"), caption


class RowsDataset:
    """A ``datasets.Dataset``, or any sequence of mappings, with an image column and a caption column."""

    def __init__(self, rows: Sequence[Any], image_column: str = DEFAULT_IMAGE_COLUMN, caption_column: str = DEFAULT_CAPTION_COLUMN):
        self.rows, self.image_column, self.caption_column = rows, image_column, caption_column
        if len(rows) == 0:
            raise ValueError("The dataset has no rows.")
        columns = getattr(rows, "column_names", None) or list(rows[0])
        for column, what in ((image_column, "image_column"), (caption_column, "caption_column")):
            if column not in columns:
                raise ValueError(f"The dataset has no column {column!r} (its columns: {', '.join(columns)}); set {what}.")
        captions = rows[caption_column] if hasattr(rows, "column_names") else [row[caption_column] for row in rows]
        for index, caption in enumerate(captions):
            _caption({caption_column: caption}, caption_column, f"row {index}")
        _to_image(rows[0][image_column], "row 0")
        self.size: int | None = len(rows)

    def example(self, index: int) -> tuple[Image.Image, str]:
        row = self.rows[index]
        return _to_image(row[self.image_column], f"row {index}"), row[self.caption_column]


class RenderedSigns:
    """textloc-tiny's training signs (:func:`textloc.tiny.data.make_example`) over ``words``: an endless stream.

    ``words`` default to the vocabulary textloc-tiny was trained on; any others (upper case
    letters) are drawn with the same renderer, scenes and caption templates.
    """

    size: int | None = None

    def __init__(self, words: Sequence[str] | None = None, seed: int = 0):
        self.words = tuple(VOCABULARY if words is None else (word.strip().upper() for word in words))
        if not self.words or not all(self.words):
            raise ValueError("RenderedSigns needs at least one non-empty word.")
        self.seed = seed

    def example(self, index: int) -> tuple[Image.Image, str]:
        example = make_example(self.seed, index, words=self.words)
        return example.image, example.caption

    def held_out_captions(self, count: int) -> list[str]:
        """Captions of these words in scenes training never shows them in (held-out sign and
        background colours), from textloc-tiny's evaluation stream: validation prompts."""
        return [make_example(EVAL_SEED, index, held_out=True, words=self.words).caption for index in range(count)]


def as_captioned_images(
    data: Any, caption_column: str = DEFAULT_CAPTION_COLUMN, image_column: str = DEFAULT_IMAGE_COLUMN
) -> CaptionedImages:
    """``data`` as a training set: a folder, a ``datasets.Dataset``/sequence of rows, a source built
    above, or any object with ``example(index)`` and ``size`` (:class:`CaptionedImages`)."""
    # Any other source that keeps the protocol (e.g. the guard's pairs, textloc.guard.lora) is taken as it is.
    if isinstance(data, (ImageFolder, RowsDataset, RenderedSigns)) or (hasattr(data, "example") and hasattr(data, "size")):
        return data
    if isinstance(data, (str, os.PathLike)):
        return ImageFolder(data, caption_column)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return RowsDataset(data, image_column, caption_column)
    raise TypeError(
        f"A dataset is an imagefolder directory, a datasets.Dataset or a RenderedSigns, not {type(data).__name__}."
    )


def example_index(data: CaptionedImages, position: int, seed: int) -> int:
    """The example at ``position`` of the training order: each epoch a fresh shuffle of a finite set, seeded by (seed, epoch)."""
    if data.size is None:
        return position
    epoch, offset = divmod(position, data.size)
    return _epoch_order(data.size, seed, epoch)[offset]


@lru_cache(maxsize=4)
def _epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(size, generator=seeding.generator(seeding.derived_seed(seed, epoch))).tolist()


def _field(row: dict[str, Any], name: str, metadata: Path, number: int) -> str:
    if not isinstance(row.get(name), str) or not row[name]:
        raise ValueError(f"{metadata}, line {number}: no {name!r}.")
    return row[name]


def _caption(row: dict[str, Any], column: str, where: str) -> str:
    caption = row.get(column)
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"{where}: the image has no caption in column {column!r}.")
    return caption


def _check_image(path: Path) -> None:
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{path} is not a readable image ({error}).") from None


def _to_image(value: Any, where: str) -> Image.Image:
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (str, os.PathLike)):
        _check_image(Path(value))
        with Image.open(value) as image:
            return image.convert("RGB")
    raise ValueError(f"{where}: the image column holds {type(value).__name__}, not a PIL image or a path.")
