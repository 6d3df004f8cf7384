"""diffusers' modular pipelines (``diffusers.modular_pipelines``): the engine reads each denoiser
call's CFG branch from the pipeline's guider, which runs the branches as calls of their own, so a
modular pipeline patches as the plain pipeline of the same components does."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import textloc as tl
from conftest import _pipeline

modular = pytest.importorskip("diffusers.modular_pipelines")
guiders = pytest.importorskip("diffusers.guiders")

SOURCE, TARGET = 'A sign that says "HELLO".', 'A sign that says "WORLD".'
STEPS = dict(num_inference_steps=2, height=32, width=32)
#: arch -> (its modular blocks, the plain pipeline's CFG arguments): SDXL batches [uncond, cond] in
#: one call, Qwen-Image runs them as two calls; the modular pipelines of both, as two calls.
CASES = {
    "sdxl": ("StableDiffusionXLAutoBlocks", {"guidance_scale": 5.0}),
    "qwenimage": ("QwenImageAutoBlocks", {"true_cfg_scale": 5.0, "negative_prompt": " "}),
}


def _modular(arch: str, guider=None):
    blocks, _ = CASES[arch]
    pipe = getattr(modular, blocks)().init_pipeline()
    pipe.update_components(**{name: part for name, part in _pipeline(arch).components.items() if part is not None})
    pipe.update_components(guider=guider or guiders.ClassifierFreeGuidance(guidance_scale=5.0))
    return pipe


def _inputs(arch: str) -> dict:
    return {**STEPS, **({"negative_prompt": " "} if arch == "qwenimage" else {})}


@pytest.mark.parametrize("arch", list(CASES))
def test_a_modular_pipeline_patches_each_branch_as_its_plain_pipeline_does(arch):
    plain_pipe, (_, cfg) = _pipeline(arch), CASES[arch]
    pipe = _modular(arch)
    cache = tl.record(plain_pipe, "all", TARGET, generator=tl.generator(0), **STEPS, **cfg)

    def plain(**patch):
        with tl.patch(plain_pipe, "all", cache, **patch) if patch else _nothing():
            return np.asarray(plain_pipe(SOURCE, generator=tl.generator(0), output_type="np", **STEPS, **cfg).images)

    def modular_run(**patch):
        with tl.patch(pipe, "all", cache, **patch) if patch else _nothing():
            return np.asarray(pipe(prompt=SOURCE, generator=tl.generator(0), output_type="np", output="images", **_inputs(arch)))

    unpatched = plain()
    np.testing.assert_allclose(modular_run(), unpatched, atol=1e-5)  # the same model, sampled alike
    for branch in ("cond", "uncond", "both"):
        expected = plain(branch=branch)
        assert np.abs(expected - unpatched).max() > 1e-4 or branch == "uncond", branch  # the patch does something
        np.testing.assert_allclose(modular_run(branch=branch), expected, atol=1e-5, err_msg=branch)
    # Recorded through the modular pipeline, the same text K/V as through the plain one.
    again = tl.record(pipe, "all", TARGET, generator=tl.generator(0), **_inputs(arch))
    assert again.entries.keys() == cache.entries.keys()
    for key, entry in cache.entries.items():
        for name in ("key", "value"):  # the pooled vector has values only
            if getattr(entry, name) is not None:
                np.testing.assert_allclose(getattr(again.entries[key], name).numpy(), getattr(entry, name).numpy(), atol=1e-5, err_msg=f"{key} {name}")


def test_a_guider_with_a_pass_that_is_no_cfg_branch_is_refused_in_one_line():
    class ThirdPass(guiders.ClassifierFreeGuidance):  # as skip-layer and perturbed-attention guidance run one
        _input_predictions = ["pred_cond", "pred_uncond", "pred_cond_skip"]

        @property
        def num_conditions(self) -> int:
            return 3

    pipe = _modular("sdxl", ThirdPass(guidance_scale=5.0))
    with pytest.raises(ValueError, match=r"ThirdPass runs a 'pred_cond_skip' pass.*update_components\(guider="):
        tl.record(pipe, "all", TARGET, generator=tl.generator(0), **STEPS)


def test_a_modular_pipelines_inputs_are_checked_by_its_blocks_names_and_an_early_stop_logs_nothing(caplog):
    pipe = _modular("sdxl")
    with pytest.raises(TypeError, match="'num_inference_step' is not an argument.*did you mean num_inference_steps"):
        tl.record(pipe, "all", TARGET, num_inference_step=2)
    with caplog.at_level(logging.ERROR):
        tl.record(pipe, "all", TARGET, generator=tl.generator(0), **STEPS)  # stops after the first denoiser call
    assert not [record for record in caplog.records if "Error in block" in record.getMessage()]


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_the_uses_refuse_a_modular_pipeline_in_one_line_before_any_work():
    pipe = _modular("sdxl")
    calls = {
        "edit_text": lambda: tl.edit_text(pipe, SOURCE, "WORLD", "all", **STEPS),
        "edit_image": lambda: tl.edit_image(pipe, np.zeros((32, 32, 3)), SOURCE, "WORLD", "all", **STEPS),
        "ToxicTextGuard": lambda: tl.ToxicTextGuard(pipe, "all"),
        "localize": lambda: tl.localize(pipe, tl.make_pairs(["HELLO", "WORLD"], n=2), **STEPS),
        "train_lora": lambda: tl.train_lora(pipe, "all", "textloc-tiny"),
    }
    for use, call in calls.items():
        with pytest.raises(ValueError, match=rf"^{use} runs a plain diffusers pipeline, and StableDiffusionXLModularPipeline is a modular one"):
            call()
