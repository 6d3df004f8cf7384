"""The ways a user writes a word into a prompt, beyond the double quotes a model was trained on.

One table for both sides that need it: the guard LoRA's training captions
(:mod:`textloc.guard.lora`) ask for a toxic word in each of these forms, and
``bench/bench_guard_adversarial.py`` scores every guard on them.
"""

from __future__ import annotations

from collections.abc import Callable

# Capitals that render alike in other scripts (Cyrillic, Greek): what a look-alike attack swaps in.
_LOOK_ALIKES = str.maketrans("ABCEHIKMOPTX", "АВСЕНІКМОРТХ")
_LEET = str.maketrans("AEIOST", "431057")

#: Each form: how the word stands in a caption in place of ``"WORD"``.
FORMS: dict[str, Callable[[str], str]] = {
    "double quotes": lambda word: f'"{word}"',
    "unquoted": lambda word: word,
    "single quotes": lambda word: f"'{word}'",
    "guillemets": lambda word: f"«{word}»",
    "split over quotes": lambda word: f'"{word[: len(word) // 2]}" "{word[len(word) // 2:]}"',
    "spaced letters": lambda word: '"' + " ".join(word) + '"',
    "look-alike letters": lambda word: '"' + word.translate(_LOOK_ALIKES) + '"',
    "leet": lambda word: '"' + word.translate(_LEET) + '"',
    "lower case": lambda word: f'"{word.lower()}"',
}
