"""Links of the hand-written pages, as the site needs them.

The pages are written for GitHub: README.md links ``docs/engine.md``, a docs page may link
``../examples/``. In the site the README is the home page (``index.md``) beside the docs pages,
and files outside ``docs/`` are not pages, so such links are pointed at the site page that shows
them; a link to a file outside ``docs/`` that no page shows is reported, not silently dropped.
"""

from __future__ import annotations

import posixpath
import re

LINK = re.compile(r"(\]\()([^)\s]+)(\))")

#: Folders outside ``docs/`` that a generated page shows: links into them go to that page.
SHOWN_OUTSIDE = {"examples": "examples.md"}


def home_page(readme: str) -> tuple[str, list[str]]:
    """README.md as the site's home page (``index.md``), and the links it could not place."""
    return site_links(readme, "")


def site_links(markdown: str, folder: str) -> tuple[str, list[str]]:
    """``markdown``, written in ``folder`` (relative to the repository root), with its relative links
    made relative to ``docs/``; and the targets outside ``docs/`` that no page shows."""
    unplaced: list[str] = []

    def relink(match: re.Match[str]) -> str:
        target = match.group(2)
        if re.match(r"[a-z]+:|#", target):
            return match.group(0)
        path, hash_, anchor = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(folder, path))
        if resolved == "docs" or resolved.startswith("docs/"):
            new = posixpath.relpath(resolved, "docs")
        elif resolved.split("/")[0] in SHOWN_OUTSIDE:
            new = SHOWN_OUTSIDE[resolved.split("/")[0]]
        else:
            unplaced.append(target)
            return match.group(0)
        return f"{match.group(1)}{new}{hash_}{anchor}{match.group(3)}"

    return LINK.sub(relink, markdown), unplaced
