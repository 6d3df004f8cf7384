"""textloc's calls of a stock pipeline: each family's call defaults reach it, and its images are read
from whatever output class it returns."""

from __future__ import annotations

import inspect

import diffusers
import pytest
import torch
from diffusers.pipelines.kandinsky5.pipeline_output import KandinskyImagePipelineOutput

from conftest import PROMPT, _pipeline
from textloc.architectures import family_of, tiny_family
from textloc.engine import denoiser, run_with_patches
from textloc.engine.run_state import sample_and_timestep, shadowed
from textloc.pipeline_calls import call_kwargs, images_of
from textloc.seeding import generator
from textloc.testing import ARCHITECTURES, IMAGE_SIZE, tiny_call_kwargs

#: Pipeline arguments whose stock default changes the text a pipeline encodes or the size it runs at.
SWITCHES = ("clean_caption", "use_resolution_binning", "enable_prompt_rewrite", "use_pe")


def _takes(arch: str) -> set[str]:
    pipeline = getattr(diffusers, tiny_family(arch).tiny[arch].pipeline)
    return set(SWITCHES) & set(inspect.signature(pipeline.__call__).parameters)


# Found from the pipelines' signatures, not from the specs: a spec that drops a default fails here.
TAKES_A_SWITCH = [arch for arch in ARCHITECTURES if _takes(arch)]


@pytest.mark.parametrize("arch", TAKES_A_SWITCH)
def test_textloc_runs_a_pipeline_on_the_prompt_as_given_at_the_size_asked(arch):
    pipe = _pipeline(arch)
    takes = _takes(arch)
    encoded: list[dict] = []
    sizes: list[tuple[int, ...]] = []

    def note_sample(module, args, kwargs):
        sample, _ = sample_and_timestep(family_of(pipe).signature, args, kwargs)
        sizes.append(tuple(sample.shape[-2:]))

    # The run as textloc makes it, with none of the switches set by the caller.
    kwargs = {key: value for key, value in tiny_call_kwargs(pipe).items() if key not in SWITCHES}
    handle = denoiser(pipe).register_forward_pre_hook(note_sample, with_kwargs=True)
    try:
        with shadowed(pipe, "encode_prompt", lambda arguments: encoded.append(dict(arguments))):
            run_with_patches(pipe, [PROMPT], [], generator=generator(0), **kwargs)
    finally:
        handle.remove()
    # The prompt's own text is encoded: LongCat-Image's rewrite would hand its LLM's rewording on.
    assert encoded[0]["prompt"] in (PROMPT, [PROMPT])
    if "clean_caption" in takes:
        # Cleaning lowercases the prompt where bs4 and ftfy are installed (not here), so the
        # argument is what can be seen.
        assert all(arguments["clean_caption"] is False for arguments in encoded)
    if "use_resolution_binning" in takes:
        # A resolution bin would run the denoiser at the nearest trained size, not the one asked.
        assert set(sizes) == {(IMAGE_SIZE // pipe.vae_scale_factor,) * 2}


def test_a_callers_own_setting_wins_over_the_familys_default():
    pipe = _pipeline("pixart-alpha")
    assert call_kwargs(pipe)["clean_caption"] is False
    assert call_kwargs(pipe, clean_caption=True)["clean_caption"] is True


def test_images_are_read_from_every_output_kind_and_diffusers_classes_are_left_alone():
    images = torch.zeros(1, 3, 4, 4)
    assert images_of(KandinskyImagePipelineOutput(image=images)) is images
    assert images_of((images,)) is images  # return_dict=False
    assert images_of(diffusers.ImagePipelineOutput(images=images)) is images
    assert not hasattr(KandinskyImagePipelineOutput, "images")
