"""A closed-form edit of the text layers' keys and values, saved as a LoRA (TIME, arXiv 2303.08084;
UCE, arXiv 2308.14761): no training step.

For each text K/V projection ``W`` of the chosen layers, the edited weights ``W'`` are the least
squares fit of two wishes: that a source prompt's tokens get the keys and values its target
prompt's tokens have at the same positions, and that the preserved prompts' tokens keep theirs,

    min over W'   E‖W' s − W t‖²  +  λ · E‖W' p − W p‖²,

with ``s``, ``t`` a source token's and its target's inputs and ``p`` a preserved token's. The
minimum is ``ΔW = W' − W = W (C − S) (S + λ Σ)⁻¹``, where ``S = E[s sᵀ]``, ``C = E[t sᵀ]`` and
``Σ = E[p pᵀ]`` (:func:`textloc.engine.paired_text_input_moments`,
:func:`textloc.engine.text_input_moments`): a few text encodings, then one solve a projection.
A bias adds to both sides alike and stays. Directions of the input that no prompt spans are left
as they were (``C − S`` has none of them), so a small ridge only steadies the solve.

``ΔW`` is saved exactly as a LoRA (its singular value decomposition split between the down and
up projections, scale 1), so ``pipe.load_lora_weights(folder)`` applies the edit and
:func:`~textloc.finetune.lora.lora_disabled` or diffusers' ``disable_lora`` take it off.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textloc.architectures.spec import STEP_INDEPENDENT_KINDS
from textloc.engine import conditional_settings, denoiser, denoiser_parameter_count, paired_text_input_moments, text_input_moments
from textloc.engine.input_moments import text_kv_columns
from textloc.files import write_json_atomic
from textloc.fingerprint import weights_fingerprint
from textloc.finetune.lora import ADAPTER_NAME, TRAINING_FILE, add_lora, lora_parameters, save_lora
from textloc.layers import LayerSource, resolve_layers
from textloc.pipeline_calls import refuse_modular

#: Added to the solve's diagonal, relative to its mean eigenvalue: keeps the solve well posed where
#: the prompts span few of the input's directions.
RIDGE = 1e-6
#: Singular values of a change below this share of its largest are rounding, not edit: the LoRA's
#: rank is what the widest change needs above it, not the projections' full width.
NUMERICAL_RANK = 1e-7


@dataclass
class ClosedFormEdit:
    """What :func:`closed_form_edit` changed and where it saved it, with how well the edit fits:
    ``reached``, the share of the change from the sources' keys and values to their targets' that
    the edited weights make, on the edit pairs; ``preserved_moved``, how far they move the preserved
    prompts' keys and values, relative to their size (both squared; means over the projections)."""

    output_dir: Path
    layers: list[str]
    targets: list[str]
    pairs: int
    preserve_weight: float
    reached: float
    preserved_moved: float

    @property
    def weights(self) -> Path:
        """The file ``pipe.load_lora_weights(output_dir)`` loads."""
        return self.output_dir / "pytorch_lora_weights.safetensors"

    def summary(self) -> str:
        return (
            f"closed-form edit of {len(self.targets)} text K/V projections on {len(self.layers)} layers "
            f"from {self.pairs} pair{'s' if self.pairs != 1 else ''} (preserve weight {self.preserve_weight:g}): reaches {self.reached:.1%} of the targets' keys and values, "
            f"moves the preserved prompts' by {self.preserved_moved:.3%}\nsaved to {self.weights}"
        )


def closed_form_edit(
    pipe: Any,
    layers: LayerSource,
    pairs: Sequence[tuple[str, str]],
    preserve: Sequence[str],
    *,
    preserve_weight: float = 1.0,
    output_dir: str | os.PathLike = "closed-form-edit",
    batch_size: int = 8,
    generate_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> ClosedFormEdit:
    """Edit the text K/V projections of ``layers`` (a ``Localization``, its folder, ``"preset"`` or a
    selector) in closed form so that each source prompt of ``pairs`` gives them its target's keys
    and values, and the ``preserve`` prompts keep theirs (see the module docstring).

    - ``pairs``: ``(source, target)`` prompts that line up token by token (the same number of
      tokens, e.g. ``('... says "DAMN".', '... says "BOOK".')``); every token counts, so the
      words around the swapped one are held where they are as well.
    - ``preserve_weight``: ``λ``, how much a preserved token counts against an edited one (larger
      keeps the preserved prompts closer and reaches the targets less).
    - ``generate_kwargs``: the pipeline call's settings that shape the text (``clean_caption``,
      ``max_sequence_length``, ...).

    Only layers whose K/V projections read the prompt's tokens alone (``cross``, ``added_kv``,
    ``refiner``) can be edited so; a joint, single-stream or prefix layer is refused (train a LoRA
    with ``anchor_weight`` there). Writes the edit to ``output_dir`` as a LoRA and
    ``training.json``; ``pipe`` keeps it.
    """
    refuse_modular(pipe, "closed_form_edit")
    if isinstance(preserve, str) or not preserve or not all(isinstance(prompt, str) for prompt in preserve):
        raise ValueError("preserve is a non-empty list of prompts whose keys and values stay, e.g. ['A sign that says \"OPEN\".'].")
    if isinstance(preserve_weight, bool) or not isinstance(preserve_weight, (int, float)) or not preserve_weight > 0:
        raise ValueError(f"preserve_weight={preserve_weight!r}: how much a preserved token counts against an edited one, a number > 0 (e.g. 1).")
    if lora_parameters(pipe):
        raise ValueError("This pipeline's denoiser already carries a LoRA: edit a freshly loaded pipeline (the edit is saved as a LoRA).")
    output_dir = Path(output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise ValueError(f"{output_dir} is not empty: choose an empty or new folder for the edit.")
    selected = [layer for layer in resolve_layers(pipe, layers) if layer.kind != "pooled"]
    if not selected:
        raise ValueError("The layers hold no attention layer with text keys and values to edit (only a pooled unit).")
    shared = [layer for layer in selected if layer.kind in STEP_INDEPENDENT_KINDS and layer.route.text_at != "all"]
    if shared:  # the objective sees the text tokens only: the image's keys and values would move unmeasured
        raise ValueError(
            f"{shared[0].name} is a {shared[0].kind} layer: its K/V projections read the image tokens too, in one sequence "
            "with the text, and a closed-form edit of the text's keys and values would change the image's as well. "
            "Edit layers whose projections read the text alone (cross, added-K/V, refiner)."
        )
    settings = conditional_settings(pipe, dict(generate_kwargs or {}))
    paired = paired_text_input_moments(pipe, selected, pairs, batch_size=batch_size, progress=progress, **settings)
    preserved = text_input_moments(pipe, selected, preserve, batch_size=batch_size, progress=progress, **settings)

    modules = dict(denoiser(pipe).named_modules())
    columns = {path: blocks for layer in selected for path, blocks in text_kv_columns(layer).items()}
    changes, reached, moved = {}, [], []
    for path, blocks in columns.items():
        weight = modules[path].weight.detach().double().cpu()
        rows = torch.arange(weight.shape[0]) if blocks is None else torch.cat([torch.arange(weight.shape[0])[block] for block in blocks])
        change, fit = _solve(weight[rows], paired[path], preserved[path].double(), float(preserve_weight))
        changes[path] = torch.zeros_like(weight).index_copy_(0, rows, change)
        reached.append(fit["reached"])
        moved.append(fit["preserved_moved"])

    targets = list(columns)
    fingerprint, total = weights_fingerprint(pipe), denoiser_parameter_count(pipe)  # the model's own, before the LoRA
    factors = {path: _factors(change) for path, change in changes.items()}
    rank = max(1, *(down.shape[0] for down, _ in factors.values()))
    config = add_lora(pipe, targets, rank, rank, seed=0)  # scale 1: the factors below are the change itself
    modules = dict(denoiser(pipe).named_modules())  # peft's layers now stand where the projections were
    with torch.no_grad():
        for path, (down, up) in factors.items():
            lora_down, lora_up = modules[path].lora_A[ADAPTER_NAME].weight, modules[path].lora_B[ADAPTER_NAME].weight
            lora_down.zero_()
            lora_up.zero_()
            lora_down[: len(down)] = down.to(lora_down)  # rows past this change's own rank stay zero
            lora_up[:, : len(down)] = up.to(lora_up)
    edit = ClosedFormEdit(
        output_dir, [layer.name for layer in selected], targets, len(pairs), float(preserve_weight),
        sum(reached) / len(reached), sum(moved) / len(moved),
    )
    # Written beside the folder and moved in whole: a run cut off leaves no half an edit to load.
    partial = output_dir.with_name(f"{output_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_lora(pipe, partial, config)
    write_json_atomic(partial / TRAINING_FILE, {
        "pipeline": type(pipe).__name__, "weights": fingerprint, "method": "closed-form",
        "layers": edit.layers, "targets": targets, "rank": rank, "alpha": rank, "preserve_weight": edit.preserve_weight,
        "pairs": [list(pair) for pair in pairs], "preserve": list(preserve), "reached": edit.reached,
        "preserved_moved": edit.preserved_moved, "denoiser_parameters": total,
    })
    if output_dir.is_dir():
        output_dir.rmdir()  # empty, as checked
    partial.rename(output_dir)
    return edit


def _solve(weight: torch.Tensor, paired: Any, preserved: torch.Tensor, lam: float) -> tuple[torch.Tensor, dict[str, float]]:
    """``ΔW`` for one projection's K/V rows ``weight`` (float64), and how well it fits."""
    source, cross, target = (moment.double() for moment in paired)
    system = source + lam * preserved
    system = system + RIDGE * system.trace() / system.shape[0] * torch.eye(system.shape[0], dtype=system.dtype)
    # ΔW A = W (C − S) with A symmetric: solve Aᵀ ΔWᵀ = (W (C − S))ᵀ.
    change = torch.linalg.solve(system, (weight @ (cross - source)).T).T
    edited = weight + change

    def miss(new: torch.Tensor) -> float:  # E‖W' s − W t‖²
        return float((new @ source * new).sum() - 2 * (new @ cross.T * weight).sum() + (weight @ target * weight).sum())

    return change, {
        "reached": 1 - miss(edited) / max(miss(weight), torch.finfo(torch.float64).tiny),
        "preserved_moved": float((change @ preserved * change).sum() / (weight @ preserved * weight).sum()),
    }


def _factors(change: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``change`` as ``B A`` (``A``: ``[rank, in]``, ``B``: ``[out, rank]``), ``√S`` on each side of its
    singular value decomposition, to its numerical rank (:data:`NUMERICAL_RANK`)."""
    u, s, vh = torch.linalg.svd(change, full_matrices=False)
    rank = int((s > NUMERICAL_RANK * s[0]).sum()) if len(s) and s[0] > 0 else 0
    root = s[:rank].sqrt()
    return root[:, None] * vh[:rank], u[:, :rank] * root
