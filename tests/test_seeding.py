"""The one seeding rule: a seed names the noise, drawn on the CPU; per-row seeds give per-row noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import textloc as tl
from conftest import _pipeline
from textloc.pipeline_calls import images_of
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
    batch = images_of(pipe(prompt=["a sign", "a red sign"], generator=generators([3, 4]), **settings))
    alone = images_of(pipe(prompt="a red sign", generator=generator(4), **settings))
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-5)


def test_one_generator_copied_to_every_row_gives_every_row_the_same_noise():
    from textloc.seeding import per_row

    source = generator(3)
    rows = per_row(source, 3)
    draws = [torch.randn(4, generator=row) for row in rows]
    assert all(torch.equal(draw, draws[0]) for draw in draws)
    assert torch.equal(torch.randn(4, generator=source), draws[0])  # the source itself did not advance
    assert torch.equal(torch.randn(4, generator=per_row(None, 1)[0]), torch.randn(4, generator=generator(0)))
    with pytest.raises(ValueError, match="2 generators for 3 rows"):
        per_row([generator(0), generator(1)], 3)
