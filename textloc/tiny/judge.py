"""The scene judge of the embedded models: which sign and background colours an image shows, from its pixels."""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image

from textloc.tiny.data import COLOURS

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_NAMES = list(COLOURS)


def _nearest_colour(pixels: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour for each RGB pixel (rows of ``pixels``)."""
    distances = ((pixels[:, None, :].astype(np.float32) - _PALETTE[None]) ** 2).sum(-1)
    return distances.argmin(1)


def judge_colours(image: Image.Image) -> tuple[str, str]:
    """(sign colour, background colour) of a 64x64 sign image, judged from its pixels.

    The 2-pixel border ring is always background in the renderer; the sign colour is the most
    common palette colour of the centre band that is not the background (letters are thinner
    than the sign around them).
    """
    array = np.asarray(image.convert("RGB").resize((64, 64)))
    ring = np.concatenate([array[:2].reshape(-1, 3), array[-2:].reshape(-1, 3),
                           array[:, :2].reshape(-1, 3), array[:, -2:].reshape(-1, 3)])
    background = Counter(_nearest_colour(ring).tolist()).most_common(1)[0][0]
    centre = _nearest_colour(array[20:44, 6:58].reshape(-1, 3))
    votes = Counter(centre[centre != background].tolist())
    sign = votes.most_common(1)[0][0] if votes else background
    return _NAMES[sign], _NAMES[background]
