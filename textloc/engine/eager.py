"""``eager``: a hook that runs outside any compiled graph, at no cost where nothing is compiled."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def eager(hook: F) -> F:
    """``hook`` as ``torch.compiler.disable`` runs it under ``torch.compile``, and as itself otherwise.

    The hooks read Python state (the step, the patches of this call) that tracing would bake into
    the graph as constants and guard on, so a compiled denoiser calls them eagerly, through a graph
    break. ``disable``'s own wrapper costs microseconds of frame-evaluation bookkeeping on every call,
    compiled or not; on a text projection that is a good part of the engine's whole cost, so an
    eager run skips it.
    """
    outside_graph = torch.compiler.disable(hook)

    @functools.wraps(hook)
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():  # being traced: a graph break, the hook run eagerly
            return outside_graph(*args, **kwargs)
        return hook(*args, **kwargs)

    return run  # type: ignore[return-value]
