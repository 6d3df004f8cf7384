"""Shared fixtures: one tiny random pipeline per architecture, built once per test session."""

from __future__ import annotations

import functools
import os
import signal

import pytest
import torch

from textloc.architectures import family_of
from textloc.pipeline_calls import images_of
from textloc.scoring.ocr import Reading
from textloc.testing import ARCHITECTURES, IMAGE_SIZE, tiny_call_kwargs, tiny_pipeline

# One thread: tiny models gain nothing from two, and two threads crawl when the cores are shared.
torch.set_num_threads(1)

PROMPT = 'A sign that says "HELLO".'
OTHER = 'A sign that says "WORLD".'
THIRD = 'A red sign that says "LAMP".'


@functools.lru_cache(maxsize=None)
def _pipeline(arch: str):
    return tiny_pipeline(arch)


@pytest.fixture(params=ARCHITECTURES)
def arch(request) -> str:
    return request.param


#: The families that pack each row's own text length into a shared sequence (Lumina 2), or pad a
#: call's prompts to the longest with no mask (Kandinsky 5, GLM-Image's glyph text) or with the image
#: placed after the padding (Qwen-Image 2.1), or left-pad each row's text with positions and mask that follow it
#: (Ideogram 4): a batch of prompts of different token lengths, or a
#: source of another length, is refused in one line.
ONE_TEXT_LENGTH = ("lumina2", "kandinsky5", "qwenimage21", "glm-image", "ideogram4")
ONE_TEXT_LENGTH += ("kandinsky3",)  # its attention pool averages a call's padding

#: The families whose pipeline runs one image a call under CFG (PRX: one timestep per CFG half): a guided
#: batch is refused in one line (tests/test_engine.py), so the batched tests skip them or run them unguided.
ONE_IMAGE_UNDER_CFG = ("prx",)

#: The families that pad each call's text to its longest prompt (Qwen-Image, ERNIE-Image): a source longer than
#: the run's text does not fit, and is refused in one line.
PADS_TO_LONGEST = ("qwenimage", "ernie-image", "bria-fibo")

#: The families whose pipeline takes one prompt per call (DreamLite fixes its batch at 1): a batch of several
#: prompts, or a prompt with a live source row, is refused in one line; the tests that batch skip them.
ONE_PROMPT = ("dreamlite",)


def skip_one_prompt(arch: str) -> None:
    """Skip a test that batches prompts on a family whose pipeline takes one prompt per call."""
    if arch in ONE_PROMPT:
        pytest.skip("its pipeline takes one prompt per call: a batch is refused in one line (tests/test_dreamlite.py)")

#: The families inversion (and so edit_image) does not cover yet: it refuses them in one line.
NOT_INVERTED = (
    "glm-image", "cogview3plus", "bria-fibo", "dreamlite",
)


@pytest.fixture(params=[arch for arch in ARCHITECTURES if arch not in NOT_INVERTED])
def inverted_arch(request) -> str:
    return request.param


@pytest.fixture
def pipe(arch):
    return _pipeline(arch)


def seeded(pipe, seed: int = 0, **overrides):
    """The tiny call kwargs with a fresh generator, so every run starts from the same noise."""
    return {**tiny_call_kwargs(pipe), "generator": torch.Generator("cpu").manual_seed(seed), **overrides}


def generate(pipe, prompt: str = PROMPT, seed: int = 0, **overrides) -> torch.Tensor:
    return torch.as_tensor(images_of(pipe(prompt=prompt, **seeded(pipe, seed, **overrides))))


def stop_trainer_at(monkeypatch: pytest.MonkeyPatch, module: object, step: int) -> None:
    """SIGTERM this process while ``module`` (a trainer) fetches the batch of ``step`` (once): an
    interruption at a known step, for the tests that resume a training run."""
    fetch = module.training_batch
    fired = []

    def fetch_and_stop(seed: int, at: int, *args: object) -> object:
        if at == step and not fired:
            fired.append(at)
            os.kill(os.getpid(), signal.SIGTERM)
        return fetch(seed, at, *args)

    monkeypatch.setattr(module, "training_batch", fetch_and_stop)


class FakeOCR:
    """Reads every image as the text it is told, with one box in the middle: edits scored without an OCR engine."""

    def __init__(self, texts):
        self.texts = list(texts)

    def readings(self, images):
        return [Reading(self.texts.pop(0), ((8.0, 8.0, 24.0, 24.0),)) for _ in images]

    def read(self, images):
        return [reading.text for reading in self.readings(images)]


def held_prior_tokens(pipe) -> dict:
    """GLM-Image's autoregressive stage, out of textloc's scope, reads the whole prompt: the call
    arguments that hold its prior tokens fixed (PROMPT's, one row, which its denoiser adds to every
    row), so that what the prompt changes reaches the image through the text units alone; none for
    other families."""
    if type(pipe).__name__ != "GlmImagePipeline":
        return {}
    tokens = pipe.generate_prior_tokens(PROMPT, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator("cpu").manual_seed(0))[0]
    return {"prior_token_ids": tokens}


def edit_settings(pipe) -> dict:
    """A tiny pipeline's fast settings, less the output type, which an edit sets itself (unguided where
    the pipeline runs one image a call under CFG: an edit generates its source and edited rows together)."""
    settings = {key: value for key, value in tiny_call_kwargs(pipe).items() if key != "output_type"}
    if family_of(pipe).name in ONE_IMAGE_UNDER_CFG:
        settings["guidance_scale"] = 1.0
    return settings
