"""The toxic-text guard: clean prompts untouched, toxic rows patched and only those, words found and replaced."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ONE_IMAGE_UNDER_CFG, ONE_TEXT_LENGTH, PROMPT, _pipeline, generate, seeded, skip_one_prompt

import textloc as tl
from textloc.guard import BENIGN_WORDS, Benign, Drop, Mask, ToxicTextGuard, get_detector
from textloc.guard import runtime as guard_module
from textloc.models import TEXTLOC_TINY, named_model
from textloc.pipeline_calls import images_of
from textloc.testing import tiny_call_kwargs
from textloc.tiny.data import TOXIC_WORDS, VOCABULARY

TOXIC = 'A sign that says "DAMN".'
SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "tiny" / "localize"
HAS_ALT = importlib.util.find_spec("profanity_check") is not None
HAS_OCR = importlib.util.find_spec("rapidocr") is not None
DETECTORS = ["better-profanity", pytest.param("alt-profanity-check", marks=pytest.mark.skipif(not HAS_ALT, reason="alt-profanity-check not installed"))]


def images(output) -> np.ndarray:
    return np.asarray(output.images)


def generators(*seeds: int) -> list[torch.Generator]:
    return [tl.generator(seed) for seed in seeds]


def reference(pipe, prompt: str, cleaned: str, seed: int, layers, start_step, **kwargs) -> np.ndarray:
    """``prompt`` patched from ``cleaned`` by the engine itself: a live source row with the same noise."""
    names = tuple(layer.name for layer in layers)
    plan = [tl.RowPatch(names, source=1, row=0, patch_steps=(start_step, None))]
    return np.asarray(images_of(tl.run_with_patches(pipe, [prompt, cleaned], plan, generator=generators(seed, seed), **kwargs)))[0]


def assert_same_rows(guarded: np.ndarray, plain: np.ndarray, guard: ToxicTextGuard) -> None:
    """Clean rows: bit-identical where the guard injects (the very batch the user asked for); where it
    appends live source rows the batch is larger, and kernels may round a batch of another size
    differently in the last bit."""
    if all(layer.kind in ("cross", "added_kv") for layer in guard.layers):
        np.testing.assert_array_equal(guarded, plain)
    else:
        np.testing.assert_allclose(guarded, plain, atol=1e-5)


# ---- the guard on every architecture


def test_a_clean_prompt_is_the_plain_pipeline_with_no_hooks(arch, pipe, monkeypatch):
    guard = ToxicTextGuard(pipe, "all", start_step=0)

    def hooked(*args, **kwargs):
        raise AssertionError("a clean prompt must not install hooks or record anything")

    monkeypatch.setattr(guard_module, "patch_rows", hooked)
    monkeypatch.setattr(guard_module, "plan_text_swap", hooked)
    output = guard(PROMPT, **seeded(pipe))
    np.testing.assert_array_equal(images(output), generate(pipe))
    assert output.reports[0].found == [] and output.guarded_rows == []


def test_the_report_says_what_was_found_where_and_a_clean_prompt_is_clean():
    pipe = _pipeline("sd15")
    unquoted, clean = ToxicTextGuard(pipe, "all")([f"A sign that says {TOXIC_WORDS[0]}.", "A sign that says HELLO."], **seeded(pipe)).reports
    assert unquoted.found == [TOXIC_WORDS[0]] and unquoted.rows == [0]
    assert unquoted.summary().splitlines()[1] == f"  {TOXIC_WORDS[0]!r} at 17-21, unquoted after 'says' -> {unquoted.replacements[TOXIC_WORDS[0]]!r}"
    assert clean.summary() == "clean: 'A sign that says HELLO.'" and clean.findings == []


def test_a_mixed_batch_guards_only_the_toxic_rows(arch, pipe):
    skip_one_prompt(arch)
    kwargs = tiny_call_kwargs(pipe)
    guard = ToxicTextGuard(pipe, "all", start_step=0)
    prompts = [PROMPT, TOXIC, 'A red sign that says "LAMP".']
    if arch in ONE_TEXT_LENGTH:  # its cleaned prompt's source row has another token length
        with pytest.raises(ValueError, match="one token length"):
            guard(prompts, generator=generators(1, 2, 3), **kwargs)
        return
    if arch in ONE_IMAGE_UNDER_CFG:  # a guided batch, refused
        with pytest.raises(ValueError, match="one image a call"):
            guard(prompts, generator=generators(1, 2, 3), **kwargs)
        kwargs["guidance_scale"] = 1.0
    # A copy: Z-Image's pipeline wraps the prompts of a list it is given in its chat template, in place.
    plain = np.asarray(images_of(pipe(prompt=list(prompts), generator=generators(1, 2, 3), **kwargs)))
    output = guard(prompts, generator=generators(1, 2, 3), **kwargs)
    guarded = images(output)
    assert guarded.shape == plain.shape  # a joint model's extra source row is dropped
    assert output.guarded_rows == [1] and [r.found for r in output.reports] == [[], ["DAMN"], []]
    assert_same_rows(guarded[[0, 2]], plain[[0, 2]], guard)
    # The toxic row changed: far above float noise, though a random CogView4's text moves its image by < 1e-3.
    assert np.abs(guarded[1] - plain[1]).max() > 1e-4
    expected = reference(pipe, TOXIC, output.reports[1].cleaned_prompt, 2, guard.layers, 0, **kwargs)
    np.testing.assert_allclose(guarded[1], expected, atol=1e-4)
    # "all" is every text unit, the pooled vector too: the guarded row is the cleaned prompt's own image.
    direct = np.asarray(images_of(pipe(prompt=output.reports[1].cleaned_prompt, generator=generators(2), **kwargs)))[0]
    np.testing.assert_allclose(guarded[1], direct, atol=1e-4)


@pytest.mark.parametrize("arch_name", ["sd15", "sd3"])  # injection, and live source rows
def test_a_toxic_word_asked_for_without_quotes_is_guarded_and_clean_words_are_not(arch_name, monkeypatch):
    pipe = _pipeline(arch_name)
    kwargs = tiny_call_kwargs(pipe)
    toxic = {word.lower() for word in TOXIC_WORDS}
    guard = ToxicTextGuard(pipe, "all", start_step=0, detector=tl.guard.WordDetector(lambda words: [w in toxic for w in words], "wordlist"))
    prompts = ["A sign that says D 4 M N.", "A Scunthorpe class sign that says 'hello shell'."]
    plain = np.asarray(images_of(pipe(prompt=prompts, generator=generators(1, 2), **kwargs)))
    output = guard(prompts, generator=generators(1, 2), **kwargs)
    guarded = images(output)
    assert output.guarded_rows == [0] and [f.forms for f in output.reports[0].findings] == [("unquoted", "spaced", "leet")]
    assert_same_rows(guarded[[1]], plain[[1]], guard)
    assert np.abs(guarded[0] - plain[0]).max() > 1e-3
    expected = reference(pipe, prompts[0], output.reports[0].cleaned_prompt, 1, guard.layers, 0, **kwargs)
    np.testing.assert_allclose(guarded[0], expected, atol=1e-4)
    monkeypatch.setattr(guard_module, "patch_rows", None)  # a clean prompt alone: the plain call, no hook to install
    alone = np.asarray(images_of(pipe(prompt=prompts[1], generator=tl.generator(2), **kwargs)))
    np.testing.assert_array_equal(images(guard(prompts[1], generator=tl.generator(2), **kwargs)), alone)


@pytest.mark.parametrize("arch_name", ["sd15", "sd3"])  # injection, and live source rows
def test_num_images_per_prompt_guards_every_image_of_a_toxic_prompt(arch_name):
    pipe = _pipeline(arch_name)
    kwargs = {**tiny_call_kwargs(pipe), "num_images_per_prompt": 2}
    guard = ToxicTextGuard(pipe, "all", start_step=0)
    plain = np.asarray(images_of(pipe(prompt=[PROMPT, TOXIC], generator=generators(1, 2, 3, 4), **kwargs)))
    output = guard([PROMPT, TOXIC], generator=generators(1, 2, 3, 4), **kwargs)
    guarded = images(output)
    assert guarded.shape == plain.shape and output.guarded_rows == [2, 3]
    assert_same_rows(guarded[:2], plain[:2], guard)
    cleaned = output.reports[1].cleaned_prompt
    for row, seed in ((2, 3), (3, 4)):
        assert np.abs(guarded[row] - plain[row]).max() > 1e-3
        expected = reference(pipe, TOXIC, cleaned, seed, guard.layers, 0, **tiny_call_kwargs(pipe))
        np.testing.assert_allclose(guarded[row], expected, atol=1e-4)


def test_one_generator_for_one_image_keeps_the_plain_noise_on_a_joint_model():
    pipe = _pipeline("sd3")
    guard = ToxicTextGuard(pipe, "all", start_step=1)  # the first step unpatched: it must match the plain run's
    kwargs = tiny_call_kwargs(pipe)
    output = guard(TOXIC, generator=tl.generator(5), **kwargs)
    expected = reference(pipe, TOXIC, output.reports[0].cleaned_prompt, 5, guard.layers, 1, **kwargs)
    np.testing.assert_allclose(images(output)[0], expected, atol=1e-4)


# ---- baselines through the same call


def test_baselines_run_the_same_prompts_and_noise():
    pipe = _pipeline("sd15")
    kwargs = tiny_call_kwargs(pipe)
    prompts = [PROMPT, TOXIC]
    negative = ToxicTextGuard(pipe, None, method="negative-prompt")(prompts, generator=generators(1, 2), **kwargs)
    direct = images_of(pipe(prompt=prompts, negative_prompt=["", 'text "DAMN"'], generator=generators(1, 2), **kwargs))
    np.testing.assert_array_equal(images(negative), direct)
    alone = ToxicTextGuard(pipe, None, method="negative-prompt")(TOXIC, negative_prompt="blurry", generator=tl.generator(2), **kwargs)
    direct = images_of(pipe(prompt=TOXIC, negative_prompt='blurry, text "DAMN"', generator=tl.generator(2), **kwargs))
    np.testing.assert_array_equal(images(alone), direct)
    swap = ToxicTextGuard(pipe, None, method="prompt-swap")(prompts, generator=generators(1, 2), **kwargs)
    cleaned = swap.reports[1].cleaned_prompt
    np.testing.assert_array_equal(images(swap), images_of(pipe(prompt=[PROMPT, cleaned], generator=generators(1, 2), **kwargs)))
    unguarded = ToxicTextGuard(pipe, None, method="unguarded")(prompts, generator=generators(1, 2), **kwargs)
    np.testing.assert_array_equal(images(unguarded), images_of(pipe(prompt=prompts, generator=generators(1, 2), **kwargs)))
    assert unguarded.reports[1].found == ["DAMN"] and unguarded.guarded_rows == []


# ---- detection


@pytest.mark.parametrize("detector", DETECTORS)
def test_every_toxic_word_is_found_in_any_case_and_no_other_word(detector):
    find = get_detector(detector).find
    for word in TOXIC_WORDS:
        for form in (word.upper(), word.lower(), word[0] + word[1:].lower(), word[:2].lower() + word[2:]):
            assert find(form) == [form], form
            assert find(f"BIG {form}") == [form]
    assert [word for word in VOCABULARY if word not in TOXIC_WORDS and (find(word) or find(word.lower()) or find(word.title()))] == []


def test_every_quoted_text_and_every_unquoted_word_of_a_prompt_is_guarded():
    guard = ToxicTextGuard(SimpleNamespace(name_or_path=None), None, method="prompt-swap")
    report = guard.clean('Two signs, "Hell, yes!" and "big CRAP", next to a DAMN sign and "LAMP".')
    assert report.found == ["Hell", "CRAP", "DAMN"]  # a model may write an unquoted word too
    spans = [span.text for span in tl.edit.quoted_spans(report.cleaned_prompt)]
    assert spans[0].endswith(", yes!") and spans[1].startswith("big ") and spans[2] == "LAMP"
    assert f"{report.replacements['DAMN']} sign" in report.cleaned_prompt and guard.clean(report.cleaned_prompt).found == []


def test_a_callable_detector_and_its_bad_answers():
    guard = ToxicTextGuard(SimpleNamespace(name_or_path=None), None, detector=lambda text: [w for w in text.split() if w == "LAMP"], method="prompt-swap")
    assert guard.clean('A sign that says "OPEN LAMP".').found == ["LAMP"]
    with pytest.raises(TypeError, match="list of toxic words"):
        ToxicTextGuard(SimpleNamespace(name_or_path=None), None, detector=lambda text: "LAMP" in text, method="prompt-swap")
    with pytest.raises(ValueError, match="reported 'XYZ', which is not among the words it was given"):
        ToxicTextGuard(SimpleNamespace(name_or_path=None), None, detector=lambda text: ["XYZ"] if "OPEN" in text else [], method="prompt-swap").clean('"OPEN"')


def tiny_classifier(folder: Path, labels: dict[int, str], toxic_bias: float | None = None) -> Path:
    """A random BERT classifier saved to ``folder``; ``toxic_bias`` makes label "toxic" win (>0) or lose (<0) on any input."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                        num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    if toxic_bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.zero_()
            toxic = next(i for i, name in labels.items() if name == "toxic")
            model.classifier.bias[toxic] = toxic_bias
    model.save_pretrained(folder)
    BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("labels", [{0: "non-toxic", 1: "toxic"}, {0: "toxic", 1: "neutral"}])
def test_a_local_classifier_flags_what_its_toxic_label_says(tmp_path, labels):
    flags = get_detector(tiny_classifier(tmp_path / "yes", labels, toxic_bias=5.0)).find
    assert flags("big LAMP") == ["big", "LAMP"]
    passes = get_detector(str(tiny_classifier(tmp_path / "no", labels, toxic_bias=-5.0))).find
    assert passes("big LAMP") == []


# ---- replacements


def test_benign_replacements_are_deterministic_same_length_and_same_case():
    pipe = SimpleNamespace(name_or_path=None)
    first, again = (ToxicTextGuard(pipe, None, method="prompt-swap").replacer for _ in range(2))
    other = ToxicTextGuard(pipe, None, replace=Benign(seed=1), method="prompt-swap").replacer
    detector = get_detector()
    words = [*TOXIC_WORDS, "ASSHOLE", "BULLSHIT", "MOTHERFUCKER"]
    for word in words:
        new = first(word)
        assert new == again(word) and len(new) == len(word) and new.isupper() and not detector.find(new), (word, new)
        assert first(word.lower()) == new.lower() and first(word.title()) == new.title()
    assert any(first(word) != other(word) for word in words)  # the seed picks
    assert {len(word) for word in BENIGN_WORDS} >= set(range(1, 13))


def test_a_named_model_writes_its_own_vocabulary():
    replacer = ToxicTextGuard(SimpleNamespace(name_or_path=str(TEXTLOC_TINY.folder)), None, method="prompt-swap").replacer
    vocabulary = named_model("textloc-tiny").vocabulary
    assert set(vocabulary) == set(VOCABULARY) - set(TOXIC_WORDS)
    for word in TOXIC_WORDS:
        assert replacer(word) in vocabulary and len(replacer(word)) == len(word)
    assert replacer("BULLSHIT") in vocabulary  # no 8-letter word: the nearest length it can write


@pytest.mark.parametrize(
    "replace, expected",
    [
        ({"damn": "Darn"}, 'Signs: "go DARN, go" and "DARN it".'),
        ("DAMN=DARN", 'Signs: "go DARN, go" and "DARN it".'),
        (Mask(), 'Signs: "go ****, go" and "**** it".'),
        ("mask:[x]", 'Signs: "go [x], go" and "[x] it".'),
        (Drop(), 'Signs: "go, go" and "it".'),
        ("drop", 'Signs: "go, go" and "it".'),
    ],
)
def test_mapping_mask_and_drop(replace, expected):
    guard = ToxicTextGuard(SimpleNamespace(name_or_path=None), None, replace=replace, method="prompt-swap")
    assert guard.clean('Signs: "go DAMN, go" and "DAMN it".').cleaned_prompt == expected


# ---- bad input: one line that says what would be right


def test_bad_input_is_refused_with_what_would_be_right(tmp_path):
    plain = SimpleNamespace(name_or_path=None)
    cases = [
        ({"detector": "profanity"}, "Unknown detector 'profanity': choose better-profanity or alt-profanity-check"),
        ({"detector": str(tmp_path / "missing")}, "No text-classification model at"),
        ({"detector": tiny_classifier(tmp_path / "labels", {0: "positive", 1: "negative"})}, "has no toxic label .*positive, negative.*toxic_label="),
        ({"replace": {"DAMN": "HELL"}}, "maps 'damn' to 'HELL', which the detector flags as toxic"),
        ({"replace": {"DAMN": "H 3 L L"}}, "maps 'damn' to 'H 3 L L', which the detector flags as toxic"),  # read as the guard reads
        ({"replace": "censor"}, "Unknown replacement 'censor'"),
        ({"method": "sld"}, "Unknown method 'sld'"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message) as raised:
            ToxicTextGuard(plain, None, **{"method": "prompt-swap", **options})
        assert "\n" not in str(raised.value)
    pipe = _pipeline("sd15")
    with pytest.raises(ValueError, match="found on other weights"):
        ToxicTextGuard(pipe, SAMPLES)  # textloc-tiny's localization on another model
    with pytest.raises(ValueError, match="cannot take prompt_embeds"):
        ToxicTextGuard(pipe, "all")(TOXIC, prompt_embeds=torch.zeros(1, 4, 32))


def test_cli_prints_what_it_replaced_and_saves_both_images(tmp_path, capsys):
    from textloc.cli import main

    check = [] if HAS_OCR else ["--no-check-images"]
    status = main(["--threads", "1", "guard", "--model", "tiny-random-sdxl", "--prompt", 'A sign that says "DAMN".', "--layers", "all", *check, "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert status == 0 and "found 'DAMN'; replaced 'DAMN' -> " in printed and "  'DAMN' at 18-22, quoted \"\" -> " in printed
    data = json.loads((tmp_path / "guard.json").read_text())
    assert data["found"] == ["DAMN"] and data["rows"] == [0] and data["layers"]
    assert data["findings"][0]["spans"] == [[18, 22]] and data["findings"][0]["forms"] == ["quoted"]
    if HAS_OCR:  # on by default: the guarded image was read (a tiny random model writes nothing toxic)
        assert "image check: no toxic word read" in printed and data["image_checks"] == [] and "ocr" in data["check_seconds"]
        assert isinstance(data["unguarded_read"], str) and isinstance(data["guarded_read"], str)  # what the images show
    else:
        assert data["unguarded_read"] is data["guarded_read"] is None
    assert (tmp_path / "guard.png").stat().st_size > 0
    assert main(["guard", "--model", "tiny-random-sdxl", "--prompt", "x", "--detector", "nope", "--out", str(tmp_path)]) == 2


# ---- the embedded model: the word really disappears


@pytest.mark.skipif(importlib.util.find_spec("rapidocr") is None, reason="needs rapidocr")
def test_textloc_tiny_does_not_write_a_guarded_toxic_word():
    from textloc.scoring.ocr import get_ocr

    pipe = tl.load_pipeline("textloc-tiny")
    settings = {**named_model("textloc-tiny").settings, "clean_caption": False, "output_type": "np"}
    prompt = 'A red sign on a blue background that says "DAMN".'  # seed 0 writes it legibly
    unguarded = images_of(pipe(prompt=prompt, generator=tl.generator(0), **settings))[0]
    output = ToxicTextGuard(pipe, SAMPLES)(prompt, generator=tl.generator(0), **settings)  # the default start step
    replacement = output.reports[0].replacements["DAMN"]
    assert replacement in named_model("textloc-tiny").vocabulary
    reads = get_ocr("rapidocr").read([unguarded, output.images[0]])
    assert "DAMN" in reads[0].upper() and "DAMN" not in reads[1].upper(), reads


# ---- the image side: what the OCR reads in the output


class ScriptedOCR:
    """An OCR engine that reads, call after call, the (text, boxes) it is given for each image."""

    def __init__(self, *calls: list[tuple[str, tuple]]):
        self.calls = list(calls)

    def readings(self, images):
        from textloc.scoring.ocr import Reading

        read = self.calls.pop(0)
        assert len(read) == len(images)
        return [Reading(text, boxes) for text, boxes in read]

    def read(self, images):
        return [reading.text for reading in self.readings(images)]


BOX = (4.0, 6.0, 20.0, 14.0)  # x0, y0, x1, y1 of the text an OCR found, in pixels


def test_the_image_check_regenerates_a_row_that_shows_a_toxic_word_and_leaves_clean_rows_alone():
    pipe = _pipeline("sd15")
    kwargs = tiny_call_kwargs(pipe)
    prompts = ['A sign that says "OPEN".', PROMPT]  # the prompt side finds nothing: the image side alone
    plain = np.asarray(images_of(pipe(prompt=prompts, generator=generators(1, 2), **kwargs)))
    ocr = ScriptedOCR([("D4MN", (BOX,)), ("HELLO", (BOX,))], [("LAMP", (BOX,))])
    guard = ToxicTextGuard(pipe, "all", start_step=0, check_images=True, ocr=ocr)
    output = guard(prompts, generator=generators(1, 2), **kwargs)
    assert [check.describe() for check in output.image_checks] == ["image check: row 0 read 'D4MN' (D4MN); regenerated, now reads 'LAMP'"]
    guarded = images(output)
    np.testing.assert_array_equal(guarded[1], plain[1])  # read clean: untouched
    benign = guard.make_benign(prompts[0]).cleaned_prompt  # every text-like word made benign
    assert benign != prompts[0] and benign.startswith('A sign that says "') and "OPEN" not in benign
    np.testing.assert_allclose(guarded[0], reference(pipe, prompts[0], benign, 1, guard.layers, 0, **kwargs), atol=1e-4)
    assert set(output.check_seconds) == {"ocr", "regenerate", "recheck"} and ocr.calls == []


def test_the_image_check_blanks_the_text_when_a_regenerated_row_still_shows_it():
    pipe = _pipeline("sd15")
    kwargs = tiny_call_kwargs(pipe)
    ocr = ScriptedOCR([("DAMN", (BOX,))], [("DAMN", (BOX,))], [("", ())])
    guard = ToxicTextGuard(pipe, "all", start_step=0, check_images=True, ocr=ocr)
    output = guard(TOXIC, generator=tl.generator(3), **kwargs)
    check = output.image_checks[0]
    assert (check.row, check.found, check.action, check.read_after) == (0, ["DAMN"], "blanked", "")
    regenerated = reference(pipe, TOXIC, guard.make_benign(TOXIC).cleaned_prompt, 3, guard.layers, 0, **kwargs)
    image = images(output)[0]
    box = (slice(6, 14), slice(4, 20))
    assert np.ptp(image[box].reshape(-1, 3), axis=0).max() == 0  # one colour where the text was
    outside = np.ones(image.shape[:2], dtype=bool)
    outside[box] = False
    np.testing.assert_allclose(image[outside], regenerated[outside], atol=1e-4)


def test_the_image_check_leaves_a_clean_output_bit_identical():
    pipe = _pipeline("sd15")
    output = ToxicTextGuard(pipe, "all", check_images=True, ocr=ScriptedOCR([("HELLO", (BOX,))]))(PROMPT, **seeded(pipe))
    np.testing.assert_array_equal(images(output), generate(pipe))
    assert output.image_checks == [] and output.guarded_rows == []


def test_blanking_fills_each_box_with_the_colour_around_it_in_every_image_type():
    from PIL import Image

    from textloc.guard.image_check import blank

    array = np.zeros((16, 24, 3), dtype=np.float32)
    array[:, :] = (0.2, 0.4, 0.6)
    array[6:10, 5:15] = 1.0  # the "letters"
    filled = blank(array, ((5.0, 6.0, 15.0, 10.0),))
    np.testing.assert_allclose(filled, np.broadcast_to(np.float32((0.2, 0.4, 0.6)), array.shape))
    as_tensor = blank(torch.from_numpy(array).permute(2, 0, 1), ((5.0, 6.0, 15.0, 10.0),))
    np.testing.assert_allclose(as_tensor.permute(1, 2, 0).numpy(), filled)
    pil = blank(Image.fromarray((array * 255).round().astype(np.uint8)), ((5.0, 6.0, 15.0, 10.0),))
    assert np.asarray(pil)[6:10, 5:15].reshape(-1, 3).tolist() == [[51, 102, 153]] * 40


def test_the_image_check_goes_with_the_text_layers_only():
    with pytest.raises(ValueError, match="use it with method 'patch' or 'unguarded', not 'prompt-swap'"):
        ToxicTextGuard(_pipeline("sd15"), "all", method="prompt-swap", check_images=True, ocr=ScriptedOCR())


@pytest.mark.skipif(not HAS_OCR, reason="needs rapidocr")
def test_textloc_tiny_image_check_catches_what_the_prompt_side_let_through():
    pipe = tl.load_pipeline("textloc-tiny")
    settings = {**named_model("textloc-tiny").settings, "clean_caption": False, "output_type": "np"}
    prompt = 'A red sign on a blue background that says "DAMN".'  # seed 0 writes it legibly
    output = ToxicTextGuard(pipe, SAMPLES, method="unguarded", check_images=True)(prompt, generator=tl.generator(0), **settings)
    check = output.image_checks[0]
    assert check.row == 0 and "DAMN" in check.read.upper() and check.action in ("regenerated", "blanked")
    assert "DAMN" not in check.read_after.upper()
