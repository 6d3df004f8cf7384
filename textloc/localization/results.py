"""A localization's results as types: one image's scores, their means over pairs, a unit's, a set's,
the held-out check, the head search, the screens' agreement and the seed stability.

Each type reads itself from and writes itself to the JSON of ``report.json`` and of the progress
log (:func:`to_json`, ``from_json``), whose layout stays what it always was: the committed reports
and logs load, and a report written again is the same file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

TEXT_METRICS = ("hit", "exact", "f1", "ned")


class Share(NamedTuple):
    """A share of the directly prompted rate with its bootstrap interval (``None`` throughout when
    no pair was read prompted directly: there is nothing to be a share of). JSON: ``[share, low, high]``."""

    value: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class ImageScores:
    """One image against its prompt pair: what the OCR read, word-level scores against each text
    (``*_hit``: the text is among the words read), its pixels against the unpatched source image
    (``mse``, ``ssim``) and the target prompt's (``mse_to_target``), and whether a scene judge saw
    the source's scene (``None`` without a judge)."""

    read: str
    target_hit: float
    target_exact: float
    target_f1: float
    target_ned: float
    source_hit: float
    source_exact: float
    source_f1: float
    source_ned: float
    mse: float
    ssim: float
    scene: float | None
    mse_to_target: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageScores:
        return cls(**data)


@dataclass(frozen=True)
class Means:
    """Every per-image score averaged over pairs (``None`` where no pair had it), ``n`` pairs, and
    each rate's bootstrap interval under ``ci`` (``[low, high]``).

    Means of the necessity direction are named after the original pair (see
    :func:`textloc.localization.directions.Direction.means`): their pixel distance is to the prompt
    whose text was patched in, the source, so they carry ``mse_to_source`` where others carry
    ``mse_to_target``.
    """

    target_hit: float | None
    target_exact: float | None
    target_f1: float | None
    target_ned: float | None
    source_hit: float | None
    source_exact: float | None
    source_f1: float | None
    source_ned: float | None
    mse: float | None
    ssim: float | None
    scene: float | None
    n: float
    ci: dict[str, list[float]] = field(default_factory=dict)
    mse_to_target: float | None = None
    mse_to_source: float | None = None

    @property
    def swapped(self) -> bool:
        """Whether these are necessity means, named after the original pair."""
        return self.mse_to_source is not None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Means:
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        # The keys in the order the report always had: the prompt generated's text first, so a
        # necessity row (generated from the target, named after the original pair) leads with source_*.
        first, second = ("source", "target") if self.swapped else ("target", "source")
        names = [f"{prefix}_{name}" for prefix in (first, second) for name in TEXT_METRICS]
        names += ["mse", "ssim", "scene", "mse_to_source" if self.swapped else "mse_to_target", "n"]
        return {**{name: getattr(self, name) for name in names}, "ci": dict(self.ci)}


def _means(data: Mapping[str, Any] | None) -> Means | None:
    return None if data is None else Means.from_json(data)


@dataclass(frozen=True)
class PairScores:
    """One pair's generation with some unit sets patched, as the progress log keeps it: the sets,
    the unpatched source and target images' scores, one patched image's scores per set, and the
    seconds it took. ``images`` (the pixels) are kept only for the example grid, never logged."""

    layer_sets: list[list[str]]
    source: ImageScores
    target: ImageScores
    patched: list[ImageScores]
    seconds: float = 0.0
    images: Any = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PairScores:
        return cls(
            layer_sets=data["layer_sets"], source=ImageScores.from_json(data["source"]), target=ImageScores.from_json(data["target"]),
            patched=[ImageScores.from_json(row) for row in data["patched"]], seconds=data.get("seconds", 0.0), images=data.get("images"),
        )

    def to_json(self) -> dict[str, Any]:
        """The logged record (``seconds`` is added by the log's caller; images are never logged)."""
        return {"layer_sets": self.layer_sets, "source": to_json(self.source), "target": to_json(self.target), "patched": to_json(self.patched)}


@dataclass(frozen=True)
class UnitScores:
    """One candidate layer (or the pooled vector): its size, rank, exact-sweep means in each measured
    direction (``exact``: sufficiency, ``necessity``) and its screen's attribution score."""

    name: str
    kind: str
    index: int
    num_text_kv_params: int
    param_share: float
    rank: int | None = None
    exact: Means | None = None
    necessity: Means | None = None
    attribution: float | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UnitScores:
        return cls(**{**data, "exact": _means(data.get("exact")), "necessity": _means(data.get("necessity"))})


@dataclass(frozen=True)
class SetScores:
    """A unit set tried while selecting: its means and its share of the directly prompted rate."""

    layers: list[str]
    means: Means
    share_of_direct: Share

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SetScores:
        return cls(data["layers"], Means.from_json(data["means"]), Share(*data["share_of_direct"]))


@dataclass(frozen=True)
class Outcome:
    """A set's scores on the held-out pairs in one direction: patched, the prompt whose text is
    patched in generated directly, the prompt generated unpatched, and the share of direct."""

    patched: Means
    direct: Means
    unpatched: Means
    share_of_direct: Share

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        return cls(*(Means.from_json(data[key]) for key in ("patched", "direct", "unpatched")), Share(*data["share_of_direct"]))


@dataclass(frozen=True)
class HeldOut:
    """The chosen set scored on pairs kept out of every choice, in each measured direction. In the
    JSON the sufficiency outcome's keys sit beside ``layers`` and the necessity one under ``necessity``."""

    layers: list[str]
    sufficiency: Outcome | None = None
    necessity: Outcome | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HeldOut:
        sufficiency = Outcome.from_json(data) if "patched" in data else None
        necessity = Outcome.from_json(data["necessity"]) if "necessity" in data else None
        return cls(data["layers"], sufficiency, necessity)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"layers": self.layers, **(to_json(self.sufficiency) if self.sufficiency else {})}
        return record if self.necessity is None else {**record, "necessity": to_json(self.necessity)}


@dataclass(frozen=True)
class HeadScores:
    """One head of a selected layer (or the pooled vector, which has none: ``head`` is ``None``),
    patched alone: its rank among them and its means."""

    name: str
    layer: str
    head: int | None
    rank: int
    exact: Means

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HeadScores:
        return cls(**{**data, "exact": Means.from_json(data["exact"])})


@dataclass(frozen=True)
class Heads:
    """The head search within the selected layers: every head alone, the sets tried, the chosen
    heads, whether they reached the threshold, and the chosen heads on the held-out pairs."""

    units: list[HeadScores]
    sets: list[SetScores]
    selected: list[str]
    reached: bool
    held_out: HeldOut | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Heads:
        return cls(
            [HeadScores.from_json(row) for row in data["units"]], [SetScores.from_json(entry) for entry in data["sets"]],
            data["selected"], data["reached"], None if data.get("held_out") is None else HeldOut.from_json(data["held_out"]),
        )


@dataclass(frozen=True)
class ScreenAgreement:
    """How well one screen stands in for the exact sweep (see ``localize``'s ``method="both"``)."""

    spearman: float | None
    split_half: list[float] | None
    same_half: list[float] | None
    top_k_recall: float | None
    screen_top_k: int | None
    time_ratio: float


@dataclass(frozen=True)
class Agreement:
    """Every screen against the exact sweep, on the layers whose exact effect is distinguishable
    from 0, beside the sweep's own split-half agreement (the ceiling)."""

    distinguishable: list[str]
    layers: int
    exact_split_half: list[float] | None
    screens: dict[str, ScreenAgreement]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Agreement:
        screens = {name: ScreenAgreement(**entry) for name, entry in data["screens"].items()}
        return cls(data["distinguishable"], data["layers"], data["exact_split_half"], screens)


@dataclass(frozen=True)
class SeedPair:
    """Two noise seeds' rankings compared: the Spearman of the layers' exact effects and whether
    their top k are the same."""

    seeds: list[int]
    spearman: float | None
    same_top_k: bool | None


@dataclass(frozen=True)
class SeedStability:
    """The exact sweep repeated at other noise seeds: each seed's ranking and how far they agree."""

    direction: str
    seeds: list[int]
    rankings: dict[str, list[str]]
    distinguishable: list[str]
    k: int
    pairwise: list[SeedPair]
    spearman: float | None
    spearman_range: list[float] | None
    same_top_k: float | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SeedStability:
        return cls(**{**data, "pairwise": [SeedPair(**entry) for entry in data["pairwise"]]})


@dataclass(frozen=True)
class Baselines:
    """The floor and the ceiling every rate is read against: the unpatched source's means and the
    target prompt generated directly."""

    source: Means
    target: Means

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Baselines:
        return cls(Means.from_json(data["source"]), Means.from_json(data["target"]))


def optional(cls: Any, data: Any) -> Any:
    """``cls.from_json(data)``, or ``None`` for ``None``."""
    return None if data is None else cls.from_json(data)


def to_json(value: Any) -> Any:
    """A result as JSON-ready data: a type's own ``to_json`` where it has one, else its fields in
    order; lists and dicts element by element; numbers as they are."""
    if hasattr(value, "to_json") and not isinstance(value, type):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Share):
        return list(value)
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


__all__ = [
    "Agreement", "Baselines", "HeadScores", "Heads", "HeldOut", "ImageScores", "Means", "Outcome", "PairScores", "SeedPair",
    "SeedStability", "ScreenAgreement", "SetScores", "Share", "UnitScores", "optional", "to_json",
]
