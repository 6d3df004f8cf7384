"""Every Python snippet of the README and the docs runs as written, and every link between them lands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SNIPPETS = [
    (page, index, code)
    for page in PAGES
    for index, code in enumerate(re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M), start=1)
]


def test_the_readme_and_the_docs_have_python_snippets():
    assert any(page.name == "README.md" for page, _, _ in SNIPPETS)
    assert len(SNIPPETS) >= 5


@pytest.mark.parametrize(("page", "index", "code"), SNIPPETS, ids=[f"{page.name}-{index}" for page, index, _ in SNIPPETS])
def test_snippet_runs(page, index, code, tmp_path, monkeypatch):
    (tmp_path / "samples").symlink_to(ROOT / "samples")  # snippets read samples/ as from the root
    monkeypatch.chdir(tmp_path)  # and write to runs/...
    exec(compile(code, f"{page.relative_to(ROOT)} snippet {index}", "exec"), {"__name__": "__readme__"})


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6} (.*)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_link_between_the_readme_and_the_docs_lands_on_a_page_and_heading():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


COMMANDS = [
    (page, line)
    for page in PAGES
    for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    for line in (line.strip() for line in block.replace("\\\n", " ").splitlines())
    if line.startswith("textloc ")
]


def test_every_textloc_command_of_the_readme_and_the_docs_parses():
    """Each `textloc ...` line shown in a bash block is one the command line takes (its options and
    their values), so a renamed option cannot leave a page behind."""
    from textloc.cli import build_parser

    assert len(COMMANDS) >= 10
    refused = []
    for page, line in COMMANDS:
        try:
            build_parser().parse_args(shlex.split(line, comments=True)[1:])
        except SystemExit:
            refused.append(f"{page.relative_to(ROOT)}: {line}")
    assert not refused, "\n".join(refused)
