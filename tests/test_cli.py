"""The command line, run in-process through ``textloc.cli.main`` on tiny random pipelines."""

from __future__ import annotations

import json
import runpy
import sys

import pytest
import torch
from PIL import Image

import textloc as tl
from conftest import _pipeline
from textloc.attention import denoiser_parameter_count
from textloc.cli import main

ARCHS = ("sdxl", "flux", "deepfloyd-if")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("arch", ARCHS)
def test_layers_json_lists_every_text_layer_with_shares_that_add_up(capsys, arch):
    status, out, _ = run(capsys, "layers", "--model", f"tiny-random-{arch}", "--json")
    assert status == 0
    report = json.loads(out)
    pipe = _pipeline(arch)
    expected = [layer for layer in tl.attention_layers(pipe) if layer.kind != "self"]
    assert [(row["index"], row["name"], row["kind"]) for row in report["layers"]] == [(layer.index, layer.name, layer.kind) for layer in expected]
    total_params = denoiser_parameter_count(pipe)
    assert report["denoiser_params"] == total_params
    assert report["total"]["layers"] == len(expected)
    assert report["total"]["text_kv_params"] == sum(layer.num_text_kv_params for layer in expected)
    assert report["total"]["share"] == pytest.approx(sum(row["share"] for row in report["layers"]))
    assert report["total"]["share"] == pytest.approx(report["total"]["text_kv_params"] / total_params)


def test_layers_table_has_one_line_per_layer_and_a_total(capsys):
    status, out, _ = run(capsys, "layers", "--model", "tiny-random-sdxl")
    assert status == 0
    layers = [layer for layer in tl.attention_layers(_pipeline("sdxl")) if layer.kind != "self"]
    for layer in layers:
        line = next(line for line in out.splitlines() if f" {layer.name} " in line)
        assert line.split()[:3] == [str(layer.index), layer.name, "cross"]
    total = out.splitlines()[-1].split()
    assert total[:3] == ["total", str(len(layers)), "text"]
    assert total[-2] == f"{sum(layer.num_text_kv_params for layer in layers):,}"


def test_layers_kind_and_all_filter_the_listing(capsys):
    _, out, _ = run(capsys, "layers", "--model", "tiny-random-flux", "--kind", "single", "--json")
    assert {row["kind"] for row in json.loads(out)["layers"]} == {"single"}
    _, out, _ = run(capsys, "layers", "--model", "tiny-random-sdxl", "--all", "--json")
    rows = json.loads(out)["layers"]
    assert {row["kind"] for row in rows} == {"cross", "self"}
    assert all(row["index"] is None for row in rows if row["kind"] == "self")
    assert json.loads(out)["total"]["layers"] == sum(row["kind"] != "self" for row in rows)


def test_generate_writes_a_png_grid(capsys, tmp_path):
    out = tmp_path / "sub" / "grid.png"
    status, stdout, _ = run(capsys, "generate", "--model", "tiny-random-sd3", 'A sign that says "HELLO".', "--num", "3", "--steps", "2", "--out", str(out))
    assert status == 0 and str(out) in stdout
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (64, 64)  # three 32x32 images on a 2x2 grid


def test_generate_same_seed_same_image(capsys, tmp_path):
    paths = [tmp_path / name for name in ("a.png", "b.png", "c.png")]
    for path, seed in zip(paths, ("1", "1", "2")):
        assert run(capsys, "generate", "--model", "tiny-random-sdxl", "a sign", "--seed", seed, "--out", str(path))[0] == 0
    pixels = [Image.open(path).tobytes() for path in paths]
    assert pixels[0] == pixels[1] != pixels[2]


@pytest.mark.parametrize(
    "model, message",
    [
        ("tiny-random-nope", "unknown architecture 'nope'"),
        ("./no/such/folder", "no such folder"),
        ("textloc-tiny-typo", "cannot load model 'textloc-tiny-typo'"),
    ],
)
def test_bad_model_is_one_line_on_stderr_and_status_2(capsys, model, message):
    status, out, err = run(capsys, "layers", "--model", model)
    assert status == 2 and out == ""
    assert err.startswith("textloc: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_device_and_dtype_choose_where_and_how_the_model_runs(capsys, tmp_path, monkeypatch):
    import textloc.cli as cli

    loaded = {}
    real = cli.load_pipeline
    monkeypatch.setattr(cli, "load_pipeline", lambda name, device, dtype: loaded.update(device=device, dtype=dtype) or real(name, device, dtype))
    status, _, _ = run(capsys, "generate", "--model", "tiny-random-sd15", "a", "--out", str(tmp_path / "a.png"), "--dtype", "bfloat16")
    assert status == 0 and loaded == {"device": torch.device("cpu"), "dtype": torch.bfloat16}  # no GPU here
    run(capsys, "layers", "--model", "tiny-random-sd15")
    assert loaded["dtype"] == torch.float32  # auto: float32 on the CPU

    status, _, err = run(capsys, "layers", "--model", "tiny-random-sd15", "--device", "gpu")
    assert status == 2 and "not a device torch knows" in err
    if not torch.cuda.is_available():
        status, _, err = run(capsys, "layers", "--model", "tiny-random-sd15", "--device", "cuda")
        assert status == 2 and "no CUDA GPU" in err


def test_bad_generate_options_are_errors_with_status_2(capsys, tmp_path):
    status, _, err = run(capsys, "generate", "--model", "tiny-random-sdxl", "x", "--out", str(tmp_path / "x.jpg"))
    assert status == 2 and "--out must be a .png" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", "tiny-random-sdxl", "x", "--num", "0"])
    assert exit_info.value.code == 2


def test_debug_shows_the_exception(capsys):
    with pytest.raises(Exception, match="unknown architecture"):
        main(["--debug", "layers", "--model", "tiny-random-nope"])


def test_python_dash_m_runs_the_same_cli(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["textloc", "layers", "--model", "tiny-random-nope"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("textloc", run_name="__main__")
    assert exit_info.value.code == 2
    assert "unknown architecture" in capsys.readouterr().err


def test_help_at_every_level_shows_examples(capsys):
    for argv in ([], ["layers"], ["generate"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--help"])
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out
