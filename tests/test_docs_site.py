"""The docs site builds with warnings as errors, and its generated pages show what they are made from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built as `make docs` builds it, with --strict: a broken link or anchor, a page left out of
    the navigation, a docstring mkdocstrings cannot read or a results file no page shows fails the build."""
    out = tmp_path_factory.mktemp("site")
    # Material's notice about MkDocs 2.0 says nothing about these docs.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    # Not --quiet: it hides the warnings from --strict, which then passes them.
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    if run.returncode and "No module named mkdocs" in run.stderr:
        pytest.fail("the docs tools are missing: pip install -e '.[docs]'")
    assert run.returncode == 0 and "WARNING" not in run.stderr, f"mkdocs build --strict failed:\n{run.stderr[-4000:]}"
    return out


def html(site: Path, page: str) -> str:
    return (site / page / "index.html").read_text()


def test_the_home_page_is_the_readme_with_its_links_made_site_links(site):
    home = (site / "index.html").read_text()
    assert 'href="engine/"' in home and 'href="docs/engine.md"' not in home


def test_the_cli_reference_lists_every_command_and_its_options(site):
    page = html(site, "reference/cli")
    for command in ("layers", "generate", "localize", "edit", "guard", "finetune"):
        assert f'id="textloc-{command}"' in page
    assert "--num-inference-steps" in page and "--new-text" in page


def test_the_api_reference_documents_the_public_functions_from_their_docstrings(site):
    page = html(site, "reference/api/edit")
    assert "Change the quoted text of" in page  # edit_text's docstring
    assert ":class:" not in page  # the Sphinx roles are rewritten as code


def test_a_results_page_shows_the_numbers_of_its_file(site):
    edit = json.loads((ROOT / "bench/results/edit.json").read_text())
    assert f"{edit['methods']['patch']['mse_outside_text']:.4f}" in html(site, "results/edit")
    report = json.loads((ROOT / "samples/tiny/localize/report.json").read_text())
    assert f"{report['selected_share']:.2%}" in html(site, "results/localization-textloc-tiny")


def test_no_generated_page_is_committed():
    sys.path.insert(0, str(ROOT / "docs"))
    from sitegen import generated_pages

    pages, _ = generated_pages(ROOT)
    assert not [page for page in [*pages, "index.md"] if (ROOT / "docs" / page).exists()]
