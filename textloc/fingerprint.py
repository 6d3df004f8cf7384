"""Fingerprints of weights: tell one model's results from another's, cheaply, on any device.

A fingerprint follows the weights, not where they were loaded from: the same weights copied to
another folder fingerprint alike, and a fine-tuned model (same config, other values) does not.
It hashes every parameter's shape and its first 8 values (in float32, so a value hashes alike on
the CPU and the GPU and in half precision it reads the same on every device): far cheaper than
hashing the weights whole, and any training or another checkpoint changes it. Weights that
accelerate offloaded (``enable_sequential_cpu_offload``: parameters on the meta device) are read
from the offload hook's weight map, never copied whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

_VALUES_PER_TENSOR = 8


def module_fingerprint(module: torch.nn.Module) -> str:
    """A 16-hex-digit hash of ``module``'s class, parameter shapes and leading values."""
    digest = hashlib.sha1(type(module).__name__.encode())
    _update(digest, module)
    return digest.hexdigest()[:16]


def pipeline_fingerprint(components: dict[str, object]) -> str:
    """A 16-hex-digit hash of every ``torch.nn.Module`` among a pipeline's ``components``."""
    digest = hashlib.sha1()
    for name, component in sorted(components.items()):
        if isinstance(component, torch.nn.Module):
            digest.update(name.encode())
            _update(digest, component)
    return digest.hexdigest()[:16]


@torch.no_grad()
def _update(digest, module: torch.nn.Module) -> None:
    heads = []
    for name, tensor in _parameters(module):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        heads.append(tensor.detach().flatten()[:_VALUES_PER_TENSOR].float().cpu())
    if heads:
        digest.update(torch.cat(heads).numpy().tobytes())


def _parameters(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter with real values: an offloaded one (on the meta device) from its hook's map."""
    for prefix, child in module.named_modules():
        hook = getattr(child, "_hf_hook", None)
        weights_map = getattr(hook, "weights_map", None)
        for local, parameter in child.named_parameters(recurse=False):
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
