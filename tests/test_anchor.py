"""The anchor: the text K/V projections' input moments, and the penalty on how far a LoRA moves the anchor prompts' text keys and values."""

from __future__ import annotations

import pytest
import torch

from textloc import seeding
from textloc.engine import denoiser, record, select_layers, text_input_moments
from textloc.engine.input_moments import InputMoments
from textloc.engine.layer_hooks import attends
from textloc.finetune import RenderedSigns, TrainConfig, train_lora
from textloc.finetune.anchor import TextAnchor, anchored_paths
from textloc.finetune.lora import add_lora, lora_disabled
from textloc.testing import tiny_call_kwargs, tiny_pipeline

PROMPTS = ['A red sign that says "OPEN".', 'A sign that says "CAT" on a wall.', "A blue door."]

# One tiny pipeline per way the text reaches a layer: cross-attention (SD 1.5; PixArt-Σ, with a
# padding mask), IF's added K/V, joint and single-stream blocks (SD3, FLUX: the text first in a
# sequence shared with the image), FLUX.2's fused projection (K and V blocks of one output),
# Lumina 2's text refiner and its main layers, which take each row's own text length.
KINDS = ("sd15", "pixart-sigma", "deepfloyd-if", "sd3", "flux", "flux2", "lumina2")


def one_step(pipe) -> dict:
    """One step from one seed: a joint or single layer's text tokens depend on the image too."""
    return {**tiny_call_kwargs(pipe), "num_inference_steps": 1, "generator": seeding.generator(0)}


def layers_of_each_kind(pipe) -> list:
    firsts: dict[str, object] = {}
    for layer in select_layers(pipe, "all"):
        if layer.kind != "pooled":
            firsts.setdefault(layer.kind, layer)
    return list(firsts.values())


def measured_change(pipe, layer, anchored: dict) -> float:
    """What the anchor stands for, measured: for each anchored projection, the squared change of the
    text keys and values the LoRA makes on the prompts' attended tokens over their squared size less
    the bias, recorded with the LoRA off and on in the same one-step generation; their mean."""
    def entries() -> list:  # one prompt a call, as text_input_moments(batch_size=1) reads them
        return [entry for prompt in PROMPTS for entry in record(pipe, [layer], prompt, **one_step(pipe)).entries.values()]

    with lora_disabled(denoiser(pipe)):
        base = entries()
    lora = entries()
    ratios = []
    for path in anchored:
        module = dict(denoiser(pipe).named_modules())[path]
        change = size = 0.0
        for projection, role in ((layer.route.key, "key"), (layer.route.value, "value")):
            if f"{layer.name}.{projection.name}" != path:
                continue
            block = projection.columns(layer.module) or slice(None)
            bias = 0.0 if module.base_layer.bias is None else module.base_layer.bias.detach()[block]
            for off, on in zip(base, lora):
                before, after = getattr(off, role), getattr(on, role)
                keep = torch.ones(before.shape[:2], dtype=torch.bool) if off.mask is None else attends(off.mask).reshape(before.shape[0], -1)
                change += float(((after - before)[keep] ** 2).sum())
                size += float(((before - bias)[keep] ** 2).sum())
        ratios.append(change / size)
    return sum(ratios) / len(ratios)


@pytest.mark.parametrize("arch", KINDS)
def test_the_anchor_is_the_squared_change_the_lora_makes_to_the_prompts_text_keys_and_values(arch):
    pipe = tiny_pipeline(arch)
    for layer in layers_of_each_kind(pipe):
        pipe = tiny_pipeline(arch)
        layer = select_layers(pipe, layer.name)[0]
        paths = list(dict.fromkeys(f"{layer.name}.{p.name}" for p in (layer.route.key, layer.route.value)))
        anchored = anchored_paths([layer], paths)
        moments = text_input_moments(pipe, [layer], PROMPTS, batch_size=1, progress=False, **{**one_step(pipe), "generator": None})  # each from seed 0
        assert set(moments) == set(paths)
        add_lora(pipe, paths, rank=2, alpha=3, seed=0)  # scale 1.5: a dropped LoRA scale shows
        with torch.no_grad():
            for name, parameter in denoiser(pipe).named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
        anchor = float(TextAnchor(pipe, anchored, moments)().detach())
        assert anchor > 0
        assert anchor == pytest.approx(measured_change(pipe, layer, anchored), rel=1e-3), f"{arch}: {layer.name} ({layer.kind})"


def test_only_the_tokens_a_layer_attends_to_count():
    moments = InputMoments()
    text = torch.randn(2, 5, 3)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    moments.add("proj", text, keep)
    moments.add("proj", text[:1], torch.where(keep[:1], 0.0, -10000.0))  # an additive bias, as PixArt's
    kept = torch.cat([text[keep], text[0, :3]])
    torch.testing.assert_close(moments.moments()["proj"], kept.T @ kept / len(kept))


def test_an_anchored_lora_moves_the_anchor_prompts_text_keys_and_values_less(tmp_path):
    settings = dict(steps=4, batch_size=2, lr=5e-2, resolution=32, checkpoint_every=4, progress=False, targets=("to_k", "to_v"))
    changes = {}
    for weight in (None, 1e3):
        pipe = tiny_pipeline("sd15")
        layers = select_layers(pipe, "up_blocks.*")
        anchor = {} if weight is None else {"anchor_weight": weight, "anchor_prompts": PROMPTS}
        train_lora(pipe, "up_blocks.*", RenderedSigns(), output_dir=tmp_path / str(weight), **settings, **anchor)
        paths = [f"{layer.name}.{name}" for layer in layers for name in ("to_k", "to_v")]
        moments = text_input_moments(tiny_pipeline("sd15"), layers, PROMPTS, progress=False)
        changes[weight] = float(TextAnchor(pipe, anchored_paths(layers, paths), moments)().detach())
    assert changes[1e3] < changes[None] / 10, changes


def test_an_anchor_that_holds_nothing_is_refused_before_any_step(tmp_path):
    pipe = tiny_pipeline("sd15")
    bad = {
        "trains none of the layers' text K/V": dict(anchor_weight=1.0, anchor_prompts=PROMPTS, targets=("to_q",)),
        "anchor_weight needs anchor_prompts": dict(anchor_weight=1.0),  # rendered signs offer none
    }
    for message, settings in bad.items():
        with pytest.raises(ValueError, match=message):
            train_lora(pipe, "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "out", steps=1, **settings)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="without anchor_weight do nothing"):
        TrainConfig(anchor_prompts=PROMPTS)
    with pytest.raises(ValueError, match="anchor_weight=0"):
        TrainConfig(anchor_weight=0)
    with pytest.raises(TypeError, match="list of prompts"):
        TrainConfig(anchor_weight=1.0, anchor_prompts=PROMPTS[0])
    with pytest.raises(ValueError, match="no text keys or values"):
        text_input_moments(tiny_pipeline("sdxl"), "pooled", PROMPTS)


@pytest.mark.parametrize("arch", ["lumina2", "qwenimage21"])
def test_prompts_of_different_token_lengths_are_read_in_batches_as_one_by_one(arch):
    """Families that give each row its own text length take no mixed batch: the prompts are batched by length."""
    pipe = tiny_pipeline(arch)
    layers = layers_of_each_kind(pipe)
    settings = {**one_step(pipe), "generator": None}
    batched = text_input_moments(pipe, layers, PROMPTS * 2, batch_size=4, progress=False, **settings)
    alone = text_input_moments(pipe, layers, PROMPTS * 2, batch_size=1, progress=False, **settings)
    assert set(batched) == set(alone)
    for path in alone:
        torch.testing.assert_close(batched[path], alone[path], rtol=1e-4, atol=1e-5)
