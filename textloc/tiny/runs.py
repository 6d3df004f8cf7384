"""What every training loop in ``textloc.tiny`` shares about its run folder: checkpoints written so
that a kill never leaves half a file, a JSON-lines log, and a stop on SIGINT/SIGTERM that lets
the current step finish and be saved."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import FrameType
from typing import Any, Self

import torch

LOG_NAME = "log.jsonl"


def save_atomically(payload: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename it over ``path``: a run killed mid-write
    keeps its previous checkpoint."""
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)


def append_log(run_dir: Path, record: dict) -> None:
    """Add one JSON record to the run's ``log.jsonl``."""
    with open(run_dir / LOG_NAME, "a") as log:
        log.write(json.dumps(record) + "\n")


class StopOnSignal:
    """Inside this context, SIGINT and SIGTERM only set :attr:`requested`: the loop that polls it
    finishes its step, saves, and returns, so ``--resume`` continues exactly where it stopped.
    Leaving the context puts the previous handlers back."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._request)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one training step's randomness (timesteps, noise, dropout): a pure
    function of ``(seed, step)``, so it is the same on every device and after every resume."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)
