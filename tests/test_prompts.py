from pathlib import Path

import pytest

from textloc.scoring.prompts import (
    DEFAULT_TEMPLATES,
    SIMPLE_TEMPLATE,
    PromptPair,
    load_glyphcontrol,
    load_words,
    make_pairs,
    pairs_from_prompts,
    quoted_text,
)

GLYPHCONTROL = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "glyphcontrol"
WORDS = ["lamp", "river", "coffee", "STOP", "garden", "quail"]


def test_quoted_text_straight_and_curly():
    assert quoted_text('A sign that says "HELLO".') == "HELLO"
    assert quoted_text("A sign that says “Good Morning”.") == "Good Morning"
    assert quoted_text('Two quotes "first" and "second"') == "first"


@pytest.mark.parametrize("prompt", ["A sign with no text.", 'A sign that says "".', 'Unclosed "quote'])
def test_prompt_without_quoted_text_is_an_error_with_an_example(prompt):
    with pytest.raises(ValueError, match='A sign that says "HELLO"'):
        quoted_text(prompt)


def test_pair_from_template():
    pair = PromptPair.from_template(SIMPLE_TEMPLATE, "lamp", "river")
    assert pair.source == 'A sign that says "lamp".'
    assert pair.target == 'A sign that says "river".'
    assert (pair.source_text, pair.target_text, pair.template) == ("lamp", "river", SIMPLE_TEMPLATE)


def test_identical_source_and_target_is_an_error():
    with pytest.raises(ValueError, match="same"):
        PromptPair.from_template(SIMPLE_TEMPLATE, "lamp", "lamp")
    with pytest.raises(ValueError, match="same"):
        PromptPair.from_template(SIMPLE_TEMPLATE, "Lamp", "LAMP")  # OCR scores ignore case
    with pytest.raises(ValueError, match="same words"):
        PromptPair.from_template(SIMPLE_TEMPLATE, "NEW-YORK", "new york")  # ... and punctuation
    with pytest.raises(ValueError, match="holds the other's words"):
        PromptPair.from_template(SIMPLE_TEMPLATE, "BIG SALE", "SALE")  # the source would already be a hit
    with pytest.raises(ValueError, match="nothing for the OCR"):
        PromptPair.from_template(SIMPLE_TEMPLATE, "!!", "SALE")


def test_pair_texts_must_match_the_prompts():
    with pytest.raises(ValueError, match="does not quote"):
        PromptPair('A sign that says "a".', 'A sign that says "b".', "a", "c", SIMPLE_TEMPLATE)


def test_make_pairs_is_a_seeded_derangement():
    pairs = make_pairs(WORDS, seed=3)
    assert len(pairs) == len(WORDS)
    assert sorted(p.source_text for p in pairs) == sorted(WORDS)
    assert sorted(p.target_text for p in pairs) == sorted(WORDS)
    assert all(p.source_text != p.target_text for p in pairs)
    assert all(p.template in DEFAULT_TEMPLATES for p in pairs)
    assert all(p.source == p.template.replace("{}", p.source_text) for p in pairs)
    assert make_pairs(WORDS, seed=3) == pairs
    assert any(make_pairs(WORDS, seed=s) != pairs for s in range(4, 8))


def test_make_pairs_two_words_swap():
    pairs = make_pairs(["yes", "no"], templates=[SIMPLE_TEMPLATE])
    assert {(p.source_text, p.target_text) for p in pairs} == {("yes", "no"), ("no", "yes")}


def test_make_pairs_n_subsets_and_repeats():
    assert len(make_pairs(WORDS, n=2)) == 2
    many = make_pairs(WORDS, n=15, seed=1)
    assert len(many) == 15
    assert all(p.source_text != p.target_text for p in many)
    assert {p.source_text for p in many} == set(WORDS)


def test_make_pairs_cycles_templates():
    templates = ['A "{}" mug.', 'A "{}" flag.', 'A "{}" kite.']
    pairs = make_pairs(WORDS, templates=templates)
    used = [p.template for p in pairs]
    assert set(used) == set(templates)
    assert used[:3] == used[3:]


def test_make_pairs_needs_two_distinct_words():
    with pytest.raises(ValueError, match="2 distinct"):
        make_pairs(["lamp", "LAMP", "lamp"])
    with pytest.raises(ValueError, match="2 distinct"):
        make_pairs(["lamp"])


def test_make_pairs_rejects_template_without_slot():
    with pytest.raises(ValueError, match="no {}"):
        make_pairs(WORDS, templates=["A sign."])


def test_pairs_from_prompts_swaps_quoted_texts():
    prompts = ['A cat holding a sign that says "meow".', "A mug with “COFFEE” on it.", 'A "stop" sign.']
    pairs = pairs_from_prompts(prompts, seed=0)
    assert [p.source for p in pairs] == prompts
    assert sorted(p.target_text for p in pairs) == ["COFFEE", "meow", "stop"]
    assert all(p.source_text != p.target_text for p in pairs)
    assert pairs[1].target == f"A mug with “{pairs[1].target_text}” on it."
    assert pairs_from_prompts(prompts, seed=0) == pairs


def test_pairs_from_prompts_with_repeated_texts():
    prompts = ['A "stop" sign.', 'A red "STOP" sign.', 'A "go" sign.']
    pairs = pairs_from_prompts(prompts)
    assert all(p.source_text.casefold() != p.target_text.casefold() for p in pairs)
    with pytest.raises(ValueError, match="2 distinct"):
        pairs_from_prompts(['A "stop" sign.', 'A "Stop" flag.'])


def test_load_words_skips_blanks_and_comments(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# my words\nlamp\n\n  open late  \n# done\n", encoding="utf-8")
    assert load_words(path) == ["lamp", "open late"]


def test_load_glyphcontrol_format(tmp_path):
    # The format of GlyphControl's files, written here so the test runs without them.
    simple = tmp_path / "SimpleBench"
    simple.mkdir()
    buckets = {
        "top_1000": "desk\nlate",
        "1000_10000": "rainy",
        "10000_100000": "chuen",
        "100000_plus": "tikaw",
    }
    for bucket, words in buckets.items():
        (simple / f"all_unigram_{bucket}_100.txt").write_text(words + "\n")
    (tmp_path / "CreativeBench").mkdir()
    (tmp_path / "CreativeBench" / "GlyphDraw_origin_remove_render_words.txt").write_text(
        'A pink bottle that says ""\n"" written on the door\n'
    )
    bench = load_glyphcontrol(tmp_path, "simple")
    assert bench.all_words() == ["desk", "late", "rainy", "chuen", "tikaw"]
    assert bench.templates == [SIMPLE_TEMPLATE]
    assert {p.source_text for p in bench.pairs(bucket="top_1000")} == {"desk", "late"}
    with pytest.raises(ValueError, match="bucket"):
        bench.pairs(bucket="rare")
    creative = load_glyphcontrol(tmp_path, "creative")
    assert creative.templates == ['A pink bottle that says "{}"', '"{}" written on the door']
    assert {p.template for p in creative.pairs()} == set(creative.templates)
    with pytest.raises(FileNotFoundError, match="SimpleBench"):
        load_glyphcontrol(tmp_path / "nowhere")


@pytest.mark.skipif(not GLYPHCONTROL.is_dir(), reason="GlyphControl benchmark files not present")
def test_real_glyphcontrol_benchmarks():
    simple = load_glyphcontrol(GLYPHCONTROL, "simple")
    assert [len(words) for words in simple.words.values()] == [100, 100, 100, 100]
    pairs = simple.pairs(n=200, seed=0)
    assert len(pairs) == 200 and all(p.source_text != p.target_text for p in pairs)
    creative = load_glyphcontrol(GLYPHCONTROL, "creative")
    assert len(creative.templates) > 200
    assert all(quoted_text(p.source) == p.source_text for p in creative.pairs())
