"""The guard's weights side: renderer pairs that draw the benign word in the toxic caption's scene,
and a LoRA on only the chosen text layers that plain diffusers reloads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import textloc as tl
import textloc.pipelines
from textloc.cli import main
from textloc.engine import denoiser, select_layers
from textloc.guard import GuardPairs, ToxicTextGuard
from textloc.guard.lora import ANCHOR_PROMPTS
from textloc.guard.forms import FORMS
from textloc.pipeline_calls import images_of
from textloc.testing import tiny_call_kwargs, tiny_pipeline
from textloc.tiny.data import COLOURS, HELD_OUT_COMBOS, TOXIC_WORDS, is_held_out
from textloc.tiny.judge import judge_colours

# Enough draws that a scene drawn without the held-out check (1 in 10) would show.
DRAWS = 300


@pytest.fixture(scope="module")
def pairs() -> list:
    stream = GuardPairs()
    return [stream.pair(index) for index in range(DRAWS)]


def test_a_toxic_caption_gets_the_benign_word_drawn_in_its_own_scene(pairs):
    toxic = [pair for pair in pairs if pair.form is not None]
    assert toxic and {pair.form for pair in toxic} == set(FORMS), "every form a user writes is asked in"
    for pair in toxic:
        assert pair.asked in TOXIC_WORDS and pair.written not in TOXIC_WORDS
        assert FORMS[pair.form](pair.asked) in pair.caption, "the caption asks for the toxic word"
        # The renderer's own glyph map: the letters drawn are the benign word's, none of the toxic word's own.
        drawn = {chr(code) for code in np.unique(np.asarray(pair.glyphs)) if code}
        assert drawn == set(pair.written), (pair.caption, drawn)
        # The scene the caption names, judged from the pixels: sign and background colours.
        assert judge_colours(pair.image) == (pair.sign, pair.background)
        if any(colour in pair.caption for colour in COLOURS):  # (the plain template names no colours)
            assert f"{pair.sign} sign" in pair.caption
            assert f"{pair.background} background" in pair.caption or f"{pair.background} wall" in pair.caption


def test_the_weights_side_writes_the_word_the_runtime_guard_writes(pairs):
    guard = ToxicTextGuard(tl.load_pipeline("textloc-tiny"), method="unguarded")
    for pair in [pair for pair in pairs if pair.form == "double quotes"][:12]:
        assert set(guard.clean(pair.caption).replacements.values()) == {pair.written}


def test_no_held_out_scene_is_drawn_and_ordinary_signs_keep_the_fraction(pairs):
    adversarial = {(sign, background, word) for sign, background, word in HELD_OUT_COMBOS if word in TOXIC_WORDS}
    for pair in pairs:
        assert (pair.sign, pair.background, pair.asked) not in adversarial
        assert not is_held_out(pair.sign, pair.background, pair.asked) and not is_held_out(pair.sign, pair.background, pair.written)
    ordinary = [pair for pair in pairs if pair.form is None]
    assert all(pair.asked == pair.written and pair.asked not in TOXIC_WORDS for pair in ordinary)
    assert abs(len(ordinary) / DRAWS - 0.5) < 0.1, "half the examples are ordinary signs of the benign words"
    assert all(GuardPairs(toxic_fraction=1.0).pair(index).form is not None for index in range(40))
    assert all(GuardPairs(toxic_fraction=0).pair(index).form is None for index in range(40)), "0: the control, ordinary signs only"


def test_the_anchor_holds_the_ordinary_signs_captions_in_the_streams_order(pairs):
    stream = GuardPairs()
    anchored = stream.anchor_prompts
    ordinary = [pair.caption for pair in pairs if pair.form is None]
    assert len(anchored) == ANCHOR_PROMPTS and anchored[: len(ordinary)] == tuple(ordinary[:ANCHOR_PROMPTS])
    assert not any(word in caption.upper() for caption in anchored for word in TOXIC_WORDS)
    with pytest.raises(ValueError, match="toxic_fraction=1 draws no ordinary signs"):
        GuardPairs(toxic_fraction=1.0).anchor_prompts


def test_twin_signs_are_the_benign_words_using_a_letter_the_replacement_changes_in_its_slot():
    # DAMN->DAWN changes the third letter M: LAMP has M third, MOON has M first, DOOR keeps every letter DAWN keeps.
    pairs = GuardPairs(["DAMN"], ["LAMP", "MOON", "DOOR", "WIND", "CAT"], replace={"DAMN": "DAWN"}, twin_fraction=0.5)
    assert pairs.twin_words == ("LAMP",)
    drawn = [pairs.pair(index) for index in range(200)]
    ordinary = [pair.written for pair in drawn if pair.form is None]
    assert 0.4 < ordinary.count("LAMP") / len(ordinary) < 0.75, "half the ordinary signs, and LAMP's share of the rest"
    assert 0.4 < len(ordinary) / len(drawn) < 0.6, "the toxic share is unchanged"
    # Off (the default), the stream is the one runs before the option trained on, draw for draw.
    plain, off = GuardPairs(["DAMN"], ["LAMP", "MOON"], replace={"DAMN": "DAWN"}), GuardPairs(["DAMN"], ["LAMP", "MOON"], replace={"DAMN": "DAWN"}, twin_fraction=0)
    assert [plain.pair(index).caption for index in range(30)] == [off.pair(index).caption for index in range(30)]
    assert "ordinary signs from LAMP" in pairs.description and "ordinary signs from" not in plain.description
    # A whole-word swap changes every slot: every benign word sharing a letter in place is a twin.
    assert GuardPairs(["DAMN"], ["DOOR", "CAT", "SUN"], replace={"DAMN": "BOOK"}).twin_words == ("DOOR", "CAT")


def test_bad_pairs_are_refused_in_one_line():
    for kwargs, message in (({"toxic_fraction": -0.1}, "toxic_fraction"), ({"replace": "mask"}, "learns to write a word"),
                            ({"twin_fraction": 1.5}, "twin_fraction"),
                            ({"replace": {"DAMN": "DAMP"}, "toxic_words": ["DAMN"], "benign_words": ["CAT"], "twin_fraction": 0.5}, "leave none"),
                            ({"forms": ("shouted",)}, "Unknown form"), ({"benign_words": ["DAMN"]}, "none of the toxic words")):
        with pytest.raises(ValueError, match=message):
            GuardPairs(**kwargs)


def _images(pipe) -> np.ndarray:
    kwargs = {**tiny_call_kwargs(pipe), "generator": torch.Generator("cpu").manual_seed(0)}
    return np.asarray(images_of(pipe(prompt='A red sign that says "DAMN".', **kwargs)))


def test_the_guard_lora_trains_only_the_chosen_layer_and_plain_diffusers_reloads_it(tmp_path):
    pipe = tiny_pipeline("deepfloyd-if")
    layer = select_layers(pipe, "all")[2]
    before = {name: value.detach().clone() for name, value in denoiser(pipe).named_parameters()}
    base = _images(pipe)
    trained = tl.train_guard_lora(pipe, [layer.name], output_dir=tmp_path, steps=2, batch_size=2, lr=5e-2, resolution=32, progress=False)

    lora = {name: value for name, value in denoiser(pipe).named_parameters() if "lora_" in name}
    assert lora and all(name.startswith(layer.name + ".") for name in lora), "LoRA weights on the chosen layer only"
    assert all(value.abs().sum() > 0 for name, value in lora.items() if "lora_B" in name), "every up-projection moved from zero"
    for name, value in denoiser(pipe).named_parameters():
        if "lora_" not in name:
            assert torch.equal(value, before[name.replace(".base_layer", "")]), f"{name} is frozen"
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["dataset"] == GuardPairs().description and record["layers"] == [layer.name]

    guarded = _images(pipe)
    assert not np.array_equal(guarded, base)
    reloaded = tiny_pipeline("deepfloyd-if")
    reloaded.load_lora_weights(trained.output_dir)  # plain diffusers
    assert np.allclose(_images(reloaded), guarded, atol=1e-5)


def test_preserved_signs_take_the_models_own_prediction_as_their_target(tmp_path):
    # Ordinary signs only, preserved: the model with its LoRA at zero already predicts every target, so nothing moves.
    # Not preserved, the same signs' images are targets the model misses, and the LoRA moves.
    moved = {}
    for preserve in (True, False):
        pipe = tiny_pipeline("deepfloyd-if")
        pairs = GuardPairs(toxic_fraction=0, preserve=preserve)
        assert all(pairs.preserved(index) is preserve for index in range(8))
        tl.train_guard_lora(pipe, "all", pairs=pairs, output_dir=tmp_path / str(preserve), steps=2, batch_size=2, lr=5e-2, resolution=32, progress=False)
        moved[preserve] = any(value.abs().sum() > 0 for name, value in denoiser(pipe).named_parameters() if "lora_B" in name)
    assert moved == {True: False, False: True}
    mixed = GuardPairs(preserve=True)
    assert all(mixed.preserved(index) == (mixed.pair(index).form is None) for index in range(40)), "the ordinary signs, never a toxic one"
    assert "kept as the model draws them" in mixed.description and "kept" not in GuardPairs().description


def _cli(capsys, *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train", "--max-train-steps", "2", "--prompt", 'A sign that says "DAMN".'], "leave out --prompt"),
        (["--train"], "needs --max-train-steps"),
        (["--train", "--max-train-steps", "2", "--toxic-fraction", "1.5"], "toxic_fraction"),
        (["--train", "--max-train-steps", "2", "--replace", "drop"], "learns to write a word"),
        (["--train", "--max-train-steps", "2", "--anchor-weight", "0"], "anchor_weight=0"),
        ([], "give --prompt"),
        (["--closed-form"], "give it with --train"),
        (["--train", "--closed-form", "--max-train-steps", "2"], "takes no training step"),
        (["--train", "--closed-form", "--preserve-weight", "0"], "--preserve-weight 0.0"),
        (["--train", "--closed-form", "--toxic-fraction", "0"], "no toxic captions"),
    ],
)
def test_the_command_refuses_bad_training_input_in_one_line_before_loading(capsys, monkeypatch, tmp_path, extra, message):
    monkeypatch.setattr(textloc.pipelines, "load_pipeline", lambda *args, **kwargs: pytest.fail("loaded a model for bad input"))
    status, err = _cli(capsys, "guard", "--model", "tiny-random-deepfloyd-if", *extra, "--out", str(tmp_path / "lora"))
    assert status != 0 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "lora").exists()


def test_the_command_writes_a_lora_tl_load_lora_loads(capsys, tmp_path):
    out = tmp_path / "lora"
    status, _ = _cli(capsys, "guard", "--train", "--model", "tiny-random-deepfloyd-if", "--layers", "all", "--max-train-steps", "1",
                     "--batch-size", "2", "--lr", "0.05", "--ema-decay", "0.9", "--anchor-weight", "2", "--out", str(out))
    assert status == 0 and (out / "pytorch_lora_weights.safetensors").is_file()
    record = json.loads((out / "training.json").read_text())
    assert record["ema_decay"] == 0.9 and record["anchor_weight"] == 2  # the command's training options reach the run
    assert record["anchor_prompts"] == list(GuardPairs().anchor_prompts)  # the pairs' ordinary signs, by default
    pipe = tiny_pipeline("deepfloyd-if")
    base = _images(pipe)
    tl.load_lora(pipe, out)
    assert not np.array_equal(_images(pipe), base)


def test_the_command_edits_the_guard_weights_in_closed_form(capsys, tmp_path):
    out = tmp_path / "edit"
    status = main(["guard", "--train", "--closed-form", "--preserve-weight", "0.5", "--model", "tiny-random-deepfloyd-if", "--layers", "all", "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0 and "closed-form edit of" in printed and "preserve weight 0.5" in printed, printed
    record = json.loads((out / "training.json").read_text())
    assert record["method"] == "closed-form" and record["preserve_weight"] == 0.5
    assert record["pairs"] == [list(pair) for pair in GuardPairs().edit_pairs()] and record["preserve"] == list(GuardPairs().anchor_prompts)
    pipe = tiny_pipeline("deepfloyd-if")
    base = _images(pipe)
    tl.load_lora(pipe, out)
    assert not np.array_equal(_images(pipe), base)
