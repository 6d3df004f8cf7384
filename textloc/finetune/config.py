"""``TrainConfig``: how :func:`textloc.train_lora` trains, its defaults and their checks in one place.

The names are diffusers' LoRA scripts' where they have one (``--rank``, ``--learning_rate``,
``--train_batch_size``, ``--gradient_accumulation_steps``, ``--mixed_precision``), shortened as the
Python API always has them; ``textloc finetune`` builds its training options from the fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textloc.settings import setting

MIXED_PRECISIONS: tuple[str, ...] = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """The LoRA and the optimization: every value checked when the config is made."""

    rank: int = setting(4, "LoRA rank (diffusers' --rank)")
    alpha: float | None = setting(None, "LoRA alpha (default: the rank)")
    steps: int = setting(1000, "optimizer steps (diffusers' --max_train_steps)")
    lr: float = setting(1e-4, "AdamW learning rate, constant (diffusers' --learning_rate)")
    batch_size: int = setting(1, "samples per process and micro-step (diffusers' --train_batch_size)")
    grad_accum: int = setting(1, "micro-steps per optimizer step (diffusers' --gradient_accumulation_steps)")
    mixed_precision: str = setting("no", "mixed precision (diffusers' --mixed_precision)", MIXED_PRECISIONS)
    checkpoint_every: int = setting(500, "steps between checkpoints (LoRA, optimizer, step): what --resume continues from")
    validate_every: int | None = setting(None, "steps between validations (also before the first and after the last)")
    validation_prompts: tuple[str, ...] = setting((), "prompts that quote the text they ask for, generated and read by OCR at each validation")
    ema_decay: float | None = setting(None, "decay of an exponential moving average of the LoRA's weights, which validation samples and the run saves (diffusers' --use_ema, EMAModel); None: the last step's weights")
    anchor_weight: float | None = setting(None, "weight of the anchor, a penalty on how far the LoRA moves the anchor prompts' text keys and values, relative to their size (e.g. 1; unset: no anchor)")
    anchor_prompts: tuple[str, ...] = setting((), "prompts whose text keys and values the anchor holds (default: those the dataset offers, e.g. the guard's ordinary signs)")
    seed: int = setting(0, "seed of every draw: the examples' order, VAE samples, timesteps, noise")
    resolution: int | None = setting(None, "training image side (default: the model's own: an embedded model's, else the pipeline's default)")

    def __post_init__(self) -> None:
        if isinstance(self.validation_prompts, str):
            raise TypeError(f"validation_prompts is a list of prompts, e.g. [{self.validation_prompts!r}].")
        object.__setattr__(self, "validation_prompts", tuple(self.validation_prompts))
        if isinstance(self.anchor_prompts, str):
            raise TypeError(f"anchor_prompts is a list of prompts, e.g. [{self.anchor_prompts!r}].")
        object.__setattr__(self, "anchor_prompts", tuple(self.anchor_prompts))
        if self.anchor_weight is not None and (isinstance(self.anchor_weight, bool) or not self.anchor_weight > 0):
            raise ValueError(f"anchor_weight={self.anchor_weight!r}: the anchor's weight is a positive number (e.g. 1), or None for no anchor.")
        if self.anchor_prompts and self.anchor_weight is None:
            raise ValueError("anchor_prompts without anchor_weight do nothing: give the anchor a weight, e.g. anchor_weight=1.")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"rank={self.rank!r}: a LoRA rank is a positive integer (diffusers' scripts default to 4).")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every"):
            _check_count(name, getattr(self, name))
        if self.validate_every is not None:
            _check_count("validate_every", self.validate_every)
            if not self.validation_prompts:
                raise ValueError("validate_every needs validation_prompts: prompts that quote the text they ask for.")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"Unknown mixed_precision {self.mixed_precision!r}; choose one of {', '.join(MIXED_PRECISIONS)}.")
        if self.resolution is not None:
            _check_count("resolution", self.resolution)
        if self.ema_decay is not None and (isinstance(self.ema_decay, bool) or not 0 < self.ema_decay < 1):
            raise ValueError(f"ema_decay={self.ema_decay!r}: an average's decay is between 0 and 1 (e.g. 0.99, ~100 steps), or None for no average.")

    @property
    def lora_alpha(self) -> float:
        """The alpha the LoRA is built with: ``alpha``, else the rank."""
        return self.rank if self.alpha is None else self.alpha



def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: it is a positive number of steps or samples.")
