"""What a patch is (:class:`RowPatch`, a frozen declarative spec) and which steps its window covers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from textloc.engine.cache import TextCache
from textloc.engine.choices import BRANCH_CHOICES, BRANCHES_WRITTEN, KV, KV_CHOICES, Branch, BranchChoice, StepWindow
from textloc.engine.units import AttentionLayer

# Which of a layer's text keys and values a patch replaces. The hooks name the two projection
# outputs by role, "key" and "value", whatever the layer kind calls the modules.
_KV_ROLES: dict[KV, tuple[str, ...]] = {"k": ("key",), "v": ("value",), "both": ("key", "value")}


@dataclass(frozen=True)
class RowPatch:
    """One patch of a batched run: batch row ``row`` takes the text K/V of ``source`` at ``layers``.

    ``source`` is another row of the same batch (an ``int``) or a :class:`TextCache`
    (``source_row`` picks its row). ``row=None`` patches every row. ``patch_steps`` is a step
    window (see :func:`window_steps`); ``heads`` a subset of attention heads; ``branch`` the CFG
    branch (``"cond"`` also covers SD3's skip-layer guidance pass, which reruns the conditional
    rows). ``kv`` chooses what is replaced: ``"k"`` the text keys only (where the image attends),
    ``"v"`` the text values only (what it reads there), ``"both"`` both. ``strength`` blends the
    row's own K/V toward the source's (1 replaces them); a tensor strength that requires grad
    receives the gradient of whatever is computed from the run, which is how attribution patching
    works.
    """

    layers: tuple[str, ...]
    source: int | TextCache
    row: int | None = None
    source_row: int = 0
    patch_steps: StepWindow = None
    heads: tuple[int, ...] | None = None
    branch: BranchChoice = "cond"
    strength: float | torch.Tensor = 1.0
    kv: KV = "both"

    def branches(self) -> tuple[Branch, ...]:
        """The branches this patch writes to."""
        return BRANCHES_WRITTEN[self.branch]

    def roles(self) -> tuple[str, ...]:
        """The projection roles (``"key"``, ``"value"``) this patch writes to."""
        return _KV_ROLES[self.kv]

    def partial(self) -> str | None:
        """In words, the part of the text K/V this patch replaces, keeping the rest the row's own; ``None`` if it replaces them whole."""
        if self.heads is not None:
            return "a subset of heads"
        return {"k": "the keys only", "v": "the values only"}.get(self.kv)


def check_step_window(window: object) -> None:
    """Raise ``ValueError`` unless ``window`` is a step window that can cover some step."""
    if window is None:
        return
    if isinstance(window, str):
        raise ValueError(
            f"A step window is (start, stop), not the string {window!r} (the command line's form): write "
            "e.g. (3, None) for '3:' or (0.2, 0.8) for '0.2:0.8'."
        )
    if isinstance(window, (int, float)) and not isinstance(window, bool):
        raise ValueError(
            f"A step window is (start, stop), not the single number {window!r}: write ({window!r}, None) "
            "for that step onwards."
        )
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"A step window is (start, stop), not {window!r}.")
    for bound in window:
        if isinstance(bound, bool) or not (bound is None or isinstance(bound, (int, float))):
            raise ValueError(f"A step bound is an int index, a float fraction or None; got {bound!r}.")
        if isinstance(bound, float) and not 0.0 <= bound <= 1.0:
            raise ValueError(f"A fractional step bound lies in [0, 1]; got {bound}.")
    start, stop = window
    comparable = (
        isinstance(start, float) and isinstance(stop, float)
        or isinstance(start, int) and isinstance(stop, int) and (start < 0) == (stop < 0)
    )
    if comparable and stop <= start:
        raise ValueError(f"The step window {tuple(window)} stops before it starts: it would patch no step.")


def window_steps(window: StepWindow, num_steps: int) -> range:
    """The step indices that ``window`` covers in a run of ``num_steps`` steps.

    ``None`` is every step. Otherwise ``(start, stop)``, stop excluded, ``None`` open: an ``int``
    bound is a step index, negative ones counting from the end as in Python (``(-2, None)``: the
    last two steps); a ``float`` bound ``f`` in [0, 1] is a fraction of the schedule, step
    ``floor(f * num_steps)`` (Prompt-to-Prompt's rule), so ``(0.25, 0.75)`` of 6 steps covers
    steps 1, 2 and 3.
    """
    if window is None:
        return range(num_steps)
    start, stop = (int(bound * num_steps) if isinstance(bound, float) else bound for bound in window)
    return range(num_steps)[slice(start, stop)]


def validate_patch(patch: RowPatch, layers: dict[str, AttentionLayer]) -> None:
    """Raise ``ValueError`` with a one-line reason unless ``patch`` can run on ``layers`` (its
    branch, kv, step window and heads); with no layers, its shared settings alone. A cache source
    is checked where the patch is applied, against the pipeline's weights first."""
    if patch.branch not in BRANCH_CHOICES:
        raise ValueError(f"branch must be 'cond', 'uncond' or 'both', not {patch.branch!r}.")
    if patch.kv not in KV_CHOICES:
        raise ValueError(f"kv must be 'k' (keys only), 'v' (values only) or 'both', not {patch.kv!r}.")
    check_step_window(patch.patch_steps)
    pooled = [name for name in patch.layers if name in layers and layers[name].kind == "pooled"]
    if pooled and patch.partial() is not None:
        raise ValueError(
            f"{pooled[0]} is the pooled text vector, one vector per row with no heads, keys or values: patch "
            f"it whole (heads=None, kv='both'), or leave it out of a patch of {patch.partial()} (select "
            "'attention' for every attention layer without it)."
        )
    if patch.heads is not None:
        for name in patch.layers:
            bad = [h for h in patch.heads if not 0 <= h < layers[name].num_heads]
            if bad:
                raise ValueError(f"Heads {bad} do not exist in {name}, which has {layers[name].num_heads} heads.")



def patch_list(patches: object) -> list[RowPatch]:
    """``patches`` as a list; a clear error unless each is a :class:`RowPatch` with a tuple of layer names."""
    if isinstance(patches, RowPatch):
        raise TypeError("patches is a list of RowPatch: write [RowPatch(...)].")
    patches = list(patches)
    for p in patches:
        if not isinstance(p, RowPatch):
            raise TypeError(f"patches is a list of RowPatch, not of {type(p).__name__}.")
        if isinstance(p.layers, str):
            raise TypeError(f"RowPatch.layers is a tuple of layer names: write ({p.layers!r},), not {p.layers!r}.")
    return patches
