"""A denoiser under torch.compile (the backend that needs no C++ compiler): the same layers, the
same weights, a patched generation that equals eager, and no recompilation once warm."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import textloc as tl
from conftest import OTHER, PROMPT, seeded
from textloc.pipeline_calls import images_of
from textloc.testing import tiny_pipeline

STEPS = 4  # enough steps for a step-dependent trace to recompile, and then to go dynamic


@pytest.mark.parametrize("arch", ["sdxl", "deepfloyd-if", "sd3", "flux", "hunyuandit", "qwenimage21"])
@pytest.mark.parametrize("how", ["wrapped", "in-place"])
def test_a_compiled_denoiser_keeps_its_layer_names_and_patches_as_eager_without_recompiling(how, arch):
    pipe = tiny_pipeline(arch)  # its own: compiling changes the pipeline

    def settings() -> dict:  # a fresh generator each call: every run starts from the same noise
        return {**seeded(pipe), "num_inference_steps": STEPS}

    names = [layer.name for layer in tl.select_layers(pipe, "all")]
    source = tl.record(pipe, "all", OTHER, **settings())  # recorded eager: the same weights serve compiled
    with tl.patch(pipe, "all", source, patch_steps=(0.5, None)):
        eager = images_of(pipe(prompt=PROMPT, **settings()))
    name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"  # U-Nets and transformers alike
    if how == "wrapped":  # the usual `pipe.unet = torch.compile(pipe.unet)`
        setattr(pipe, name, torch.compile(getattr(pipe, name), backend="aot_eager"))
    else:
        getattr(pipe, name).compile(backend="aot_eager")
    assert [layer.name for layer in tl.select_layers(pipe, "all")] == names  # no "_orig_mod." prefix

    def patched() -> torch.Tensor:
        with tl.patch(pipe, "all", source, patch_steps=(0.5, None)):
            return torch.as_tensor(images_of(pipe(prompt=PROMPT, **settings())))

    torch.testing.assert_close(patched(), torch.as_tensor(eager), atol=1e-6, rtol=0)
    # Warm: the hooks run outside the graph, so no step and no second generation compiles anything.
    graphs = counters["stats"]["unique_graphs"]
    torch.testing.assert_close(patched(), torch.as_tensor(eager), atol=1e-6, rtol=0)
    assert counters["stats"]["unique_graphs"] == graphs
