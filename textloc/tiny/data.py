"""Deterministic renderer of textloc-tiny's training pairs: a 64x64 sign with a word, and its caption.

Every example is a pure function of ``(seed, index)``: the scene (sign colour, background colour,
sign shape and position) and the text (the word) are drawn separately, and the caption names all
of them, e.g. ``A red sign on a blue background that says "LAMP".`` A fixed, published part of
the (sign colour, background colour, word) combinations is held out of training
(:data:`HELD_OUT_COMBOS`); evaluations and tests use only those, with seeds training never sees.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 64
# Drawn 4x larger and box-filtered down, so the letters are anti-aliased like a real photo's.
SUPERSAMPLE = 4

#: Sign and background colours, by the name the captions use.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 40),
    "green": (35, 150, 60),
    "blue": (35, 70, 210),
    "purple": (135, 45, 165),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
# Letters are black on light signs and white on dark ones, so every word stays readable.
LIGHT_SIGNS = frozenset({"orange", "yellow", "white"})

#: Words a toxic-word guard should catch (better_profanity flags each); they are in the
#: vocabulary so that the guard demo has something real to stop.
TOXIC_WORDS: tuple[str, ...] = ("DAMN", "HELL", "CRAP", "SHIT", "PISS", "PORN")

#: The fixed vocabulary textloc-tiny is trained to write: 3-5 letter words, upper case.
VOCABULARY: tuple[str, ...] = (
    "CAT", "DOG", "SUN", "MAP", "BUS", "CUP", "KEY", "BOX", "OWL", "PIE",
    "LAMP", "CAKE", "FISH", "BOOK", "DOOR", "TREE", "MILK", "STAR", "BIRD", "FROG",
    "OPEN", "STOP", "EXIT", "SALE", "CAFE", "SHOP", "RAIN", "WIND", "MOON", "GOLD",
    "PARK", "HOTEL", "PIZZA", "MUSIC", "HOUSE", "APPLE", "TIGER", "CLOUD", "BREAD", "WATER",
    "PLANT", "QUIET",
) + TOXIC_WORDS

#: Caption templates with both colours; the scene and the quoted word vary independently.
COLOUR_TEMPLATES: tuple[str, ...] = (
    'A {sign} sign on a {background} background that says "{word}".',
    'A {sign} sign that says "{word}" on a {background} background.',
    '"{word}" written on a {sign} sign, {background} background.',
    'A {background} wall with a {sign} sign reading "{word}".',
    'A photo of a {sign} sign saying "{word}" against a {background} background.',
)
#: A SimpleBench-style caption that names no colours; the model draws its own.
PLAIN_TEMPLATE = 'A sign that says "{word}".'
# Share of training captions that name no colours, so the SimpleBench prompt is in-distribution.
PLAIN_FRACTION = 0.15

SHAPES: tuple[str, ...] = ("rectangle", "rounded", "pill")
# One in HOLD_OUT_MODULUS (sign, background, word) combinations never appears in training.
HOLD_OUT_MODULUS = 10


def is_held_out(sign: str, background: str, word: str) -> bool:
    """Whether this (sign colour, background colour, word) combination is kept out of training."""
    return zlib.crc32(f"{sign}|{background}|{word}".encode()) % HOLD_OUT_MODULUS == 0


@lru_cache(maxsize=None)
def held_out_combos(words: tuple[str, ...] = VOCABULARY) -> tuple[tuple[str, str, str], ...]:
    """Every held-out (sign colour, background colour, word) combination of ``words``, in a fixed order."""
    return tuple(
        (sign, background, word)
        for word in words
        for sign in COLOURS
        for background in COLOURS
        if sign != background and is_held_out(sign, background, word)
    )


#: Every held-out combination of the vocabulary textloc-tiny was trained on.
HELD_OUT_COMBOS = held_out_combos(VOCABULARY)


@dataclass(frozen=True)
class SignExample:
    """One training pair and the facts an evaluation checks it against."""

    image: Image.Image
    ink: Image.Image  # where the letters are: 0-255 coverage, see render_sign
    glyphs: Image.Image  # which letter is where: its character code, 0 off the letters
    caption: str
    word: str
    sign: str
    background: str
    shape: str
    template: str


#: How the word is set on the sign. "slots" (the current one): DejaVu Sans Mono Bold at one size,
#: left-aligned, so letter k of every word sits in the same place on the sign. "centred" (steps
#: 0-5,410 of the shipped run): DejaVu Sans Bold, centred, as large as fits. With a proportional,
#: centred word, where letter k lands depends on the whole word (an "I" is 0.37 em wide, a "W"
#: 1.1), so the model must know the word before it knows where any of its letters go; after 5,411
#: steps it drew letter-like glyphs and never the caption's word.
LAYOUTS: tuple[str, ...] = ("centred", "slots")
LAYOUT = "slots"
# DejaVu Sans Mono's advance is 0.602 em: 16 px fits five letters inside a pill's straight part.
SLOT_FONT_SIZE = 16


@lru_cache(maxsize=None)
def _font(size: int, mono: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (Mono) Bold when the system has it, else Pillow's built-in scalable font (no files)."""
    name = "DejaVuSansMono-Bold.ttf" if mono else "DejaVuSans-Bold.ttf"
    for folder in (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu")):
        if (folder / name).exists():
            return ImageFont.truetype(str(folder / name), size)
    return ImageFont.load_default(size=size)


def render_sign(
    word: str, sign: str, background: str, shape: str, offset: tuple[int, int], layout: str = LAYOUT
) -> tuple[Image.Image, Image.Image, Image.Image]:
    """Draw ``word`` on a ``sign``-coloured sign of ``shape`` over a ``background``, 64x64 RGB.

    Returns the image, the letters' ink coverage (a 64x64 "L" image, 255 where a pixel is all
    letter), which training uses to weight the letters' pixels, and the glyph map (a 64x64 "L"
    image: at each inked pixel the character code of the letter covering most of it, else 0),
    which training uses to ask the U-Net which letter belongs where. The sign stays at least 2 px from
    the border, so the outer ring is always background (the colour judge relies on it);
    ``offset`` moves the sign by a few pixels; ``layout`` is one of :data:`LAYOUTS`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    s = SUPERSAMPLE
    canvas = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), COLOURS[background])
    draw = ImageDraw.Draw(canvas)
    width, height = 58, 32
    left = (IMAGE_SIZE - width) // 2 + offset[0]
    top = (IMAGE_SIZE - height) // 2 + offset[1]
    box = (left * s, top * s, (left + width) * s, (top + height) * s)
    radius = {"rectangle": 0, "rounded": 6 * s, "pill": height * s // 2}[shape]
    draw.rounded_rectangle(box, radius=radius, fill=COLOURS[sign])
    # The pill's round ends leave less room for letters.
    margin = (10 if shape == "pill" else 5) * s // 2
    middle = (box[1] + box[3]) / 2
    if layout == "slots":
        font, anchor, position = _font(SLOT_FONT_SIZE * s, mono=True), "lm", (box[0] + margin, middle)
    else:
        size = 22 * s
        while size > 8 * s and _font(size).getlength(word) > box[2] - box[0] - 2 * margin:
            size -= s
        font, anchor, position = _font(size), "mm", ((box[0] + box[2]) / 2, middle)
    ink = (15, 15, 15) if sign in LIGHT_SIGNS else (250, 250, 250)
    draw.text(position, word, font=font, fill=ink, anchor=anchor)
    coverage = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(coverage).text(position, word, font=font, fill=255, anchor=anchor)
    final = (IMAGE_SIZE, IMAGE_SIZE)
    return (
        canvas.resize(final, Image.Resampling.BOX),
        coverage.resize(final, Image.Resampling.BOX),
        _glyph_map(word, font, position, anchor),
    )


def _glyph_map(word: str, font: ImageFont.FreeTypeFont, position: tuple[float, float], anchor: str) -> Image.Image:
    """Each letter drawn alone where ``draw.text(position, word, anchor=anchor)`` puts it, then at
    every 64x64 pixel the character code of the letter with the most coverage (0 where none)."""
    left = position[0] - (font.getlength(word) / 2 if anchor[0] == "m" else 0)
    size = (IMAGE_SIZE * SUPERSAMPLE, IMAGE_SIZE * SUPERSAMPLE)
    coverages = []
    for k, letter in enumerate(word):
        alone = Image.new("L", size, 0)
        # The prefix up to and including this letter, less its own advance: kerning included.
        x = left + font.getlength(word[: k + 1]) - font.getlength(letter)
        ImageDraw.Draw(alone).text((x, position[1]), letter, font=font, fill=255, anchor="l" + anchor[1])
        coverages.append(np.asarray(alone.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)))
    coverage = np.stack(coverages)
    codes = np.array([ord(letter) for letter in word], dtype=np.uint8)[coverage.argmax(0)]
    return Image.fromarray(np.where(coverage.max(0) > 0, codes, 0).astype(np.uint8), "L")


def caption_for(word: str, sign: str | None, background: str | None, template: str) -> str:
    """Fill a caption template; ``sign``/``background`` may be None for the plain template."""
    caption = template.format(word=word, sign=sign, background=background)
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", caption)  # "an orange sign"


def make_example(
    seed: int, index: int, held_out: bool = False, layout: str = LAYOUT, words: tuple[str, ...] = VOCABULARY
) -> SignExample:
    """The ``index``-th example of the stream ``seed``: always the same image and caption.

    ``held_out=False`` draws only training combinations; ``held_out=True`` draws only from
    :func:`held_out_combos`, always with a colour template (so colours can be judged). ``words``
    (upper case; default the vocabulary textloc-tiny was trained on) are the words drawn.
    """
    rng = random.Random(f"textloc-tiny/{seed}/{index}/{held_out}")
    if held_out:
        sign, background, word = rng.choice(held_out_combos(words))
        template = rng.choice(COLOUR_TEMPLATES)
    else:
        while True:
            word = rng.choice(words)
            sign, background = rng.sample(list(COLOURS), 2)
            if not is_held_out(sign, background, word):
                break
        template = PLAIN_TEMPLATE if rng.random() < PLAIN_FRACTION else rng.choice(COLOUR_TEMPLATES)
    shape = rng.choice(SHAPES)
    offset = (rng.randint(-1, 1), rng.randint(-3, 3))
    image, ink, glyphs = render_sign(word, sign, background, shape, offset, layout)
    caption = caption_for(word, sign, background, template)
    return SignExample(image, ink, glyphs, caption, word, sign, background, shape, template)


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """Stack RGB images into a float tensor in [-1, 1], shape (N, 3, H, W), as the U-Net sees them."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


@dataclass(frozen=True)
class TrainingBatch:
    """One training step's data as tensors (see :class:`SignExample` for what each one is)."""

    images: torch.Tensor  # in [-1, 1], shape (N, 3, H, W)
    ink: torch.Tensor  # in [0, 1], shape (N, 1, H, W)
    glyphs: torch.Tensor  # character codes, int64, shape (N, H, W)
    captions: list[str]


def training_batch(seed: int, step: int, batch_size: int, layout: str = LAYOUT) -> TrainingBatch:
    """The batch of training step ``step``: a pure function of its arguments."""
    examples = [make_example(seed, step * batch_size + i, layout=layout) for i in range(batch_size)]
    ink = torch.from_numpy(np.stack([np.asarray(e.ink, dtype=np.float32) for e in examples]))[:, None] / 255.0
    glyphs = torch.from_numpy(np.stack([np.asarray(e.glyphs, dtype=np.int64) for e in examples]))
    return TrainingBatch(to_tensor([e.image for e in examples]), ink, glyphs, [e.caption for e in examples])


def letter_map(ink: torch.Tensor, size: int) -> torch.Tensor:
    """Where the letters are at a ``size`` x ``size`` resolution, in [0, 1]: the ink coverage
    (N, 1, 64, 64) grown by one pixel, then the most of it in each cell (the identity at 64), so a
    latent cell touching a letter counts as one."""
    grown = torch.nn.functional.max_pool2d(ink, 3, stride=1, padding=1)
    return torch.nn.functional.adaptive_max_pool2d(grown, size)


#: Training draws from seeds 0.. upward; evaluations use seeds far away from them.
EVAL_SEED = 1_000_003
