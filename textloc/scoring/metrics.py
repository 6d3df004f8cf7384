"""Honest scores for rendered text and for background preservation.

Text: word-level precision/recall/F1 over word multisets (as in MARIO-Eval), exact accuracy on
sorted word lists, normalized edit distance (as in AnyText). Character-level P/R/F1 exist only
behind ``level="char"``: a bag of characters scores an anagram as a perfect match and gives
unrelated words a chance floor of 0.2-0.3, so it is never the default.

One rule says whether an image shows a text, wherever textloc reports it (a localization's
``target_hit``, textloc-tiny's word accuracy): :func:`contains`, over the words of :func:`words`.
It compares words case-insensitively because pipelines may change the prompt's case before the
model sees it (IF-style pipelines lower-case it when ``clean_caption=False``).

Images: MSE/PSNR/SSIM by scikit-image, in float64 on [0, 1] arrays, so a uint8 difference never
wraps around and identical images give PSNR = inf; a mask keeps the pixels (MSE, PSNR) or the SSIM
windows centred on them that count.

A number means little without its floor: :class:`Score` pairs a value with the same metric on
the unpatched baseline, and :func:`compare` builds them for a whole dict of metrics.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein
import torch
from PIL import Image
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

Level = Literal["word", "char"]


# ----------------------------------------------------------------------------------------------
# Text


def words(text: str) -> list[str]:
    """Case-folded words of ``text``; any character that is not a letter or digit separates words."""
    cleaned = "".join(ch if ch.isalnum() else " " for ch in text.casefold())
    return cleaned.split()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each costing 1) between two strings."""
    return Levenshtein.distance(a, b)


def normalized_edit_distance(read: str, target: str) -> float:
    """Edit distance over the longer length, on normalized text (words joined by one space).

    0 is a perfect match, 1 shares nothing; two empty texts are a perfect match.
    """
    a, b = " ".join(words(read)), " ".join(words(target))
    longest = max(len(a), len(b))
    return levenshtein(a, b) / longest if longest else 0.0


def _tokens(text: str, level: Level) -> list[str]:
    if level == "word":
        return words(text)
    if level == "char":
        return list("".join(words(text)))
    raise ValueError(f"level must be 'word' or 'char', got {level!r}")


def precision_recall_f1(read: str, target: str, level: Level = "word") -> tuple[float, float, float]:
    """Precision, recall and F1 of the ``read`` text against ``target`` over token multisets.

    A word read twice counts twice, and matches only as often as the target holds it. An empty
    read scores 0 against a non-empty target (and vice versa); two empty texts score 1.
    """
    predicted, expected = Counter(_tokens(read, level)), Counter(_tokens(target, level))
    if not predicted and not expected:
        return 1.0, 1.0, 1.0
    hits = sum((predicted & expected).values())
    if hits == 0:
        return 0.0, 0.0, 0.0
    precision = hits / sum(predicted.values())
    recall = hits / sum(expected.values())
    return precision, recall, 2 * precision * recall / (precision + recall)


def exact_match(read: str, target: str) -> bool:
    """Whether both texts hold the same words, in any order (MARIO-Eval's accuracy)."""
    return sorted(words(read)) == sorted(words(target))


def contains(read: str, target: str) -> bool:
    """Whether the target's words appear, in order and adjacent, among the words read: textloc's
    rule for "the image shows the text" (see the module's docstring)."""
    haystack, needle = words(read), words(target)
    if not needle:
        return True
    return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def text_scores(read: str, target: str, level: Level = "word") -> dict[str, float]:
    """All text metrics of one OCR read against its target text.

    Keys: ``precision``, ``recall``, ``f1`` (``char_precision``, ``char_recall``, ``char_f1`` when
    ``level="char"``, so a character score is never mistaken for a word score), ``accuracy`` and
    ``contains`` (0.0 or 1.0, so their mean is a rate), ``ned`` and ``similarity`` (1 - ned).
    """
    precision, recall, f1 = precision_recall_f1(read, target, level)
    prefix = "char_" if level == "char" else ""
    ned = normalized_edit_distance(read, target)
    return {
        f"{prefix}precision": precision,
        f"{prefix}recall": recall,
        f"{prefix}f1": f1,
        "accuracy": float(exact_match(read, target)),
        "contains": float(contains(read, target)),
        "ned": ned,
        "similarity": 1.0 - ned,
    }


# ----------------------------------------------------------------------------------------------
# Images


def to_float_array(image: Any) -> np.ndarray:
    """One image as a float64 ``H x W x C`` array in [0, 1].

    Accepts a PIL image, a numpy array or a torch tensor, channels first or last (a 1-, 3- or
    4-channel axis), uint8 in [0, 255] or float in [0, 1]. Float values outside [0, 1] (such as
    a raw VAE decode in [-1, 1]) are an error rather than a silent rescale.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"))
    elif isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = (image if image.dtype == torch.uint8 else image.double()).numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"expected one image (H x W [x C]), got an array of shape {array.shape}")
    if array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"images must be uint8 or float, got {array.dtype}")
    array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())
    # A little slack for rounding in the model's own [0, 1] conversion.
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"float images must lie in [0, 1], got values in [{low:.3f}, {high:.3f}]; "
            "convert a [-1, 1] image with (x + 1) / 2"
        )
    return array.clip(0.0, 1.0)


def _pair(a: Any, b: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    x, y = to_float_array(a), to_float_array(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    if mask is None:
        return x, y, None
    keep = np.asarray(mask, dtype=bool)
    if keep.shape != x.shape[:2]:
        raise ValueError(f"mask shape {keep.shape} does not match image size {x.shape[:2]}")
    if not keep.any():
        raise ValueError("mask selects no pixel")
    return x, y, keep


def background_mask(height: int, width: int, boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """Boolean ``H x W`` mask, True outside every ``(x0, y0, x1, y1)`` box (pixel coordinates)."""
    keep = np.ones((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        top, left = max(math.floor(y0), 0), max(math.floor(x0), 0)
        keep[top : math.ceil(y1), left : math.ceil(x1)] = False
    return keep


def _kept(a: Any, b: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both images' pixels that count: whole ``H x W x C`` arrays, or ``N x C`` under ``mask``."""
    x, y, keep = _pair(a, b, mask)
    return (x, y) if keep is None else (x[keep], y[keep])


def mse(a: Any, b: Any, mask: Any = None) -> float:
    """Mean squared error on [0, 1] values; with ``mask`` (H x W, True = counts) only there."""
    return float(mean_squared_error(*_kept(a, b, mask)))


def psnr(a: Any, b: Any, mask: Any = None) -> float:
    """Peak signal-to-noise ratio in dB for a peak of 1.0; identical images give ``inf``.

    With ``mask`` (H x W, True = counts) only there.
    """
    # An MSE of 0 divides by zero on purpose: inf is the answer, not a warning.
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(*_kept(a, b, mask), data_range=1.0))


# Wang et al. 2004's SSIM as they define it: an 11x11 Gaussian window of sigma 1.5 (scikit-image
# truncates it at 3.5 sigma, 5 px each side), population (co)variances, K1 = 0.01, K2 = 0.03.
_SSIM_OPTIONS: dict[str, Any] = {"data_range": 1.0, "gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
_SSIM_WINDOW = 11


def ssim(a: Any, b: Any, mask: Any = None) -> float:
    """Structural similarity (Wang et al. 2004): 11x11 Gaussian window (sigma 1.5),
    K1 = 0.01, K2 = 0.03, data range 1, averaged over positions and channels.

    Only windows that lie inside the image count (scikit-image's mean leaves out the border,
    where its filter pads), and with ``mask`` only those centred on a True pixel. Images must be
    at least 11 pixels on each side.
    """
    x, y, keep = _pair(a, b, mask)
    if min(x.shape[:2]) < _SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WINDOW} px per side, got {x.shape[:2]}")
    mean, ssim_map = structural_similarity(x, y, channel_axis=2, full=True, **_SSIM_OPTIONS)
    if keep is None:
        return float(mean)
    half = _SSIM_WINDOW // 2
    inside = (slice(half, -half), slice(half, -half))
    centred = keep[inside]
    if not centred.any():
        raise ValueError("mask selects no pixel far enough from the border for an SSIM window")
    return float(ssim_map[inside][centred].mean())


def image_scores(a: Any, b: Any, mask: Any = None) -> dict[str, float]:
    """MSE, PSNR and SSIM of two images (``mask``: True where pixels count)."""
    return {"mse": mse(a, b, mask), "psnr": psnr(a, b, mask), "ssim": ssim(a, b, mask)}


# ----------------------------------------------------------------------------------------------
# Reporting


@dataclass(frozen=True)
class Score:
    """A metric value next to the same metric on the unpatched baseline."""

    value: float
    baseline: float

    @property
    def delta(self) -> float:
        """``value - baseline`` (for MSE or NED, lower is better, so a good delta is negative)."""
        return self.value - self.baseline

    def __str__(self) -> str:
        return f"{self.value:.2f} (baseline {self.baseline:.2f})"

    def to_dict(self) -> dict[str, float]:
        """``{"value", "baseline", "delta"}`` for JSON/CSV reports."""
        return {"value": self.value, "baseline": self.baseline, "delta": self.delta}


def mean_scores(samples: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-key mean over per-sample metric dicts, which must all hold the same keys.

    A mean that includes an infinite PSNR is infinite: report the median or MSE for such sets.
    """
    if not samples:
        raise ValueError("no samples to average")
    keys = set(samples[0])
    for i, sample in enumerate(samples):
        if set(sample) != keys:
            raise ValueError(f"sample {i} has keys {sorted(sample)}, expected {sorted(keys)}")
    return {key: float(np.mean([float(sample[key]) for sample in samples])) for key in samples[0]}


def compare(patched: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, Score]:
    """Pair every metric of a patched run with the same metric of the unpatched baseline."""
    missing = set(patched) ^ set(baseline)
    if missing:
        raise ValueError(f"patched and baseline metrics differ in keys: {sorted(missing)}")
    return {key: Score(float(patched[key]), float(baseline[key])) for key in patched}
