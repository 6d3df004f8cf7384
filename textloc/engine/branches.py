"""The classifier-free guidance branches a denoiser call's batch rows belong to, and the choices a patch makes among them."""

from __future__ import annotations

from typing import Literal

from textloc.architectures.spec import Branch

BranchChoice = Literal["cond", "uncond", "both"]
BRANCH_CHOICES: tuple[BranchChoice, ...] = ("cond", "uncond", "both")
# "cond" covers SD3's skip-layer pass, which reruns the conditional rows.
BRANCHES_WRITTEN: dict[BranchChoice, tuple[Branch, ...]] = {
    "cond": ("cond", "skip_layer"), "uncond": ("uncond",), "both": ("cond", "uncond", "skip_layer"),
}
