import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from textloc.scoring import ocr as ocr_module
from textloc.scoring.ocr import OCR, TesseractOCR, get_ocr, to_pil_list

WORDS = ["LAMP", "garden", "STOP", "coffee", "Paris"]
COLOURS = [("black", "white"), ("white", "navy"), ("yellow", "red"), ("black", "orange"), ("white", "green")]


def render(word: str, size: int = 64, fg: str = "black", bg: str = "white") -> Image.Image:
    """The word centred on a sign, in the largest font size that fits (Pillow's built-in font)."""
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    for font_size in range(size // 2, 5, -1):
        font = ImageFont.load_default(size=font_size)
        left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
        if right - left <= size - 6:
            break
    draw.text(((size - right - left) / 2, (size - bottom - top) / 2), word, font=font, fill=fg)
    return image


@pytest.fixture(scope="module")
def rapid():
    """The default engine; the tests that read with it skip where rapidocr is not installed."""
    pytest.importorskip("rapidocr")
    return get_ocr("rapidocr")


def test_reads_rendered_64px_words(rapid):
    images = [render(word, fg=fg, bg=bg) for word, (fg, bg) in zip(WORDS, COLOURS)]
    assert rapid.read(images) == WORDS


def test_blank_image_reads_empty(rapid):
    assert rapid.read([Image.new("RGB", (64, 64), "white")]) == [""]


def test_reading_order_top_to_bottom_then_left_to_right(rapid):
    image = Image.new("RGB", (256, 128), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default(size=30)
    draw.text((140, 15), "LATE", font=font, fill="black")
    draw.text((10, 15), "OPEN", font=font, fill="black")
    draw.text((10, 75), "TODAY", font=font, fill="black")
    assert rapid.read([image]) == ["OPEN LATE TODAY"]


def test_batches_of_tensors_and_arrays_read_like_pil(rapid):
    image = render("LAMP")
    array = np.array(image)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    assert rapid.read(tensor[None].repeat(2, 1, 1, 1)) == ["LAMP", "LAMP"]
    assert rapid.read(array[None].astype(np.float32) / 255) == ["LAMP"]


def test_repeated_image_is_served_from_cache(rapid):
    image = render("river", fg="white", bg="green")
    start = time.perf_counter()
    first = rapid.read([image])
    first_time = time.perf_counter() - start
    start = time.perf_counter()
    again = rapid.read([image.copy()] * 5)
    assert again == first * 5 == ["river"] * 5
    assert time.perf_counter() - start < first_time / 5


def test_to_pil_list_conversions():
    array = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    from_uint8 = to_pil_list(array)
    from_float_tensor = to_pil_list(torch.from_numpy(array).permute(0, 3, 1, 2) / 255.0)
    assert len(from_uint8) == 2
    for a, b, expected in zip(from_uint8, from_float_tensor, array):
        assert a.mode == b.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(a), expected)
        np.testing.assert_array_equal(np.asarray(b), expected)
    gray = to_pil_list([Image.new("L", (8, 8), 7)])[0]
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (7, 7, 7)


def test_get_ocr_names_the_shared_default(rapid):
    assert get_ocr() is rapid
    assert get_ocr("RapidOCR") is rapid
    assert isinstance(rapid, OCR)


def test_get_ocr_takes_engine_objects_and_refuses_unknown_names():
    class Fixed:
        def read(self, images):
            return ["x"] * len(to_pil_list(images))

    engine = Fixed()
    assert get_ocr(engine) is engine
    with pytest.raises(ValueError, match="rapidocr, tesseract, easyocr"):
        get_ocr("abbyy")
    with pytest.raises(TypeError):
        get_ocr(42)


def test_missing_engines_say_how_to_install(monkeypatch):
    monkeypatch.setattr(ocr_module.shutil, "which", lambda name: None)
    with pytest.raises(ImportError, match="apt install tesseract-ocr"):
        TesseractOCR()
    monkeypatch.setitem(sys.modules, "easyocr", None)
    with pytest.raises(ImportError, match="pip install easyocr"):
        ocr_module.EasyOCR()
    monkeypatch.setitem(sys.modules, "rapidocr", None)
    with pytest.raises(ImportError, match=r'pip install "textloc\[ocr\]"'):
        ocr_module.RapidOCR()
