"""What a new user hits in the first hour: wrong types and mistyped paths get one line that says
what was wrong and what would be right, before any work starts (issue 36)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import textloc as tl
from conftest import PROMPT, _pipeline
from textloc.edit import edit_image, edit_text
from textloc.guard import ToxicTextGuard
from textloc.layers import resolve_layers
from textloc.models import TEXTLOC_TINY
from textloc.pipeline_calls import images_of
from textloc.testing import tiny_call_kwargs

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "tiny" / "localize"


def test_a_model_folder_may_be_a_path():
    pipe = tl.load_pipeline(Path(TEXTLOC_TINY.folder))
    assert type(pipe).__name__ == "IFPipeline"
    with pytest.raises(TypeError, match="model is a name, a hub id or a folder, not int"):
        tl.load_pipeline(123)


@pytest.mark.parametrize("selector", [1.5, None, {"up_blocks"}])
def test_a_selector_of_the_wrong_type_says_what_a_selector_is(selector):
    with pytest.raises(TypeError, match="A layer selector is 'all', a name, a block, a glob, an index or a list"):
        tl.select_layers(_pipeline("sd15"), selector)


def test_a_seed_is_an_integer():
    with pytest.raises(TypeError, match=r"A seed is an integer, e.g. tl.generator\(0\), not str"):
        tl.generator("a")
    assert tl.generator(np.int64(3)).initial_seed() == 3


@pytest.mark.parametrize("prompt, new_text", [(123, "WORLD"), (PROMPT, 7), ([PROMPT, None], ["A", "B"])])
def test_edit_text_refuses_what_is_not_text(prompt, new_text):
    with pytest.raises(TypeError, match="is a string or a list of strings"):
        edit_text(_pipeline("sd15"), prompt, new_text, "all")


def test_edit_image_reads_an_image_file_and_names_a_missing_one(tmp_path):
    pipe = _pipeline("sd15")
    kwargs = {key: value for key, value in tiny_call_kwargs(pipe).items() if key not in ("output_type", "guidance_scale")}
    with pytest.raises(ValueError, match="Cannot read an image from .*missing.png"):
        edit_image(pipe, tmp_path / "missing.png", PROMPT, "WORLD", "all", **kwargs)
    array = images_of(pipe(prompt=PROMPT, generator=tl.generator(1), guidance_scale=1.0, output_type="np", **kwargs))[0]
    Image.fromarray((array * 255).round().astype(np.uint8)).save(tmp_path / "sign.png")
    from_file = edit_image(pipe, str(tmp_path / "sign.png"), PROMPT, "WORLD", "all", ocr=_NoText(), start_step=0, **kwargs)
    from_image = edit_image(pipe, Image.open(tmp_path / "sign.png"), PROMPT, "WORLD", "all", ocr=_NoText(), start_step=0, **kwargs)
    assert from_file.reconstruction == from_image.reconstruction


class _NoText:
    def read(self, images):
        return [""] * len(images)


@pytest.mark.parametrize("where", ["no/such/loc", "./loc", "~/nowhere-textloc"])
def test_a_mistyped_localization_folder_is_a_missing_folder_not_an_unknown_layer(where):
    pipe = _pipeline("sd15")
    with pytest.raises(ValueError, match=f"No folder '{where}'"):
        resolve_layers(pipe, where)
    with pytest.raises(ValueError, match=f"No folder '{where}'"):
        ToxicTextGuard(pipe, where)


def test_a_folder_without_a_localization_says_so(tmp_path):
    with pytest.raises(ValueError, match="holds no report.json"):
        resolve_layers(_pipeline("sd15"), str(tmp_path))
    # A shipped localization, named as a folder string, still resolves.
    assert [layer.name for layer in resolve_layers(tl.load_pipeline("textloc-tiny"), str(SAMPLES))]
