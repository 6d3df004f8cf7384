import math

import numpy as np
import pytest
import torch
from PIL import Image

from textloc.scoring.metrics import (
    Score,
    background_mask,
    compare,
    contains,
    exact_match,
    image_scores,
    levenshtein,
    mean_scores,
    mse,
    normalized_edit_distance,
    precision_recall_f1,
    psnr,
    ssim,
    text_scores,
    to_float_array,
    words,
)


def test_words_casefold_and_split_on_punctuation():
    assert words("Hello, WORLD!  it's") == ["hello", "world", "it", "s"]
    assert words("...") == []


def test_anagram_is_not_a_word_match_but_is_a_char_match():
    assert precision_recall_f1("listen", "silent") == (0.0, 0.0, 0.0)
    assert precision_recall_f1("listen", "silent", level="char") == (1.0, 1.0, 1.0)
    assert not exact_match("listen", "silent")


def test_different_word_scores_zero_at_word_level():
    # Shared letters give a bag-of-characters score a high floor; words do not.
    assert text_scores("house", "mouse")["f1"] == 0.0
    assert precision_recall_f1("house", "mouse", level="char")[2] == pytest.approx(0.8)


def test_repeated_words_count_as_multisets():
    precision, recall, f1 = precision_recall_f1("stop stop stop", "stop")
    assert (precision, recall) == (pytest.approx(1 / 3), 1.0)
    assert f1 == pytest.approx(0.5)
    precision, recall, _ = precision_recall_f1("stop", "stop stop")
    assert (precision, recall) == (1.0, 0.5)


def test_partial_read():
    precision, recall, f1 = precision_recall_f1("hello there", "hello world")
    assert (precision, recall, f1) == (0.5, 0.5, 0.5)


def test_empty_read_scores_zero():
    assert precision_recall_f1("", "hello") == (0.0, 0.0, 0.0)
    scores = text_scores("", "hello")
    assert scores["f1"] == 0.0 and scores["accuracy"] == 0.0 and scores["contains"] == 0.0
    assert scores["ned"] == 1.0
    assert precision_recall_f1("", "") == (1.0, 1.0, 1.0)


def test_exact_accuracy_ignores_order_case_and_punctuation():
    assert exact_match("World, hello!", "HELLO world")
    assert not exact_match("hello hello world", "hello world")


def test_contains_needs_adjacent_words_in_order():
    assert contains("big OPEN sign", "open")
    assert contains("we are open late", "Open late")
    assert not contains("late open", "open late")
    assert not contains("opening", "open")


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("abc", "abc") == 0
    assert levenshtein("flaw", "lawn") == 2


def test_normalized_edit_distance():
    assert normalized_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert normalized_edit_distance("HELLO", "hello!") == 0.0
    assert normalized_edit_distance("", "") == 0.0
    scores = text_scores("kitten", "sitting")
    assert scores["similarity"] == pytest.approx(1 - 3 / 7)


def test_char_level_only_on_request_and_named_so():
    assert {"precision", "recall", "f1"} <= set(text_scores("a", "b"))
    char = text_scores("listen", "silent", level="char")
    assert char["char_f1"] == 1.0 and "f1" not in char
    assert char["accuracy"] == 0.0
    with pytest.raises(ValueError, match="level"):
        text_scores("a", "b", level="letter")


def test_mse_does_not_wrap_uint8():
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 200, np.uint8)
    assert mse(a, b) == pytest.approx((200 / 255) ** 2)
    assert mse(b, a) == mse(a, b)


def test_psnr_identical_is_inf_and_known_value():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert psnr(image, image.copy()) == math.inf
    a, b = np.zeros((4, 4), np.float32), np.full((4, 4), 0.1, np.float32)
    assert psnr(a, b) == pytest.approx(20.0)


def test_inputs_agree_across_pil_numpy_and_tensor():
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    as_pil, as_tensor = Image.fromarray(array), torch.from_numpy(array).permute(2, 0, 1).float() / 255
    np.testing.assert_allclose(to_float_array(as_pil), array / 255.0)
    np.testing.assert_allclose(to_float_array(as_tensor), array / 255.0, atol=1e-7)
    assert to_float_array(as_tensor).dtype == np.float64


def test_out_of_range_float_image_is_an_error():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_float_array(torch.full((3, 8, 8), -1.0))


def test_identical_images_score_perfectly_and_noisier_ones_lower():
    rng = np.random.default_rng(0)
    image = np.kron(rng.random((8, 8, 3)), np.ones((8, 8, 1)))  # 64x64 blocks, some structure
    assert ssim(image, image) == 1.0
    assert psnr(image, image) == math.inf
    light = (image + rng.normal(0, 0.05, image.shape)).clip(0, 1)
    heavy = (image + rng.normal(0, 0.3, image.shape)).clip(0, 1)
    assert 1.0 > ssim(image, light) > ssim(image, heavy)
    assert math.inf > psnr(image, light) > psnr(image, heavy)
    assert ssim(image, light) == pytest.approx(ssim(light, image))
    assert image_scores(image, light) == {"mse": mse(image, light), "psnr": psnr(image, light), "ssim": ssim(image, light)}


def test_ssim_scores_on_a_data_range_of_one():
    # With no variance SSIM reduces to its luminance term, whose constant is (0.01 * range)^2.
    a, b = np.full((32, 32), 0.2), np.full((32, 32), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert ssim(a, b) == pytest.approx(expected)
    assert ssim((a * 255).astype(np.uint8), (b * 255).astype(np.uint8)) == pytest.approx(expected, abs=1e-3)


def test_ssim_needs_one_whole_window():
    image = np.zeros((10, 32))
    with pytest.raises(ValueError, match="11 px"):
        ssim(image, image)
    near_border = np.zeros((32, 32), bool)
    near_border[:5] = True  # no 11x11 window centred here fits inside the image
    with pytest.raises(ValueError, match="border"):
        ssim(np.zeros((32, 32)), np.ones((32, 32)), mask=near_border)


def test_mask_restricts_metrics_to_background():
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 3))
    edited = image.copy()
    edited[8:20, 4:28] = 1 - edited[8:20, 4:28]  # the "text box" changes
    keep = background_mask(32, 32, [(4, 8, 28, 20)])
    assert keep.sum() == 32 * 32 - 12 * 24
    assert mse(image, edited) > 0
    assert mse(image, edited, mask=keep) == 0.0
    assert psnr(image, edited, mask=keep) == math.inf
    assert ssim(image, edited) < 0.9
    # Windows centred outside the box still overlap it, so only far-away windows give 1.
    far = np.zeros((32, 32), bool)
    far[26:, :] = True
    assert ssim(image, edited, mask=far) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="mask"):
        mse(image, edited, mask=np.ones((8, 8), bool))


def test_score_carries_baseline():
    score = Score(0.8234, 0.031)
    assert str(score) == "0.82 (baseline 0.03)"
    assert score.to_dict() == {"value": 0.8234, "baseline": 0.031, "delta": pytest.approx(0.7924)}


def test_compare_and_mean_scores():
    samples = [text_scores("hello", "hello"), text_scores("", "hello")]
    mean = mean_scores(samples)
    assert mean["f1"] == 0.5 and mean["accuracy"] == 0.5
    baseline = mean_scores([text_scores("world", "hello")] * 2)
    scores = compare(mean, baseline)
    assert str(scores["f1"]) == "0.50 (baseline 0.00)"
    with pytest.raises(ValueError, match="keys"):
        compare({"f1": 1.0}, {"mse": 0.0})
    with pytest.raises(ValueError, match="keys"):
        mean_scores([{"f1": 1.0}, {"mse": 0.0}])
