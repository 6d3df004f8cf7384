"""MkDocs hooks (``hooks:`` in mkdocs.yml): the pages made at build time, and the hand-written
pages' links as the site needs them (see ``docs/sitegen``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# textloc from this checkout (not an installed copy), and the page generators beside this file.
for path in (str(ROOT / "docs"), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from sitegen import generated_pages
from sitegen.links import home_page, site_links

# Under "mkdocs": `mkdocs build --strict` fails on this logger's warnings as on its own.
log = logging.getLogger("mkdocs.hooks.textloc")


def on_files(files: Files, config) -> Files:
    """Add the generated pages and the home page (README.md); refuse a results file no page shows."""
    pages, sources = generated_pages(ROOT)
    pages["index.md"], unplaced = home_page((ROOT / "README.md").read_text())
    for target in unplaced:
        log.warning("README.md links %s, outside docs/ and shown by no page of the site", target)
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    for path in sources.unshown():
        log.warning("%s is shown by no results page: add it to docs/sitegen", path)
    return files


def on_page_markdown(markdown: str, page: Page, config, files: Files) -> str:
    """A hand-written page's links into the rest of the repository, pointed at the pages that show them."""
    if page.file.generated_by or page.file.src_uri == "index.md":
        return markdown
    relinked, unplaced = site_links(markdown, "docs")
    for target in unplaced:
        log.warning("docs/%s links %s, outside docs/ and shown by no page of the site", page.file.src_uri, target)
    return relinked
