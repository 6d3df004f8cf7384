"""DreamLite: what its pipelines' own loops fix (read from ``DreamLitePipeline.__call__`` and its Mobile
variant), beyond what the family-wide tests hold: one prompt per call, CFG always on as ``[uncond,
cond]``, the text padded per call to the longest of prompt and negative prompt with a mask."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest

import textloc as tl
from conftest import OTHER, PROMPT, _pipeline, edit_settings, seeded
from textloc.architectures import family_of
from textloc.engine import RowPatch, record, run_with_patches
from textloc.pipeline_calls import images_of

SHORT = 'A sign "HI".'


def generate(pipe, prompt=PROMPT, **overrides):
    return images_of(pipe(prompt=prompt, **seeded(pipe, **overrides)))


def branches_seen(pipe, **overrides):
    seen = []
    run_with_patches(pipe, [PROMPT], [], on_output=lambda call, _: seen.append((call.step, call.branch_rows)), **seeded(pipe, **overrides))
    return seen


def test_every_call_is_one_prompt_with_cfg_uncond_first_whatever_the_guidance_scale():
    pipe = _pipeline("dreamlite")
    # The loop never tests guidance_scale: [negative, prompt] at every step, even at 1.
    for scale in (4.0, 1.0):
        assert branches_seen(pipe, guidance_scale=scale) == [(0, {"uncond": [0], "cond": [1]}), (1, {"uncond": [0], "cond": [1]})]
    # The conditional row is the second: patching only it from OTHER moves the image, patching the
    # unconditional one (the empty negative prompt of both) changes nothing.
    plain, other = generate(pipe), record(pipe, "all", OTHER, **seeded(pipe))
    with tl.patch(pipe, "all", other, branch="uncond"):
        np.testing.assert_array_equal(generate(pipe), plain)
    with tl.patch(pipe, "all", other, branch="cond"):
        np.testing.assert_allclose(generate(pipe), generate(pipe, OTHER), atol=1e-6)


def test_a_batch_of_several_prompts_is_refused_in_one_line_and_a_batch_of_one_is_that_prompt():
    pipe = _pipeline("dreamlite")
    with pytest.raises(ValueError, match=r"^DreamLitePipeline takes one prompt per call .* this run batches 2: [^\n]*$"):
        run_with_patches(pipe, [PROMPT, OTHER], [], **seeded(pipe))
    with pytest.raises(ValueError, match="takes one prompt per call"):
        tl.edit_text(pipe, PROMPT, "WORLD", "all", **edit_settings(pipe))
    other = record(pipe, "all", OTHER, **seeded(pipe))
    one = images_of(run_with_patches(pipe, [PROMPT], [RowPatch(tuple(other.layers), source=other)], **seeded(pipe)))
    # No pooled vector: every text layer reading OTHER's text is OTHER's image.
    np.testing.assert_allclose(one, generate(pipe, OTHER), atol=1e-6)


def test_a_shorter_source_is_patched_with_its_mask_and_a_longer_one_is_refused():
    pipe = _pipeline("dreamlite")
    short = record(pipe, "all", SHORT, **seeded(pipe))
    with tl.patch(pipe, "all", short):
        # The run's text is PROMPT's length; SHORT's K/V fill the first tokens, the rest masked out.
        np.testing.assert_allclose(generate(pipe), generate(pipe, SHORT), atol=1e-5)
    long = record(pipe, "all", PROMPT, **seeded(pipe))
    with tl.patch(pipe, "all", long), pytest.raises(ValueError, match="needs .* text tokens but this run keeps"):
        generate(pipe, SHORT)


def test_the_mobile_pipeline_is_guidance_distilled_every_row_conditional():
    base = _pipeline("dreamlite")
    pipe = diffusers.DreamLiteMobilePipeline(**base.components)
    pipe.set_progress_bar_config(disable=True)
    assert family_of(pipe).name == "dreamlite-mobile" and family_of(pipe.unet).name == "dreamlite"
    def run(prompt=PROMPT):
        # guidance_scale is ignored, with a warning: left out.
        return images_of(pipe(prompt=prompt, **{key: value for key, value in seeded(base).items() if key != "guidance_scale"}))

    source = record(pipe, "all", OTHER, **{key: value for key, value in seeded(base).items() if key != "guidance_scale"})
    assert {branch for _, _, branch in source.entries} == {"cond"}
    plain = run()
    with tl.patch(pipe, "all", source, branch="uncond"):
        np.testing.assert_array_equal(run(), plain)
    with tl.patch(pipe, "all", source):
        np.testing.assert_allclose(run(), run(OTHER), atol=1e-6)


def test_a_guard_of_one_prompt_writes_the_benign_word():
    # One prompt per call: the guard's cleaned text reaches every text layer through a cache, no extra row.
    pipe = _pipeline("dreamlite")
    guard = tl.ToxicTextGuard(pipe, "all", start_step=0)
    output = guard(prompt='A sign that says "shit".', **seeded(pipe))
    (report,) = output.reports
    assert report.found == ["shit"] and report.rows == [0]
    np.testing.assert_allclose(images_of(output), generate(pipe, report.cleaned_prompt), atol=1e-6)
