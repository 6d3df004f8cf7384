"""What a patch chooses, as data importable without torch (the command line's options and help
read it): the classifier-free guidance branch its rows belong to, keys and/or values, the step
window, and the step an edit or guard starts from when nobody says."""

from __future__ import annotations

from typing import Literal, Union

from textloc.architectures.spec import Branch

BranchChoice = Literal["cond", "uncond", "both"]
BRANCH_CHOICES: tuple[BranchChoice, ...] = ("cond", "uncond", "both")
# "cond" covers SD3's skip-layer pass, which reruns the conditional rows.
BRANCHES_WRITTEN: dict[BranchChoice, tuple[Branch, ...]] = {
    "cond": ("cond", "skip_layer"), "uncond": ("uncond",), "both": ("cond", "uncond", "skip_layer"),
}

KV = Literal["k", "v", "both"]
KV_CHOICES: tuple[KV, ...] = ("k", "v", "both")

#: ``(start, stop)``, stop excluded, ``None`` open; ints are step indices (negative from the end),
#: floats fractions of the schedule (see :func:`~textloc.engine.plan.window_steps`).
StepWindow = Union[tuple[Union[int, float, None], Union[int, float, None]], None]

#: Where an edit or guard starts patching when neither the caller nor a preset says: a fraction
#: of the schedule (see :func:`~textloc.engine.plan.window_steps`). The best of
#: bench/bench_edit.py's sweep on textloc-tiny (12 held-out pairs, 25 steps): the new word read on
#: 67% / 75% / 83% / 75% / 25% of edits from 0, 0.1, 0.2, 0.3, 0.4, the background outside the
#: text closer to the source the later the start (MSE 0.0037 ... 0.0009), the scene kept on 100%
#: throughout.
DEFAULT_START_STEP: float = 0.2
