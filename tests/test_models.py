"""The registry of named models: what each name loads and carries, and what an unknown name says."""

from __future__ import annotations

import importlib
import inspect
from types import SimpleNamespace

import pytest
import torch
from diffusers import DiffusionPipeline, IFPipeline

import textloc.models as models
from textloc.cli import main
from textloc.localization import PromptPair
from textloc.models import EmbeddedModel, RandomModel, UnknownModelError, find_named_model, named_model, named_models
from textloc.pipelines import load_pipeline
from textloc.tiny.data import make_example

NAMES = (
    "textloc-tiny",
    "textloc-tiny-sd3",
    "textloc-tiny-flux",
    "tiny-random-sd15",
    "tiny-random-sdxl",
    "tiny-random-sd3",
    "tiny-random-flux",
    "tiny-random-flux2",
    "tiny-random-flux2-klein",
    "tiny-random-chroma",
    "tiny-random-deepfloyd-if",
    "tiny-random-pixart-alpha",
    "tiny-random-pixart-sigma",
    "tiny-random-sana",
    "tiny-random-lumina2",
    "tiny-random-cosmos2",
    "tiny-random-qwenimage",
    "tiny-random-cogview4",
    "tiny-random-hunyuan-image",
    "tiny-random-hidream",
    "tiny-random-z-image",
    "tiny-random-ovis-image",
    "tiny-random-longcat-image",
    "tiny-random-hunyuandit",
    "tiny-random-kandinsky5",
    "tiny-random-qwenimage21",
    "tiny-random-glm-image",
    "tiny-random-ernie-image",
    "tiny-random-nucleusmoe-image",
    "tiny-random-ideogram4",
    "tiny-random-krea2",
    "tiny-random-auraflow",
    "tiny-random-cogview3plus",
    "tiny-random-lumina-next",
    "tiny-random-kandinsky3",
    "tiny-random-bria",
    "tiny-random-bria-fibo",
    "tiny-random-prx",
    "tiny-random-dreamlite",
)


def test_the_registry_names_the_embedded_models_and_one_random_pipeline_per_architecture():
    assert tuple(named_models()) == NAMES
    assert models.DEFAULT_MODEL == "textloc-tiny"


@pytest.mark.parametrize("name", NAMES)
def test_every_named_model_loads_with_settings_its_pipeline_takes(name):
    model = named_model(name)
    pipe = load_pipeline(name)
    assert isinstance(pipe, DiffusionPipeline)
    accepted = inspect.signature(type(pipe).__call__).parameters
    assert model.settings["num_inference_steps"] >= 1
    assert set(model.settings) <= set(accepted)


def test_textloc_tiny_samples_with_its_own_settings():
    # IFPipeline's default is 100 steps; textloc-tiny is made for 25 at guidance 5.
    assert dict(named_model("textloc-tiny").settings) == {"num_inference_steps": 25, "guidance_scale": 5.0}
    # No T5 tokens: the SD3 model was trained on its 77 CLIP tokens alone.
    assert dict(named_model("textloc-tiny-sd3").settings) == {
        "num_inference_steps": 25, "guidance_scale": 5.0, "max_sequence_length": 0,
    }
    assert dict(named_model("tiny-random-sd3").settings) == {
        "num_inference_steps": 2, "guidance_scale": 4.0, "height": 32, "width": 32, "max_sequence_length": 48,
    }


def test_textloc_tiny_loads_and_runs_a_plain_call_with_no_notices_reading_its_caption_raw(caplog):
    with caplog.at_level("WARNING"):
        pipe = load_pipeline("textloc-tiny")
    # Its CLIP text encoder is textloc-tiny's design, not a mistake to call out where IFPipeline names a T5.
    assert not [record for record in caplog.records if "Expected types" in record.getMessage()]
    # Cleaning rewrites a caption (with Beautiful Soup and ftfy); the model learnt them only lowercased.
    assert pipe._text_preprocessing('A sign that says "LAMP".', clean_caption=True) == ['a sign that says "lamp".']
    with caplog.at_level("WARNING"):
        pipe('A sign that says "LAMP".', num_inference_steps=1, output_type="np")
    assert not [record for record in caplog.records if "clean_caption" in record.getMessage()]


@pytest.mark.parametrize("name", ["textloc-tiny", "textloc-tiny-sd3"])
def test_embedded_models_have_their_own_pairs_judge_and_training_data(name):
    model = named_model(name)
    pairs = model.prompt_pairs(4, 1)
    assert len(pairs) == 4 and all(isinstance(pair, PromptPair) for pair in pairs)
    assert pairs == model.prompt_pairs(4, 1) != model.prompt_pairs(4, 2)
    # The pairs keep the scene (the colours) and change the word.
    assert all(pair.source_text != pair.target_text and pair.template.format(pair.target_text) == pair.target for pair in pairs)

    examples = [make_example(5, index, held_out=True) for index in range(4)]
    images, captions = [e.image for e in examples], [e.caption for e in examples]
    assert list(model.scene_judge(images, captions)) == [True] * 4
    swapped = [caption.replace(e.sign, "SIGN").replace(e.background, e.sign).replace("SIGN", e.background)
               for caption, e in zip(captions, examples)]
    assert not any(model.scene_judge(images, swapped))

    batch = model.training_data(0, 3, 2)
    assert batch.images.shape == (2, 3, 64, 64) and len(batch.captions) == 2
    assert batch.captions == model.training_data(0, 3, 2).captions


@pytest.mark.parametrize("name", [name for name in NAMES if name.startswith("tiny-random-")])
def test_random_pipelines_have_no_pairs_judge_or_data_of_their_own(name):
    model = named_model(name)
    assert isinstance(model, RandomModel)
    assert (model.prompt_pairs, model.scene_judge, model.training_data) == (None, None, None)


def test_an_unknown_name_is_an_error_listing_the_known_ones():
    with pytest.raises(UnknownModelError) as error:
        named_model("textloc-tiny-typo")
    message = str(error.value)
    assert all(name in message for name in NAMES)
    assert "Did you mean textloc-tiny or textloc-tiny-sd3 or textloc-tiny-flux?" in message
    assert isinstance(error.value, ValueError)
    # load_pipeline says the same, without asking the hub for a name that cannot be a hub id.
    with pytest.raises(UnknownModelError, match="unknown model 'tiny-random-sd16'"):
        load_pipeline("tiny-random-sd16")


def test_hub_ids_and_folders_are_for_diffusers(tmp_path):
    assert find_named_model("stabilityai/stable-diffusion-xl-base-1.0") is None
    assert find_named_model(str(tmp_path)) is None
    assert find_named_model("textloc-tiny") is named_model("textloc-tiny")


def test_random_pipelines_take_no_from_pretrained_options_and_cast_to_a_dtype():
    with pytest.raises(ValueError, match="built in code"):
        load_pipeline("tiny-random-sd15", variant="fp16")
    assert load_pipeline("tiny-random-sd15", dtype=torch.bfloat16).unet.dtype == torch.bfloat16


def test_missing_weights_say_how_to_get_them(tmp_path):
    model = EmbeddedModel(name="textloc-tiny-sd3", settings={}, folder=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"textloc-tiny-sd3 weights are missing .*python -m textloc\.tiny\.train"):
        model.load()


@pytest.fixture
def second_embedded_model(monkeypatch):
    """One more embedded model, registered as textloc-tiny-sd3 was: one entry."""
    entry = EmbeddedModel(
        name="textloc-tiny-copy",
        settings={"num_inference_steps": 3, "guidance_scale": 2.0},
        folder=models.TEXTLOC_TINY.folder,
    )
    monkeypatch.setattr(models, "EMBEDDED_MODELS", (*models.EMBEDDED_MODELS, entry))
    named_models.cache_clear()
    yield entry
    named_models.cache_clear()


def test_adding_an_embedded_model_is_one_entry(second_embedded_model, tmp_path, monkeypatch):
    assert named_models()["textloc-tiny-copy"] is second_embedded_model
    assert isinstance(load_pipeline("textloc-tiny-copy"), IFPipeline)
    assert second_embedded_model.prompt_pairs is not None and second_embedded_model.scene_judge is not None

    # The CLI knows it too, with its settings, pairs and judge, and no code that names it.
    calls = []

    def record(pipe, pairs, layers="all", config=None, **kwargs):
        calls.append({"pairs": pairs, **kwargs})
        return SimpleNamespace(summary=lambda: "summary")

    monkeypatch.setattr(importlib.import_module("textloc.localization"), "localize", record)
    assert main(["localize", "--model", "textloc-tiny-copy", "--pairs", "2", "--device", "cpu", "--out", str(tmp_path)]) == 0
    (call,) = calls
    assert (call["num_inference_steps"], call["guidance_scale"]) == (3, 2.0)
    assert call["pairs"] == second_embedded_model.prompt_pairs(2, 0)
    assert call["scene_judge"] is second_embedded_model.scene_judge
