"""``textloc app`` in a real browser: the app is served on a free local port (textloc-tiny, one
torch thread), Debian's headless Chromium opens it through Playwright, fills the forms, clicks, and
reads what came back. What each tab shows must be what the library returned for that very call:
the calls are recorded (the real functions run), and the page's images and OCR reads compared
with their results, pixel for pixel.

Without Chromium at /usr/bin/chromium (``apt-get install chromium``; ``.ci/run`` installs it), or
without gradio or playwright (``pip install -e '.[test]'``), the browser test is skipped and says why.
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import textloc
from textloc.architectures.spec import TEXT_KINDS
from textloc.models import TEXTLOC_TINY
from textloc.scoring.ocr import get_ocr

CHROMIUM = Path("/usr/bin/chromium")
# Without these Chromium reaches for the network (updates, sync) and stalls on a closed one.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
]
STEPS, SEED = 8, 3  # short runs; a seed other than the default, to see that the page's reaches the call
WAIT_S = 120  # a click's whole run, on shared cores
# gradio's own use of pandas' deprecated options says nothing about textloc.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.*")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def browser_api():
    """Playwright's API, once gradio, playwright and Chromium are all here; else the test is skipped, saying which is missing."""
    pytest.importorskip("gradio", reason="gradio is not installed: pip install -e '.[test]'")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    return sync_api


@pytest.fixture
def served(browser_api):
    """The app on textloc-tiny, open in headless Chromium with the steps and seed set: the page and the app's pipelines."""
    from textloc.app import Pipelines, build_app, serve

    pipelines = Pipelines()
    app = build_app(pipelines, "textloc-tiny")
    port = _free_port()
    serve(app, port=port, block=False)
    with browser_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.fill("#steps input", str(STEPS))
        page.fill("#seed input", str(SEED))
        yield page, pipelines
        browser.close()
    app.close()


def test_the_app_in_a_browser_shows_what_the_library_returned(served, monkeypatch):
    # One test for every tab: under `pytest -n 2` a second test could start a second server and browser.
    page, pipelines = served
    _check_the_layers_tab(page, pipelines)
    _check_the_edit_tab(page, monkeypatch)
    _check_the_guard_tab(page, monkeypatch)


def _wait_for(page, selector: str) -> None:
    """Wait until ``selector`` shows, failing at once with the app's error if it shows one instead."""
    deadline = time.monotonic() + WAIT_S
    while not page.locator(selector).count():
        error = page.locator(".toast-body")
        if error.count():
            pytest.fail(f"the app showed an error instead of {selector}: {error.first.inner_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{selector} did not show within {WAIT_S} s")
        page.wait_for_timeout(100)


def _shown_image(page, element: str) -> Image.Image:
    """The image the browser shows in ``element``: loaded there, and as the server sent it."""
    image = page.locator(f"#{element} img").first
    try:  # the outputs arrive together, each image then loads on its own
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle(), timeout=10_000)
    except Exception:  # noqa: BLE001 - playwright's timeout, said plainly
        pytest.fail(f"#{element}: the browser did not load the image within 10 s")
    response = page.request.get(image.get_attribute("src"))
    assert response.ok, response.status
    return Image.open(io.BytesIO(response.body())).convert("RGB")


def _text(page, element: str) -> str:
    return page.input_value(f"#{element} textarea")


def _check_the_layers_tab(page, pipelines) -> None:
    """It lists the model's text units and its preset's layers when the page opens."""
    names_column = '#layers-table [role=gridcell][data-col="1"]'
    _wait_for(page, names_column)
    units = textloc.attention_layers(pipelines("textloc-tiny"), kind=list(TEXT_KINDS))  # the page's own pipeline
    names = page.locator(names_column).all_inner_texts()
    assert [name.strip() for name in names] == [unit.name for unit in units]
    preset = page.locator("#layers-preset").inner_text()
    assert all(name in preset for name in TEXTLOC_TINY.text_layers)


def _check_the_edit_tab(page, monkeypatch) -> None:
    """It shows the images, reads and summary that its call of ``textloc.edit_text`` returned."""
    calls = []
    edit_text = textloc.edit_text

    def recorded(*args, **kwargs):
        calls.append((args, kwargs, edit_text(*args, **kwargs)))
        return calls[-1][2]

    monkeypatch.setattr(textloc, "edit_text", recorded)
    page.get_by_role("tab", name="edit").click()
    page.fill("#edit-prompt textarea", 'A red sign on a blue background that says "LAMP".')
    page.fill("#edit-new-text textarea", "FISH")
    page.click("#edit-run")
    _wait_for(page, "#edit-edited img")

    [(args, kwargs, result)] = calls
    assert args[1:3] == ('A red sign on a blue background that says "LAMP".', "FISH")
    assert kwargs["num_inference_steps"] == STEPS and kwargs["generator"].initial_seed() == SEED
    source, edited = _shown_image(page, "edit-source"), _shown_image(page, "edit-edited")
    assert source.size == edited.size == (64, 64)
    assert np.array_equal(np.asarray(source), np.asarray(result.source_image))
    assert np.array_equal(np.asarray(edited), np.asarray(result.edited_image))
    assert not np.array_equal(np.asarray(source), np.asarray(edited))  # an edit, not the source twice
    assert (_text(page, "edit-source-read"), _text(page, "edit-edited-read")) == (result.source_read, result.edited_read)
    assert _text(page, "edit-summary") == result.summary()


def _check_the_guard_tab(page, monkeypatch) -> None:
    """It shows the unguarded and guarded images its two guard calls returned, their reads and the report."""
    outputs = []

    class Recorded(textloc.ToxicTextGuard):
        def __call__(self, prompt, **kwargs):
            outputs.append((self.method, kwargs, super().__call__(prompt, **kwargs)))
            return outputs[-1][2]

    monkeypatch.setattr(textloc, "ToxicTextGuard", Recorded)
    page.get_by_role("tab", name="guard").click()
    page.fill("#guard-prompt textarea", 'A red sign on a blue background that says "DAMN".')
    page.click("#guard-run")
    _wait_for(page, "#guard-guarded img")

    [(unguarded_method, unguarded_kwargs, unguarded), (method, kwargs, guarded)] = outputs
    assert (unguarded_method, method) == ("unguarded", "patch")
    assert kwargs["num_inference_steps"] == STEPS and kwargs["generator"].initial_seed() == SEED == unguarded_kwargs["generator"].initial_seed()
    images = [_shown_image(page, "guard-unguarded"), _shown_image(page, "guard-guarded")]
    assert np.array_equal(np.asarray(images[0]), np.asarray(unguarded.images[0]))
    assert np.array_equal(np.asarray(images[1]), np.asarray(guarded.images[0]))
    reads = get_ocr().read(images)
    assert [_text(page, "guard-unguarded-read"), _text(page, "guard-guarded-read")] == reads
    report = _text(page, "guard-report")
    assert report.startswith(guarded.reports[0].summary()) and "found 'DAMN'" in report
    assert "DAMN" not in reads[1]


def test_the_app_commands_help_imports_no_gradio_or_torch():
    # `textloc app --help` answers at once: gradio (seconds to import) is imported only to serve.
    code = (
        "import sys; from textloc.cli import main\n"
        "try:\n    main(['app', '--help'])\nexcept SystemExit:\n    pass\n"
        "print([m for m in ('gradio', 'torch', 'diffusers') if m in sys.modules], file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "--port" in done.stdout and done.stderr.strip().splitlines()[-1] == "[]"


def test_a_model_that_cannot_load_is_refused_in_one_line_before_the_server_starts(capsys):
    from textloc.cli import main

    assert main(["app", "--model", "tiny-random-nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'tiny-random-nope'" in err and err.count("\n") == 1
