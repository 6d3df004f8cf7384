"""``LocalizeConfig``: how a localization runs, its defaults and their checks in one place.

:func:`textloc.localize` takes one (or its fields as keywords), the resume check of a logged run
compares it, and ``textloc localize`` builds its options from its fields: the help and the
default a user reads on the command line are the ones the Python API uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from textloc.engine.choices import BRANCH_CHOICES, KV, KV_CHOICES, BranchChoice, StepWindow
from textloc.settings import setting

Method = Literal["activation", "attribution", "screen+exact", "both"]
Selection = Literal["cumulative", "greedy"]
Screen = Literal["gradient", "integrated", "key-exact"]
Direction = Literal["sufficiency", "necessity", "both"]
Rule = Literal["lower-bound", "point"]
Unit = Literal["layer", "head"]
METHODS: tuple[Method, ...] = ("activation", "attribution", "screen+exact", "both")
SELECTIONS: tuple[Selection, ...] = ("cumulative", "greedy")
SCREENS: tuple[Screen, ...] = ("gradient", "integrated", "key-exact")
DIRECTIONS: tuple[Direction, ...] = ("sufficiency", "necessity", "both")
RULES: tuple[Rule, ...] = ("lower-bound", "point")
UNITS: tuple[Unit, ...] = ("layer", "head")

# Points on the strength path of the integrated screen. On textloc-tiny's 24 choice pairs
# (bench/bench_screen_points.py: the split-half protocol of Localization.agreement, on the 2 layers
# whose effect is not noise), the gradient at strength 0 (screen="gradient") ordered them as the
# exact sweep does in 73% of halvings, k = 2 points (0.25, 0.75) in 94%, and k = 1 (the midpoint),
# 3 and 4 in 100%, the sweep's own rate, k <= 3 at a tenth of its time or less. That the two points
# either side of the midpoint did worse than the midpoint alone says the estimate depends on where
# the path is sampled; 3 points take the midpoint and both halves for 1.5x the cost of 2.
SCREEN_POINTS = 3


@dataclass(frozen=True)
class LocalizeConfig:
    """How :func:`textloc.localize` finds the text layers; every value checked when it is made.

    The fields' help says what each does; :func:`textloc.localize` tells the method as a whole.
    Two more marks per field: ``resumes_under_other`` (a logged run resumes under another value of
    it, see :meth:`checked`) and ``logged=False`` (the report does not record it: it only sets how
    the work is batched).
    """

    method: Method = setting(
        "activation", "exact sweep (activation), attribution screen, screen then exact on top_k, or every "
        "screen and the sweep compared (both)", METHODS,
    )
    direction: Direction = setting(
        "sufficiency", "sufficiency: the source generated with the target's text at a layer, does the target word "
        "appear? necessity: the target generated with the source's text, does the target word survive? both: "
        "measure both, select by sufficiency", DIRECTIONS,
    )
    screen: Screen = setting(
        "integrated", "the attribution screen: gradients averaged along the patch-strength path (integrated), the "
        "gradient at no patch (gradient), or each layer's patched attention output computed exactly with what "
        "follows it linearized (key-exact)", SCREENS, resumes_under_other=True,
    )
    screen_points: int = setting(SCREEN_POINTS, "strengths on the path of the integrated screen", resumes_under_other=True)
    selection: Selection = setting("cumulative", "how layers are added to the chosen set", SELECTIONS)
    threshold: float = setting(
        0.8, "the chosen set is the first that makes the OCR read the target text at this share of the directly "
        "prompted rate",
    )
    rule: Rule = setting(
        "lower-bound", "what must reach the threshold: the lower bound of the share's 95% bootstrap interval over "
        "pairs, or the share itself (point)", RULES, resumes_under_other=True,
    )
    unit: Unit = setting(
        "layer", "head: go on from the selected layers to their heads, each patched alone, and choose the "
        "smallest head set that carries the word", UNITS, resumes_under_other=True,
    )
    held_out: float = setting(0.25, "share of the pairs kept out of every choice, to score the chosen set")
    top_k: int | None = setting(None, "layers the exact sweep keeps after the screen (screen+exact; default a quarter of the candidates, at least 4)")
    grad_steps: tuple[float, ...] = setting((0.25,), "fractions of the schedule where the screens take their gradients")
    patch_steps: StepWindow = setting(None, "patch only in this step window (see textloc.patch)")
    heads: tuple[int, ...] | None = setting(None, "patch only these heads")
    branch: BranchChoice = setting("cond", "CFG branch to patch", BRANCH_CHOICES)
    kv: KV = setting("both", "patch the text's keys only (where the image attends), its values only (what it reads) or both", KV_CHOICES)
    seed: int = setting(0, "seed of the noise every generation starts from")
    stability_seeds: tuple[int, ...] = setting(
        (), "more noise seeds at which the exact sweep is repeated, to say how stable the ranking is", resumes_under_other=True,
    )
    max_batch: int = setting(16, "most rows in one generation (lower it if memory runs out)", logged=False)

    def __post_init__(self) -> None:
        # Lists given for the tuple fields are kept as tuples, so that a config is hashable and compares by value.
        for name in ("grad_steps", "heads", "stability_seeds"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                if isinstance(value, (int, str)) or not isinstance(value, Sequence):
                    raise TypeError(f"{name} is a list, e.g. [{value!r}], not {value!r}.")
                object.__setattr__(self, name, tuple(value))
        for f in dataclasses.fields(self):
            choices = f.metadata["choices"]
            if choices is not None and getattr(self, f.name) not in choices:
                raise ValueError(f"Unknown {f.name} {getattr(self, f.name)!r}; choose one of {', '.join(choices)}.")
        # Here, not at the top: the fields alone (the command line's options and help) need no torch.
        from textloc.engine.plan import RowPatch, validate_patch
        from textloc.localization.attribution import path_points
        from textloc.localization.sweep import check_max_batch

        if self.direction != "sufficiency" and self.method == "attribution":
            raise ValueError("The screens estimate sufficiency only; necessity needs the exact sweep (method 'activation', 'screen+exact' or 'both').")
        path_points(self.screen_points)  # refuses a path without points
        if self.unit == "head" and self.heads is not None:
            raise ValueError("unit='head' sweeps every head of the selected layers itself; leave heads unset.")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold is a share of the directly prompted rate, in (0, 1]; got {self.threshold}.")
        if not 0.0 <= self.held_out < 1.0:
            raise ValueError(f"held_out is the share of the pairs kept to score the chosen set, in [0, 1); got {self.held_out}.")
        if self.top_k is not None and self.method != "screen+exact":
            raise ValueError(f"top_k only applies to method='screen+exact' (got method={self.method!r}).")
        check_max_batch(self.max_batch)
        self._check_stability_seeds()
        # The patch settings every patch shares.
        validate_patch(RowPatch((), source=0, patch_steps=self.patch_steps, heads=self.heads, branch=self.branch, kv=self.kv), {})

    def _check_stability_seeds(self) -> None:
        seeds = self.stability_seeds
        if not seeds:
            return
        if any(isinstance(other, bool) or not isinstance(other, int) for other in seeds):
            raise TypeError(f"stability_seeds are integer noise seeds; got {list(seeds)!r}.")
        if self.seed in seeds or len(set(seeds)) < len(seeds):
            raise ValueError(f"stability_seeds {list(seeds)} must differ from each other and from seed={self.seed}, which the localization itself uses.")
        if self.method == "attribution":
            raise ValueError("stability_seeds repeat the exact sweep; method='attribution' runs none (use 'activation', 'screen+exact' or 'both').")

    def checked(self) -> dict[str, Any]:
        """The values a logged run must share to resume: every field but those that change only which
        logged results are used or what comes after the layer stages (another screen logs under a
        stage of its own, a selection redone by another rule reuses the layer sets it asks for, the
        head stages and seed sweeps add to a finished layer run)."""
        return {f.name: _plain(getattr(self, f.name)) for f in self._logged() if not f.metadata.get("resumes_under_other", False)}

    def unchecked(self) -> dict[str, Any]:
        """The values a logged run may resume under others of (see :meth:`checked`)."""
        return {f.name: _plain(getattr(self, f.name)) for f in self._logged() if f.metadata.get("resumes_under_other", False)}

    def _logged(self) -> list[dataclasses.Field]:
        """The fields a report records: all but what only sets how the work is batched (``logged=False``)."""
        return [f for f in dataclasses.fields(self) if f.metadata.get("logged", True)]



def _plain(value: Any) -> Any:
    """A value as a report's JSON keeps it: tuples as lists, as they have always been logged."""
    return list(value) if isinstance(value, tuple) else value
