"""The fields of textloc's settings dataclasses (``LocalizeConfig``, ``TrainConfig``): one default,
one help text and one set of choices per setting, which the Python API and the command line
(``textloc.cli.options.add_config_option``) both read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field, fields
from typing import Any


def setting(default: Any, help: str, choices: Sequence[str] | None = None, **metadata: Any) -> Any:
    """A dataclass field with its default, the help its command-line option shows, its choices, and
    any further ``metadata`` its class reads."""
    return field(default=default, metadata={"help": help, "choices": choices, **metadata})


def split_settings(config_class: type, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kwargs`` as (the fields of ``config_class``, everything else)."""
    names = {f.name for f in fields(config_class)}
    return {k: v for k, v in kwargs.items() if k in names}, {k: v for k, v in kwargs.items() if k not in names}
