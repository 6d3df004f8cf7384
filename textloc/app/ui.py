"""The app's page: a model row shared by four tabs (layers, localize, edit, guard), each a form,
a button and what :mod:`textloc.app.tabs` returns for it."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from textloc.app.session import Pipelines, call_settings
from textloc.app.tabs import LAYER_COLUMNS, SIGN_PROMPT, TOXIC_PROMPT, edit_view, guard_view, layers_view, localize_view
from textloc.cli.options import one_line
from textloc.edit.methods import EDIT_METHODS
from textloc.guard.methods import GUARD_METHODS
from textloc.localization.config import METHODS
from textloc.models import DEFAULT_MODEL, EMBEDDED_MODELS

# Every event patches or loads pipelines the others may be using: one at a time, in one queue.
_ONE_AT_A_TIME = {"concurrency_id": "pipelines", "concurrency_limit": 1}
# PNG: the pixels as generated. The embedded models draw 64 pixels: shown at the box's size, sharp.
_IMAGE = {"type": "pil", "format": "png", "interactive": False, "height": 256, "elem_classes": ["pixels"]}
_CSS = ".pixels img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"


def _shown(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler`` with any error shown on the page as one line (gradio's error box), not a traceback."""

    @functools.wraps(handler)  # keeps the signature: gradio finds a Progress argument through it
    def shown(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:  # noqa: BLE001 - every failure is the user's to read, in one line
            raise gr.Error(one_line(error)) from error

    return shown


def _side_by_side(tab: str, left: str, right: str) -> list[tuple[gr.Image, gr.Textbox]]:
    """Two images in a row, each with the OCR's read under it; elements named ``<tab>-<label>``."""
    shown = []
    with gr.Row():
        for label in (left, right):
            with gr.Column():
                shown.append((gr.Image(label=label, **_IMAGE, elem_id=f"{tab}-{label}"),
                              gr.Textbox(label="OCR read", interactive=False, elem_id=f"{tab}-{label}-read")))
    return shown


def build_app(pipelines: Pipelines | None = None, model: str = DEFAULT_MODEL) -> gr.Blocks:
    """The app on ``pipelines`` (default: :func:`textloc.load_pipeline` of each model named),
    opening on ``model``. Launch it with ``.launch()``, as any gradio app."""
    pipelines = pipelines or Pipelines()

    def settings(pipe: Any, name: str, steps: float | None, size: float | None) -> dict[str, Any]:
        # A number box sends 0 for "the model's own" (and None when cleared).
        return call_settings(pipe, name, int(steps or 0) or None, int(size or 0) or None)

    @_shown
    def show_layers(name: str) -> tuple[str, list[list[Any]], str]:
        return layers_view(pipelines(name), name.strip())

    @_shown
    def run_localize(name: str, steps: float | None, size: float | None, seed: float, pairs: float, layers: str, method: str,
                     progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple[Any, ...]:
        progress(0, desc=f"loading {name}")
        pipe = pipelines(name)
        out = Path(tempfile.mkdtemp(prefix="textloc-app-localize-"))
        return localize_view(pipe, name.strip(), int(pairs), layers, method, int(seed), settings(pipe, name, steps, size), out)

    @_shown
    def run_edit(name: str, steps: float | None, size: float | None, seed: float, prompt: str, new_text: str, layers: str, start: str, method: str) -> tuple[Any, ...]:
        pipe = pipelines(name)
        return edit_view(pipe, prompt, new_text, layers, start, method, int(seed), settings(pipe, name, steps, size))

    @_shown
    def run_guard(name: str, steps: float | None, size: float | None, seed: float, prompt: str, layers: str, start: str, replace: str, method: str,
                  check: bool) -> tuple[Any, ...]:
        pipe = pipelines(name)
        return guard_view(pipe, prompt, layers, start, replace, method, check, int(seed), settings(pipe, name, steps, size))

    with gr.Blocks(title="textloc", analytics_enabled=False) as app:
        gr.Markdown(
            "# textloc\nThe attention layers that write the text in a diffusion model's images: list them, find them, "
            "and use them to edit the text or keep toxic words out."
        )
        with gr.Row():
            name = gr.Dropdown(
                [m.name for m in EMBEDDED_MODELS], value=model, allow_custom_value=True, label="model", elem_id="model",
                info="an embedded model (no download), or a diffusers hub id or folder; each is loaded once and kept",
            )
            steps = gr.Number(0, precision=0, label="steps", info="0: the model's own", elem_id="steps")
            size = gr.Number(0, precision=0, label="size (px)", info="0: the model's own", elem_id="size")
            seed = gr.Number(0, precision=0, label="seed", info="the noise every image starts from", elem_id="seed")
        shared = [name, steps, size, seed]

        with gr.Tab("layers"):
            gr.Markdown("The model's text units: every attention layer that reads the prompt, and the pooled text vector.")
            list_button = gr.Button("list layers", elem_id="layers-run")
            layers_header = gr.Markdown(elem_id="layers-header")
            layers_table = gr.Dataframe(headers=LAYER_COLUMNS, interactive=False, elem_id="layers-table")
            layers_preset = gr.Markdown(elem_id="layers-preset")
        layers_out = [layers_header, layers_table, layers_preset]
        list_button.click(show_layers, [name], layers_out, **_ONE_AT_A_TIME)
        app.load(show_layers, [name], layers_out, **_ONE_AT_A_TIME)

        with gr.Tab("localize"):
            gr.Markdown(
                "Generate prompt pairs that differ only in their quoted word, patch each layer of the source with the "
                "target's text and read the images: the smallest set that writes the target word. A few pairs take "
                "minutes on a CPU."
            )
            with gr.Row():
                pairs = gr.Number(4, precision=0, minimum=1, label="prompt pairs", elem_id="localize-pairs")
                candidates = gr.Textbox("all", label="candidate layers", info="all, or names, blocks, globs, indices", elem_id="localize-layers")
                method = gr.Dropdown(list(METHODS), value="activation", label="method", elem_id="localize-method")
            localize_button = gr.Button("localize", variant="primary", elem_id="localize-run")
            with gr.Row():
                plot = gr.Image(label="layers", **{**_IMAGE, "height": 480, "elem_classes": []}, elem_id="localize-plot")
                grid = gr.Image(label="held-out examples: source | patched | target", **{**_IMAGE, "height": 480}, elem_id="localize-examples")
            selected = gr.Textbox(label="selected layers", lines=3, interactive=False, elem_id="localize-selected")
            summary = gr.Code(label="summary", language=None, interactive=False, elem_id="localize-summary")
        localize_button.click(
            run_localize, [*shared, pairs, candidates, method], [summary, plot, grid, selected], show_progress_on=[plot], **_ONE_AT_A_TIME,
        )

        with gr.Tab("edit"):
            gr.Markdown("Generate the prompt, then again from the same noise while only the text layers read the new word.")
            with gr.Row():
                edit_prompt = gr.Textbox(SIGN_PROMPT, label="prompt", info="the text to change in double quotes", elem_id="edit-prompt", scale=3)
                new_text = gr.Textbox("FISH", label="new text", elem_id="edit-new-text")
            with gr.Row():
                edit_layers = gr.Textbox("preset", label="layers", info="preset, a localization's folder, or layer names", elem_id="edit-layers")
                edit_start = gr.Textbox("", label="start step", info="blank: the layers' own; an index, or a fraction with a point", elem_id="edit-start")
                edit_method = gr.Dropdown(list(EDIT_METHODS), value="patch", label="method", elem_id="edit-method")
            edit_button = gr.Button("edit", variant="primary", elem_id="edit-run")
            (source_image, source_read), (edited_image, edited_read) = _side_by_side("edit", "source", "edited")
            edit_summary = gr.Textbox(label="summary", interactive=False, elem_id="edit-summary")
            edit_scores = gr.JSON(label="scores", elem_id="edit-scores")
        edit_button.click(
            run_edit, [*shared, edit_prompt, new_text, edit_layers, edit_start, edit_method],
            [source_image, edited_image, source_read, edited_read, edit_summary, edit_scores], **_ONE_AT_A_TIME,
        )

        with gr.Tab("guard"):
            gr.Markdown(
                "Generate the prompt as asked, and through the guard: its toxic words, however written, are replaced "
                "where the text layers read them; the OCR then reads the guarded image and regenerates it if one still shows."
            )
            with gr.Row():
                guard_prompt = gr.Textbox(TOXIC_PROMPT, label="prompt", elem_id="guard-prompt", scale=3)
                replace = gr.Textbox("benign", label="replace with", info="benign, mask, mask:TEXT, drop, or WORD=NEW", elem_id="guard-replace")
            with gr.Row():
                guard_layers = gr.Textbox("preset", label="layers", elem_id="guard-layers")
                guard_start = gr.Textbox("", label="start step", info="blank: the layers' own", elem_id="guard-start")
                guard_method = gr.Dropdown([m for m in GUARD_METHODS if m != "unguarded"], value="patch", label="method", elem_id="guard-method")
                check = gr.Checkbox(True, label="check the image (OCR), regenerate if a toxic word shows", elem_id="guard-check")
            guard_button = gr.Button("guard", variant="primary", elem_id="guard-run")
            (unguarded_image, unguarded_read), (guarded_image, guarded_read) = _side_by_side("guard", "unguarded", "guarded")
            guard_report = gr.Textbox(label="report", lines=3, interactive=False, elem_id="guard-report")
        guard_button.click(
            run_guard, [*shared, guard_prompt, guard_layers, guard_start, replace, guard_method, check],
            [unguarded_image, guarded_image, unguarded_read, guarded_read, guard_report], **_ONE_AT_A_TIME,
        )
    return app


def serve(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> None:
    """Serve ``app`` on ``host``:``port`` with its style and every error shown on the page; with
    ``block=False``, return once it serves (close it with ``app.close()``)."""
    app.launch(server_name=host, server_port=port, ssr_mode=False, show_error=True, css=_CSS, prevent_thread_lock=not block, quiet=not block)
