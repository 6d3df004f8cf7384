"""A localization run through with no image generated: what each stage would generate, counted.

The counts come from the stages' own code, not from a formula beside it: :func:`dry_run` calls
``localize`` itself with its two generation calls (``run_with_patches`` in :mod:`.sweep` and
:mod:`.attribution`) replaced by a ledger that notes each generation and returns blank images, and
with the scoring of a pair's images replaced by scores that follow an assumed outcome: the
``selected`` layers write the target word together (a set holding all of them reads it), each of
them moves the image toward the target's, and no other layer does. The selection then chooses
exactly them, so the stages that depend on what was chosen (held-out scoring, heads, the rounds
of a greedy selection) run as they would after that outcome. A change to the stages changes the
counts with it; ``tests/test_localize_estimate.py`` holds them to a real run's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np

from textloc.localization import attribution, stages, sweep
from textloc.localization.results import ImageScores
from textloc.localization.sweep import Unit

_BLANK_SIDE = 16  # blank images: only their count matters, and the pixel scores need a few pixels


@dataclass
class Generation:
    """One batched generation a stage would run: its prompt rows and, for a screen, where it stops
    (``stop_at_step``), the steps it takes gradients at and the layers it replays there."""

    stage: str
    rows: int
    stop_at_step: int | None = None
    grad_steps: tuple[int, ...] = ()
    replays: int = 0


@dataclass
class Ledger:
    """What a dry run would have done: its generations in order and, per stage, the images scored
    and, of them, those the OCR has not read before (it caches by image: an unpatched image of the
    same prompt and seed, or a set of units already patched into the same pair at that seed, is
    the same image)."""

    generations: list[Generation] = field(default_factory=list)
    pairs_scored: dict[str, int] = field(default_factory=dict)
    images_scored: dict[str, int] = field(default_factory=dict)
    images_read: dict[str, int] = field(default_factory=dict)
    stage: str = ""
    _read: set[tuple] = field(default_factory=set)

    def score(self, images: Sequence[tuple]) -> None:
        """Note the images of one pair's scoring, each by what makes it the image it is."""
        fresh = {image for image in images if image not in self._read}
        self._read.update(fresh)
        self.pairs_scored[self.stage] = self.pairs_scored.get(self.stage, 0) + 1
        self.images_scored[self.stage] = self.images_scored.get(self.stage, 0) + len(images)
        self.images_read[self.stage] = self.images_read.get(self.stage, 0) + len(fresh)


@contextlib.contextmanager
def dry_run(selected: Sequence[str], heads: dict[str, int]) -> Iterator[Ledger]:
    """Inside, ``localize`` generates nothing and scores as if ``selected`` (layer names; ``heads``:
    each one's head count, 0 for the pooled vector) were the layers that write the text."""
    ledger = Ledger()
    writers = set(selected) | {Unit(layer, head).name for layer in selected for head in range(heads[layer])}
    original_timed = stages.Stages.timed

    @contextlib.contextmanager
    def timed(self: stages.Stages, name: str) -> Iterator[None]:
        ledger.stage = name
        with original_timed(self, name):
            yield

    def generate_and_score(self: stages.Stages, pair: Any, layer_sets: Sequence[Sequence[str]], seed: int) -> tuple[ImageScores, ImageScores, list[ImageScores], Any]:
        images = sweep.generate_patched(self.pipe, pair, layer_sets, self.settings, seed, self.max_batch, self.generate_kwargs)
        ledger.score([(pair.source, seed), (pair.target, seed), *((pair.source, pair.target, seed, frozenset(units)) for units in layer_sets)])
        patched = [_scores(_outcome(units, writers, set(selected), heads)) for units in layer_sets]
        return _scores(0.0), _scores(1.0), patched, images

    def run_with_patches(pipe: Any, prompts: Sequence[str], patches: Any, **kwargs: Any) -> Any:
        stop = kwargs.get("stop_at_step")
        ledger.generations.append(
            Generation(ledger.stage, len(prompts), stop, tuple(sorted(kwargs.get("grad_steps", ()))), len(kwargs.get("replays", ())))
        )
        return None if stop is not None else SimpleNamespace(images=np.zeros((len(prompts), _BLANK_SIDE, _BLANK_SIDE, 3), np.float32))

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(stages.Stages, "timed", timed))
        stack.enter_context(mock.patch.object(stages.Stages, "_generate_and_score", generate_and_score))
        for module in (sweep, attribution):
            stack.enter_context(mock.patch.object(module, "run_with_patches", run_with_patches))
        yield ledger


def _outcome(units: Sequence[str], writers: set[str], selected: set[str], heads: dict[str, int]) -> float:
    """How far a patched set's image goes toward the target's: 1 where the set holds every selected
    layer (whole, or all of its heads), halfway where it holds part of them, else not at all."""
    chosen = set(units)
    whole = {Unit.parse(unit).layer for unit in chosen if Unit.parse(unit).head is None}
    covered = all(layer in whole or (heads[layer] and all(Unit(layer, head).name in chosen for head in range(heads[layer]))) for layer in selected)
    if covered:
        return 1.0
    return 0.5 if chosen & writers else 0.0


def _scores(toward: float) -> ImageScores:
    """The scores of an image ``toward`` of the way from the source prompt's to the target's: at 1
    the OCR reads the target word, below it the source's."""
    target = float(toward == 1.0)
    return ImageScores(
        read="", target_hit=target, target_exact=target, target_f1=target, target_ned=1.0 - target,
        source_hit=1.0 - target, source_exact=1.0 - target, source_f1=1.0 - target, source_ned=target,
        mse=toward, ssim=1.0 - toward, scene=None, mse_to_target=1.0 - toward,
    )

