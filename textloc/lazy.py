"""Lazy package namespaces (PEP 562): a package names its public attributes and the modules they
come from, and each module is imported when one of its names is first used. So ``import textloc``,
``textloc.engine`` or ``textloc.localization`` pulls in no torch, transformers or diffusers until a
call needs them, and the command line's ``--help`` answers at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from typing import Any


def lazy_namespace(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose public names are ``exports``' keys,
    each from the module its value names. A name asked for once is kept on the package; a
    subpackage or submodule is imported when asked for as an attribute too."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            if importlib.util.find_spec(f"{package}.{name}") is not None:
                return importlib.import_module(f"{package}.{name}")
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)  # asked once: later lookups find it directly
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
