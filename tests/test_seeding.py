"""The one seeding rule: a seed names the noise, drawn on the CPU; per-row seeds give per-row noise."""

from __future__ import annotations

import numpy as np
import torch

import textloc as tl
from conftest import _pipeline
from textloc.seeding import generator, generators
from textloc.testing import tiny_call_kwargs


def test_a_seed_names_the_noise_and_draws_it_on_the_cpu():
    assert tl.generator is generator
    first = generator(7)
    assert isinstance(first, torch.Generator) and first.device.type == "cpu"
    assert first.initial_seed() == 7
    noise = torch.randn(16, generator=first)
    assert torch.equal(noise, torch.randn(16, generator=generator(7)))
    assert not torch.equal(noise, torch.randn(16, generator=generator(8)))


def test_one_generator_per_row_seeded_in_order():
    rows = generators(range(3, 6))
    assert [row.initial_seed() for row in rows] == [3, 4, 5]
    assert all(row.device.type == "cpu" for row in rows)
    assert len({id(row) for row in rows}) == 3  # no shared stream: a row's noise is its own


def test_a_rows_image_depends_on_its_seed_not_on_the_batch():
    pipe = _pipeline("sd15")
    settings = tiny_call_kwargs(pipe)
    batch = pipe(["a sign", "a red sign"], generator=generators([3, 4]), **settings).images
    alone = pipe("a red sign", generator=generator(4), **settings).images
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-5)
