"""The text keys and values recorded from a generation: per layer, scheduler position and branch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from textloc.engine.choices import Branch


@dataclass
class TextKV:
    """Text keys and values of one layer at one denoiser pass and branch: ``[rows, text_tokens, dim]``.

    The pooled unit has one vector per row and no key: ``key`` is ``None``, ``value`` is ``[rows, dim]``.
    """

    key: torch.Tensor | None
    value: torch.Tensor
    mask: torch.Tensor | None = None  # the layer's text attention mask, where the model pads text


@dataclass
class TextCache:
    """Per-layer, per-pass, per-branch text K/V recorded from a generation.

    ``entries`` are keyed by ``(layer, position, branch)``: ``position`` indexes the scheduler's
    timesteps, which is the step itself for first-order schedulers, while the two denoiser passes
    of a second-order step (Heun, KDPM2) each have their own. Entries of step-independent layers
    (``cross``, ``added_kv``, ``refiner``, ``pooled``) are stored once, under position ``None``, and serve every step of
    any schedule. ``fingerprint`` identifies the denoiser's weights (:mod:`textloc.fingerprint`).
    """

    fingerprint: str
    prompts: list[str]
    num_steps: int
    layers: dict[str, str]  # name -> kind, in forward order
    entries: dict[tuple[str, int | None, Branch], TextKV] = field(default_factory=dict, repr=False)
    num_positions: int = 0  # len(scheduler.timesteps) of the recorded run

    def get(self, layer: str, position: int, branch: Branch) -> TextKV:
        """The entry for a layer at a scheduler position and branch; a clear error if it was not recorded."""
        entry = self.entries.get((layer, position, branch)) or self.entries.get((layer, None, branch))
        if entry is None and branch == "skip_layer":
            # A step-independent layer's text K/V are the conditional branch's in every pass (to
            # rounding: a run that records the skip-layer pass keeps its own, computed at its batch size).
            entry = self.entries.get((layer, None, "cond"))
        if entry is None:
            if layer not in self.layers:
                raise ValueError(f"The cache holds no layer {layer!r}; it holds {', '.join(self.layers)}.")
            missing = {
                "uncond": "it was recorded without classifier-free guidance",
                "skip_layer": "it was recorded without skip-layer guidance",
            }.get(branch, "it was recorded over fewer steps")
            raise ValueError(f"The cache has no {branch} entry for {layer} at scheduler position {position}: {missing}.")
        return entry

    @property
    def nbytes(self) -> int:
        """Memory held by the cached tensors, in bytes."""
        tensors = [t for e in self.entries.values() for t in (e.key, e.value, e.mask) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextCache:
        """A copy with every tensor moved (masks keep their dtype)."""
        moved = {
            key: TextKV(None if e.key is None else e.key.to(device, dtype), e.value.to(device, dtype), None if e.mask is None else e.mask.to(device))
            for key, e in self.entries.items()
        }
        return TextCache(self.fingerprint, list(self.prompts), self.num_steps, dict(self.layers), moved, self.num_positions)

