"""Image grids: many generated images of one size saved as one PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image


def image_grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Paste images of one size into a grid, row by row; ``columns`` defaults to a near square."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for position, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((position % columns) * width, (position // columns) * height))
    return grid
