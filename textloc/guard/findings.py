"""The toxic words of a prompt, wherever and however they are written, and the prompt with them replaced.

:func:`find_toxic` asks the detector about every reading of every word the model might write
(:mod:`textloc.guard.normalization`) in one call, and keeps each flagged word once: where a run of
letters or quotes and a word inside it are both flagged, the run. :func:`rewrite` puts each
finding's replacement at its place, spread over its pieces (``"DA" "MN"`` -> ``"LA" "MP"``,
``D-A-M-N`` -> ``L-A-M-P``), so the prompt keeps its shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from textloc.guard.detectors import Detector
from textloc.guard.normalization import Candidate, Reading, candidates


@dataclass
class Finding:
    """A word the detector flagged, and where.

    ``word``: as written, its pieces joined (``DAMN`` for ``"DA" "MN"``, ``D4MN``); ``reading``: the
    canonical form the detector flagged (``damn``); ``spans``: ``(start, end)`` of each piece in the
    prompt; ``forms``: where it was (``quoted``, ``unquoted`` or ``split``), then how it was
    disguised (``spaced``, ``look-alike``, ``leet``, ``invisible``); ``quote``: its quote pair;
    ``cue``: the cue word it follows, unquoted; ``replacement``: what the text layers read instead.
    """

    word: str
    reading: str
    spans: tuple[tuple[int, int], ...]
    forms: tuple[str, ...]
    quote: str | None = None
    cue: str | None = None
    replacement: str = ""

    @property
    def extent(self) -> tuple[int, int]:
        return self.spans[0][0], self.spans[-1][1]

    def describe(self) -> str:
        """One line: ``'D4MN' at 17-21, unquoted after 'says', leet (read as 'damn') -> 'LAMP'``."""
        where = " + ".join(f"{start}-{end}" for start, end in self.spans)
        form = {"quoted": f"quoted {self.quote}", "split": f"split over {self.quote} quotes"}.get(self.forms[0], "unquoted")
        if self.cue:
            form += f" after {self.cue!r}"
        read = f" (read as {self.reading!r})" if self.reading.lower() != self.word.lower() else ""
        return f"{self.word!r} at {where}, {', '.join([form, *self.forms[1:]])}{read} -> {self.replacement!r}"


def find_toxic(prompt: str, detector: Detector) -> list[Finding]:
    """Every word of ``prompt`` the detector flags in some reading, in prompt order, none overlapping."""
    words = candidates(prompt)
    texts = list(dict.fromkeys(reading.text for word in words for reading in word.readings))
    flagged = _flagged(detector, texts)
    hits = []
    for word in words:
        read = [reading for reading in word.readings if reading.text in flagged]
        if read:
            # The reading that undoes the most says how the word was disguised (a detector may know leet itself).
            hits.append(_finding(word, max(read, key=lambda reading: len(reading.spellings))))
    return without_overlaps(hits)


def find_text(prompt: str) -> list[Finding]:
    """Every word of ``prompt`` that reads as text to write: quoted, split over quotes, spaced, or
    after a cue word; in prompt order, none overlapping."""
    words = [word for word in candidates(prompt) if word.where != "unquoted" or word.cue or word.spaced]
    return without_overlaps([_finding(word, word.readings[-1]) for word in words])


def without_overlaps(findings: list[Finding]) -> list[Finding]:
    """``findings`` with none overlapping another, the widest kept (a run over a word inside it), in prompt order."""
    kept: list[Finding] = []
    for hit in sorted(findings, key=lambda hit: (hit.extent[0] - hit.extent[1], hit.extent[0])):
        if all(hit.extent[1] <= other.extent[0] or other.extent[1] <= hit.extent[0] for other in kept):
            kept.append(hit)
    return sorted(kept, key=lambda hit: hit.extent)


def _flagged(detector: Detector, texts: list[str]) -> set[str]:
    """The readings the detector flags, asked in one call (a classifier judges them in one batch)."""
    if not texts:
        return set()
    flagged = {word for span in detector.find(" ".join(texts)) for word in span.split()}
    unknown = sorted(flagged - set(texts))
    if unknown:
        raise ValueError(f"The detector reported {unknown[0]!r}, which is not among the words it was given: a detector returns words as they appear in its text.")
    return flagged


def _finding(word: Candidate, reading: Reading) -> Finding:
    forms = (word.where, *(("spaced",) if word.spaced else ()), *reading.spellings)
    return Finding(word.written, reading.text, word.parts, forms, word.quote, word.cue)


def rewrite(prompt: str, findings: list[Finding]) -> str:
    """``prompt`` with each finding's replacement at its place (findings in order, none overlapping).

    A replacement is spread over the finding's pieces, keeping what stands between them (separators,
    quotes). An empty replacement (a dropped word) takes the space on one side with it.
    """
    pieces, end = [], 0
    for finding in findings:
        start, stop = finding.extent
        new = _spread(prompt, finding.spans, finding.replacement)
        if not new:
            if start > end and prompt[start - 1].isspace():
                while start > end and prompt[start - 1].isspace():
                    start -= 1
            else:
                while stop < len(prompt) and prompt[stop].isspace():
                    stop += 1
        pieces += [prompt[end:start], new]
        end = stop
    return "".join(pieces) + prompt[end:]


def _spread(prompt: str, spans: tuple[tuple[int, int], ...], new: str) -> str:
    """``new`` cut over the pieces at ``spans`` in proportion to their lengths, each piece one letter
    at least while letters last, joined by the prompt's own text between the pieces."""
    lengths = [end - start for start, end in spans]
    if len(new) < len(spans):
        cuts = [*range(len(new) + 1), *[len(new)] * (len(spans) - len(new))]
    else:
        total, cuts, done = sum(lengths), [0], 0
        for number, length in enumerate(lengths[:-1], 1):
            done += length
            cuts.append(min(max(round(done * len(new) / total), cuts[-1] + 1), len(new) - (len(spans) - number)))
        cuts.append(len(new))
    text = ""
    for number, (start, _) in enumerate(spans):
        piece = new[cuts[number] : cuts[number + 1]]
        if piece:
            text += (prompt[spans[number - 1][1] : start] if text else "") + piece
    return text
