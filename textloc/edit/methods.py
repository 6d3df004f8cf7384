"""The methods an edit runs through one harness, importable without torch (the command line's
``--method`` choices)."""

from __future__ import annotations

from typing import Literal

#: textloc's patch of the text layers, and the baselines an edit is measured against.
EditMethod = Literal["patch", "prompt-swap", "prompt-to-prompt"]
EDIT_METHODS: tuple[EditMethod, ...] = ("patch", "prompt-swap", "prompt-to-prompt")
