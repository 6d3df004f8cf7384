"""Every word of a prompt a model might write, and the canonical readings a toxic-word detector judges.

A guard that reads only double-quoted words is bypassed by asking for the word any other way. This
module reads a prompt as a model might, and yields a :class:`Candidate` for

- every word, quoted in any style (:data:`QUOTES`) or not; an unquoted word notes the cue word it
  follows (``... that says DAMN``, :data:`CUE_WORDS`), and every other word is read too, as the
  last resort;
- quotes the model joins into one word (``"DA" "MN"``, :func:`_split_runs`);
- letters spaced or joined by punctuation (``D A M N``, ``D-A-M-N``, ``DA-MN``, :func:`_spaced_runs`).

Each candidate carries its readings (:class:`Reading`): the word as written (for a detector that
reads case or other scripts), and case-folded, with look-alike letters folded to the Latin letters
they look like, invisible characters dropped, and leet digits and symbols read as letters.

Look-alikes are folded with maintained Unicode data, chosen on measured coverage of 831
look-alike letters (Cyrillic, Greek, fullwidth, mathematical alphanumerics, circled): NFKC folds
fullwidth, mathematical and circled letters (780/780) but no Cyrillic or Greek (0/51); the Unicode
confusables table (TR39, via ``confusable_homoglyphs``) folds Cyrillic and Greek (47/51) where
transliterators read them by sound (anyascii 31/51, unidecode 26/51: Cyrillic ``Н`` becomes ``N``,
not ``H``); anyascii transliterates what is left (accents). Together, with ``l``/``i`` both tried
where a look-alike could be either, 831/831. Leet is a small explicit table (:data:`LEET`): it is
not Unicode data. A reading with leet is tried beside the one without (``B2B`` stays ``b2b``), and
a word of digits only is a number, not judged at all (``404``, ``7175``). Words are judged whole,
never by substring: ``Scunthorpe`` is one word, not a toxic one.
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

#: Quote pairs (opening, closing) a prompt may wrap the text to write in.
QUOTES: tuple[tuple[str, str], ...] = (
    ('"', '"'), ("“", "”"), ("„", "“"), ("„", "”"), ("«", "»"), ("»", "«"), ("‹", "›"), ("›", "‹"),
    ("'", "'"), ("‘", "’"), ("‚", "‘"), ("`", "`"), ("「", "」"), ("『", "』"),
)
# Single quotes double as apostrophes (don't, dogs'): they open only before a word and close only after one.
_APOSTROPHES = frozenset("'‘’‚`")

#: Words after which the next words are text the prompt asks the model to write.
CUE_WORDS: frozenset[str] = frozenset(
    "say says said saying read reads reading write writes wrote written writing text texts sign signs "
    "label labels labeled labelled title titled caption captioned word words spell spells spelled spelt "
    "spelling letters lettering inscription inscribed slogan banner logo print printed stating states "
    "message graffiti typography neon".split()
)
# Words that may stand between a cue word and the text it asks for (a sign that says the DAMN);
# any other word ends the cue's reach (not the 'blue' of 'a sign on a blue background').
_FILLERS = frozenset("a an the that which this it is are just only".split())
# Words that follow a cue word without being its text (a sign on a wall, a label with a logo).
_FUNCTION_WORDS = frozenset("on in at with of for by from to and or over under near next against behind above below beside into onto".split())
_SENTENCE_END = re.compile(r"[.;!?\n]")

#: Leet spellings: a digit or symbol and the letters it stands for.
LEET: dict[str, tuple[str, ...]] = {
    "4": ("a",), "@": ("a",), "8": ("b",), "3": ("e",), "6": ("g",), "9": ("g",), "1": ("i", "l"),
    "!": ("i",), "|": ("l", "i"), "0": ("o",), "5": ("s",), "$": ("s",), "7": ("t",),
}
# Leet symbols that are also punctuation (DAMN!, a | b): part of a word only between two letters.
_INNER_LEET = frozenset("!|")
# Separators between spaced letters (D A M N, D-A-M-N, D.A.M.N, D * A * M * N), up to three characters.
_SPACED_SEPARATOR = re.compile(r"[ \t\-._·•*~/+:,]{1,3}")
# Punctuation that joins chunks of one word with no space (DA-MN, SH.IT).
_JOINER = re.compile(r"[\-._·•*~/]")
# What may stand between quotes the model joins into one word ("DA" "MN", "DA"+"MN").
_SPLIT_GAP = re.compile(r"[ \t+]*")
# One-letter English words, which may stand next to spaced letters without being one of them.
_ONE_LETTER_WORDS = frozenset("aAI")
# Readings tried per word at most: each ambiguous character (1 -> i or l) doubles them.
_MAX_READINGS = 64


@dataclass(frozen=True)
class Reading:
    """A canonical form of a word for the detector, and the spellings undone to reach it
    (``"look-alike"``, ``"leet"``, ``"invisible"``; none for the word as written)."""

    text: str
    spellings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """A word the model might write: where its pieces sit in the prompt, and how it may be read.

    ``parts`` are ``(start, end)`` character ranges of the prompt, one per piece of the word (one
    for a plain word; one per letter of a spaced word; one per quote of a split word); ``written``
    their characters joined; ``where`` is ``"quoted"``, ``"unquoted"`` or ``"split"`` (over several
    quotes); ``quote`` the quote pair around it; ``cue`` the cue word it follows, unquoted;
    ``spaced`` whether its letters are spaced or joined by punctuation.
    """

    parts: tuple[tuple[int, int], ...]
    written: str
    readings: tuple[Reading, ...]
    where: str
    quote: str | None = None
    cue: str | None = None
    spaced: bool = False

    @property
    def extent(self) -> tuple[int, int]:
        """The prompt's range from the word's first piece to its last (separators and quotes between included)."""
        return self.parts[0][0], self.parts[-1][1]


# --------------------------------------------------------------------------------------------
# Characters


@lru_cache(maxsize=4096)
def fold_letter(char: str) -> str:
    """The ASCII letters or digits ``char`` looks like, lower case (``"Ｄ"`` and ``"𝐃"`` -> ``"d"``,
    Cyrillic ``"Р"`` -> ``"p"``), or ``""`` for a character that is no letter or digit."""
    if char.isascii():
        return char.lower() if char.isalnum() else ""
    from anyascii import anyascii
    from confusable_homoglyphs import confusables

    folded = ""
    for part in unicodedata.normalize("NFKC", char):  # fullwidth, mathematical, circled, ligatures
        if not part.isascii():
            # The Unicode confusables table: the Latin letter it looks like (Cyrillic Р -> P), not the one it sounds like (R).
            found = confusables.is_confusable(part, preferred_aliases=["latin"])
            glyphs = [g["c"] for g in found[0]["homoglyphs"]] if found else []
            part = next((g for g in glyphs if len(g) == 1 and g.isascii() and g.isalnum()), None) or anyascii(part)
        folded += part
    return "".join(c for c in folded.lower() if c.isascii() and c.isalnum())


def _is_invisible(char: str) -> bool:
    """Zero-width and formatting characters and combining marks: nothing the model draws between letters."""
    return unicodedata.category(char) in ("Cf", "Mn", "Me")


def _letter_options(token: str, index: int) -> list[tuple[str, str | None]]:
    """What the character at ``index`` of ``token`` may stand for: (letters, spelling undone or None)."""
    char = token[index]
    if char in LEET and not char.isdigit():
        return [(letter, "leet") for letter in LEET[char]]
    if _is_invisible(char):
        return [("", "invisible")]
    if char.isascii():
        options: list[tuple[str, str | None]] = [(char.lower(), None)]
        if char.isdigit():
            options += [(letter, "leet") for letter in LEET.get(char, ())]
        elif _lone_case(token, char):
            options.append(("i" if char == "l" else "l", "look-alike"))  # SHlT: a lower-case l among capitals is an I
        return options
    folded = fold_letter(char)
    spelling = None if folded == char.casefold() else "look-alike"
    if folded in ("i", "l"):  # the confusables table folds I, l and their look-alikes to l: either may be meant
        return [(folded, spelling), ("l" if folded == "i" else "i", "look-alike")]
    return [(folded, spelling)]


def _lone_case(token: str, char: str) -> bool:
    """Whether ``char`` is an ``l`` among capitals or an ``I`` among small letters: the other's look-alike."""
    others = [c for c in token if c.isalpha() and c != char]
    return bool(others) and (char == "l" and all(c.isupper() for c in others) or char == "I" and all(c.islower() for c in others))


def readings(token: str) -> tuple[Reading, ...]:
    """Every reading of ``token``: as written, then case-folded with look-alikes folded and leet read
    as letters, each combination of the ambiguous characters tried (the fewest undone first); none
    for a number."""
    if all(c.isdigit() or _is_invisible(c) for c in token):
        return ()  # a number, not a word: 7175 is not TITS (better-profanity's own leet would say it is)
    options = [_letter_options(token, i) for i in range(len(token))]
    combos = itertools.product(*options)
    if math.prod(len(choices) for choices in options) > _MAX_READINGS:  # too many to try: as read plainly, and all undone
        combos = iter([tuple(choices[0] for choices in options), tuple(choices[-1] for choices in options)])
    found: dict[str, tuple[str, ...]] = {token: ()}  # as written: for a detector that reads case or other scripts
    for combo in combos:
        text = "".join(letters for letters, _ in combo)
        spellings = tuple(sorted({spelling for _, spelling in combo if spelling}))
        if text and (text not in found or len(spellings) < len(found[text])):
            found[text] = spellings
    # A detector returns the words it flags as they appear: give it words and nothing else (not $hit).
    return tuple(sorted((Reading(text, spellings) for text, spellings in found.items() if text.isalnum()), key=lambda r: len(r.spellings)))


# --------------------------------------------------------------------------------------------
# Words, quotes, runs


def _word_kind(prompt: str, index: int) -> str:
    """``w`` a letter of a word, ``i`` part of a word only inside one (``!``, ``|``, invisible), ``o`` other."""
    char = prompt[index]
    if char in _INNER_LEET or _is_invisible(char):
        return "i"
    if char in LEET or fold_letter(char):
        return "w"
    return "o"


def words(prompt: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every word of ``prompt``: letters, digits, look-alikes and leet symbols;
    ``!``, ``|`` and invisible characters only between two of them (``sh!t``, not ``DAMN!``)."""
    kinds = "".join(_word_kind(prompt, i) for i in range(len(prompt)))
    return [match.span() for match in re.finditer(r"w(?:[wi]*w)?", kinds)]


def quotes(prompt: str) -> list[tuple[int, int, str]]:
    """``(start, end, pair)`` of the text inside every quote of ``prompt``, in any :data:`QUOTES` style."""
    found, index = [], 0
    while index < len(prompt):
        match = _quote_at(prompt, index)
        if match is None:
            index += 1
            continue
        if match[1] > match[0]:  # an empty quote ("") holds nothing, but pairs its quotes
            found.append(match)
        index = match[1] + 1
    return found


def _quote_at(prompt: str, index: int) -> tuple[int, int, str] | None:
    """The quote opening at ``index``: its inner range and pair, or None."""
    for opening, closing in QUOTES:
        if prompt[index] != opening or opening in _APOSTROPHES and not _opens(prompt, index):
            continue
        end = index + 1
        while (end := prompt.find(closing, end)) != -1 and "\n" not in prompt[index:end]:
            if closing not in _APOSTROPHES or _closes(prompt, end):
                return index + 1, end, opening + closing
            end += 1
    return None


def _opens(prompt: str, index: int) -> bool:
    before = prompt[index - 1] if index else " "
    after = prompt[index + 1] if index + 1 < len(prompt) else " "
    return not fold_letter(before) and not after.isspace()


def _closes(prompt: str, index: int) -> bool:
    before = prompt[index - 1]
    after = prompt[index + 1] if index + 1 < len(prompt) else " "
    return not fold_letter(after) and not before.isspace()


def candidates(prompt: str) -> list[Candidate]:
    """Every word of ``prompt`` the model might write, with its readings (see the module docstring)."""
    spans = words(prompt)
    quoted = quotes(prompt)
    quote_of = {span: pair for span in spans for start, end, pair in quoted if start <= span[0] and span[1] <= end}
    found = []
    for number, span in enumerate(spans):
        pair = quote_of.get(span)
        cue = None if pair else _cue_before(prompt, spans, number)
        found.append(_candidate((span,), prompt, "quoted" if pair else "unquoted", pair, cue))
    for run in _spaced_runs(prompt, spans):
        pair = quote_of.get(run[0])
        cue = None if pair else _cue_before(prompt, spans, spans.index(run[0]))
        found.append(_candidate(run, prompt, "quoted" if pair else "unquoted", pair, cue, spaced=True))
    for run, pair in _split_runs(prompt, spans, quoted):
        found.append(_candidate(run, prompt, "split", pair, None))
    return [candidate for candidate in found if candidate.readings]


def _candidate(parts: tuple[tuple[int, int], ...], prompt: str, where: str, quote: str | None, cue: str | None, spaced: bool = False) -> Candidate:
    written = "".join(prompt[start:end] for start, end in parts)
    return Candidate(parts, written, readings(written), where, quote, cue, spaced)


def _cue_before(prompt: str, spans: list[tuple[int, int]], number: int) -> str | None:
    """The cue word that word ``number`` follows in its sentence, with only fillers between (``says
    the DAMN``); None for a cue word, filler or function word itself."""
    if prompt[slice(*spans[number])].lower() in CUE_WORDS | _FILLERS | _FUNCTION_WORDS:
        return None
    for earlier in range(number - 1, -1, -1):
        word = prompt[slice(*spans[earlier])]
        if _SENTENCE_END.search(prompt[spans[earlier][1] : spans[earlier + 1][0]]):
            return None
        if word.lower() in CUE_WORDS:
            return word
        if word.lower() not in _FILLERS:
            return None
    return None


def _spaced_runs(prompt: str, spans: list[tuple[int, int]]) -> list[tuple[tuple[int, int], ...]]:
    """Runs of words that spell one word: single letters with the same separator between each
    (``D A M N``, ``D-A-M-N``; three letters at least), or chunks joined by one punctuation mark
    with no space (``DA-MN``). A run is read whole, never by substring (``S C U N T H O R P E`` is
    not judged in parts); but a letter run is also read without up to two one-letter words at either
    end (``a D A M N I``), and without a letter it shares with the run before or after it
    (``D A M N S-I-G-N``)."""
    runs = []
    first = 0
    while first < len(spans) - 1:
        gap = _gap(prompt, spans, first)
        spaced = _is_letter(spans[first]) and _is_letter(spans[first + 1]) and _SPACED_SEPARATOR.fullmatch(gap) is not None
        if not (spaced or _JOINER.fullmatch(gap)):
            first += 1
            continue
        last = first + 1
        while last + 1 < len(spans) and _gap(prompt, spans, last) == gap and (not spaced or _is_letter(spans[last + 1])):
            last += 1
        run = tuple(spans[first : last + 1])
        if not spaced:
            runs.append(run)
        else:
            letters = [prompt[slice(*span)] for span in run]
            ends_previous = first > 0 and _joins(prompt, spans, first - 1)
            starts_next = last + 1 < len(spans) and _joins(prompt, spans, last)
            head = int(ends_previous) + _one_letter_words(letters[int(ends_previous) :])
            tail = int(starts_next) + _one_letter_words(letters[::-1][int(starts_next) :])
            runs += [run[skip : len(run) - cut] for skip in range(head + 1) for cut in range(tail + 1) if len(run) - skip - cut >= 3]
        first = last  # the next run may start where this one ends (a D-A-M-N)
    return runs


def _one_letter_words(letters: list[str]) -> int:
    """How many of the first two letters are one-letter English words (a, A, I), counting until one is not."""
    count = 0
    while count < min(2, len(letters)) and letters[count] in _ONE_LETTER_WORDS:
        count += 1
    return count


def _joins(prompt: str, spans: list[tuple[int, int]], number: int) -> bool:
    """Whether word ``number`` and the next may be pieces of one word (letters spaced, chunks joined)."""
    gap = _gap(prompt, spans, number)
    letters = _is_letter(spans[number]) and _is_letter(spans[number + 1])
    return bool(_JOINER.fullmatch(gap) or letters and _SPACED_SEPARATOR.fullmatch(gap))


def _gap(prompt: str, spans: list[tuple[int, int]], number: int) -> str:
    """What stands between word ``number`` and the next."""
    return prompt[spans[number][1] : spans[number + 1][0]]


def _is_letter(span: tuple[int, int]) -> bool:
    return span[1] - span[0] == 1


def _split_runs(prompt: str, spans: list[tuple[int, int]], quoted: list[tuple[int, int, str]]) -> list[tuple[tuple[tuple[int, int], ...], str]]:
    """Every run of two or more adjacent one-word quotes (``"DA" "MN"``, ``«SH»«IT»``), which a model
    joins into one word, and each run within it: the joins may be anywhere. Returns each run's
    words and the quote pair of its first quote."""
    single = []  # the one word of each quote that holds exactly one word and nothing else, or None
    for start, end, _ in quoted:
        inside = [span for span in spans if start <= span[0] and span[1] <= end]
        single.append(inside[0] if len(inside) == 1 and prompt[start:end].strip() == prompt[slice(*inside[0])] else None)
    runs = []
    for first in range(len(quoted)):
        for last in range(first + 1, len(quoted)):
            gap = prompt[quoted[last - 1][1] + 1 : quoted[last][0] - 1]  # between the closing and the opening quote
            if single[first] is None or single[last] is None or not _SPLIT_GAP.fullmatch(gap):
                break
            runs.append((tuple(single[first : last + 1]), quoted[first][2]))
    return runs
