"""Which toxic words a guard in the text layers' weights can tell apart by their tokens alone.

    python bench/bench_guard_tokens.py [--tokenizer NAME=FOLDER ...] [--clip-bpe bpe_simple_vocab_16e6.txt.gz]

A LoRA or closed-form edit of the text layers' K/V projections maps each text token on its own: it
can rewrite a toxic word and spare every benign word only through a token that no benign word
has (the encoder's context aside). For each tokenizer and each way a prompt writes a word
(``textloc.guard.forms.FORMS``), this tokenizes every vocabulary word in that form, leaves out the
frame (tokens every word gets: quotes, start and end), and counts, per toxic word, its tokens that
no benign word in the same form has. The embedded models' tokenizers are read through their
pipelines (with the pipeline's own preprocessing: IF lower-cases); ``--tokenizer`` adds a folder
``AutoTokenizer`` loads (a checkpoint's ``tokenizer/``), ``--clip-bpe`` CLIP's BPE merges file
(the vocabulary of openai/clip-vit-large-patch14's tokenizer, which SD 1.5, SDXL, SD3 and FLUX
use; open_clip ships it). Tokens only: no weights are read. Writes bench/results/guard_tokens.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, CLIPTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

import textloc as tl
from embedded import ROOT  # beside this script
from textloc.guard.forms import FORMS
from textloc.pipeline_calls import prompt_token_ids
from textloc.tiny.data import TOXIC_WORDS, VOCABULARY

RESULTS = ROOT / "bench" / "results" / "guard_tokens.json"
MODELS = ("textloc-tiny", "textloc-tiny-sd3")
#: One tokenizer: text -> token ids, and ids -> readable tokens.
Tokenizer = tuple[Callable[[str], list[int]], Callable[[list[int]], list[str]]]


def embedded_tokenizers(name: str) -> dict[str, Tokenizer]:
    """Each tokenizer of an embedded model's pipeline, as the pipeline tokenizes a prompt."""
    pipe = tl.load_pipeline(name)
    fields = [field for field in ("tokenizer", "tokenizer_2", "tokenizer_3") if getattr(pipe, field, None) is not None]
    # prompt_token_ids gives one list per tokenizer, in this order: the names below must line up with it.
    assert len(prompt_token_ids(pipe, "")) == len(fields), f"{name}: a tokenizer other than {fields}"
    return {
        f"{name} {field}": (lambda text, i=i: prompt_token_ids(pipe, text)[i], getattr(pipe, field).convert_ids_to_tokens)
        for i, field in enumerate(fields)
    }


def clip_from_bpe(path: Path) -> Any:
    """CLIP's tokenizer built from its BPE merges file, as CLIP builds its vocabulary: the 256 byte
    symbols, each again ending a word, then one token per merge, then start and end of text."""
    merges = [tuple(line.split()) for line in gzip.open(path, "rt", encoding="utf-8").read().split("\n")[1: 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(merge) for merge in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, merges=merges)


def as_tokenizer(tokenizer: Any) -> Tokenizer:
    return (lambda text: tokenizer(text).input_ids, tokenizer.convert_ids_to_tokens)


def measure(tokenizer: Tokenizer) -> dict[str, Any]:
    """Per form: each toxic word's tokens that no benign word in that form has."""
    encode, readable = tokenizer
    benign = [word for word in VOCABULARY if word not in TOXIC_WORDS]
    forms = {}
    for form, write in FORMS.items():
        ids = {word: encode(write(word)) for word in VOCABULARY}
        frame = set.intersection(*(set(tokens) for tokens in ids.values()))
        benign_tokens = set().union(*(ids[word] for word in benign))
        own = {word: [t for t in ids[word] if t not in frame and t not in benign_tokens] for word in TOXIC_WORDS}
        forms[form] = {
            "tokens": {word: readable([t for t in ids[word] if t not in frame]) for word in TOXIC_WORDS},
            "own_tokens": {word: readable(tokens) for word, tokens in own.items()},
            "words_with_an_own_token": sum(bool(tokens) for tokens in own.values()),
        }
    return forms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", action="append", default=[], metavar="NAME=FOLDER", help="a tokenizer folder AutoTokenizer loads")
    parser.add_argument("--clip-bpe", type=Path, help="CLIP's BPE merges (bpe_simple_vocab_16e6.txt.gz)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if any("=" not in spec for spec in args.tokenizer):
        parser.error("--tokenizer takes NAME=FOLDER, e.g. sd15=/checkpoints/sd15/tokenizer")
    tokenizers = {name: tokenizer for model in MODELS for name, tokenizer in embedded_tokenizers(model).items()}
    if args.clip_bpe:
        tokenizers["CLIP BPE (SD 1.5, SDXL, SD3, FLUX)"] = as_tokenizer(clip_from_bpe(args.clip_bpe))
    for spec in args.tokenizer:
        name, folder = spec.split("=", 1)
        tokenizers[name] = as_tokenizer(AutoTokenizer.from_pretrained(folder))
    results = {"toxic_words": list(TOXIC_WORDS), "tokenizers": {name: measure(tokenizer) for name, tokenizer in tokenizers.items()}}
    args.results.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print("| tokenizer | " + " | ".join(FORMS) + " |")
    print("|---|" + "---|" * len(FORMS))
    for name, forms in results["tokenizers"].items():
        print(f"| {name} | " + " | ".join(f"{forms[form]['words_with_an_own_token']} of {len(TOXIC_WORDS)}" for form in FORMS) + " |")
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
