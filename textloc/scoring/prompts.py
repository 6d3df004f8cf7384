"""Prompt pairs for localization: same template, different quoted text.

A pair's source prompt renders one text, its target prompt another; patching a layer with the
target's text signal should turn the source image's text into the target's. Target texts come
from a seeded derangement of the source texts, so no pair ever asks for the text it already has.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from textloc.scoring.metrics import contains, words
from textloc.scoring.quoted import Quoted, quoted_spans

T = TypeVar("T")

#: Judges whether images show the scene their prompts ask for (e.g. sign and background colours).
SceneJudge = Callable[[Sequence[Any], Sequence[str]], Sequence[bool]]

SIMPLE_TEMPLATE = 'A sign that says "{}".'
# Scenes in the spirit of CreativeBench/GlyphDraw: the quoted text sits on an object in a scene.
SCENE_TEMPLATES = (
    'Little panda holding a sign that says "{}".',
    'A wooden signpost in a forest that reads "{}".',
    'A coffee cup with the word "{}" printed on it.',
    'A neon sign glowing "{}" above a bar door at night.',
    'A chalkboard in a classroom with "{}" written on it.',
    'A red t-shirt with "{}" printed across the chest.',
    'A birthday cake decorated with the word "{}" in icing.',
    'A street banner that says "{}" hanging between two buildings.',
)
DEFAULT_TEMPLATES = (SIMPLE_TEMPLATE, *SCENE_TEMPLATES)

EXAMPLE_PROMPT = 'A sign that says "HELLO".'
# Short, common, unambiguous words that OCR reads reliably: the default when no list is given.
DEFAULT_WORDS = (
    "OPEN", "STOP", "EXIT", "SALE", "CAFE", "HOTEL", "BOOKS", "PIZZA", "MUSIC", "HELLO",
    "WORLD", "LOVE", "HOME", "PARK", "BANK", "TAXI", "BEER", "SHOP", "FOOD", "BAKERY",
    "GARDEN", "PHONE", "LIGHT", "RIVER", "MOUNTAIN", "DANGER", "SCHOOL", "SUNDAY", "MARKET", "POLICE",
)


@dataclass(frozen=True)
class PromptPair:
    """A source and a target prompt that differ only in their quoted text."""

    source: str
    target: str
    source_text: str
    target_text: str
    template: str

    def __post_init__(self) -> None:
        for text in (self.source_text, self.target_text):
            if not words(text):
                raise ValueError(f"text {text!r} has no letters or digits, so there is nothing for the OCR to read")
        # The scores compare words (case and punctuation aside) and count a hit when the words
        # appear anywhere in the reading: texts that hold each other's words could never show an
        # effect, or the unpatched image would already count as a hit.
        if contains(self.source_text, self.target_text) or contains(self.target_text, self.source_text):
            same = "the same words" if words(self.source_text) == words(self.target_text) else "one holds the other's words"
            raise ValueError(
                f"source text {self.source_text!r} and target text {self.target_text!r} have {same} to the OCR "
                "(case and punctuation aside); a pair needs two texts whose words differ"
            )
        for prompt, text in ((self.source, self.source_text), (self.target, self.target_text)):
            if quoted_text(prompt) != text:
                raise ValueError(f"prompt {prompt!r} does not quote {text!r}")

    def swapped(self) -> PromptPair:
        """The pair the other way round: necessity patching generates the target with the source's text."""
        return PromptPair(self.target, self.source, self.target_text, self.source_text, self.template)

    @classmethod
    def from_template(cls, template: str, source_text: str, target_text: str) -> PromptPair:
        """The pair that fills ``template``'s ``{}`` with each text."""
        return cls(
            source=fill(template, source_text),
            target=fill(template, target_text),
            source_text=source_text,
            target_text=target_text,
            template=template,
        )


def fill(template: str, text: str) -> str:
    """``template`` with its ``{}`` replaced by ``text`` (no other brace is interpreted)."""
    if "{}" not in template:
        raise ValueError(f"template {template!r} has no {{}} where the text goes, e.g. {SIMPLE_TEMPLATE!r}")
    return template.replace("{}", text, 1)


def _first_quoted(prompt: str) -> Quoted:
    spans = quoted_spans(prompt)
    if not spans or not spans[0].text:
        raise ValueError(
            f"prompt {prompt!r} has no quoted text to render; put the text in double quotes, "
            f"e.g. {EXAMPLE_PROMPT!r}"
        )
    return spans[0]


def quoted_text(prompt: str) -> str:
    """The text inside the first pair of double quotes (straight or curly) of ``prompt``."""
    return _first_quoted(prompt).text


def as_template(prompt: str) -> str:
    """``prompt`` with its quoted text replaced by ``{}``, quotes kept."""
    span = _first_quoted(prompt)
    return prompt[: span.start] + "{}" + prompt[span.end :]


def _distinct(texts: Sequence[str]) -> list[str]:
    """Texts without case-insensitive repeats, first spelling kept; at least two required."""
    seen: dict[str, str] = {}
    for text in texts:
        seen.setdefault(text.casefold(), text)
    if len(seen) < 2:
        raise ValueError(f"prompt pairs need at least 2 distinct texts, got {list(seen.values())}")
    return list(seen.values())


def _derangement(items: Sequence[T], rng: random.Random) -> list[T]:
    """A uniformly drawn permutation of distinct ``items`` that moves every item."""
    while True:  # about e ~ 2.7 draws on average
        shuffled = list(items)
        rng.shuffle(shuffled)
        if all(a != b for a, b in zip(items, shuffled)):
            return shuffled


def make_pairs(
    words: Sequence[str],
    n: int | None = None,
    templates: Sequence[str] | None = None,
    seed: int = 0,
) -> list[PromptPair]:
    """``n`` prompt pairs (default: one per distinct word) from a seeded derangement of ``words``.

    Words are taken in a seeded random order; each is paired with a different word (compared
    case-insensitively). With ``n`` above the number of words, further rounds draw fresh
    orders and derangements. Templates (default :data:`DEFAULT_TEMPLATES`; each holds ``{}``
    inside quotes) are cycled in a seeded random order. Same arguments, same pairs.
    """
    distinct = _distinct(words)
    templates = list(DEFAULT_TEMPLATES if templates is None else templates)
    if not templates:
        raise ValueError("templates is empty")
    n = len(distinct) if n is None else n
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    rng.shuffle(templates)
    pairs: list[PromptPair] = []
    while len(pairs) < n:
        sources = list(distinct)
        rng.shuffle(sources)
        for source, target in zip(sources, _derangement(sources, rng)):
            if len(pairs) == n:
                break
            pairs.append(PromptPair.from_template(templates[len(pairs) % len(templates)], source, target))
    return pairs


def pairs_from_prompts(prompts: Sequence[str], seed: int = 0) -> list[PromptPair]:
    """One pair per prompt: the prompt as source, and as target the same prompt with its quoted
    text swapped for another prompt's (a seeded derangement over the distinct quoted texts)."""
    texts = [quoted_text(prompt) for prompt in prompts]
    distinct = _distinct(texts)
    replacement = dict(zip((t.casefold() for t in distinct), _derangement(distinct, random.Random(seed))))
    pairs = []
    for prompt, text in zip(prompts, texts):
        template, new_text = as_template(prompt), replacement[text.casefold()]
        pairs.append(PromptPair(prompt, fill(template, new_text), text, new_text, template))
    return pairs


def load_words(path: str | Path) -> list[str]:
    """Words or phrases from a text file, one per line; blank lines and ``#`` comments skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


# GlyphControl's SimpleBench files, most frequent words first: all_unigram_<bucket>_100.txt
SIMPLEBENCH_BUCKETS = ("top_1000", "1000_10000", "10000_100000", "100000_plus")
CREATIVEBENCH_FILE = "GlyphDraw_origin_remove_render_words.txt"


@dataclass(frozen=True)
class Benchmark:
    """Words by frequency bucket and the templates to render them in."""

    name: str
    words: dict[str, list[str]]
    templates: list[str]

    def all_words(self) -> list[str]:
        """Every word, buckets in order from most to least frequent."""
        return [word for bucket in self.words.values() for word in bucket]

    def pairs(self, n: int | None = None, seed: int = 0, bucket: str | None = None) -> list[PromptPair]:
        """:func:`make_pairs` over this benchmark's words (or one bucket's) and templates."""
        if bucket is not None and bucket not in self.words:
            raise ValueError(f"unknown bucket {bucket!r}; buckets: {', '.join(self.words)}")
        chosen = self.all_words() if bucket is None else self.words[bucket]
        return make_pairs(chosen, n=n, templates=self.templates, seed=seed)


def load_glyphcontrol(root: str | Path, bench: Literal["simple", "creative"] = "simple") -> Benchmark:
    """GlyphControl's SimpleBench or CreativeBench from its prompt files under ``root``.

    ``root`` holds ``SimpleBench/all_unigram_<bucket>_100.txt`` (one word per line, four
    frequency buckets) and, for ``bench="creative"``, ``CreativeBench/GlyphDraw_origin_remove_
    render_words.txt`` (one template per line, ``""`` where the word goes). Both benches use the
    SimpleBench words: SimpleBench in ``A sign that says "{}".``, CreativeBench in its templates.
    """
    root = Path(root)
    if bench not in ("simple", "creative"):
        raise ValueError(f"bench must be 'simple' or 'creative', got {bench!r}")
    words = {}
    for bucket in SIMPLEBENCH_BUCKETS:
        path = root / "SimpleBench" / f"all_unigram_{bucket}_100.txt"
        if not path.exists():
            raise FileNotFoundError(
                f"SimpleBench word list {path} is missing; root must be the folder holding "
                "GlyphControl's SimpleBench/ and CreativeBench/"
            )
        words[bucket] = load_words(path)
    if bench == "simple":
        return Benchmark("SimpleBench", words, [SIMPLE_TEMPLATE])
    lines = load_words(root / "CreativeBench" / CREATIVEBENCH_FILE)
    return Benchmark("CreativeBench", words, [line.replace('""', '"{}"', 1) for line in lines])
