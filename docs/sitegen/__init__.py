"""The docs site's generated pages: the CLI and API references, the results pages and the examples.

Each page module here (``cli_reference``, ``api_reference``, ``localization_results``,
``use_results``, ``bench_results``, ``examples_page``) has a ``pages(sources)`` function that returns
``{path in the site: Markdown}``; :func:`generated_pages` gathers them for the MkDocs hook
(``docs/hooks.py``). Beside them: ``markdown`` (tables and number formats), ``sources`` (the results
files), ``links`` (the hand-written pages' links, as the site needs them) and ``rst_roles`` (a griffe
extension that reads the docstrings' Sphinx roles as Markdown). Nothing here is committed as Markdown: the pages are made at build time from
their sources (the parser, the docstrings, ``bench/results/*.json``, ``samples/*/localize*/report.json``,
``examples/*.py``), so a page cannot drift from what it shows.
"""

from __future__ import annotations

from pathlib import Path

from sitegen import api_reference, bench_results, cli_reference, examples_page, localization_results, use_results
from sitegen.sources import Sources


def generated_pages(root: Path) -> tuple[dict[str, str], Sources]:
    """Every generated page, and the results files they were made from (to find those no page shows)."""
    sources = Sources(root)
    pages: dict[str, str] = {}
    for module in (cli_reference, api_reference, localization_results, use_results, bench_results, examples_page):
        pages.update(module.pages(sources))
    return pages, sources
