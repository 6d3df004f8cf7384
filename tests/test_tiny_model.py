"""textloc-tiny: the renderer, the trainer end to end, and the shipped model against its bar."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, IFPipeline

from textloc.models import EMBEDDED_MODELS, EmbeddedModel
from textloc.pipelines import load_pipeline
from textloc.tiny.data import (
    COLOURS,
    HELD_OUT_COMBOS,
    TOXIC_WORDS,
    VOCABULARY,
    is_held_out,
    make_example,
    render_sign,
    training_batch,
)
import textloc.tiny.evaluate as tiny_evaluate
from textloc.tiny.evaluate import evaluate, heldout_examples, ocr_ceiling, score
from textloc.tiny.model import (
    TEST_CONFIG,
    TinyConfig,
    build_pipeline,
    build_training_scheduler,
    encode_captions,
)
from textloc.tiny.architectures import HIGH_NOISE_FROM, PixelIF, training_timesteps
from textloc.tiny.recipe import (
    BYTE_PROBE_WEIGHT,
    EMA_DECAY,
    GLYPH_PROBE_WEIGHT,
    HIGH_NOISE_SHARE,
    SHORT_EMA_DECAY,
    TEXT_WEIGHT,
    Probes,
    Recipe,
    glyph_features,
    glyph_labels,
    training_loss,
)
from textloc.tiny.train import STATE_NAME, parse_args, train

# The quality bar, on held-out captions and unseen seeds.
WORD_BAR = 0.75
COLOUR_BAR = 0.80


def test_renderer_is_deterministic() -> None:
    first, again, other = make_example(3, 7), make_example(3, 7), make_example(4, 7)
    assert first.image.tobytes() == again.image.tobytes()
    assert first.caption == again.caption
    assert (other.image.tobytes(), other.caption) != (first.image.tobytes(), first.caption)
    assert first.image.size == (64, 64)
    assert first.ink.tobytes() == again.ink.tobytes()
    assert first.glyphs.tobytes() == again.glyphs.tobytes()


def test_ink_marks_the_letters_and_nothing_else() -> None:
    batch = training_batch(0, 0, 8)
    images, ink = batch.images, batch.ink
    assert ink.shape == (8, 1, 64, 64) and len(batch.captions) == 8
    assert 0.0 <= ink.min() and ink.max() <= 1.0
    # Letters sit on the sign: the outer ring (always background) has no ink, and the letters
    # cover a few percent of the image.
    assert ink[..., :2, :].sum() == ink[..., -2:, :].sum() == 0
    assert 0.02 < ink.mean() < 0.2
    # Where the ink is full, the pixel is the letters' colour: near black or near white.
    full = (ink[:, 0] > 0.99).unsqueeze(1).expand_as(images)
    assert (images[full].abs() > 0.85).float().mean() > 0.95


@pytest.mark.parametrize("layout", ["slots", "centred"])
def test_glyph_map_names_each_letter_where_it_is_drawn(layout: str) -> None:
    _, ink, glyphs = render_sign("HOTEL", "red", "blue", "rounded", (1, -2), layout)
    ink, glyphs = np.asarray(ink), np.asarray(glyphs)
    # The ink's pixels (centred: up to the half-pixel rounding of the centring), and read left
    # to right, the word's letters in order.
    assert ((glyphs > 0) != (ink > 0)).sum() <= (0 if layout == "slots" else 0.02 * (ink > 0).sum())
    columns = [chr(code) for code in glyphs.max(axis=0) if code]
    assert "".join(dict.fromkeys(columns)) == "HOTEL"
    # Cells of the U-Net's 16x16 grid get the letter that covers them; cells off the word none.
    labels = glyph_labels(torch.from_numpy(glyphs.astype(np.int64))[None], 16)[0]
    assert set(labels.unique().tolist()) == {-100} | {ord(c) - ord("A") for c in "HOTEL"}
    assert (labels[:4] == -100).all() and (labels[-4:] == -100).all()


def test_slot_layout_puts_every_words_letters_in_the_same_places() -> None:
    def columns(word: str, layout: str) -> np.ndarray:
        ink = np.asarray(render_sign(word, "red", "blue", "pill", (0, 0), layout)[1])
        return np.flatnonzero(ink.max(axis=0) > 0)

    # Slots: every word starts at the same column and each letter adds the same width, so words
    # of one length span the same columns (up to a glyph's side bearing, 1 px).
    words = ("CAT", "COLD", "WIND", "IIII", "HOTEL", "QUIET")
    slots = {word: columns(word, "slots") for word in words}
    assert max(c[0] for c in slots.values()) - min(c[0] for c in slots.values()) <= 1
    for length in (4, 5):
        ends = [slots[w][-1] for w in words if len(w) == length]
        assert max(ends) - min(ends) <= 1
    assert slots["CAT"][-1] < slots["COLD"][-1] < slots["HOTEL"][-1] < 58
    # Centred and fitted: where a word's letters go depends on its letters.
    assert columns("IIII", "centred")[0] - columns("WIND", "centred")[0] > 5
    with pytest.raises(ValueError, match="slots"):
        render_sign("CAT", "red", "blue", "pill", (0, 0), "slot")


def test_vocabulary_and_held_out_split() -> None:
    assert len(VOCABULARY) >= 32 and len(set(VOCABULARY)) == len(VOCABULARY)
    assert all(3 <= len(word) <= 5 and word.isalpha() for word in VOCABULARY)
    assert len(COLOURS) >= 6
    training = [make_example(0, i) for i in range(400)]
    assert not any(is_held_out(e.sign, e.background, e.word) for e in training)
    assert all(e.word in e.caption for e in training)
    held_out = [make_example(1, i, held_out=True) for i in range(50)]
    assert all((e.sign, e.background, e.word) in HELD_OUT_COMBOS for e in held_out)
    assert all(e.sign in e.caption and e.background in e.caption for e in held_out)


def test_toxic_words_are_flagged_by_the_default_detector() -> None:
    profanity = pytest.importorskip("better_profanity").profanity
    profanity.load_censor_words()
    assert all(profanity.contains_profanity(word.lower()) for word in TOXIC_WORDS)


def test_ocr_and_colour_judge_read_the_renderers_own_images() -> None:
    pytest.importorskip("rapidocr")
    ceiling = ocr_ceiling(count=12)
    assert ceiling["word_acc"] >= 0.95
    assert ceiling["sign_acc"] == ceiling["background_acc"] == 1.0
    assert ceiling["edit_distance"] <= 0.05
    examples = heldout_examples(4)
    shuffled = score([e.image for e in examples], examples[1:] + examples[:1])  # each sign under another's caption
    assert shuffled["word_acc"] == 0.0 and shuffled["edit_distance"] > 0.3


class _FixedReads:
    """An OCR that reads the given texts, one per image."""

    def __init__(self, reads: list[str]) -> None:
        self.reads = reads

    def read(self, images: list) -> list[str]:
        return self.reads[: len(images)]


def test_tiny_word_accuracy_and_localize_count_a_read_word_by_one_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from textloc.scoring.prompts import PromptPair
    from textloc.localization.scoring import score_images

    # textloc-tiny's captions quote upper-case words; the IF pipeline lower-cases the prompt, and
    # the OCR reads what it reads: a read counts when its words hold the word, case aside.
    reads = ["LAMP", "lamp", "'Lamp!'", "THE LAMP", "LA MP", "LAMPS", "LAM", ""]
    counted = [True, True, True, True, False, False, False, False]
    example = replace(heldout_examples(1)[0], word="LAMP")
    monkeypatch.setattr(tiny_evaluate, "get_ocr", lambda name: _FixedReads(reads))
    verdicts = tiny_evaluate.judge([example.image] * len(reads), [example] * len(reads))
    assert [verdict["word_ok"] for verdict in verdicts] == counted
    assert verdicts[1]["edit_distance"] == 0.0 and verdicts[6]["edit_distance"] == 0.25

    pair = PromptPair.from_template('A sign that says "{}".', "DOOR", "LAMP")
    image = np.asarray(example.image)
    rows = score_images([image] * len(reads), pair, image, image, _FixedReads(reads))
    assert [row.target_hit == 1.0 for row in rows] == counted


def test_evaluation_gives_each_caption_its_own_seed() -> None:
    from textloc.testing import tiny_call_kwargs, tiny_pipeline

    pipe = tiny_pipeline("deepfloyd-if")  # IFPipeline, as textloc-tiny
    fast = tiny_call_kwargs(pipe)
    both = tiny_evaluate.generate(pipe, ["a red sign", "a blue sign"], seed=5, **fast)
    second = tiny_evaluate.generate(pipe, ["a blue sign"], seed=6, **fast)
    np.testing.assert_allclose(both[1], second[0], atol=1e-5)
    assert not np.allclose(both[0], tiny_evaluate.generate(pipe, ["a red sign"], seed=6, **fast)[0], atol=1e-3)


def test_training_encoding_matches_the_pipelines() -> None:
    pipe = build_pipeline(TEST_CONFIG)
    pipe.text_encoder.eval()
    caption = '  A Red sign on a blue background that says "LAMP".'
    with torch.no_grad():
        positive, negative = pipe.encode_prompt(caption, do_classifier_free_guidance=True, clean_caption=False)
        ours = encode_captions(pipe, [caption, ""])
    torch.testing.assert_close(ours[:1], positive, rtol=0, atol=0)
    torch.testing.assert_close(ours[1:], negative, rtol=0, atol=0)


def test_training_timesteps_favour_the_steps_where_only_the_caption_decides() -> None:
    # Half the batch redrawn from the top tenth: 0.5 + 0.5 * 0.1 of the draws land there.
    high = training_timesteps(4000, 1000, torch.Generator().manual_seed(0), HIGH_NOISE_SHARE)
    assert 0.52 < (high >= HIGH_NOISE_FROM).float().mean() < 0.58
    assert high.min() >= 0 and high.max() < 1000
    uniform = training_timesteps(4000, 1000, torch.Generator().manual_seed(0), high_noise_share=0.0)
    assert 0.08 < (uniform >= HIGH_NOISE_FROM).float().mean() < 0.12


def test_recipe_changes_apply_from_their_steps() -> None:
    since = {"high_noise": 10, "text_weight": 20, "byte_probe": 20, "slot_layout": 30, "glyph_probe": 40, "short_ema": 50}
    assert Recipe.at(9, since) == Recipe(0.0, 1.0, 0.0, "centred")
    assert Recipe.at(10, since) == Recipe(HIGH_NOISE_SHARE, 1.0, 0.0, "centred")
    assert Recipe.at(25, since) == Recipe(HIGH_NOISE_SHARE, TEXT_WEIGHT, BYTE_PROBE_WEIGHT, "centred")
    assert Recipe.at(30, since).layout == "slots" and Recipe.at(39, since).glyph_probe_weight == 0.0
    assert Recipe.at(40, since).glyph_probe_weight == GLYPH_PROBE_WEIGHT
    assert (Recipe.at(49, since).ema_decay, Recipe.at(50, since).ema_decay) == (EMA_DECAY, SHORT_EMA_DECAY)
    assert parse_args(["--recipe-since", "high_noise=2100", "byte_probe=4500"]).recipe_since == {
        "high_noise": 2100, "byte_probe": 4500}
    with pytest.raises(SystemExit):
        parse_args(["--recipe-since", "high_noise:2100"])


def test_training_loss_weights_the_letters_pixels_and_probes_bytes_and_glyphs() -> None:
    pipe = build_pipeline(TEST_CONFIG)
    scheduler = build_training_scheduler()
    batch = training_batch(0, 0, 4)
    ink = batch.ink

    def loss(ink: torch.Tensor, text_weight: float, probes: Probes | None = None) -> dict[str, float]:
        recipe = Recipe(0.5, text_weight, 0.1, "slots", 0.2)
        with torch.no_grad():
            losses = training_loss(pipe, scheduler, replace(batch, ink=ink), torch.Generator().manual_seed(0), recipe, probes)
        return {name: value.item() for name, value in losses.items()}

    # Weight 1, or no letters, or letters everywhere, is the plain MSE whatever the weight.
    plain = loss(ink, 1.0)["denoising"]
    assert loss(torch.zeros_like(ink), 5.0)["denoising"] == pytest.approx(plain, rel=1e-6)
    assert loss(torch.ones_like(ink), 5.0)["denoising"] == pytest.approx(plain, rel=1e-6)
    # Weighting one half pulls the loss towards that half's own error, so weighting the left
    # half and weighting the right half land on either side of the plain MSE.
    left, right = torch.zeros_like(ink), torch.zeros_like(ink)
    left[..., :31], right[..., 33:] = 1.0, 1.0
    halves = loss(left, 5.0)["denoising"], loss(right, 5.0)["denoising"]
    assert min(halves) < plain < max(halves)
    # The probes' cross-entropies: ~log(classes) untrained, added to the total with their weights.
    probed = loss(ink, 1.0, Probes(pipe))
    assert 4.0 < probed["byte_probe"] < 8.0 and 2.0 < probed["glyph_probe"] < 5.0
    assert probed["total"] == pytest.approx(
        probed["denoising"] + 0.1 * probed["byte_probe"] + 0.2 * probed["glyph_probe"], rel=1e-6)
    assert loss(ink, 1.0)["total"] == plain


def test_glyph_probe_reads_the_16x16_features_after_the_last_cross_attention_there() -> None:
    pipe = build_pipeline(TEST_CONFIG)
    seen = []
    glyph_features(pipe.unet).register_forward_hook(lambda module, args, output: seen.append(output[0].shape))
    pipe.unet(torch.zeros(1, 3, 64, 64), torch.tensor([999]), encoder_hidden_states=torch.zeros(1, 77, TEST_CONFIG.text_width))
    assert seen == [(1, Probes(pipe).glyph.in_channels, 16, 16)]
    assert isinstance(glyph_features(pipe.unet).transformer_blocks[-1].attn2, torch.nn.Module)


def test_trainer_runs_exports_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rapidocr")
    # What is checked here is the run's bookkeeping (evaluations logged, exports, resumes), not how
    # well an untrained model samples: its evaluations sample in 2 steps, not the shipped 25.
    monkeypatch.setattr(PixelIF, "sampler_settings", {**PixelIF.sampler_settings, "num_inference_steps": 2})
    run_dir, export_dir = tmp_path / "run", tmp_path / "weights"
    common = ["--config", "test", "--batch-size", "2", "--eval-count", "2", "--threads", "1",
              "--run-dir", str(run_dir), "--export-dir", str(export_dir)]
    state = train(parse_args([*common, "--steps", "3", "--eval-every", "3"]))
    assert state["step"] == 3 and (run_dir / "last.pt").exists() and state["recipe_since"] == {
        "high_noise": 0, "text_weight": 0, "byte_probe": 0, "slot_layout": 0, "glyph_probe": 0, "short_ema": 0}
    assert [e["step"] for e in state["evals"]] == [3]
    assert {"word_acc", "sign_acc", "background_acc", "colour_gap", "word_gap"} <= set(state["evals"][0])

    pipe = DiffusionPipeline.from_pretrained(export_dir)
    assert isinstance(pipe, IFPipeline) and pipe.unet.dtype == torch.float32
    image = pipe(prompt='A sign that says "CAT".', num_inference_steps=2, clean_caption=False).images[0]
    assert image.size == (64, 64)

    (export_dir / "README.md").write_text("model card")
    resumed = train(parse_args([*common, "--steps", "5", "--eval-every", "5", "--resume"]))
    assert resumed["step"] == 5 and [e["step"] for e in resumed["evals"]] == [3, 5]
    assert (export_dir / "README.md").read_text() == "model card"

    (run_dir / "last.pt").unlink()
    from_export = train(parse_args([*common, "--steps", "6", "--eval-every", "6", "--resume"]))
    assert from_export["step"] == 6
    assert TinyConfig.from_dict(json.loads((export_dir / STATE_NAME).read_text())["config"]) == TEST_CONFIG

    with pytest.raises(SystemExit, match="--resume"):  # a fresh run never overwrites a checkpoint
        train(parse_args([*common, "--steps", "7"]))
    # ...nor the weights in its export folder, unless it does better than they did.
    shipped = json.loads((export_dir / STATE_NAME).read_text())
    (export_dir / STATE_NAME).write_text(json.dumps({**shipped, "best_quality": 3.0}))
    other = ["--run-dir", str(tmp_path / "other"), "--steps", "2", "--eval-every", "2", "--lr", "1e-3"]
    fresh = train(parse_args([*common, *other]))  # the later --run-dir wins
    assert fresh["step"] == 2 and fresh["lr"] == 1e-3 and fresh["batch_size"] == 2
    assert json.loads((export_dir / STATE_NAME).read_text())["exported_step"] == shipped["exported_step"]


def test_trainer_takes_a_device_and_refuses_one_torch_cannot_use(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--device", "cpu"]).device == torch.device("cpu")
    with pytest.raises(SystemExit):
        parse_args(["--device", "gpu0"])
    assert "not a device torch knows (e.g. cpu, cuda" in capsys.readouterr().err


@pytest.mark.parametrize("model", EMBEDDED_MODELS, ids=lambda model: model.name)
def test_shipped_weights_fit_the_size_limit(model: EmbeddedModel) -> None:
    size = sum(f.stat().st_size for f in model.folder.rglob("*") if f.is_file())
    assert (model.folder / "model_index.json").exists() and size <= 25 * 2**20


def test_shipped_model_is_a_small_stock_pipeline() -> None:
    pipe = load_pipeline("textloc-tiny")
    assert isinstance(pipe, IFPipeline) and pipe.unet.dtype == torch.float32
    text_layers = [name for name, _ in pipe.unet.named_modules() if name.endswith("attn2")]
    assert len(text_layers) >= 8


def test_load_pipeline_casts_with_the_installed_diffusers_dtype_keyword() -> None:
    with warnings.catch_warnings():  # diffusers >= 0.40 warns when given the old `torch_dtype`
        warnings.simplefilter("error", FutureWarning)
        pipe = load_pipeline("textloc-tiny", dtype=torch.bfloat16)
    assert pipe.unet.dtype == pipe.text_encoder.dtype == torch.bfloat16


@pytest.mark.parametrize("name", [model.name for model in EMBEDDED_MODELS])
def test_shipped_models_write_the_captions_word_in_its_colours(name: str) -> None:
    pytest.importorskip("rapidocr")
    pipe = load_pipeline(name)
    # Held-out (sign, background, word) combinations with seeds no evaluation during training used.
    scores, _ = evaluate(pipe, count=12, seed=2_024_007)
    assert scores["word_acc"] >= WORD_BAR
    assert scores["sign_acc"] >= COLOUR_BAR and scores["background_acc"] >= COLOUR_BAR
