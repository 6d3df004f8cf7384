"""The guard's weights side: a LoRA on the text layers alone that writes a benign word where a toxic one is asked for.

ToxicBench's NSFW-Intervention (arXiv 2502.05066) built from textloc's own parts:

- :class:`GuardPairs`, pairs the renderer makes: a caption asking for a toxic word (in double
  quotes mostly, else in one of the other forms users write, :data:`~textloc.guard.forms.FORMS`),
  and the same scene (sign and background colours, shape, offset) with the benign word drawn
  instead, chosen by the runtime guard's own replacer, so the prompt side and the weights side
  write the same word; mixed with ordinary signs of the benign vocabulary (``1 - toxic_fraction``
  of the examples) so the model keeps writing those. No held-out combination of a toxic word
  (the scenes the adversarial benchmark asks in) or of its replacement is ever drawn.
- :func:`train_guard_lora`: :func:`textloc.finetune.train_lora` on those pairs; the folder it
  writes loads with ``pipe.load_lora_weights`` and :func:`textloc.load_lora`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from textloc.finetune import TrainConfig, TrainedLora, train_lora
from textloc.guard.detectors import Detector, get_detector
from textloc.guard.forms import FORMS
from textloc.guard.runtime import Benign, ReplaceSpec, _Replacer
from textloc.layers import LayerSource
from textloc.tiny.data import (
    COLOUR_TEMPLATES,
    COLOURS,
    PLAIN_FRACTION,
    PLAIN_TEMPLATE,
    SHAPES,
    TOXIC_WORDS,
    VOCABULARY,
    caption_for,
    is_held_out,
    make_example,
    render_sign,
)

#: Share of the examples that ask for a toxic word; the rest are ordinary signs of the benign
#: words, so that what the LoRA learns for toxic words leaves the others as they were.
TOXIC_FRACTION = 0.5
#: How many of the ordinary signs' captions the anchor holds (``TrainConfig.anchor_weight``):
#: their text tokens are what the LoRA must leave as the model reads them.
ANCHOR_PROMPTS = 256
#: How many toxic captions a closed-form edit maps to their benign twins (:meth:`GuardPairs.edit_pairs`).
EDIT_PAIRS = 256
#: Share of the toxic captions with the word in double quotes (how the model was trained to be
#: asked); the others take the remaining forms in turn, evenly.
DOUBLE_QUOTED_FRACTION = 0.5


@dataclass(frozen=True)
class GuardPair:
    """One example and the facts a test checks it against: the caption asks for ``asked`` (in
    ``form``; ``None`` for an ordinary sign, where ``asked`` is the word drawn) and the image shows
    ``written`` on a ``sign`` sign over a ``background``; ``glyphs`` is the renderer's map of which
    letter is where (:func:`textloc.tiny.data.render_sign`)."""

    image: Image.Image
    glyphs: Image.Image
    caption: str
    asked: str
    written: str
    sign: str
    background: str
    form: str | None


class GuardPairs:
    """An endless stream of guard training examples (``example(index) -> (image, caption)``; see the module docstring).

    ``replace``: ``"benign"`` (a word of the toxic word's length from ``benign_words``, the runtime
    guard's default) or a mapping ``{toxic word: replacement}``; the replacement must be letters the
    renderer can draw. ``benign_words`` default to the renderer's vocabulary less ``toxic_words``
    (textloc-tiny's guard vocabulary). ``forms``: the forms toxic captions use besides double quotes.
    ``twin_fraction``: the share of the ordinary signs drawn from :attr:`twin_words` rather than
    from every benign word, to hold the letters the replacements change where benign words use them.
    """

    size: int | None = None

    def __init__(
        self,
        toxic_words: Sequence[str] = TOXIC_WORDS,
        benign_words: Sequence[str] | None = None,
        *,
        replace: ReplaceSpec = "benign",
        detector: str | Path | Detector | Callable[[str], Sequence[str]] = "better-profanity",
        toxic_fraction: float = TOXIC_FRACTION,
        forms: Sequence[str] = tuple(FORMS),
        preserve: bool = False,
        twin_fraction: float = 0.0,
        seed: int = 0,
    ):
        self.toxic_words = tuple(word.strip().upper() for word in toxic_words)
        if not self.toxic_words or not all(word.isalpha() for word in self.toxic_words):
            raise ValueError("GuardPairs needs at least one toxic word, in letters only.")
        if benign_words is None:
            benign_words = [word for word in VOCABULARY if word not in self.toxic_words]
        self.benign_words = tuple(word.strip().upper() for word in benign_words)
        if not self.benign_words or set(self.benign_words) & set(self.toxic_words):
            raise ValueError("benign_words must be words the renderer draws and hold none of the toxic words.")
        # 0 is the control: the model's own ordinary signs alone, to tell what fine-tuning costs from what the guard does.
        if isinstance(toxic_fraction, bool) or not 0 <= toxic_fraction <= 1:
            raise ValueError(f"toxic_fraction={toxic_fraction!r}: the share of toxic examples is between 0 and 1.")
        unknown = [form for form in forms if form not in FORMS]
        if unknown:
            raise ValueError(f"Unknown form {unknown[0]!r}; the forms are: {', '.join(FORMS)}.")
        replacer = _Replacer(replace, get_detector(detector), self.benign_words)
        if not (isinstance(replacer.spec, (Benign, Mapping))):
            raise ValueError(f"replace={replace!r}: a guard LoRA learns to write a word; use 'benign' or a mapping WORD=NEW.")
        #: What each toxic word is drawn as: the word the runtime guard's replacer picks for it.
        self.replacements = {word: replacer(word, word).upper() for word in self.toxic_words}
        for word, new in self.replacements.items():
            if not new.isalpha() or new in self.toxic_words:
                raise ValueError(f"{word} would be replaced by {new!r}: the renderer draws a benign word of letters only.")
        self.toxic_fraction, self.preserve, self.seed = float(toxic_fraction), bool(preserve), seed
        #: The benign words with a letter, in its slot, that a replacement changes in that slot (LAMP's
        #: M for DAMN->DAWN): a LoRA that swaps letters slot by slot breaks these first.
        self.twin_words = tuple(word for word in self.benign_words if any(
            _changed_slots(toxic, new) & set(enumerate(word)) for toxic, new in self.replacements.items()))
        if isinstance(twin_fraction, bool) or not 0 <= twin_fraction <= 1:
            raise ValueError(f"twin_fraction={twin_fraction!r}: the share of ordinary signs drawn from the twin words is between 0 and 1.")
        if twin_fraction and not self.twin_words:
            raise ValueError("twin_fraction needs benign words that share a changed letter with a toxic word; these replacements leave none.")
        self.twin_fraction = float(twin_fraction)
        self.other_forms = tuple(form for form in forms if form != "double quotes")

    @property
    def description(self) -> str:
        """What training.json records for these pairs (a resumed run must match it)."""
        swaps = ", ".join(f"{word}->{new}" for word, new in self.replacements.items())
        kept = "; ordinary signs kept as the model draws them" if self.preserve else ""
        twins = f"; {self.twin_fraction:.0%} of ordinary signs from {', '.join(self.twin_words)}" if self.twin_fraction else ""
        return (f"guard pairs, seed {self.seed}: {swaps}; {self.toxic_fraction:.0%} toxic{kept}{twins}, other forms {', '.join(self.other_forms) or 'none'}; "
                f"benign words {', '.join(self.benign_words)}")

    def _rng(self, index: int) -> random.Random:
        return random.Random(f"textloc-guard/{self.seed}/{index}")

    def preserved(self, index: int) -> bool:
        """Whether ``train_lora`` takes the model's own prediction (its LoRA off) as the target of
        example ``index``: with ``preserve``, the ordinary signs, so that the LoRA is held to drawing
        them as it did with an exact target, not one noisy draw of the image's."""
        return self.preserve and self._rng(index).random() >= self.toxic_fraction

    def pair(self, index: int) -> GuardPair:
        """The ``index``-th example, always the same."""
        rng = self._rng(index)
        if rng.random() >= self.toxic_fraction:
            # (drawn only when asked, so that the pairs without twins stay the ones earlier runs trained on)
            twin = self.twin_fraction > 0 and rng.random() < self.twin_fraction
            example = make_example(self.seed, index, words=self.twin_words if twin else self.benign_words)
            return GuardPair(example.image, example.glyphs, example.caption, example.word, example.word, example.sign, example.background, None)
        asked = rng.choice(self.toxic_words)
        written = self.replacements[asked]
        while True:  # never a scene held out for the word asked or the word drawn
            sign, background = rng.sample(list(COLOURS), 2)
            if not is_held_out(sign, background, asked) and not is_held_out(sign, background, written):
                break
        template = PLAIN_TEMPLATE if rng.random() < PLAIN_FRACTION else rng.choice(COLOUR_TEMPLATES)
        form = "double quotes" if not self.other_forms or rng.random() < DOUBLE_QUOTED_FRACTION else rng.choice(self.other_forms)
        shape = rng.choice(SHAPES)
        offset = (rng.randint(-1, 1), rng.randint(-3, 3))
        image, _, glyphs = render_sign(written, sign, background, shape, offset)
        caption = caption_for(FORMS[form](asked), sign, background, template.replace('"{word}"', "{word}"))
        return GuardPair(image, glyphs, caption, asked, written, sign, background, form)

    @property
    def anchor_prompts(self) -> tuple[str, ...]:
        """The captions of the first :data:`ANCHOR_PROMPTS` ordinary signs of the stream: what
        ``train_lora``'s anchor holds (with ``anchor_weight``) where no other prompts are given."""
        if self.toxic_fraction == 1:
            raise ValueError("toxic_fraction=1 draws no ordinary signs to anchor: give TrainConfig(anchor_prompts=...) instead.")
        captions: list[str] = []
        index = 0
        while len(captions) < ANCHOR_PROMPTS:
            pair = self.pair(index)
            if pair.form is None:
                captions.append(pair.caption)
            index += 1
        return tuple(captions)

    def edit_pairs(self, count: int = EDIT_PAIRS) -> tuple[tuple[str, str], ...]:
        """The first ``count`` toxic captions of the stream, each beside the same caption asking for
        the word it is drawn as instead, in the same form: ``(source, target)`` pairs for a
        closed-form edit (:func:`textloc.finetune.closed_form_edit`), which need the two to line up
        token by token. Leet asks for the benign word in plain letters (its digits are not the
        word's letters); look-alike letters are left out (another script's letter takes more bytes
        than the one it imitates, so no target lines up with it on a byte-level tokenizer)."""
        if self.toxic_fraction == 0:
            raise ValueError("toxic_fraction=0 draws no toxic captions to edit.")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count={count!r}: how many pairs, a positive integer.")
        pairs: list[tuple[str, str]] = []
        index = 0
        while len(pairs) < count:
            pair = self.pair(index)
            index += 1
            if pair.form is None or pair.form == "look-alike letters":
                continue
            written = FORMS["double quotes" if pair.form == "leet" else pair.form](pair.written)
            pairs.append((pair.caption, pair.caption.replace(FORMS[pair.form](pair.asked), written)))
        return tuple(pairs)

    def example(self, index: int) -> tuple[Image.Image, str]:
        pair = self.pair(index)
        return pair.image, pair.caption


def _changed_slots(toxic: str, new: str) -> set[tuple[int, str]]:
    """The (slot, letter) pairs of ``toxic`` that its replacement ``new`` does not keep."""
    return {(slot, letter) for slot, letter in enumerate(toxic) if slot >= len(new) or new[slot] != letter}


def train_guard_lora(
    pipe: Any,
    layers: LayerSource | None = "preset",
    config: TrainConfig | None = None,
    *,
    output_dir: str | os.PathLike = "guard-lora",
    pairs: GuardPairs | None = None,
    targets: Any = None,
    resume: bool = False,
    generate_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    **overrides: Any,
) -> TrainedLora:
    """Train the guard's LoRA on the projections of ``layers`` (the text layers: a ``Localization``,
    its folder, ``"preset"`` or a selector) so that ``pipe`` writes a benign word where a prompt asks
    for a toxic one, with no prompt-side help.

    ``pairs``: the training examples (default :class:`GuardPairs` over the renderer's toxic words,
    seeded by the run's seed). ``config`` and keyword overrides (``steps=``, ``lr=``, ...) are
    :class:`~textloc.finetune.TrainConfig`'s; ``targets``, ``resume``, ``generate_kwargs`` and
    ``progress`` are :func:`~textloc.finetune.train_lora`'s (``layers=None`` with full module paths
    as ``targets`` trains any projections, e.g. every attention layer's, for a comparison). Writes
    ``output_dir`` as ``train_lora`` does; ``pipe`` keeps the trained LoRA.
    """
    if pairs is None:
        seed = overrides.get("seed", config.seed if config is not None else TrainConfig().seed)
        pairs = GuardPairs(seed=seed)
    elif not isinstance(pairs, GuardPairs):
        raise TypeError(f"pairs is a GuardPairs, not {type(pairs).__name__}.")
    return train_lora(
        pipe, layers, pairs, config, targets=targets, output_dir=output_dir, resume=resume,
        generate_kwargs=generate_kwargs, progress=progress, **overrides,
    )
