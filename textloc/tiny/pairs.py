"""Localization pairs for textloc-tiny, and a judge of whether an image kept the prompt's scene.

A pair is a held-out caption (a sign colour, background colour and word never trained together)
and the same caption with another vocabulary word: the scene is fixed, only the quoted word
changes, so a patch that carries the word and nothing else leaves the colours as they were.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from textloc.scoring.prompts import PromptPair
from textloc.scoring.ocr import to_pil_list
from textloc.tiny.data import COLOUR_TEMPLATES, COLOURS, HELD_OUT_COMBOS, TOXIC_WORDS, VOCABULARY, caption_for
from textloc.tiny.judge import judge_colours

# Toxic words stay out of localization: they are there for the guard.
_WORDS = tuple(word for word in VOCABULARY if word not in TOXIC_WORDS)
_COLOUR = "|".join(COLOURS)


def _caption_pattern(template: str) -> re.Pattern[str]:
    """A pattern matching the captions of one template, capturing its two colours."""
    escaped = re.escape(template.format(sign="SIGN_", background="BACKGROUND_", word="WORD_"))
    escaped = re.sub(r"\b([Aa])\\ (?=SIGN_|BACKGROUND_)", r"\1n?\\ ", escaped)  # "a red", "an orange"
    escaped = escaped.replace("SIGN_", f"(?P<sign>{_COLOUR})").replace("BACKGROUND_", f"(?P<background>{_COLOUR})")
    return re.compile(escaped.replace("WORD_", '[^"]*'), re.IGNORECASE)


_CAPTION_PATTERNS = tuple(_caption_pattern(template) for template in COLOUR_TEMPLATES)


def localization_pairs(n: int, seed: int = 0) -> list[PromptPair]:
    """``n`` pairs on held-out scenes: same colours and template, two different words."""
    rng = random.Random(seed)
    combos = [combo for combo in HELD_OUT_COMBOS if combo[2] in _WORDS]
    rng.shuffle(combos)
    pairs = []
    for index in range(n):
        sign, background, word = combos[index % len(combos)]
        target = rng.choice([other for other in _WORDS if other != word])
        template = caption_for("{}", sign, background, COLOUR_TEMPLATES[index % len(COLOUR_TEMPLATES)])
        pairs.append(PromptPair.from_template(template, word, target))
    return pairs


def scene_colours(prompt: str) -> tuple[str, str]:
    """The (sign, background) colours a textloc-tiny caption asks for."""
    for pattern in _CAPTION_PATTERNS:
        match = pattern.fullmatch(prompt.strip())
        if match:
            return match["sign"].lower(), match["background"].lower()
    raise ValueError(f"{prompt!r} is not a textloc-tiny caption naming a sign and a background colour.")


def scene_judge(images: Sequence[Any], prompts: Sequence[str]) -> list[bool]:
    """Whether each image shows the sign and background colours its prompt names (from pixels)."""
    return [judge_colours(image) == scene_colours(prompt) for image, prompt in zip(to_pil_list(list(images)), prompts)]
