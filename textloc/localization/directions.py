"""The two directions of a localization: sufficiency (does a unit's patch write the target word?) and necessity (does it remove it?)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from textloc.localization.results import TEXT_METRICS, Baselines, ImageScores, Means, PairScores
from textloc.localization.scoring import mean_metrics
from textloc.scoring.prompts import PromptPair


def _merit(means: Means) -> tuple[float, ...]:
    """How well a patch renders the target, larger is better: the target's hit rate, then its
    word F1, then how much closer by edit distance the reading came to the target than to the
    source, then how close the image came to the target prompt's. The edit distances still order
    layers when a model rarely writes a word exactly; their difference, not the target's alone,
    because a layer that only garbles the source's word moves the reading away from both, and a
    layer without effect must not rank above it. The pixels break the ties left among layers the
    OCR sees no effect from: a layer that moves the image toward the target's ranks above one that
    does nothing."""
    return (means.target_hit, means.target_f1, means.source_ned - means.target_ned, -means.mse_to_target)


def _necessity_merit(means: Means) -> tuple[float, ...]:
    """How much a necessity patch takes the target's text away, larger is better: how rarely the
    target word survives, then its word F1, then how far the reading moved from it by edit
    distance, then how far the image moved from the target prompt's own."""
    return (-means.target_hit, -means.target_f1, means.target_ned, means.mse)


def _swap_roles(means: Means) -> Means:
    """Scores of a swapped pair (see :meth:`PromptPair.swapped`) named after the original pair:
    ``target_*`` is again about the target's text. Pixel scores keep their sense: ``mse``/``ssim``
    against the unpatched image of the prompt generated (the target's), and ``mse_to_source``
    against the image of the prompt whose text was patched in."""
    def name(key: str) -> str:
        for a, b in (("target_", "source_"), ("source_", "target_")):
            if key.startswith(a):
                return b + key[len(a):]
        return key

    texts = {name(f"{prefix}_{metric}"): getattr(means, f"{prefix}_{metric}") for prefix in ("target", "source") for metric in TEXT_METRICS}
    return replace(
        means, **texts, mse_to_target=None, mse_to_source=means.mse_to_target, ci={name(key): value for key, value in means.ci.items()},
    )


@dataclass(frozen=True)
class Direction:
    """Sufficiency (the source generated with the target's text at the patched layers: does the
    target word appear?) or necessity (the target generated with the source's text: does the
    target word survive?). Necessity is sufficiency's machinery run on the swapped pairs."""

    name: str

    @property
    def sufficiency(self) -> bool:
        return self.name == "sufficiency"

    def pairs(self, pairs: Sequence[PromptPair]) -> list[PromptPair]:
        return list(pairs) if self.sufficiency else [pair.swapped() for pair in pairs]

    def stage(self, stage: str) -> str:
        return stage if self.sufficiency else f"necessity {stage}"

    def means(self, rows: Sequence[ImageScores], seed: int) -> Means:
        means = mean_metrics(rows, seed)
        return means if self.sufficiency else _swap_roles(means)

    def baselines(self, results: Sequence[PairScores], seed: int) -> Baselines:
        """The unpatched source's means (the floor) and the target prompted directly (the ceiling),
        whichever of the two a direction generated as its own prompt."""
        source, target = ("source", "target") if self.sufficiency else ("target", "source")
        return Baselines(self.means([getattr(done, source) for done in results], seed), self.means([getattr(done, target) for done in results], seed))

    def outcomes(self, results: Sequence[PairScores], k: int) -> tuple[list[float], list[float]]:
        """Per pair, layer set ``k``'s success and the directly prompted reference it is a share of:
        the target word read vs read when prompted directly; or the target word removed vs read
        unpatched (a pair whose target never shows its word has nothing to remove)."""
        if self.sufficiency:
            return [done.patched[k].target_hit for done in results], [done.target.target_hit for done in results]
        present = [done.source.source_hit for done in results]
        return [there * (1 - done.patched[k].source_hit) for there, done in zip(present, results)], present

    def merit(self, means: Means) -> tuple[float, ...]:
        return _merit(means) if self.sufficiency else _necessity_merit(means)


SUFFICIENCY, NECESSITY = Direction("sufficiency"), Direction("necessity")
