"""The quoted text of a prompt: what a model is asked to write, found and swapped in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Straight and typographic double quotes; the text inside is what the model should write.
_QUOTED = re.compile(r'"([^"]*)"|“([^”]*)”')


@dataclass(frozen=True)
class Quoted:
    """One quoted span: its text and where that text sits in the prompt (quotes excluded)."""

    text: str
    start: int
    end: int


def quoted_spans(prompt: str) -> list[Quoted]:
    """Every quoted text in ``prompt``, in order (``A sign that says "OPEN".`` -> ``OPEN``)."""
    spans = []
    for match in _QUOTED.finditer(prompt):
        group = 1 if match.group(1) is not None else 2
        spans.append(Quoted(match.group(group), match.start(group), match.end(group)))
    return spans


def replace_quoted(prompt: str, new_text: str) -> tuple[str, str]:
    """``(old_text, new_prompt)``: ``prompt`` with its one quoted text replaced by ``new_text``.

    A prompt with no quoted text, or several, is refused: which text to change would be a guess.
    """
    spans = quoted_spans(prompt)
    if len(spans) != 1:
        found = "no quoted text" if not spans else f"{len(spans)} quoted texts ({', '.join(repr(s.text) for s in spans)})"
        raise ValueError(f"The prompt {prompt!r} has {found}; an edit changes exactly one, written in double quotes: A sign that says \"OPEN\".")
    span = spans[0]
    if not new_text.strip():
        raise ValueError("new_text is empty: give the word the image should show instead.")
    if new_text == span.text:
        raise ValueError(f"new_text {new_text!r} is the prompt's own text: give a different word.")
    return span.text, prompt[: span.start] + new_text + prompt[span.end :]
