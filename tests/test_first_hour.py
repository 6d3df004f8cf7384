"""What a new user hits in the first hour (issue 36): each wrong input refused early and plainly,
each result saying what it is and what made it. Tiny random pipelines, the CLI run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import textloc as tl
import textloc.edit.core
import textloc.pipelines
from conftest import PROMPT, FakeOCR, _pipeline, edit_settings as settings
from textloc.cli import main
from textloc.edit import EditResult, edit_image, edit_text
from textloc.edit.core import EditResults
from textloc.architectures import default_image_side
from textloc.localization.report import ProgressLog
from textloc.models import TEXTLOC_TINY_SD3
from textloc.seeding import generator


ROOT = Path(__file__).resolve().parent.parent


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# ---- item 6: an --out that is a file


COMMANDS = {
    "edit": ["edit", "--prompt", PROMPT, "--new-text", "WORLD"],
    "guard": ["guard", "--prompt", 'A sign that says "DAMN".'],
    "localize": ["localize", "--pairs", "2"],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("inside", [False, True], ids=["file", "inside-a-file"])
def test_an_out_that_is_a_file_is_refused_before_the_model_loads(capsys, tmp_path, monkeypatch, command, inside):
    monkeypatch.setattr(textloc.pipelines, "load_pipeline", lambda *args, **kwargs: pytest.fail("loaded a model for a bad --out"))
    (tmp_path / "x").write_text("")
    out = tmp_path / "x" / "run" if inside else tmp_path / "x"
    status, printed, err = run(capsys, *COMMANDS[command], "--model", "tiny-random-sd15", "--out", str(out))
    expected = f"is inside {tmp_path / 'x'}, which is a file" if inside else "is a file"
    assert status == 2 and printed == ""
    assert f"--out {out} {expected}; give a folder" in err and err.count("\n") == 1


# ---- item 9: which settings a resumed localization changes


def test_a_resume_with_other_settings_says_which_differ(tmp_path):
    logged = {"model": "textloc-tiny", "pairs": [["A", "B"]], "threshold": 0.8, "weights": "0123456789abcdef", "kv": "both"}
    ProgressLog(tmp_path, logged)
    now = {**logged, "model": "tiny-random-sd15", "pairs": [["A", "B"], ["C", "D"]], "threshold": 0.9, "weights": "fedcba9876543210"}
    with pytest.raises(ValueError) as error:
        ProgressLog(tmp_path, now)
    message = str(error.value)
    assert "the model differs: logged 'textloc-tiny', this run 'tiny-random-sd15'" in message
    assert "pairs: 1 logged, 2 in this run" in message and "threshold: logged 0.8, this run 0.9" in message
    assert "the model's weights differ" in message and "kv" not in message


def test_a_resume_names_the_first_pair_that_differs_and_a_setting_not_logged(tmp_path):
    ProgressLog(tmp_path, {"pairs": [["A", "B"], ["C", "D"]]})
    with pytest.raises(ValueError, match=r"pairs\[1\]: logged \['C', 'D'\], this run \['C', 'E'\]; heads: logged \(not set\), this run \[0\]"):
        ProgressLog(tmp_path, {"pairs": [["A", "B"], ["C", "E"]], "heads": [0]})


def test_a_resume_names_the_pipeline_keyword_that_differs(tmp_path):
    ProgressLog(tmp_path, {"generate_kwargs": {"guidance_scale": "4.0", "num_inference_steps": "2"}})
    with pytest.raises(ValueError, match=r"\(generate_kwargs.num_inference_steps: logged '2', this run '3'\);"):
        ProgressLog(tmp_path, {"generate_kwargs": {"guidance_scale": "4.0", "num_inference_steps": "3"}})


# ---- item 10: a batch edit summarizes and saves as one edit does


def test_a_batch_edit_is_a_list_that_summarizes_and_saves(tmp_path):
    pipe = _pipeline("sd15")
    prompts, words = [PROMPT, 'A sign that says "OPEN".'], ["WORLD", "SHUT"]
    batch = edit_text(pipe, prompts, words, "all", ocr=FakeOCR(["HELLO", "OPEN", "WORLD", "OPEN"]), **settings(pipe))
    assert isinstance(batch, list) and isinstance(batch, EditResults) and len(batch) == 2
    assert batch.summary().splitlines() == [
        "0: patch: read 'HELLO' -> 'WORLD' (new text read; wanted 'WORLD')",
        "1: patch: read 'OPEN' -> 'OPEN' (new text NOT read; wanted 'SHUT')",
    ]
    assert batch.save(tmp_path) == tmp_path
    assert [json.loads((tmp_path / row / "edit.json").read_text())["new_text"] for row in ("0", "1")] == words
    single = edit_text(pipe, PROMPT, "WORLD", "all", ocr=FakeOCR(["", ""]), **settings(pipe))
    assert type(single) is EditResult


# ---- item 5: what an edit was made with


def test_edit_json_records_the_model_seed_steps_and_guidance(capsys, tmp_path):
    status, _, _ = run(capsys, "edit", "--model", "tiny-random-sd15", "--device", "cpu", "--prompt", PROMPT, "--new-text", "WORLD",
                       "--layers", "all", "--seed", "3", "--num-inference-steps", "2", "--guidance-scale", "2.5", "--out", str(tmp_path))
    assert status == 0
    assert json.loads((tmp_path / "edit.json").read_text())["generation"] == {
        "model": "tiny-random-sd15", "pipeline": "StableDiffusionPipeline", "name_or_path": None,
        "seed": 3, "num_inference_steps": 2, "guidance_scale": 2.5,
    }


def test_the_seed_is_not_claimed_for_a_generator_that_had_advanced():
    pipe = _pipeline("sd15")
    kwargs = {key: value for key, value in settings(pipe).items() if key != "guidance_scale"}
    fresh = edit_text(pipe, PROMPT, "WORLD", "all", generator=generator(5), ocr=FakeOCR(["", ""]), **kwargs)
    advanced = generator(5)
    torch.rand(1, generator=advanced)  # the generator has drawn: seed 5 no longer names its noise
    drawn = edit_text(pipe, PROMPT, "WORLD", "all", generator=advanced, ocr=FakeOCR(["", ""]), **kwargs)
    assert fresh.generation["seed"] == 5 and drawn.generation["seed"] is None
    assert fresh.generation["guidance_scale"] == 7.5  # StableDiffusionPipeline's default, where none was given


# ---- item 4: a user's image is shown as given, beside its regeneration


def test_a_users_image_is_edited_at_the_models_size_its_aspect_kept():
    pipe = _pipeline("sd15")
    side = default_image_side(pipe)  # what the pipeline generates at when not told
    kwargs = {key: value for key, value in settings(pipe).items() if key not in ("guidance_scale", "height", "width")}
    for given, expected in (((4 * side, 4 * side), (side, side)), ((4 * side, 2 * side), (side, side // 2))):
        image = Image.new("RGB", given, "white")
        result = edit_image(pipe, image, PROMPT, "WORLD", "all", ocr=FakeOCR(["", ""]), start_step=0, **kwargs)
        assert result.source_image.size == result.edited_image.size == expected  # (width, height)
        assert result.given_image.size == given
    # A size given is the size run, and one the pipeline cannot take is refused.
    with pytest.raises(ValueError, match="crop or resize the image"):
        edit_image(pipe, Image.new("RGB", (30, 33)), PROMPT, "WORLD", "all", height=33, width=30, **kwargs)


def test_an_embedded_models_image_edits_default_to_the_settings_of_its_real_image_figure(monkeypatch):
    pipe = tl.load_pipeline("textloc-tiny")
    seen = {}

    def edit(pipe, prompt, new_text, layers, *, start_step, guidance_scale, **kwargs):
        seen.update(start_step=start_step, guidance_scale=guidance_scale, size=kwargs["height"])
        raise StopIteration

    monkeypatch.setattr(textloc.edit.core, "edit_text", edit)
    with pytest.raises(StopIteration):
        edit_image(pipe, Image.new("RGB", (256, 256), "white"), PROMPT, "WORLD", num_inference_steps=2)
    real = json.loads((ROOT / "bench" / "results" / "edit.json").read_text())["real"]
    assert seen == {"start_step": real["start_step"], "guidance_scale": real["guidance_scale"], "size": 64}
    assert dict(TEXTLOC_TINY_SD3.image_edit) == {key: json.loads((ROOT / "bench" / "results" / "edit-tiny-sd3-pooled.json").read_text())["real"][key] for key in ("guidance_scale", "start_step")}


def test_an_edited_users_image_shows_the_image_then_its_regeneration(tmp_path):
    pipe = _pipeline("sd15")
    kwargs = {key: value for key, value in settings(pipe).items() if key != "guidance_scale"}
    image = pipe(prompt=PROMPT, generator=generator(1), guidance_scale=1.0, output_type="pil", **kwargs).images[0]
    result = edit_image(pipe, image, PROMPT, "WORLD", "all", ocr=FakeOCR(["", ""]), start_step=0, **kwargs)
    result.save(tmp_path)
    assert Image.open(tmp_path / "edit.png").width == 3 * 3 * image.width  # three panels, each enlarged 3 times
    assert result.generation["seed"] is None  # the noise is the image's inversion
