"""Fills a :class:`~textloc.engine.cache.TextCache` as the hooked layers compute their text K/V."""

from __future__ import annotations

import torch

from textloc.architectures.spec import STEP_INDEPENDENT_KINDS
from textloc.engine.choices import Branch
from textloc.engine.cache import TextCache, TextKV
from textloc.engine.run_state import DenoiserCall, StopRun
from textloc.engine.units import AttentionLayer


class Recorder:
    """Fills a :class:`TextCache` as the layers compute their text K/V, straight onto ``device``.

    With ``stop_when_complete`` the run ends as soon as every step-independent layer holds an
    entry for every branch of the first step: nothing later can add to the cache.
    """

    def __init__(self, cache: TextCache, device: torch.device | str | None, stop_when_complete: bool):
        self.cache, self.device, self.stop_when_complete = cache, device, stop_when_complete
        self.pending: dict[tuple[str, Branch], dict[str, torch.Tensor]] = {}

    def add(self, layer: AttentionLayer, call: DenoiserCall, role: str, text: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Keep ``text``, the text part of ``layer``'s ``role`` projection (``"key"`` or ``"value"``)
        in ``call``, with the text attention mask the layer saw (``None`` where it has none). The
        pooled unit has its vector only, kept as its ``"value"``."""
        static = layer.kind in STEP_INDEPENDENT_KINDS
        text = text.detach()
        for branch, rows in call.branch_rows.items():
            key = (layer.name, None if static else call.position, branch)
            if static and key in self.cache.entries:
                continue  # recorded at the first pass; identical at every other
            pending = self.pending.setdefault((layer.name, branch), {})
            pending[role] = self._keep(text[rows])
            if len(pending) == len(layer.route.roles):
                kept_mask = None if mask is None else self._keep(mask[rows])
                self.cache.entries[key] = TextKV(pending.get("key"), pending["value"], kept_mask)
                del self.pending[layer.name, branch]
        if self.stop_when_complete and self._complete(call):
            raise StopRun

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        kept = tensor.to(self.device) if self.device is not None else tensor
        return kept.clone() if kept.data_ptr() == tensor.data_ptr() else kept

    def _complete(self, call: DenoiserCall) -> bool:
        # Under CFG run as separate passes, the conditional pass alone does not complete the cache:
        # every branch of the step must be in, and where the pipeline does not say which, the run goes on.
        if call.step_branches is None:
            return False
        return all((name, None, branch) in self.cache.entries for name in self.cache.layers for branch in call.step_branches)


