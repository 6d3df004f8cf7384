"""Image grids: many generated images of one size saved as one PNG, with captions where they help."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def image_grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Paste images of one size into a grid, row by row; ``columns`` defaults to a near square."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for position, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((position % columns) * width, (position // columns) * height))
    return grid


def captioned_grid(titles: Sequence[str], rows: Sequence[Sequence[tuple[Any, str]]], scale: int = 3) -> Image.Image:
    """A grid with a title over each column and a caption under each image (e.g. what OCR read).

    ``rows`` holds ``(image, caption)`` pairs: PIL images or float arrays in [0, 1], all one size,
    enlarged ``scale`` times without smoothing so that small images stay legible.
    """
    first = _to_image(rows[0][0][0])
    width, height = first.width * scale, first.height * scale
    label = 14
    font = ImageFont.load_default(size=11)
    grid = Image.new("RGB", (width * len(titles), (height + 2 * label) * len(rows) + label), "white")
    draw = ImageDraw.Draw(grid)
    for column, title in enumerate(titles):
        draw.text((column * width + 4, 0), title, fill="black", font=font)
    for row, cells in enumerate(rows):
        top = label + row * (height + 2 * label)
        for column, (image, caption) in enumerate(cells):
            grid.paste(_to_image(image).resize((width, height), Image.NEAREST), (column * width, top))
            draw.text((column * width + 4, top + height + 1), caption[: max(8, width // 6)], fill="black", font=font)
    return grid


def _to_image(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray((np.clip(np.asarray(image), 0, 1) * 255).round().astype(np.uint8))
