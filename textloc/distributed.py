"""Runs spread over the processes of ``accelerate launch`` (or ``torchrun``), and the device
and dtype a process uses.

A plain run is one process that owns every work item. Launched on N processes (GPUs), the items are
split into N consecutive parts by accelerate (``split_between_processes``); after each stage the
results are gathered (``gather_object``), so that every process goes on with all of them and takes
the same decisions. Only the main process shows progress and
writes files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch

# The variables a launcher sets for the number of processes: torchrun/accelerate, then MPI.
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
T = TypeVar("T")


def launched_processes() -> int:
    """How many processes a launcher started this one among (1 for a plain run)."""
    from accelerate.utils import get_int_from_env

    return max(1, get_int_from_env(list(_WORLD_SIZE_VARIABLES), 1))


def process_state() -> Any:
    """accelerate's ``PartialState`` of a launched run; it sets up the process group on first use.

    Without a GPU the processes join over gloo on the CPU (``torchrun --nproc_per_node N``),
    which accelerate only does when asked for the CPU explicitly.
    """
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def accelerator(**kwargs: Any) -> Any:
    """An ``accelerate.Accelerator`` (``kwargs`` are its own) that, like :func:`process_state`,
    joins launched processes over gloo when there is no GPU."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available(), **kwargs)


def is_main_process() -> bool:
    """True in a plain run and in the first process of a launched one."""
    return launched_processes() == 1 or process_state().is_main_process


def default_device() -> torch.device:
    """This process's device in a launched run, else the GPU if there is one, else the CPU."""
    if launched_processes() > 1:
        return process_state().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | None) -> torch.device:
    """The device a ``--device`` option names (none: :func:`default_device`).

    Raises ``ValueError`` saying what would work for a name torch does not know, or for CUDA
    where torch sees no GPU (torch's own error there speaks of how it was compiled).
    """
    if not name:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"{name!r} is not a device torch knows (e.g. cpu, cuda, cuda:1, mps): {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}: torch sees no CUDA GPU here; use cpu (or leave the device out).")
    return device


def default_dtype(device: str | torch.device) -> torch.dtype:
    """Half precision on a GPU (bfloat16 where supported, which keeps fp32's range), float32 elsewhere."""
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Shards:
    """Which work items (prompt pairs) this process does, and the merge of every process's results."""

    def __init__(self) -> None:
        if launched_processes() > 1:
            state = process_state()
            self.count, self.index = state.num_processes, state.process_index
        else:
            self.count, self.index = 1, 0
        self.is_main = self.index == 0

    def owned(self, items: Sequence[T]) -> list[T]:
        """The part of ``items`` this process works on."""
        if self.count == 1:
            return list(items)
        with process_state().split_between_processes(list(items)) as mine:
            return list(mine)

    def merge(self, mine: dict[int, Any]) -> dict[int, Any]:
        """Every process's results by item, from this process's own (picklable) ones."""
        if self.count == 1:
            return mine
        from accelerate.utils import gather_object

        merged: dict[int, Any] = {}
        for part in gather_object([mine]):
            merged.update(part)
        return merged
