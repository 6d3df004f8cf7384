"""The embedded models' training recipe: what one training step computes, and the schedules around it.

The loss (denoising with the letters weighted, and two training-only probes), the recipe's changes
by step, the EMA of the sampled weights and the learning rate. :mod:`textloc.tiny.train` runs the
loop, checkpoints, evaluations and exports around it. The EMA and the schedule are written here
rather than taken from diffusers (``EMAModel``) or transformers (cosine with a floor): those start
one step apart (decay 0 and learning rate 0 at the first step), so the shipped weights' runs would
not reproduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline

from textloc.tiny.architectures import HIGH_NOISE_FROM, architecture_of
from textloc.tiny.data import TrainingBatch, letter_map
from textloc.tiny.model import BYTE_VOCAB_SIZE

# Share of captions replaced by "" so classifier-free guidance has an unconditional model.
CAPTION_DROPOUT = 0.1
WARMUP_STEPS = 200
# Half of every batch is drawn from t >= HIGH_NOISE_FROM, where only the caption can tell colour
# and word (see textloc.tiny.architectures.HIGH_NOISE_FROM).
HIGH_NOISE_SHARE = 0.5
# The letters' pixels (ink coverage, grown by one pixel; in latent space, the cells they touch)
# weigh this much more in the loss. They are ~8% of the image, so under a plain mean knowing the
# caption's word lowers the loss so little that after 4000 steps the word-swapped caption still scored as well as the right one
# (word gap 1.00 at every timestep band), while the colours were bound.
TEXT_WEIGHT = 5.0
# A training-only linear probe reads every caption byte back from the text encoder's output at
# its own position (cross-entropy, this weight). Without it the encoder dropped the word: at step
# 4400, changing "LAMP" to "FISH" moved its outputs at the word by 0.5-2.7 (norm 10) and after
# it by 0.02, against 10-14 for a colour; since the U-Net never used the word, nothing kept it,
# and a word that is not there cannot be learnt. The probe is not part of the exported pipeline.
BYTE_PROBE_WEIGHT = 0.1
# A training-only 1x1 convolution must tell, from the U-Net's 16x16 features after its last
# cross-attention at that size (SD3, FLUX: the image tokens halfway through the joint blocks), which
# letter belongs in each cell the word covers (cross-entropy over A-Z, this weight; only at
# t >= HIGH_NOISE_FROM, where the noisy image shows no letter, so the answer can only come from
# the caption). With the word kept by the encoder, set in fixed
# slots and weighted 5x, the U-Net still ignored it for 2400 steps (letters' word gap 0.996-1.005):
# a word spread over 26 letter shapes lowers the pixels' MSE only a little until the model
# already reads it, so plain denoising gives the routing from "letter k" to "slot k" almost no
# push. The cross-entropy asks for exactly that routing.
GLYPH_PROBE_WEIGHT = 0.1
# The probe's classes are the letters A-Z (every vocabulary word is upper case).
GLYPH_CLASSES = 26
# A feature cell is labelled with a letter when that letter covers at least this share of it.
GLYPH_CELL_COVERAGE = 0.25
# The sampled and exported weights average the training weights over ~1/(1 - decay) steps. 0.999
# (a ~1000-step window) suits a model that changes slowly; once the word came in, it held the
# samples ~1000 steps (an hour of CPU) behind what the model had learnt.
EMA_DECAY = 0.999
SHORT_EMA_DECAY = 0.995
#: The recipe's changes in the order they were made: name -> (:class:`Recipe` field, value). A run
#: records from which step each applies (``recipe_since`` in its state; a fresh run: step 0).
#: ``slot_layout`` sets the word so that letter k always sits in the same place (see
#: :data:`textloc.tiny.data.LAYOUTS`).
RECIPE_CHANGES: dict[str, tuple[str, float | str]] = {
    "high_noise": ("high_noise_share", HIGH_NOISE_SHARE),
    "text_weight": ("text_weight", TEXT_WEIGHT),
    "byte_probe": ("byte_probe_weight", BYTE_PROBE_WEIGHT),
    "slot_layout": ("layout", "slots"),
    "glyph_probe": ("glyph_probe_weight", GLYPH_PROBE_WEIGHT),
    "short_ema": ("ema_decay", SHORT_EMA_DECAY),
}


@dataclass(frozen=True)
class Recipe:
    """What a training step adds to plain v-prediction on uniform timesteps (the recipe of step 0
    of the first run), as it stood at that step."""

    high_noise_share: float = 0.0
    text_weight: float = 1.0
    byte_probe_weight: float = 0.0
    layout: str = "centred"
    glyph_probe_weight: float = 0.0
    ema_decay: float = EMA_DECAY

    @classmethod
    def at(cls, step: int, since: dict[str, int]) -> "Recipe":
        """The recipe of ``step``, given the step from which each of ``RECIPE_CHANGES`` applies."""
        return cls(**{field: value for name, (field, value) in RECIPE_CHANGES.items() if step >= since[name]})


class Probes(torch.nn.Module):
    """The training-only read-outs; never exported (see ``BYTE_PROBE_WEIGHT``, ``GLYPH_PROBE_WEIGHT``).

    ``byte`` reads each caption byte from the token states the denoiser reads; ``glyph`` reads the
    letter of each feature cell from :func:`glyph_features`.
    """

    def __init__(self, pipe: DiffusionPipeline) -> None:
        super().__init__()
        arch = architecture_of(pipe)
        denoiser = arch.denoiser(pipe)
        self.byte = torch.nn.Linear(arch.text_width(pipe), BYTE_VOCAB_SIZE)
        self.glyph = torch.nn.Conv2d(arch.glyph_channels(denoiser), GLYPH_CLASSES, 1)


def glyph_features(denoiser: torch.nn.Module) -> torch.nn.Module:
    """The module whose output the glyph probe reads (see
    :meth:`~textloc.tiny.architectures.Architecture.glyph_module`)."""
    return architecture_of(denoiser).glyph_module(denoiser)


def glyph_labels(glyphs: torch.Tensor, size: int) -> torch.Tensor:
    """Per ``size`` x ``size`` cell, the letter (0-25 for A-Z) covering at least
    ``GLYPH_CELL_COVERAGE`` of it, the most-covering one if several; -100 (ignored) elsewhere."""
    letters = torch.where(glyphs > 0, glyphs - ord("A"), GLYPH_CLASSES)
    onehot = torch.nn.functional.one_hot(letters, GLYPH_CLASSES + 1).permute(0, 3, 1, 2).float()
    coverage = torch.nn.functional.adaptive_avg_pool2d(onehot, size)[:, :GLYPH_CLASSES]
    best, label = coverage.max(dim=1)
    return torch.where(best >= GLYPH_CELL_COVERAGE, label, -100)


class EMA:
    """Exponential moving average of the trained components' weights, used for sampling.

    The decay ramps up as ``(1 + step) / (10 + step)`` to the recipe's ``ema_decay``, so early
    averages are not dominated by the random initialisation.
    """

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.shadow = {name: {k: v.detach().clone() for k, v in module.state_dict().items()}
                       for name, module in modules.items()}

    @torch.no_grad()
    def update(self, modules: dict[str, torch.nn.Module], step: int, max_decay: float) -> None:
        """Move the average towards the current weights."""
        decay = min(max_decay, (1 + step) / (10 + step))
        for name, module in modules.items():
            for key, value in module.state_dict().items():
                average = self.shadow[name][key]
                if value.dtype.is_floating_point:
                    average.lerp_(value, 1 - decay)
                else:
                    average.copy_(value)

    def copy_to(self, modules: dict[str, torch.nn.Module]) -> None:
        """Load the averaged weights into ``modules`` (a separate copy used for sampling)."""
        for name, module in modules.items():
            module.load_state_dict(self.shadow[name])


def learning_rate(step: int, peak: float, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``peak`` at ``total_steps``."""
    if step < WARMUP_STEPS:
        return peak * (step + 1) / WARMUP_STEPS
    progress = min(1.0, (step - WARMUP_STEPS) / max(1, total_steps - WARMUP_STEPS))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def training_loss(
    pipe: DiffusionPipeline,
    scheduler: Any,
    batch: TrainingBatch,
    generator: torch.Generator,
    recipe: Recipe,
    probes: Probes | None = None,
) -> dict[str, torch.Tensor]:
    """The loss of one batch: ``{"total", "denoising", "byte_probe", "glyph_probe"}``.

    ``denoising`` is the MSE of the architecture's prediction (IF: v; SD3, FLUX: the flow's velocity) at
    its timesteps (:meth:`~textloc.tiny.architectures.Architecture.draw_timesteps`), the letters'
    cells (:func:`~textloc.tiny.data.letter_map`) weighted ``recipe.text_weight``; the weighted mean
    is divided by the mean weight, so it keeps the scale of a plain MSE. No min-SNR weighting: with
    v-prediction it weights the high-noise steps, where only the caption decides colour and word,
    close to zero. With ``probes``, ``byte_probe`` is the cross-entropy of reading each caption byte
    back from the token states the denoiser reads, at its position, and ``glyph_probe`` that of
    reading each cell's letter (:func:`glyph_labels`) from :func:`glyph_features`, over the samples
    drawn at t >= ``HIGH_NOISE_FROM`` whose caption was kept; both are 0 without probes.
    """
    arch = architecture_of(pipe)
    size = batch.images.shape[0]
    dropped = torch.rand(size, generator=generator) < CAPTION_DROPOUT
    captions = ["" if drop else caption for caption, drop in zip(batch.captions, dropped.tolist())]
    timesteps = arch.draw_timesteps(size, generator, recipe.high_noise_share)
    noise = torch.randn((size, *arch.sample_shape(pipe)), generator=generator)
    # Drawn on the CPU above, so that a step's randomness is the same on every device.
    denoiser = arch.denoiser(pipe)
    device = denoiser.device
    images, ink, noise, timesteps, dropped = (t.to(device) for t in (batch.images, batch.ink, noise, timesteps, dropped))
    noisy, target = arch.noised(scheduler, arch.clean_sample(pipe, images), noise, timesteps)
    text = arch.encode(pipe, captions)
    features = []
    hook = glyph_features(denoiser).register_forward_hook(lambda module, args, output: features.append(arch.glyph_map(output)))
    try:
        prediction = arch.predict(pipe, noisy, timesteps, text)
    finally:
        hook.remove()
    error = (prediction - target) ** 2
    weight = 1 + (recipe.text_weight - 1) * letter_map(ink, error.shape[-1])
    losses = {"denoising": (weight * error).mean() / weight.mean()}
    losses["byte_probe"] = losses["glyph_probe"] = torch.zeros((), device=device)
    if probes is not None:
        read = text.mask.bool()
        losses["byte_probe"] = torch.nn.functional.cross_entropy(probes.byte(text.states[read]), text.ids[read])
        labels = glyph_labels(batch.glyphs.to(device), features[0].shape[-1])
        labels[(timesteps < HIGH_NOISE_FROM) | dropped] = -100
        if (labels >= 0).any():
            losses["glyph_probe"] = torch.nn.functional.cross_entropy(probes.glyph(features[0]), labels)
    losses["total"] = (losses["denoising"] + recipe.byte_probe_weight * losses["byte_probe"]
                       + recipe.glyph_probe_weight * losses["glyph_probe"])
    return losses
