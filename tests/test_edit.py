"""Editing the words in an image: the edit is the patched source, on every architecture."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import textloc as tl
from conftest import PROMPT, FakeOCR, _pipeline, edit_settings as settings, held_prior_tokens, skip_one_prompt
from textloc.architectures import family_of
from textloc.architectures.spec import ATTENTION_TEXT_KINDS
from textloc.edit import edit_text, quoted_spans, replace_quoted, score_edit
from textloc.layers import PRESETS, find_preset, resolve_layers
from textloc.localization import Localization
from textloc.pipeline_calls import images_of
from textloc.scoring.ocr import Reading
from textloc.seeding import generator

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "tiny" / "localize"
PIXEL = 1 / 255 + 1e-4  # EditResult keeps 8-bit images


def as_array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255


def test_edit_is_the_source_with_the_text_layers_patched(arch, pipe):
    skip_one_prompt(arch)
    kwargs = settings(pipe)
    layer = tl.select_layers(pipe, "all")[0].name
    new_prompt = 'A sign that says "WORLD".'
    result = edit_text(pipe, PROMPT, "WORLD", layer, start_step=0, ocr=FakeOCR(["HELLO", "WORLD"]), **kwargs)
    plain = images_of(pipe(prompt=PROMPT, generator=generator(0), output_type="np", **kwargs))[0]
    np.testing.assert_allclose(as_array(result.source_image), plain, atol=PIXEL)
    # The same patch through the engine's context, from a recorded new prompt.
    cache = tl.record(pipe, layer, new_prompt, generator=generator(0), **kwargs)
    with tl.patch(pipe, layer, cache, patch_steps=(0, None)):
        patched = images_of(pipe(prompt=PROMPT, generator=generator(0), output_type="np", **kwargs))[0]
    np.testing.assert_allclose(as_array(result.edited_image), patched, atol=PIXEL)
    # The patch did something: far above float noise, though a random FLUX.2's text moves its image by < 1e-3.
    assert np.abs(patched - plain).max() > 1e-4
    assert (result.old_text, result.new_prompt, result.layers) == ("HELLO", new_prompt, [layer])
    assert result.scores["new_contains"] == 1.0 and result.floor["new_contains"] == 0.0


def test_an_edit_of_every_text_unit_from_the_first_step_is_the_new_prompt_generated(arch, pipe):
    skip_one_prompt(arch)
    # Every way the prompt reaches the image is patched, the pooled vector included where the
    # family has one (GLM-Image's autoregressive stage held fixed): the edited image is the new
    # prompt's own, from the same noise.
    kwargs = settings(pipe)
    result = edit_text(pipe, PROMPT, "WORLD", "all", start_step=0, ocr=FakeOCR(["HELLO", "WORLD"]), **kwargs, **held_prior_tokens(pipe))
    direct = images_of(pipe(prompt='A sign that says "WORLD".', generator=generator(0), output_type="np", **kwargs, **held_prior_tokens(pipe)))[0]
    np.testing.assert_allclose(as_array(result.edited_image), direct, atol=PIXEL)


def test_a_batch_of_edits_equals_the_edits_one_by_one():
    pipe = _pipeline("sd3")
    kwargs = settings(pipe)
    prompts, words = [PROMPT, 'A red sign that says "LAMP".'], ["WORLD", "FISH"]
    batch = edit_text(pipe, prompts, words, "all", ocr=FakeOCR([""] * 4), **kwargs)
    for prompt, word, result in zip(prompts, words, batch):
        alone = edit_text(pipe, prompt, word, "all", ocr=FakeOCR([""] * 2), **kwargs)
        np.testing.assert_allclose(as_array(result.edited_image), as_array(alone.edited_image), atol=PIXEL)


def test_baselines_run_through_the_same_harness():
    pipe = _pipeline("sdxl")
    kwargs = settings(pipe)
    swap = edit_text(pipe, PROMPT, "WORLD", method="prompt-swap", ocr=FakeOCR(["", ""]), **kwargs)
    direct = images_of(pipe(prompt='A sign that says "WORLD".', generator=generator(0), output_type="np", **kwargs))[0]
    np.testing.assert_allclose(as_array(swap.edited_image), direct, atol=PIXEL)
    assert swap.layers == [] and swap.start_step is None


def test_scores_are_float_and_blank_the_text_boxes():
    source = np.zeros((32, 32, 3), dtype=np.float32)
    edited = source.copy()
    edited[10:20, 10:20] = 1.0  # a change inside the text box only
    scores = score_edit(source, edited, Reading("OPEN", ((8, 8, 24, 24),)), Reading("STOP", ((8, 8, 24, 24),)), "OPEN", "STOP")
    assert scores["mse"] == pytest.approx(100 / 1024)  # float: a uint8 difference of 255 would wrap
    assert scores["mse_outside_text"] == 0.0 and scores["new_contains"] == 1.0 and scores["old_contains"] == 0.0
    no_boxes = score_edit(source, edited, Reading("OPEN", None), Reading("STOP", None), "OPEN", "STOP")
    assert no_boxes["mse_outside_text"] is None


def test_result_saves_a_pair_image_and_json(tmp_path):
    pipe = _pipeline("sd15")
    result = edit_text(pipe, PROMPT, "WORLD", "all", ocr=FakeOCR(["HELLO", "W0RLD"]), **settings(pipe))
    result.save(tmp_path)
    import json

    data = json.loads((tmp_path / "edit.json").read_text())
    assert data["edited_read"] == "W0RLD" and data["scores"]["new_contains"] == 0.0
    assert (tmp_path / "edit.png").stat().st_size > 0
    assert "NOT read" in result.summary()


# ---- bad input


@pytest.mark.parametrize(
    "prompt, new_text, message",
    [
        ("A sign with no quotes.", "STOP", "no quoted text"),
        ('Two signs, "A" and "B".', "STOP", "2 quoted texts"),
        (PROMPT, "", "new_text is empty"),
        (PROMPT, "HELLO", "is the prompt's own text"),
    ],
)
def test_bad_texts_are_refused(prompt, new_text, message):
    with pytest.raises(ValueError, match=message):
        replace_quoted(prompt, new_text)


def test_bad_edit_arguments_are_refused_before_generating():
    pipe = _pipeline("sd15")
    with pytest.raises(ValueError, match="same length"):
        edit_text(pipe, [PROMPT], ["A", "B"], "all")
    with pytest.raises(ValueError, match="output_type"):
        edit_text(pipe, PROMPT, "WORLD", "all", output_type="pil")
    with pytest.raises(ValueError, match="No preset for"):
        edit_text(pipe, PROMPT, "WORLD")  # layers="preset" on a model without one
    other = Localization(model="another", settings={"weights": "0123456789abcdef"}, layers=[], baselines=None, selected=[tl.select_layers(pipe, "all")[0].name])
    with pytest.raises(ValueError, match="found on other weights"):
        edit_text(pipe, PROMPT, "WORLD", other)


def test_quoted_spans_find_every_quote():
    assert [span.text for span in quoted_spans('A "red" sign that says “OPEN NOW”.')] == ["red", "OPEN NOW"]


# ---- the layer resolver


@pytest.mark.parametrize("preset", PRESETS, ids=lambda preset: preset.model)
def test_presets_name_real_layers_of_the_published_models(preset):
    model = preset.build_on_meta()
    attribute = "transformer" if "Transformer" in type(model).__name__ else "unet"
    copy = SimpleNamespace(**{attribute: model}, name_or_path="/data/a-copy-of-it")  # found by config, not id
    assert find_preset(copy) is preset
    layers = resolve_layers(copy, "preset")
    assert [layer.name for layer in layers] == list(preset.layers)
    assert len(tl.attention_layers(model, ATTENTION_TEXT_KINDS)) == preset.num_text_layers


def test_resolver_takes_a_saved_localization_folder_and_checks_its_weights(tmp_path):
    tiny = tl.load_pipeline("textloc-tiny")
    saved = Localization.load(SAMPLES)
    assert {layer.name for layer in resolve_layers(tiny, SAMPLES)} == set(saved.selected)
    assert {layer.name for layer in resolve_layers(tiny, str(SAMPLES))} == set(saved.selected)
    with pytest.raises(ValueError, match="found on other weights"):
        resolve_layers(_pipeline("deepfloyd-if"), SAMPLES)
    with pytest.raises(ValueError, match="holds no report.json"):
        resolve_layers(tiny, tmp_path)


# ---- on the embedded model, with its shipped localization


def test_textloc_tiny_edit_writes_the_new_word():
    from textloc.models import named_model

    tiny = tl.load_pipeline("textloc-tiny")
    result = edit_text(tiny, 'A red sign on a blue background that says "LAMP".', "FISH", SAMPLES, **named_model("textloc-tiny").settings)
    assert result.source_read == "LAMP" and result.edited_read == "FISH"
    assert result.scores["ssim_outside_text"] > 0.85


# ---- a user's own image


def test_edit_image_edits_the_regeneration_of_the_inverted_image(inverted_arch):
    pipe = _pipeline(inverted_arch)
    from textloc.edit import edit_image
    from textloc.edit.inversion import invert, starting_from

    kwargs = {key: value for key, value in settings(pipe).items() if key != "guidance_scale"}
    # edit_image's default: CFG off (Z-Image, Krea 2: 0); HunyuanImage takes no scale (its guiders hold theirs).
    unguided = {"guidance_scale": family_of(pipe).training.unguided_scale} if "guidance_scale" in settings(pipe) else {}
    image = images_of(pipe(prompt=PROMPT, generator=generator(1), output_type="pil", **unguided, **kwargs))[0]
    result = edit_image(pipe, image, PROMPT, "WORLD", "all", ocr=FakeOCR(["", ""]), start_step=0, **kwargs)
    with starting_from(pipe, invert(pipe, image, PROMPT, **kwargs)):
        regenerated = images_of(pipe(prompt=PROMPT, output_type="np", **unguided, **kwargs))[0]
    np.testing.assert_allclose(as_array(result.source_image), regenerated, atol=PIXEL)
    assert set(result.reconstruction) == {"psnr", "ssim"} and result.reconstruction["psnr"] > 5


def test_edit_image_refuses_a_size_the_pipeline_cannot_take():
    from textloc.edit import edit_image

    pipe = _pipeline("sdxl")
    with pytest.raises(ValueError, match="crop or resize the image"):
        edit_image(pipe, np.zeros((33, 30, 3), dtype=np.uint8), PROMPT, "WORLD", "all", num_inference_steps=2, height=33, width=30)
