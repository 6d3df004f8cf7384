"""Fingerprints of weights: tell one model's results from another's, cheaply, on any device.

A fingerprint follows the weights, not where they were loaded from: the same weights copied to
another folder fingerprint alike, and a fine-tuned model (same config, other values) does not.
It hashes the first 8 values of every parameter (in float32 on the CPU, so a value hashes alike
on every device): far cheaper than hashing the weights whole, and any training or another
checkpoint changes it. Weights that
accelerate offloaded (``enable_sequential_cpu_offload``: parameters on the meta device) are read
from the offload hook's weight map, never copied whole.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator
from typing import Any

import torch

_VALUES_PER_TENSOR = 8


def module_fingerprint(module: torch.nn.Module) -> str:
    """A 16-hex-digit hash of ``module``'s class, parameter names and shapes, and leading values.

    Remembered per module until a parameter is replaced or changed in place (torch counts every
    in-place write in a tensor's ``_version``), so that checking a cache against the model on
    every patched generation costs a walk over the parameters, not a read of their values.
    """
    state = _parameter_state(module)
    remembered = _remembered.get(module)
    if remembered is not None and remembered[0] == state:
        return remembered[1]
    digest = hashlib.sha1(type(module).__name__.encode())
    names, values = _leading_values(module)
    digest.update(repr(names).encode())
    digest.update(values.numpy().tobytes())
    _remembered[module] = (state, digest.hexdigest()[:16])
    return _remembered[module][1]


_remembered: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def _parameter_state(module: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    """``(id, _version)`` of every parameter: whether any was replaced or written since."""
    return tuple([(id(parameter), parameter._version) for part in modules_of(module) for parameter in part._parameters.values() if parameter is not None])


def modules_of(module: torch.nn.Module) -> list[torch.nn.Module]:
    """``module`` and everything under it, level by level.

    Read from the modules' own dicts: ``module.modules()`` resumes nested generators for every
    module and level, several times the cost on a U-Net of hundreds of modules, and entering
    ``tl.patch`` walks the denoiser on every call.
    """
    found, level = [], [module]
    while level:
        found += level
        level = [child for parent in level for child in parent._modules.values() if child is not None]
    return found


def weights_fingerprint(pipe: Any) -> str:
    """A 16-hex-digit hash of the leading values of every ``torch.nn.Module`` among a pipeline's components.

    What a localization, a LoRA or a resumed run records of the weights it was made on, so that
    new weights under the same model name are never scored together with the old. It hashes
    exactly what localization logs have always recorded, so their fingerprints stay valid.
    """
    digest = hashlib.sha1()
    for name, component in sorted(pipe.components.items()):
        if isinstance(component, torch.nn.Module):
            _, values = _leading_values(component)
            if values.numel():
                digest.update(name.encode())
                digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def _leading_values(module: torch.nn.Module) -> tuple[list[tuple[str, tuple[int, ...]]], torch.Tensor]:
    """(name, shape) of every parameter, and their first values, concatenated, float32, on the CPU."""
    names, heads = [], []
    for name, tensor in _parameters(module):
        names.append((name, tuple(tensor.shape)))
        heads.append(tensor.detach().flatten()[:_VALUES_PER_TENSOR])
    if not heads:
        return names, torch.zeros(0)
    # Gathered where the weights are and copied to the CPU once: one transfer, not one per tensor.
    device = heads[0].device
    return names, torch.cat([head.to(device, torch.float32) for head in heads]).cpu()


def _parameters(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter once, in ``module.parameters()`` order, with real values.

    An offloaded parameter (on the meta device) is read from its offload hook's weight map.
    """
    seen: set[int] = set()
    for prefix, child in module.named_modules():
        weights_map = getattr(getattr(child, "_hf_hook", None), "weights_map", None)
        for local, parameter in child.named_parameters(recurse=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            name = f"{prefix}.{local}" if prefix else local
            if parameter.device.type != "meta":
                yield name, parameter
                continue
            try:
                offloaded = weights_map[local]
            except (KeyError, TypeError):  # TypeError: no weights_map at all
                raise ValueError(
                    f"{name} has no values (meta device) and no offload hook holds them: load the "
                    "model's weights before fingerprinting it."
                ) from None
            yield name, offloaded
