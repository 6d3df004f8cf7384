"""The results files the pages are made from, and a record of which ones a page read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Where results files live, relative to the repository root.
RESULTS_GLOBS = ("bench/results/*.json", "samples/*/localize*/report.json")


class Sources:
    """Reads results files from the repository and remembers each one read, so that the build can
    refuse a results file that no page shows."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.read: set[str] = set()

    def json(self, path: str) -> Any:
        """The parsed file at ``path`` (relative to the root), marked as shown."""
        self.read.add(path)
        return json.loads((self.root / path).read_text())

    def glob(self, pattern: str) -> list[str]:
        """The files matching ``pattern`` under the root, as sorted root-relative paths."""
        return sorted(str(path.relative_to(self.root)) for path in self.root.glob(pattern))

    def results_files(self) -> list[str]:
        """Every results file in the repository."""
        return sorted({path for pattern in RESULTS_GLOBS for path in self.glob(pattern)})

    def unshown(self) -> list[str]:
        """The results files no page has read."""
        return [path for path in self.results_files() if path not in self.read]
