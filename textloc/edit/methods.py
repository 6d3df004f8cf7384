"""The methods an edit and a guard run through the same harness, importable without torch (the
command line's ``--method`` choices)."""

from __future__ import annotations

from typing import Literal

#: textloc's patch of the text layers, and the baselines an edit is measured against.
EditMethod = Literal["patch", "prompt-swap", "prompt-to-prompt"]
EDIT_METHODS: tuple[EditMethod, ...] = ("patch", "prompt-swap", "prompt-to-prompt")
#: textloc's guard, and the baselines a guard is measured against.
GuardMethod = Literal["patch", "negative-prompt", "prompt-swap", "unguarded"]
GUARD_METHODS: tuple[GuardMethod, ...] = ("patch", "negative-prompt", "prompt-swap", "unguarded")
