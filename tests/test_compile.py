"""A denoiser under torch.compile (the backend that needs no C++ compiler): the same layers, the
same weights, and a patched generation that equals eager."""

from __future__ import annotations

import pytest
import torch

import textloc as tl
from conftest import OTHER, PROMPT, seeded
from textloc.testing import tiny_pipeline


@pytest.mark.parametrize("how", ["wrapped", "in-place"])
def test_a_compiled_denoiser_keeps_its_layer_names_and_patches_as_eager(how):
    pipe = tiny_pipeline("sd3")  # its own: compiling changes the pipeline
    names = [layer.name for layer in tl.select_layers(pipe, "all")]
    source = tl.record(pipe, "all", OTHER, **seeded(pipe))  # recorded eager: the same weights serve compiled
    with tl.patch(pipe, "all", source):
        eager = pipe(prompt=PROMPT, **seeded(pipe)).images
    if how == "wrapped":  # the usual `pipe.transformer = torch.compile(pipe.transformer)`
        pipe.transformer = torch.compile(pipe.transformer, backend="aot_eager")
    else:
        pipe.transformer.compile(backend="aot_eager")
    assert [layer.name for layer in tl.select_layers(pipe, "all")] == names  # no "_orig_mod." prefix
    with tl.patch(pipe, "all", source):
        compiled = pipe(prompt=PROMPT, **seeded(pipe)).images
    torch.testing.assert_close(torch.as_tensor(compiled), torch.as_tensor(eager), atol=1e-6, rtol=0)
