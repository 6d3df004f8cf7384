"""textloc's one seeding rule: a seed names the noise, and the noise is drawn on the CPU.

diffusers draws a run's initial noise with the generator it is given, on that generator's device,
and then moves it to the model's. A CUDA generator gives other numbers than a CPU one seeded
alike, so textloc seeds only CPU generators: the same seed gives the same noise on the CPU, on
any GPU and under offloading. A run that needs different noise per batch row passes one
generator per row (diffusers takes a list), row ``i`` seeded with its own seed.

This module imports nothing from textloc, so every layer can use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch


def generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``: the noise of a run, alike on every device.

    Pass it as a pipeline's ``generator=``; every row of the batch then draws from this one
    stream, in order.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"A seed is an integer, e.g. tl.generator(0), not {type(seed).__name__} ({seed!r}).")
    return torch.Generator("cpu").manual_seed(int(seed))


def generators(seeds: Iterable[int]) -> list[torch.Generator]:
    """One :func:`generator` per batch row: row ``i`` gets ``seeds[i]``, so its noise does not
    depend on the other rows of the batch (or on the batch size)."""
    return [generator(seed) for seed in seeds]


def copies(source: torch.Generator, count: int) -> list[torch.Generator]:
    """``count`` generators in ``source``'s current state: the same noise ``count`` times.

    ``source`` itself does not advance. This is how the rows of a patched batch (source row,
    patched rows) start from one noise.
    """
    state = source.get_state()
    duplicates = [torch.Generator(source.device) for _ in range(count)]
    for duplicate in duplicates:
        duplicate.set_state(state)
    return duplicates


def per_row(source: torch.Generator | Sequence[torch.Generator] | None, rows: int) -> list[torch.Generator]:
    """One generator per batch row: a single generator is copied to every row (the same noise on
    each; ``None`` is seed 0), a list must hold one generator per row."""
    if source is None:
        source = generator(0)
    check_generator(source)
    if isinstance(source, torch.Generator):
        return copies(source, rows)
    generators = list(source)
    if len(generators) != rows:
        raise ValueError(f"{len(generators)} generators for {rows} rows; give one generator (copied to every row) or one per row.")
    return generators


def check_generator(value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is what diffusers takes as ``generator=``."""
    if isinstance(value, torch.Generator) or isinstance(value, (list, tuple)) and all(isinstance(g, torch.Generator) for g in value):
        return
    raise TypeError(
        f"generator is a torch.Generator (e.g. tl.generator({value if isinstance(value, int) else 0})) or a list "
        f"of them, one per image, not {type(value).__name__}."
    )


def derived_seed(seed: int, *keys: int) -> int:
    """A seed for item ``keys`` of the stream ``seed`` (e.g. training sample ``k``): the same
    numbers whatever else is drawn, by whichever process, in whatever batch, so a resumed or
    data-parallel run draws exactly what a single uninterrupted one does."""
    # int() first: NumPy 1.x will not shift a uint64 by a Python int.
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0]) >> 1
