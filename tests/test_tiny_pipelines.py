"""The tiny random pipelines that every other test runs on: offline, deterministic, right layout."""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from textloc.pipeline_calls import images_of
from textloc.testing import ARCHITECTURES, IMAGE_SIZE, tiny_call_kwargs, tiny_pipeline

PROMPT = 'A sign that says "HELLO".'
OTHER_PROMPT = 'A sign that says "WORLD".'

# Which attention modules of the denoiser the attention engine patches, and how many each tiny
# model must have, as (pattern on the module name, processor class prefix, minimum count).
ATTENTION_LAYOUT: dict[str, list[tuple[str, str, int]]] = {
    "sd15": [(r".*attn2", "AttnProcessor", 4)],
    "sdxl": [(r".*attn2", "AttnProcessor", 4), (r".*transformer_blocks\.1\.attn2", "AttnProcessor", 1)],
    "sd3": [(r"transformer_blocks\.\d+\.attn", "JointAttnProcessor", 3)],
    "flux": [
        (r"transformer_blocks\.\d+\.attn", "FluxAttnProcessor", 2),
        (r"single_transformer_blocks\.\d+\.attn", "FluxAttnProcessor", 2),
    ],
    "flux2": [
        (r"transformer_blocks\.\d+\.attn", "Flux2AttnProcessor", 2),
        (r"single_transformer_blocks\.\d+\.attn", "Flux2ParallelSelfAttnProcessor", 2),
    ],
    "chroma": [
        (r"transformer_blocks\.\d+\.attn", "FluxAttnProcessor", 2),
        (r"single_transformer_blocks\.\d+\.attn", "FluxAttnProcessor", 2),
    ],
    "deepfloyd-if": [(r".*attentions\.\d+", "AttnAddedKVProcessor", 3)],
    "pixart-alpha": [(r"transformer_blocks\.\d+\.attn2", "AttnProcessor", 2)],
    "pixart-sigma": [(r"transformer_blocks\.\d+\.attn2", "AttnProcessor", 2)],
    "sana": [(r"transformer_blocks\.\d+\.attn2", "SanaAttnProcessor", 2)],
}
ATTENTION_LAYOUT["flux2-klein"] = ATTENTION_LAYOUT["flux2"]
ATTENTION_LAYOUT["z-image"] = [
    (r"context_refiner\.\d+\.attention", "ZSingleStreamAttnProcessor", 1),
    (r"layers\.\d+\.attention", "ZSingleStreamAttnProcessor", 2),
]
ATTENTION_LAYOUT["hidream"] = [
    (r"double_stream_blocks\.\d+\.block\.attn1", "HiDreamAttnProcessor", 2),
    (r"single_stream_blocks\.\d+\.block\.attn1", "HiDreamAttnProcessor", 2),
]


def double_and_single(processor: str) -> list[tuple[str, str, int]]:
    """FLUX.1's layout: two double-stream and two single-stream blocks under ``processor``."""
    return [(r"transformer_blocks\.\d+\.attn", processor, 2), (r"single_transformer_blocks\.\d+\.attn", processor, 2)]


ATTENTION_LAYOUT["hunyuan-image"] = double_and_single("HunyuanImageAttnProcessor")
ATTENTION_LAYOUT["hunyuandit"] = [(r"blocks\.\d+\.attn2", "HunyuanAttnProcessor", 4)]
ATTENTION_LAYOUT["cogview4"] = [(r"transformer_blocks\.\d+\.attn1", "CogView4AttnProcessor", 2)]
ATTENTION_LAYOUT["qwenimage"] = [(r"transformer_blocks\.\d+\.attn", "QwenDoubleStreamAttnProcessor", 2)]
ATTENTION_LAYOUT["ovis-image"] = double_and_single("OvisImageAttnProcessor")
ATTENTION_LAYOUT["longcat-image"] = double_and_single("LongCatImageAttnProcessor")
ATTENTION_LAYOUT["kandinsky5"] = [
    (r"text_transformer_blocks\.\d+\.self_attention", "Kandinsky5AttnProcessor", 2),
    (r"visual_transformer_blocks\.\d+\.cross_attention", "Kandinsky5AttnProcessor", 2),
]
ATTENTION_LAYOUT["qwenimage21"] = [(r"transformer_blocks\.\d+\.attn", "QwenImage21AttnProcessor", 2)]
ATTENTION_LAYOUT["glm-image"] = [(r"transformer_blocks\.\d+\.attn1", "GlmImageAttnProcessor", 2)]
ATTENTION_LAYOUT["ernie-image"] = [(r"layers\.\d+\.self_attention", "ErnieImageSingleStreamAttnProcessor", 2)]
ATTENTION_LAYOUT["nucleusmoe-image"] = [(r"transformer_blocks\.\d+\.attn", "NucleusMoEAttnProcessor2_0", 2)]
ATTENTION_LAYOUT["ideogram4"] = [(r"layers\.\d+\.attention", "Ideogram4AttnProcessor", 2)]
ATTENTION_LAYOUT["krea2"] = [
    (r"text_fusion\.layerwise_blocks\.\d+\.attn", "Krea2AttnProcessor", 1),
    (r"text_fusion\.refiner_blocks\.\d+\.attn", "Krea2AttnProcessor", 1),
    (r"transformer_blocks\.\d+\.attn", "Krea2AttnProcessor", 2),
]
ATTENTION_LAYOUT["auraflow"] = [
    (r"joint_transformer_blocks\.\d+\.attn", "AuraFlowAttnProcessor2_0", 2),
    (r"single_transformer_blocks\.\d+\.attn", "AuraFlowAttnProcessor2_0", 2),
]
ATTENTION_LAYOUT["cogview3plus"] = [(r"transformer_blocks\.\d+\.attn1", "CogVideoXAttnProcessor2_0", 2)]
ATTENTION_LAYOUT["lumina-next"] = [
    (r"layers\.\d+\.attn1", "LuminaAttnProcessor2_0", 2),
    (r"layers\.\d+\.attn2", "LuminaAttnProcessor2_0", 2),
]
ATTENTION_LAYOUT["kandinsky3"] = [(r"(down|up)_blocks\.\d+\.attentions\.[12]\.attention", "AttnProcessor", 6)]
ATTENTION_LAYOUT["bria"] = double_and_single("BriaAttnProcessor")
ATTENTION_LAYOUT["bria-fibo"] = [(r"transformer_blocks\.\d+\.attn", "BriaFiboAttnProcessor", 2), (r"single_transformer_blocks\.\d+\.attn", "BriaAttnProcessor", 2)]
ATTENTION_LAYOUT["prx"] = [(r"blocks\.\d+\.attention", "PRXAttnProcessor2_0", 2)]
ATTENTION_LAYOUT["dreamlite"] = [(r".*attn2", "DreamLiteAttnProcessor2_0", 7)]
ATTENTION_LAYOUT["cosmos2"] = [(r"transformer_blocks\.\d+\.attn2", "CosmosAttnProcessor", 2)]
ATTENTION_LAYOUT["lumina2"] = [
    (r"context_refiner\.\d+\.attn", "Lumina2AttnProcessor", 1),
    (r"noise_refiner\.\d+\.attn", "Lumina2AttnProcessor", 1),
    (r"layers\.\d+\.attn", "Lumina2AttnProcessor", 2),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Models this small gain nothing from intra-op threads, and on a busy 2-core machine the
    # second thread makes a U-Net step 10-100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def pipe(arch: str) -> DiffusionPipeline:
    return tiny_pipeline(arch)


def generate(pipe: DiffusionPipeline, prompt: str = PROMPT, seed: int = 0) -> np.ndarray:
    return images_of(pipe(prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed), **tiny_call_kwargs(pipe)))


def denoiser(pipe: DiffusionPipeline) -> torch.nn.Module:
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def test_unknown_architecture_is_an_error_that_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="sd15.*sana"):
        tiny_pipeline("sd16")
    with pytest.raises(ValueError, match="sd15.*sana"):
        tiny_call_kwargs("sd16")


def test_generates_a_finite_image_of_the_small_size(pipe: DiffusionPipeline) -> None:
    image = generate(pipe)
    channels = 4 if type(pipe).__name__ == "QwenImage21Pipeline" else 3  # Qwen-Image 2.1 decodes RGBA
    assert image.shape == (1, IMAGE_SIZE, IMAGE_SIZE, channels)
    assert np.isfinite(image).all()
    assert image.min() >= 0 and image.max() <= 1


def test_same_seed_gives_the_same_image_and_another_prompt_another(pipe: DiffusionPipeline) -> None:
    first = generate(pipe)
    assert np.array_equal(first, generate(pipe))
    assert not np.array_equal(first, generate(pipe, OTHER_PROMPT))


def test_every_step_runs_a_conditional_and_an_unconditional_branch(pipe: DiffusionPipeline) -> None:
    samples_seen: list[int] = []

    def count(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        latents = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        samples_seen.append(len(latents) if isinstance(latents, list) else latents.shape[0])  # Z-Image: a list of rows

    # Ideogram 4 runs its unconditional branch on a second model, which reads no text.
    models = [denoiser(pipe), *filter(None, [getattr(pipe, "unconditional_transformer", None)])]
    handles = [model.register_forward_pre_hook(count, with_kwargs=True) for model in models]
    try:
        generate(pipe)
    finally:
        for handle in handles:
            handle.remove()
    # Each step (2, 3 for Cosmos) x (cond + uncond): batched for most pipelines, two passes for FLUX's true CFG,
    # Chroma and Ideogram 4; FLUX.2 dev is guidance-distilled, with no unconditional pass, and Qwen-Image 2.1 is sampled without
    # guidance by default (its true CFG: tests/test_engine.py).
    branches = 1 if type(pipe).__name__ in ("Flux2Pipeline", "QwenImage21Pipeline") else 2
    assert sum(samples_seen) == tiny_call_kwargs(pipe)["num_inference_steps"] * branches


def test_build_is_seeded_and_leaves_the_global_rng_alone(arch: str) -> None:
    rng_before = torch.get_rng_state()
    first, again, other = tiny_pipeline(arch), tiny_pipeline(arch), tiny_pipeline(arch, seed=1)
    assert torch.equal(torch.get_rng_state(), rng_before)

    def weights(pipe: DiffusionPipeline) -> dict[str, torch.Tensor]:
        return {
            f"{component}.{key}": value
            for component, module in pipe.components.items()
            if isinstance(module, torch.nn.Module)
            for key, value in module.state_dict().items()
        }

    first_weights, again_weights, other_weights = weights(first), weights(again), weights(other)
    assert first_weights.keys() == again_weights.keys() == other_weights.keys()
    assert all(torch.equal(first_weights[key], again_weights[key]) for key in first_weights)
    assert not all(torch.equal(first_weights[key], other_weights[key]) for key in first_weights)


def test_components_are_in_eval_mode_with_no_progress_bar(pipe: DiffusionPipeline) -> None:
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            assert not any(module.training for module in component.modules()), name
    assert pipe._progress_bar_config.get("disable") is True


def test_attention_layout_is_what_the_engine_patches(arch: str, pipe: DiffusionPipeline) -> None:
    attention = {
        name: module for name, module in denoiser(pipe).named_modules() if hasattr(module, "processor")
    }
    # Kandinsky 5's attention names its head count num_heads.
    assert all((getattr(module, "heads", None) or module.num_heads) >= 2 for module in attention.values())
    for pattern, processor_prefix, minimum in ATTENTION_LAYOUT[arch]:
        matching = [
            name
            for name, module in attention.items()
            if re.fullmatch(pattern, name) and type(module.processor).__name__.startswith(processor_prefix)
        ]
        assert len(matching) >= minimum, (pattern, sorted(attention))
