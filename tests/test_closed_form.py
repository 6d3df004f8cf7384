"""The closed-form edit of the text K/V projections: what it reaches and moves is what the engine
records, it is the least-squares optimum it claims, it loads as a LoRA, and it refuses what it cannot do."""

from __future__ import annotations

import pytest
import torch

from textloc.architectures.spec import STEP_INDEPENDENT_KINDS
from textloc.engine import conditional_settings, denoiser, paired_text_input_moments, record, select_layers, text_input_moments
from textloc.engine.layer_hooks import attends
from textloc.finetune import closed_form_edit, load_lora
from textloc.finetune.closed_form import ClosedFormEdit
from textloc.finetune.lora import lora_disabled
from textloc.guard import GuardPairs
from textloc.guard.forms import FORMS
from textloc.testing import ARCHITECTURES, tiny_call_kwargs, tiny_pipeline

PAIRS = [('A red sign that says "CAT".', 'A red sign that says "DOG".'), ('A sign that says "SUN" on a wall.', 'A sign that says "MAP" on a wall.')]
PRESERVE = ['A blue sign that says "OPEN".', 'A sign that says "KEY" on a door.', "A green door."]
# One tiny pipeline per way the text reaches a layer whose K/V projections read the prompt alone:
# cross-attention (SD 1.5; PixArt-Σ, with a padding mask), IF's added K/V, Lumina 2's text refiner,
# NucleusMoE-Image's added K/V beside the image's keys, under one mask.
KINDS = ("sd15", "pixart-sigma", "deepfloyd-if", "lumina2", "nucleusmoe-image")


def settings(pipe) -> dict:
    """One conditional step: what the edit itself reads its moments with."""
    return {**conditional_settings(pipe, tiny_call_kwargs(pipe)), "num_inference_steps": 1}


def editable(layer) -> bool:
    """Whether a closed-form edit takes the layer: its text K/V depend on the prompt alone, from projections of the text alone."""
    return layer.kind in STEP_INDEPENDENT_KINDS and layer.kind != "pooled" and layer.route.text_at == "all"


def first_static_layer(pipe):
    return next(layer for layer in select_layers(pipe, "all") if editable(layer))


def recorded(pipe, layer, prompts: list[str]) -> list:
    """The layer's recorded text K/V of each prompt, one call each (as the edit reads them, one row a prompt)."""
    return [next(iter(record(pipe, [layer], prompt, **settings(pipe)).entries.values())) for prompt in prompts]


def measured(pipe, layer) -> dict[str, float]:
    """``reached`` and ``preserved_moved`` from the K/V the engine records with the edit off and on:
    for keys and values each, the share of the change from the sources' to their targets' the edit
    makes, and the squared change of the preserved prompts' over their squared size less the bias; means over the two."""
    sources, targets = [source for source, _ in PAIRS], [target for _, target in PAIRS]
    with lora_disabled(denoiser(pipe)):
        before, wanted, kept = recorded(pipe, layer, sources), recorded(pipe, layer, targets), recorded(pipe, layer, PRESERVE)
    after, moved = recorded(pipe, layer, sources), recorded(pipe, layer, PRESERVE)
    reached, shifted = [], []
    modules = dict(denoiser(pipe).named_modules())
    for projection, role in ((layer.route.key, "key"), (layer.route.value, "value")):
        bias = modules[f"{layer.name}.{projection.name}"].base_layer.bias
        bias = 0.0 if bias is None else bias.detach()
        def squared(pairs, minus=0.0):
            total = 0.0
            for a, b in pairs:
                keep = torch.ones(getattr(a, role).shape[:2], dtype=torch.bool) if a.mask is None else attends(a.mask).reshape(getattr(a, role).shape[0], -1)
                total += float(((getattr(a, role) - getattr(b, role) - minus)[keep] ** 2).sum()) if b is not None else float(((getattr(a, role) - minus)[keep] ** 2).sum())
            return total
        reached.append(1 - squared(zip(after, wanted)) / squared(zip(before, wanted)))
        shifted.append(squared(zip(moved, kept)) / squared([(entry, None) for entry in kept], bias))
    return {"reached": sum(reached) / 2, "preserved_moved": sum(shifted) / 2}


@pytest.mark.parametrize("arch", KINDS)
def test_what_the_edit_reports_is_what_the_engine_records(arch, tmp_path):
    pipe = tiny_pipeline(arch)
    layer = first_static_layer(pipe)
    edit = closed_form_edit(pipe, layer.name, PAIRS, PRESERVE, preserve_weight=0.5, output_dir=tmp_path, generate_kwargs=tiny_call_kwargs(pipe), progress=False)
    assert isinstance(edit, ClosedFormEdit) and edit.layers == [layer.name]
    assert 0 < edit.reached < 1 and edit.preserved_moved > 0
    truth = measured(pipe, select_layers(pipe, layer.name)[0])
    assert edit.reached == pytest.approx(truth["reached"], rel=1e-3, abs=1e-4), arch
    assert edit.preserved_moved == pytest.approx(truth["preserved_moved"], rel=1e-3, abs=1e-7), arch


def test_the_edit_is_the_least_squares_optimum(tmp_path):
    """Scaling the change either way, or dropping the preserved prompts' term, fits the objective worse."""
    pipe = tiny_pipeline("sd15")
    layer = first_static_layer(pipe)
    weight = 2.0
    closed_form_edit(pipe, layer.name, PAIRS, PRESERVE, preserve_weight=weight, output_dir=tmp_path, generate_kwargs=tiny_call_kwargs(pipe), progress=False)
    path = f"{layer.name}.{layer.route.key.name}"
    module = dict(denoiser(pipe).named_modules())[path]
    paired = paired_text_input_moments(pipe, [layer], PAIRS, progress=False, **settings(pipe))[path]
    with lora_disabled(denoiser(pipe)):
        preserved = text_input_moments(pipe, [layer], PRESERVE, progress=False, **settings(pipe))[path]
    base = module.base_layer.weight.detach().double()
    change = (module.lora_B["default"].weight @ module.lora_A["default"].weight).detach().double()

    def objective(new):
        source, cross, target = (m.double() for m in paired)
        miss = (new @ source * new).sum() - 2 * (new @ cross.T * base).sum() + (base @ target * base).sum()
        drift = ((new - base) @ preserved.double() * (new - base)).sum()
        return float(miss + weight * drift)

    best = objective(base + change)
    for scale in (0.9, 1.1):
        assert objective(base + scale * change) > best
    nudge = torch.randn(change.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * change.abs().mean() * 0.1
    assert objective(base + change + nudge) > best


def test_the_saved_edit_loads_as_the_lora_it_was(tmp_path):
    pipe = tiny_pipeline("deepfloyd-if")
    layer = first_static_layer(pipe)
    closed_form_edit(pipe, layer.name, PAIRS, PRESERVE, output_dir=tmp_path, generate_kwargs=tiny_call_kwargs(pipe), progress=False)
    fresh = tiny_pipeline("deepfloyd-if")
    load_lora(fresh, tmp_path)
    edited, loaded = recorded(pipe, layer, PRESERVE[:1])[0], recorded(fresh, select_layers(fresh, layer.name)[0], PRESERVE[:1])[0]
    torch.testing.assert_close(loaded.key, edited.key)
    torch.testing.assert_close(loaded.value, edited.value)
    with lora_disabled(denoiser(fresh)):
        plain = recorded(fresh, select_layers(fresh, layer.name)[0], PRESERVE[:1])[0]
    assert not torch.allclose(plain.key, edited.key)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_family_is_edited_or_refused_in_one_line(arch, tmp_path):
    pipe = tiny_pipeline(arch)
    static = [layer for layer in select_layers(pipe, "all") if editable(layer)]
    if static:
        edit = closed_form_edit(pipe, static[0].name, PAIRS[:1], PRESERVE[:1], output_dir=tmp_path, generate_kwargs=tiny_call_kwargs(pipe), progress=False)
        assert edit.weights.is_file() and edit.reached > 0
    else:
        layer = next(layer for layer in select_layers(pipe, "all") if layer.kind != "pooled")
        reason = "its K/V projections read the image tokens too" if layer.kind in STEP_INDEPENDENT_KINDS else "its text tokens change with the image"
        with pytest.raises(ValueError, match=f"is a {layer.kind} layer: {reason}"):
            closed_form_edit(pipe, layer.name, PAIRS[:1], PRESERVE[:1], output_dir=tmp_path / "edit", generate_kwargs=tiny_call_kwargs(pipe), progress=False)
        assert not (tmp_path / "edit").exists()


def test_bad_input_is_refused_before_any_text_is_read(tmp_path):
    pipe = tiny_pipeline("sd15")
    bad = {
        "does not line up token by token": dict(pairs=[('A sign that says "CAT".', 'A sign that says "CATERPILLAR".')]),
        "pairs is a non-empty list": dict(pairs=PAIRS[0]),
        "preserve is a non-empty list": dict(preserve="A door."),
        "preserve_weight=0": dict(preserve_weight=0),
    }
    for message, given in bad.items():
        arguments = {"pairs": PAIRS, "preserve": PRESERVE, **given}
        with pytest.raises(ValueError, match=message):
            closed_form_edit(pipe, "up_blocks.*", arguments.pop("pairs"), arguments.pop("preserve"), output_dir=tmp_path / "edit", progress=False, **arguments)
    assert not (tmp_path / "edit").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="is not empty"):
        closed_form_edit(pipe, "up_blocks.*", PAIRS, PRESERVE, output_dir=tmp_path / "full", progress=False)


def test_guard_edit_pairs_line_up_letter_by_letter():
    pairs = GuardPairs(seed=0)
    edits = pairs.edit_pairs(64)
    assert len(edits) == 64 and len(set(edits)) > 32
    written = set(pairs.replacements.values())
    for source, target in edits:
        assert len(source.encode()) == len(target.encode()), (source, target)
        assert source != target
        assert any(word in target.upper().replace(" ", "").replace('"', "") for word in written), target
        assert not any(letter in source for letter in "АВСЕНІКМОРТХ")  # no look-alike letters: no target lines up
    assert any(FORMS["leet"](word) in source for source, _ in edits for word in pairs.toxic_words)  # leet asked, plain letters written
    with pytest.raises(ValueError, match="no toxic captions"):
        GuardPairs(seed=0, toxic_fraction=0).edit_pairs(4)


def test_an_edit_cut_off_while_saving_leaves_no_folder(tmp_path, monkeypatch):
    import textloc.finetune.closed_form as closed_form

    def cut_off(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(closed_form, "write_json_atomic", cut_off)
    with pytest.raises(KeyboardInterrupt):
        closed_form_edit(tiny_pipeline("sd15"), "up_blocks.*", PAIRS, PRESERVE, output_dir=tmp_path / "edit", progress=False)
    assert not (tmp_path / "edit").exists()
