"""Judge an embedded model: does it write the caption's word, in the caption's colours?

Everything here uses held-out (sign, background, word) combinations (:data:`~textloc.tiny.data.
HELD_OUT_COMBOS`) with seeds that training never uses:

- :func:`evaluate`: generate with the shipped sampler settings, OCR the word (read or not by
  :func:`textloc.scoring.metrics.contains`, the rule every textloc score uses), judge sign and background
  colour from pixels.
- :func:`swap_test`: the binding test. Noise a real image, and compare the denoising loss under
  the right caption with the loss under the same caption with its colours swapped, or its word
  replaced. A model that reads the caption shows a clear gap long before its samples look right.
- :func:`ocr_ceiling`: the same OCR and colour judge on the renderer's own images, the best any
  model can score.

``python -m textloc.tiny.evaluate [--model textloc-tiny-sd3]`` prints all three for a shipped model
(``--grid``: and saves the images).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image

from textloc.images import image_grid
from textloc.scoring.metrics import contains, normalized_edit_distance
from textloc.scoring.ocr import get_ocr
from textloc.pipeline_calls import call_kwargs, images_of
from textloc.seeding import generator, generators
from textloc.tiny.architectures import (
    ARCHITECTURES,
    HIGH_NOISE_FROM,
    PixelIF,
    architecture_of,
    architecture_of_folder,
)
from textloc.tiny.data import (
    EVAL_SEED,
    VOCABULARY,
    SignExample,
    caption_for,
    make_example,
    to_tensor,
)
from textloc.tiny.judge import judge_colours


def heldout_examples(count: int, seed: int = EVAL_SEED) -> list[SignExample]:
    """``count`` held-out examples: captions never trained on, with their reference images."""
    return [make_example(seed, index, held_out=True) for index in range(count)]


def judge(images: list[Image.Image], examples: list[SignExample]) -> list[dict[str, str | bool | float]]:
    """Per image: what OCR read, the judged colours, and whether each matches its caption."""
    reads = get_ocr("rapidocr").read(images)
    verdicts = []
    for read, image, example in zip(reads, images, examples):
        sign, background = judge_colours(image)
        verdicts.append({
            "caption": example.caption, "read": read, "sign": sign, "background": background,
            "word_ok": contains(read, example.word),
            # How far off the misses are: most are one letter, which a read-or-not rate hides.
            "edit_distance": normalized_edit_distance(read, example.word),
            "sign_ok": sign == example.sign, "background_ok": background == example.background,
        })
    return verdicts


def score(images: list[Image.Image], examples: list[SignExample]) -> dict[str, float]:
    """Word accuracy (the share of images whose OCR read holds the caption's word, by
    :func:`textloc.scoring.metrics.contains`), the mean normalized edit distance of the reads to their
    words (0 = all exact), and sign/background colour accuracy."""
    return summarise(judge(images, examples))


def summarise(verdicts: list[dict[str, str | bool | float]]) -> dict[str, float]:
    """The scores of :func:`score` from :func:`judge`'s verdicts."""
    n = len(verdicts)
    return {
        "word_acc": sum(v["word_ok"] for v in verdicts) / n,
        "edit_distance": sum(v["edit_distance"] for v in verdicts) / n,
        "sign_acc": sum(v["sign_ok"] for v in verdicts) / n,
        "background_acc": sum(v["background_ok"] for v in verdicts) / n,
        "n": n,
    }


@torch.no_grad()
def generate(pipe: DiffusionPipeline, captions: list[str], seed: int = 0, **overrides: Any) -> list[Image.Image]:
    """Sample one image per caption with the pipeline's own scheduler and its model's sampler
    settings (``overrides``: pipeline-call arguments that replace them, in diffusers' names).

    Image i has its own noise, seed ``seed + i``, so an image does not change with the batch.
    """
    settings = {**architecture_of(pipe).sampler_settings, **overrides}
    kwargs = call_kwargs(pipe, generator=generators(range(seed, seed + len(captions))), **settings)
    return images_of(pipe(captions, **kwargs))


def evaluate(pipe: DiffusionPipeline, count: int = 32, seed: int = EVAL_SEED) -> tuple[dict[str, float], list[Image.Image]]:
    """Generate ``count`` held-out captions and score them; returns the scores and the images."""
    examples = heldout_examples(count, seed)
    images = generate(pipe, [e.caption for e in examples], seed=seed)
    return score(images, examples), images


def ocr_ceiling(count: int = 200, seed: int = EVAL_SEED) -> dict[str, float]:
    """The scores of the renderer's own held-out images: what a perfect model would get."""
    examples = heldout_examples(count, seed)
    return score([e.image for e in examples], examples)


def _swapped(example: SignExample, index: int) -> tuple[str, str]:
    """The example's caption with sign and background colours swapped, and with another word."""
    colours_swapped = caption_for(example.word, example.background, example.sign, example.template)
    other = VOCABULARY[(VOCABULARY.index(example.word) + 1 + index % (len(VOCABULARY) - 1)) % len(VOCABULARY)]
    return colours_swapped, caption_for(other, example.sign, example.background, example.template)


@torch.no_grad()
def swap_test(pipe: DiffusionPipeline, scheduler: Any, count: int = 16, seed: int = EVAL_SEED) -> dict[str, float]:
    """Binding test: denoising loss with the right caption vs with colours swapped / another word.

    Returns the three mean losses and the ratios ``colour_gap`` and ``word_gap`` (wrong / right):
    1.0 means the model ignores that part of the caption. ``letters_word_gap`` is the word gap
    over the letters' pixels (latent models: the latent cells they touch) alone, where a word the
    model knows shows long before it moves the whole image's loss. Timesteps 900-999: below them
    the colours, and soon the letters, can be read from the noisy image itself (see
    :data:`textloc.tiny.architectures.HIGH_NOISE_FROM`), so only there must the model read the caption.
    ``scheduler`` is the architecture's training scheduler.

    On held-out combinations the colour-swapped caption is usually a *training* combination, so a
    model that remembers which colour went where for a word and colour pair, instead of reading
    "sign" and "background", scores a ``colour_gap`` below 1.0 (0.96 at steps 2200-2500 of the
    shipped textloc-tiny run). Binding shows as the gap rising clearly above 1.0.
    """
    arch = architecture_of(pipe)
    examples = heldout_examples(count, seed)
    device = arch.denoiser(pipe).device
    clean = arch.clean_sample(pipe, to_tensor([e.image for e in examples]).to(device))
    inked = torch.from_numpy(np.stack([np.asarray(e.ink) for e in examples]) > 0)[:, None].float()
    letters = (torch.nn.functional.adaptive_max_pool2d(inked, clean.shape[-1]) > 0).expand(clean.shape)
    noise = torch.randn(clean.shape, generator=generator(seed))
    noise, letters = noise.to(device), letters.to(device)
    timesteps = torch.linspace(HIGH_NOISE_FROM, 999, count, device=device)
    noisy, target = arch.noised(scheduler, clean, noise, timesteps)
    right = [e.caption for e in examples]
    colour_swapped, word_swapped = zip(*(_swapped(e, i) for i, e in enumerate(examples)))
    losses, letter_losses = {}, {}
    for name, captions in (("right", right), ("colours_swapped", list(colour_swapped)), ("word_swapped", list(word_swapped))):
        error = (arch.predict(pipe, noisy, timesteps, arch.encode(pipe, captions)) - target) ** 2
        losses[f"loss_{name}"] = error.mean().item()
        letter_losses[name] = error[letters].mean().item()
    losses["colour_gap"] = losses["loss_colours_swapped"] / losses["loss_right"]
    losses["word_gap"] = losses["loss_word_swapped"] / losses["loss_right"]
    losses["letters_word_gap"] = letter_losses["word_swapped"] / letter_losses["right"]
    return losses


def main(argv: list[str] | None = None) -> None:
    """Print the OCR ceiling, the binding test and the held-out scores of an embedded model."""
    from textloc.distributed import resolve_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=PixelIF.model_name,
                        help=f"{' or '.join(ARCHITECTURES)} (its shipped weights), or a folder saved by the trainer")
    parser.add_argument("--count", type=int, default=64, help="held-out captions to generate")
    parser.add_argument("--grid", default=None, help="save the generated images here as a PNG grid (and a .txt)")
    parser.add_argument("--device", help="e.g. cpu, cuda (default: the GPU if there is one, else the CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(f"--device {error}")
    arch = ARCHITECTURES.get(args.model) or architecture_of_folder(Path(args.model))
    pipe = arch.load(arch.export_dir if args.model in ARCHITECTURES else Path(args.model)).to(device)
    pipe.set_progress_bar_config(disable=True)
    results = {"ocr_ceiling": ocr_ceiling(), "swap_test": swap_test(pipe, arch.training_scheduler())}
    examples = heldout_examples(args.count)
    images = generate(pipe, [e.caption for e in examples], seed=EVAL_SEED)
    verdicts = judge(images, examples)  # once: the scores and the grid's .txt share the OCR reads
    results["heldout"] = summarise(verdicts)
    if args.grid:
        # The grid, and beside it what each tile was asked for and what the judges saw.
        image_grid(images, columns=8).save(args.grid)
        lines = [f"{i}: {v['caption']} -> read {v['read']!r}, {v['sign']} sign on {v['background']}"
                 for i, v in enumerate(verdicts)]
        Path(args.grid).with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
