"""The app's models: each pipeline loaded once and kept, and the settings every call runs it with."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from textloc.pipelines import call_kwargs, load_pipeline, recommended_settings


class Pipelines:
    """Each model's pipeline by name, loaded by ``load`` on first use and kept for the app's life.

    ``load`` takes a model name (a named model, a hub id or a folder) and returns its pipeline; the
    command line passes its own loader, so that ``--device`` and ``--dtype`` hold for every model a
    user names in the app.
    """

    def __init__(self, load: Callable[[str], Any] = load_pipeline) -> None:
        self._load = load
        self._loaded: dict[str, Any] = {}
        # Loading is not thread-safe (diffusers builds empty modules first through accelerate, which
        # patches torch.nn.Module for every thread): one load at a time; a second caller of the same
        # model waits for the first.
        self._lock = threading.Lock()

    def __call__(self, model: str) -> Any:
        """The pipeline of ``model``, loading it the first time it is asked for."""
        model = model.strip()
        if not model:
            raise ValueError("Name a model: textloc-tiny, textloc-tiny-sd3, textloc-tiny-flux, a hub id or a folder.")
        with self._lock:
            if model not in self._loaded:
                self._loaded[model] = self._load(model)
            return self._loaded[model]


def call_settings(pipe: Any, model: str, steps: int | None = None, size: int | None = None) -> dict[str, Any]:
    """The pipeline call's keyword arguments: a named model's own settings (steps, guidance, size),
    with ``steps`` and ``size`` (height and width) where given, and what the pipeline needs to run
    offline (see :func:`textloc.pipelines.call_kwargs`)."""
    settings = recommended_settings(model.strip())
    if steps:
        settings["num_inference_steps"] = int(steps)
    if size:
        settings.update(height=int(size), width=int(size))
    return call_kwargs(pipe, **settings)
