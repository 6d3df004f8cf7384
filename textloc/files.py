"""Result files written whole or not at all: an interrupted run never leaves half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file, so an interrupted write never leaves half a file."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=json_default))
    os.replace(temporary, path)


def json_default(value: Any) -> Any:
    """What `json.dumps(default=...)` writes for the numpy scalars and tuples that results hold."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"Cannot write {type(value).__name__} to JSON")
