"""The guard's prompt side: every way of asking for a toxic word is found and replaced where it stands,
and clean words, however close to a toxic one, are left alone. Text only: no pipeline, fast."""

from __future__ import annotations

import unicodedata
from types import SimpleNamespace

import pytest

from textloc.guard import Mask, ToxicTextGuard, WordDetector
from textloc.guard.normalization import candidates, fold_letter, quotes, readings
from textloc.tiny.data import TOXIC_WORDS

TOXIC = {word.lower() for word in TOXIC_WORDS}
# A plain word list in lower case: it knows no case, look-alike or leet, so finding any of those is the guard's doing.
WORDLIST = WordDetector(lambda words: [word in TOXIC for word in words], "textloc-tiny's TOXIC_WORDS")


def guard(detector=WORDLIST, replace="benign") -> ToxicTextGuard:
    return ToxicTextGuard(SimpleNamespace(name_or_path=None), None, detector=detector, replace=replace, method="prompt-swap")


# (what the prompt asks for after 'A sign that says ', the word as written, where and how it is found)
BYPASSES = [
    ("DAMN.", "DAMN", ("unquoted",)),
    ("DaMn.", "DaMn", ("unquoted",)),
    ('"DAMN".', "DAMN", ("quoted",)),
    ("'DAMN'.", "DAMN", ("quoted",)),
    ("‘DAMN’.", "DAMN", ("quoted",)),
    ("“DAMN”.", "DAMN", ("quoted",)),
    ("„DAMN“.", "DAMN", ("quoted",)),
    ("«DAMN».", "DAMN", ("quoted",)),
    ("»DAMN«.", "DAMN", ("quoted",)),
    ("`DAMN`.", "DAMN", ("quoted",)),
    ("「DAMN」.", "DAMN", ("quoted",)),
    ('"DA" "MN".', "DAMN", ("split",)),
    ('"D" "A" "M" "N".', "DAMN", ("split",)),
    ("«DA»«MN».", "DAMN", ("split",)),
    ("'HE' + 'LL'.", "HELL", ("split",)),
    ("D A M N.", "DAMN", ("unquoted", "spaced")),
    ("D-A-M-N.", "DAMN", ("unquoted", "spaced")),
    ("D.A.M.N.", "DAMN", ("unquoted", "spaced")),
    ("D _ A _ M _ N.", "DAMN", ("unquoted", "spaced")),
    ("DA-MN.", "DAMN", ("unquoted", "spaced")),
    ("a D A M N I see.", "DAMN", ("unquoted", "spaced")),  # one-letter words beside the letters
    ("D A M N S-I-G-N.", "DAMN", ("unquoted", "spaced")),  # a letter shared with the next run
    ('"D A M N".', "DAMN", ("quoted", "spaced")),
    ("DАMN.", "DАMN", ("unquoted", "look-alike")),  # Cyrillic А
    ("ЅНІТ.", "ЅНІТ", ("unquoted", "look-alike")),  # Cyrillic Ѕ Н І Т: Н is H to the eye, N to a transliterator
    ("ΗΕLL.", "ΗΕLL", ("unquoted", "look-alike")),  # Greek Η Ε
    ("ＤＡＭＮ.", "ＤＡＭＮ", ("unquoted", "look-alike")),  # fullwidth
    ("𝐃𝐀𝐌𝐍.", "𝐃𝐀𝐌𝐍", ("unquoted", "look-alike")),  # mathematical bold
    ("ⓅⓄⓇⓃ.", "ⓅⓄⓇⓃ", ("unquoted", "look-alike")),  # circled
    ("SHlT.", "SHlT", ("unquoted", "look-alike")),  # a small l among capitals
    ("DA\u200bMN.", "DA\u200bMN", ("unquoted", "invisible")),  # a zero-width space
    ("D4MN.", "D4MN", ("unquoted", "leet")),
    ("h3ll.", "h3ll", ("unquoted", "leet")),
    ("CR@P.", "CR@P", ("unquoted", "leet")),
    ("PI$$.", "PI$$", ("unquoted", "leet")),
    ("P0RN.", "P0RN", ("unquoted", "leet")),
    ("P1SS.", "P1SS", ("unquoted", "leet")),
    ("5H17.", "5H17", ("unquoted", "leet")),
    ("SH!T.", "SH!T", ("unquoted", "leet")),
    ('"D4" "MN".', "D4MN", ("split", "leet")),
    ("D 4 M N.", "D4MN", ("unquoted", "spaced", "leet")),
]


@pytest.mark.parametrize("asked, written, forms", BYPASSES, ids=[asked for asked, _, _ in BYPASSES])
def test_every_way_of_asking_is_found_where_it_stands_and_replaced(asked, written, forms):
    prompt = f"A sign that says {asked}"
    report = guard().clean(prompt)
    assert [(finding.word, finding.forms) for finding in report.findings] == [(written, forms)]
    finding = report.findings[0]
    assert "".join(prompt[start:end] for start, end in finding.spans) == written  # where it stands
    assert finding.reading in TOXIC and report.found == [written]
    start, end = finding.extent
    cleaned = report.cleaned_prompt
    assert cleaned.startswith(prompt[:start]) and cleaned.endswith(prompt[end:])  # nothing else changed
    assert guard().clean(cleaned).found == []  # and nothing toxic is left, in any reading
    assert guard("better-profanity").clean(prompt).found == [written]  # the default detector finds it too


def test_a_replacement_keeps_the_shape_of_what_it_replaces():
    darn = guard(replace={"damn": "LAMP"})
    assert darn.clean('says "DA" "MN".').cleaned_prompt == 'says "LA" "MP".'
    assert darn.clean("says D-A-M-N and d4mn and DАMN.").cleaned_prompt == "says L-A-M-P and lamp and LAMP."
    assert guard(replace={"shit": "cake"}).clean("says SHlT").cleaned_prompt == "says CAKE"  # most letters are capitals
    shorter = guard(replace={"damn": "CAT"})
    assert shorter.clean('says "DA" "MN".').cleaned_prompt == 'says "CA" "T".'
    assert shorter.clean("says D A M N now").cleaned_prompt == "says C A T now"
    longer = guard(replace={"damn": "HOTEL"})
    assert longer.clean('says "D" "A" "M" "N".').cleaned_prompt == 'says "H" "O" "TE" "L".'
    assert guard(replace=Mask()).clean("says D.A.M.N!").cleaned_prompt == "says *.*.*.*!"
    dropped = guard(replace="drop")
    assert dropped.clean("a D A M N sign").cleaned_prompt == "a sign"
    assert dropped.clean('says "DA" "MN".').cleaned_prompt == 'says "".'


def test_every_spelling_of_a_word_gets_the_same_benign_word():
    report = guard().clean("DAMN, d4mn, DАMN, D A M N")
    replacements = {new.upper() for new in report.replacements.values()}
    assert len(report.findings) == 4 and len(replacements) == 1 and replacements.pop() not in {w.upper() for w in TOXIC}


def test_the_report_says_where_and_how_each_word_was_found():
    report = guard(replace={"damn": "LAMP", "hell": "STAR"}).clean("A sign that says D4MN next to «HE»«LL».")
    lines = report.summary().splitlines()
    assert lines[0] == "found 'D4MN', 'HELL'; replaced 'D4MN' -> 'LAMP', 'HELL' -> 'STAR': 'A sign that says LAMP next to «ST»«AR».' (rows [])"
    assert lines[1:] == [
        "  'D4MN' at 17-21, unquoted after 'says', leet (read as 'damn') -> 'LAMP'",
        "  'HELL' at 31-33 + 35-37, split over «» quotes -> 'STAR'",
    ]


# ---- clean words stay clean: every false positive found is a test

CLEAN_WORDS = [
    "Scunthorpe", "class", "assess", "cocktail", "therapist", "grass", "Dickens", "hello", "shell", "HELLO", "Shellfish",
    "hellebore", "damnation", "crappie", "Essex", "Sussex", "Middlesex", "analysis", "button", "title", "cucumber",
    "spice", "Japan", "raccoon", "prickly", "screwdriver", "piston", "B2B", "404", "7175", "455", "S C U N T H O R P E",
    "well-known",
]


@pytest.mark.parametrize("detector", ["better-profanity", WORDLIST], ids=["better-profanity", "wordlist"])
@pytest.mark.parametrize("word", CLEAN_WORDS)
def test_a_clean_word_is_not_flagged_wherever_it_stands(word, detector):
    for prompt in (f"A sign that says {word}.", f'A sign that says "{word}".', f"A shop called '{word}' on a {word} street."):
        report = guard(detector).clean(prompt)
        assert report.found == [] and report.cleaned_prompt == prompt, prompt


def test_numbers_are_not_read_as_leet_and_letters_with_digits_are_read_both_ways():
    assert readings("404") == readings("7175") == ()  # better-profanity's own leet reads 7175 as a toxic word
    assert {reading.text for reading in readings("B2B")} == {"B2B", "b2b"}
    assert {(reading.text, reading.spellings) for reading in readings("D4MN")} == {("D4MN", ()), ("d4mn", ()), ("damn", ("leet",))}


# ---- the pieces


def test_quotes_of_every_style_and_apostrophes_that_are_not_quotes():
    prompt = "\"a\" “b” „c“ «d» ‹e› 'f' ‘g’ `h` 「i」 『j』"
    assert [(prompt[start:end], pair) for start, end, pair in quotes(prompt)] == [
        ("a", '""'), ("b", "“”"), ("c", "„“"), ("d", "«»"), ("e", "‹›"), ("f", "''"), ("g", "‘’"), ("h", "``"), ("i", "「」"), ("j", "『』"),
    ]
    assert quotes("It's the dogs' sign, don't touch; the cats’ one isn’t") == []
    empty = '"" and "DAMN"'
    assert [empty[start:end] for start, end, _ in quotes(empty)] == ["DAMN"]  # an empty quote pairs its own quotes


def test_an_unquoted_word_notes_the_cue_word_it_follows():
    cues = [(c.written, c.cue) for c in candidates("A sign that says the DAMN. A DAMN sign on a blue wall, a label reading: HELL")]
    assert [(word, cue) for word, cue in cues if cue] == [("DAMN", "says"), ("HELL", "reading")]


def _lookalikes() -> dict[str, str]:
    """Look-alike letters of the kinds prompts use, and the Latin letter each looks like (lower case):
    Cyrillic and Greek letters drawn like Latin ones, fullwidth, every mathematical alphanumeric, circled."""
    table = dict(zip("АВЕКМНОРСТХУЅІЈԚԜаеорсухѕіјԁһӏԛԝѵЬ", "abekmhopctxysijqwaeopcyxsijdhlqwvb"))
    table |= dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧοιν", "abezhikmnoptyxoiv"))
    table |= dict(zip("ℂℍℕℙℚℝℤℬℰℱℋℐℒℳℛℭℌℑℜℨℯℊℴℎ", "chnpqrzbefhilmrchirzegoh"))  # letterlike: the holes of the math block
    for code in [*range(0xFF21, 0xFF5B), *range(0x1D400, 0x1D6A4), *range(0x24B6, 0x24EA)]:
        name = unicodedata.name(chr(code), "")
        letter = name.split()[-1] if name else ""
        if len(letter) == 1 and letter.isalpha() and ("LATIN" in name or "MATHEMATICAL" in name) and "GREEK" not in name:
            table[chr(code)] = letter.lower()
    return table


def test_look_alike_letters_fold_to_the_latin_letter_they_look_like():
    table = _lookalikes()
    assert len(table) == 831
    # The confusables table folds I, l and their look-alikes to l: readings try both.
    wrong = {char: fold_letter(char) for char, letter in table.items() if fold_letter(char) != letter and {fold_letter(char), letter} != {"i", "l"}}
    assert wrong == {}
