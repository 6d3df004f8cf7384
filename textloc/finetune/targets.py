"""What a LoRA trains: the full module paths of the chosen layers' projections.

peft matches a ``target_modules`` entry against a module's full name (equal, or ending in
``"." + entry``), so full paths train exactly the named layers: a bare ``to_k`` would also catch
every self-attention layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

from textloc.architectures import denoiser, family_of
from textloc.architectures.spec import POOLED_LORA

if TYPE_CHECKING:  # JOINT_STREAMS (the command line's --targets help) comes without torch
    import torch

    from textloc.engine.units import AttentionLayer
    from textloc.layers import LayerSource

_IMAGE_STREAM = ("to_q", "to_k", "to_v", "to_out.0")
_TEXT_STREAM = ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
#: The projections of a joint (SD3, FLUX double-stream) layer, per stream. The paper trains the
#: image stream of SD3's block 10; a joint block's last layer has no text output (``to_add_out``).
JOINT_STREAMS: dict[str, tuple[str, ...]] = {
    "image": _IMAGE_STREAM,
    "text": _TEXT_STREAM,
    "both": _IMAGE_STREAM + _TEXT_STREAM,
}

#: ``None`` (each layer's default, from its family's spec), a joint stream (``"image"``, ``"text"``, ``"both"``) or
#: projection names inside each layer (``("to_k", "to_v")``).
Targets = Union[str, Sequence[str], None]


def lora_targets(pipe: Any, layers: LayerSource | None, targets: Targets = None) -> list[str]:
    """The full module paths inside the denoiser that a LoRA on ``layers`` trains.

    ``layers`` is what every use takes (a ``Localization``, its folder, a selector, ``"preset"``).
    A projection named explicitly that a layer lacks is an error; a default one it lacks (the
    text output of a joint block that has none) is left out. With ``layers=None``, ``targets``
    are full module paths of linear layers, taken as they are (e.g. every attention projection,
    self-attention included, for a comparison with the text layers). A pooled unit whose family
    says no LoRA can train it (:data:`~textloc.architectures.spec.POOLED_LORA`) is refused.
    """
    modules = dict(denoiser(pipe).named_modules())
    if layers is None:
        if targets is None or isinstance(targets, str) or not targets:
            raise ValueError("Without layers, targets are the full module paths to train, e.g. ['up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q'].")
        for path in targets:
            if not _is_linear(modules.get(path)):
                raise ValueError(f"{path!r} is not a linear layer of the denoiser; name full module paths.")
        return list(targets)
    from textloc.layers import resolve_layers

    resolved = resolve_layers(pipe, layers)
    explicit = targets is not None and not isinstance(targets, str)
    paths = []
    for layer in resolved:
        if layer.kind == "pooled":
            family_of(pipe).check_supports(POOLED_LORA)
        for projection in _projections(layer, targets):
            path = f"{layer.name}.{projection}"
            if _is_linear(modules.get(path)):
                paths.append(path)
            elif explicit:
                present = [name for name in _all_projections(layer) if _is_linear(modules.get(f"{layer.name}.{name}"))]
                raise ValueError(f"{layer.name} has no linear projection {projection!r}; it has {', '.join(present)}.")
    return paths


def _projections(layer: AttentionLayer, targets: Targets) -> tuple[str, ...]:
    if targets is None:
        if layer.kind == "pooled":  # the module that reads the pooled vector: every linear layer in it
            return _all_projections(layer)
        # The family's spec says what a LoRA on each kind of layer trains (a joint layer's image stream).
        return layer.route.lora_targets
    if isinstance(targets, str):
        if targets not in JOINT_STREAMS:
            raise ValueError(f"targets={targets!r}: a stream is one of {', '.join(JOINT_STREAMS)}, or give projection names, e.g. ('to_k', 'to_v').")
        if layer.kind != "joint":
            raise ValueError(
                f"targets={targets!r} picks a stream of joint layers, but {layer.name} is a {layer.kind} layer; "
                "leave targets unset, or give projection names, e.g. ('to_k', 'to_v')."
            )
        return JOINT_STREAMS[targets]
    projections = tuple(targets)
    if not projections:
        raise ValueError("targets is empty: name at least one projection, e.g. ('to_k', 'to_v').")
    return projections


def _is_linear(module: torch.nn.Module | None) -> bool:
    import torch

    # A projection a LoRA already wraps keeps its linear layer as peft's base_layer.
    return isinstance(module, torch.nn.Linear) or isinstance(getattr(module, "base_layer", None), torch.nn.Linear)


def _all_projections(layer: AttentionLayer) -> tuple[str, ...]:
    """The projection paths inside ``layer`` (the ones a LoRA may name), not the linear layers of a
    LoRA already on them (peft's ``base_layer``, ``lora_A``, ``lora_B``)."""
    return tuple(
        name for name, module in layer.module.named_modules()
        if name and _is_linear(module) and not any(part == "base_layer" or part.startswith("lora_") for part in name.split("."))
    )


def check_rank(pipe: Any, paths: Sequence[str], rank: int) -> None:
    """A one-line error unless ``rank`` (a positive integer, :class:`~textloc.finetune.config.TrainConfig`
    checks it) fits the narrowest width of the target projections."""
    modules = dict(denoiser(pipe).named_modules())
    narrowest = min(paths, key=lambda path: min(modules[path].in_features, modules[path].out_features))
    width = min(modules[narrowest].in_features, modules[narrowest].out_features)
    if rank > width:
        raise ValueError(f"rank={rank} exceeds the width of {narrowest} ({width}): a LoRA of that rank is no low-rank update; use rank <= {width}.")
