"""``textloc app``: a Gradio web app on textloc's Python API.

Four tabs on one model: its text layers, a localization with live progress and its plot, an edit
(source | edited, what the OCR read, the scores) and the guard (unguarded | guarded, its report).
Every value shown comes from the library's own calls (:mod:`textloc.app.tabs`); the page
(:mod:`textloc.app.ui`) only lays them out. Only the page imports gradio (the ``app`` extra), when
:func:`build_app` or :func:`serve` is first used: ``import textloc``, the command line's help, and a model that
fails to load never pay for it.
"""

from __future__ import annotations

from textloc.lazy import lazy_namespace

#: Each public name and the module it comes from.
_EXPORTS: dict[str, str] = {"Pipelines": "textloc.app.session", "build_app": "textloc.app.ui", "serve": "textloc.app.ui"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)
