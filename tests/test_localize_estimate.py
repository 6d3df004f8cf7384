"""``localize(..., estimate=True)`` counts what the run then does: per stage, the generations, the
denoiser calls, the screens' backward passes and the images the OCR reads, against a real run
counted by hooks. A stage that changes what it generates changes both, or fails here."""

from __future__ import annotations

import contextlib
import functools
from collections import Counter

import pytest
import torch

import textloc as tl
from conftest import seeded
from textloc.localization import stages
from textloc.testing import tiny_pipeline


class _CountingOCR:
    """Reads nothing, and counts the images it is given, per stage."""

    def __init__(self, counts: Counter, stage: list[str]):
        self.counts, self.stage = counts, stage

    def read(self, images) -> list[str]:
        self.counts[self.stage[0]] += len(images)
        return [""] * len(images)


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_the_estimate_counts_what_the_run_does(arch, monkeypatch):
    pipe = tiny_pipeline(arch)
    pairs = tl.make_pairs(["OPEN", "STOP", "CAFE", "EXIT", "SALE"], n=5, seed=0)
    settings = {key: value for key, value in seeded(pipe).items() if key not in ("generator", "output_type")}
    how = dict(method="both", direction="both", unit="head", stability_seeds=[1], max_batch=4, held_out=0.4, progress=False)

    stage = [""]
    timed = stages.Stages.timed

    @contextlib.contextmanager
    def naming(self, name):
        stage[0] = name
        with timed(self, name):
            yield

    calls, generations, backward, images = Counter(), Counter(), Counter(), Counter()
    monkeypatch.setattr(stages.Stages, "timed", naming)
    set_timesteps, grad = pipe.scheduler.set_timesteps, torch.autograd.grad

    @functools.wraps(set_timesteps)  # pipelines read its signature
    def counting_set_timesteps(*args, **kwargs):
        generations.update([stage[0]])
        return set_timesteps(*args, **kwargs)

    monkeypatch.setattr(pipe.scheduler, "set_timesteps", counting_set_timesteps)
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: (backward.update([stage[0]]), grad(*a, **k))[1])
    # Completed calls only: the call a screen stops its run at is refused before it computes.
    handle = tl.engine.denoiser(pipe).register_forward_hook(lambda module, args, output: calls.update([stage[0]]))
    try:
        result = tl.localize(pipe, pairs, ocr=_CountingOCR(images, stage), **how, **settings)
    finally:
        handle.remove()
    monkeypatch.undo()

    estimate = tl.localize(pipe, pairs, ocr=_CountingOCR(Counter(), [""]), estimate=True, assume_selected=result.selected, **how, **settings)
    assert [cost.stage for cost in estimate.stages] == list(result.timings)
    assert {cost.stage: cost.generations for cost in estimate.stages} == dict(generations)
    assert {cost.stage: cost.denoiser_calls for cost in estimate.stages} == dict(calls)
    assert {cost.stage: cost.backward_passes for cost in estimate.stages if cost.backward_passes} == dict(backward)
    assert {cost.stage: cost.images_scored for cost in estimate.stages if cost.images_scored} == dict(images)
    assert estimate.seconds > 0


def test_a_large_new_run_states_its_cost_and_is_refused_over_max_hours_before_it_starts(tmp_path, monkeypatch, capsys):
    from textloc.cli import localize as command
    from textloc.cli import main

    monkeypatch.setattr(command, "LARGE_RUN_PAIRS", 3)  # the rule, at a size a test can run
    runs = []
    real = tl.localize

    def localize(*args, estimate=False, **kwargs):
        runs.append("estimate" if estimate else "run")
        if not estimate:
            raise KeyboardInterrupt  # the run itself started, which is all this test asks: the CLI exits 130
        return real(*args, estimate=True, **kwargs)

    monkeypatch.setattr("textloc.localization.localize", localize)
    def command_line(pairs: int = 4, out: str = "big") -> list[str]:
        return ["--threads", "1", "localize", "--model", "tiny-random-sd15", "--pairs", str(pairs), "--num-inference-steps", "2", "--out", str(tmp_path / out)]

    assert main([*command_line(), "--max-hours", "1e-6"]) == 2
    assert runs == ["estimate"] and not (tmp_path / "big").exists()
    output = capsys.readouterr()
    assert "| total |" in output.out  # the estimate the refusal points to
    assert "4 pairs would take about" in output.err and "over --max-hours 1e-06" in output.err and "--max-hours 1 " in output.err
    runs.clear()
    assert main(command_line()) == 130  # within the budget it starts
    assert runs == ["estimate", "run"]
    # At the threshold, or on resuming a run that began, no estimate: the run starts at once.
    (tmp_path / "big").mkdir(exist_ok=True)
    (tmp_path / "big" / "progress.jsonl").write_text("")
    for pairs, out in ((4, "big"), (3, "small")):
        runs.clear()
        assert main([*command_line(pairs, out), "--max-hours", "1e-6"]) == 130
        assert runs == ["run"]
