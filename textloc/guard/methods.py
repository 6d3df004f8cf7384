"""The methods a guard runs through one harness, importable without torch (the command line's
``--method`` choices)."""

from __future__ import annotations

from typing import Literal

#: textloc's guard, and the baselines a guard is measured against.
GuardMethod = Literal["patch", "negative-prompt", "prompt-swap", "unguarded"]
GUARD_METHODS: tuple[GuardMethod, ...] = ("patch", "negative-prompt", "prompt-swap", "unguarded")
