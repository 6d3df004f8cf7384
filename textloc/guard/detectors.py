"""Toxic-word detectors: which words of a text a guard must keep out of the image.

A detector is anything with ``find(text) -> list[str]``: the toxic words (or spans) of ``text``,
each as it appears there. :func:`get_detector` builds one from what a user names:

- ``"better-profanity"`` (the default, offline): its word list with leetspeak variants;
- ``"alt-profanity-check"`` (offline, optional: ``pip install alt-profanity-check``): a small
  scikit-learn model;
- a folder holding a transformers text-classification model (a user's own toxicity classifier),
  whose label map names a toxic label;
- any callable ``find(text) -> list[str]``, or an object with that ``find`` method.

The built-in detectors judge a text word by word (better-profanity has no call that says which
words matched, and a whole-string classifier says only whether some word is toxic), so every
word they flag is a span the guard can replace.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

DETECTORS: tuple[str, ...] = ("better-profanity", "alt-profanity-check")

# Label names that mean "toxic" in the label maps of toxicity classifiers (unitary/toxic-bert,
# martin-ha/toxic-comment-model, cardiffnlp offensive, ...); names that negate them do not count.
_TOXIC_LABEL = re.compile(r"toxic|offens|profan|obscen|hate|insult|abus|vulgar|nsfw|threat|sexual|explicit", re.IGNORECASE)
_BENIGN_LABEL = re.compile(r"^(non|not|no)\b|^(non|not)[-_ ]|neutral|clean|safe|normal", re.IGNORECASE)


@runtime_checkable
class Detector(Protocol):
    """Finds the toxic words of a text."""

    def find(self, text: str) -> list[str]:
        """The toxic words or spans of ``text``, each as it appears in ``text``."""


def words_of(text: str) -> list[str]:
    """The words a word-by-word detector judges: runs of non-space characters."""
    return re.findall(r"\S+", text)


class WordDetector:
    """A detector that judges each word alone, with ``is_toxic(words) -> list[bool]`` (one batch).

    A word with punctuation at its edges (``DAMN!``) is judged with and without it; the span
    reported is the shortest form flagged, so the punctuation stays in the image.
    """

    def __init__(self, is_toxic: Callable[[list[str]], Sequence[bool]], name: str):
        self.is_toxic, self.name = is_toxic, name
        self._verdicts: dict[str, bool] = {}

    def find(self, text: str) -> list[str]:
        tokens = words_of(text)
        forms = [(token.strip(string.punctuation) or token, token) for token in tokens]
        self._judge([form for pair in forms for form in pair])
        found = []
        for bare, token in forms:
            span = bare if self._verdicts[bare] else token if self._verdicts[token] else None
            if span is not None and span not in found:
                found.append(span)
        return found

    def _judge(self, words: list[str]) -> None:
        new = list(dict.fromkeys(word for word in words if word not in self._verdicts))
        if new:
            self._verdicts.update(zip(new, (bool(v) for v in self.is_toxic(new))))

    def __repr__(self) -> str:
        return f"WordDetector({self.name})"


def better_profanity_detector() -> WordDetector:
    """better-profanity's 916-word list and its leetspeak variants, word by word."""
    try:
        from better_profanity import Profanity
    except ImportError as error:
        raise ImportError("The better-profanity detector needs its package: pip install better-profanity (or textloc[guard]).") from error
    profanity = Profanity()  # its own word list: a user's changes to the global one do not leak in
    return WordDetector(lambda words: [profanity.contains_profanity(word) for word in words], "better-profanity")


def alt_profanity_check_detector() -> WordDetector:
    """alt-profanity-check's scikit-learn model (offline), word by word."""
    try:
        from profanity_check import predict
    except ImportError as error:
        raise ImportError("The alt-profanity-check detector needs its package: pip install alt-profanity-check (or textloc[guard-ml]).") from error
    return WordDetector(lambda words: [bool(v) for v in predict(words)], "alt-profanity-check")


def classifier_detector(path: str | Path, toxic_label: str | None = None, threshold: float = 0.5) -> WordDetector:
    """A local transformers text-classification model, word by word: a word is toxic when the
    probability of its toxic label(s) reaches ``threshold``.

    The toxic label is ``toxic_label``, else every label of the model's ``id2label`` whose name
    says toxic (``toxic``, ``offensive``, ``hate``, ...; not ``non-toxic``). Multi-label models
    (``problem_type="multi_label_classification"``) are read with a sigmoid, others a softmax.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"No text-classification model at {str(path)!r}: give a folder holding a transformers "
            "model's config.json, weights and tokenizer, or one of the detectors " + ", ".join(DETECTORS) + "."
        )
    model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    labels = {int(index): str(name) for index, name in model.config.id2label.items()}
    if toxic_label is not None:
        toxic = [index for index, name in labels.items() if name == toxic_label]
        if not toxic:
            raise ValueError(f"The classifier at {path} has no label {toxic_label!r}; its labels are {', '.join(labels.values())}.")
    else:
        toxic = [index for index, name in labels.items() if _TOXIC_LABEL.search(name) and not _BENIGN_LABEL.search(name)]
        if not toxic:
            raise ValueError(
                f"The classifier at {path} has no toxic label (its labels are {', '.join(labels.values())}); "
                "name the one that means toxic with toxic_label=."
            )
    multi_label = model.config.problem_type == "multi_label_classification"

    @torch.no_grad()
    def is_toxic(words: list[str]) -> list[bool]:
        inputs = tokenizer(words, padding=True, truncation=True, return_tensors="pt").to(model.device)
        logits = model(**inputs).logits.float()
        probabilities = logits.sigmoid() if multi_label else logits.softmax(-1)
        return (probabilities[:, toxic].max(-1).values >= threshold).tolist()

    return WordDetector(is_toxic, f"classifier {folder}")


class _FunctionDetector:
    """A user's ``find(text) -> list[str]``, its answers checked."""

    def __init__(self, find: Callable[[str], Sequence[str]]):
        self.function = find

    def find(self, text: str) -> list[str]:
        found = self.function(text)
        if isinstance(found, (str, bool)) or not all(isinstance(span, str) for span in found):
            raise TypeError(
                f"A detector returns the list of toxic words it found in the text, not {found!r}; "
                "for a yes/no judge of one word, wrap it: tl.guard.WordDetector(lambda words: [judge(w) for w in words], 'name')."
            )
        return list(found)

    def __repr__(self) -> str:
        return f"detector {getattr(self.function, '__name__', self.function)!r}"


def get_detector(detector: str | Path | Detector | Callable[[str], Sequence[str]] = "better-profanity") -> Detector:
    """The detector ``detector`` names (see the module docstring)."""
    if isinstance(detector, str) and detector in DETECTORS:
        return better_profanity_detector() if detector == "better-profanity" else alt_profanity_check_detector()
    if isinstance(detector, Path) or isinstance(detector, str) and (Path(detector).expanduser().exists() or re.search(r"[/\\~]|^\.", detector)):
        return classifier_detector(detector)
    if isinstance(detector, str):
        raise ValueError(
            f"Unknown detector {detector!r}: choose {' or '.join(DETECTORS)}, a folder holding a transformers "
            "text-classification model, or a callable find(text) -> list of toxic words."
        )
    if isinstance(detector, Detector):
        return detector
    if callable(detector):
        return _FunctionDetector(detector)
    raise TypeError(f"A detector is a name, a classifier folder, or a callable find(text) -> list of toxic words; not {type(detector).__name__}.")
