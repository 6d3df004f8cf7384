"""The command line, run in-process through ``textloc.cli.main`` on tiny random pipelines.

Expected values are written out here (the tiny configs' layers, parameter counts, image sizes,
error messages), never computed with the functions the CLI itself calls.
"""

from __future__ import annotations

import importlib
import json
import re
import runpy
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import textloc.cli.generate
import textloc.cli.options
import textloc.pipelines
from textloc.cli import main

_SDXL_BLOCKS = (
    "down_blocks.1.attentions.0.transformer_blocks.0",
    "down_blocks.2.attentions.0.transformer_blocks.0",
    "down_blocks.2.attentions.0.transformer_blocks.1",
    "mid_block.attentions.0.transformer_blocks.0",
    "mid_block.attentions.0.transformer_blocks.1",
    "up_blocks.0.attentions.0.transformer_blocks.0",
    "up_blocks.0.attentions.0.transformer_blocks.1",
    "up_blocks.0.attentions.1.transformer_blocks.0",
    "up_blocks.0.attentions.1.transformer_blocks.1",
    "up_blocks.1.attentions.0.transformer_blocks.0",
    "up_blocks.1.attentions.1.transformer_blocks.0",
)
# Per architecture, from the configs in textloc/testing.py: the denoiser's class and parameter
# count, and its text layers in forward order as (name, kind, heads, text K/V parameters).
# SDXL: attn2 reads 64-wide text into 32 channels, to_k and to_v without bias: 2 * 64 * 32.
# FLUX: add_k/v_proj (joint) or to_k/v (single), 32 -> 32 with bias: 2 * (32 * 32 + 32).
# IF: add_k/v_proj, 32 -> 64 (4 heads of 16) with bias: 2 * (32 * 64 + 64).
EXPECTED_LAYERS = {
    "sdxl": ("UNet2DConditionModel", 542_260, [*((f"{block}.attn2", "cross", 2, 4_096) for block in _SDXL_BLOCKS), ("add_embedding", "pooled", None, 9_344)]),
    "flux": (
        "FluxTransformer2DModel",
        132_176,
        [
            ("transformer_blocks.0.attn", "joint", 2, 2_112),
            ("transformer_blocks.1.attn", "joint", 2, 2_112),
            ("single_transformer_blocks.0.attn", "single", 2, 2_112),
            ("single_transformer_blocks.1.attn", "single", 2, 2_112),
            ("time_text_embed.text_embedder", "pooled", None, 2_112),
        ],
    ),
    "deepfloyd-if": (
        "UNet2DConditionModel",
        854_310,
        [
            ("down_blocks.1.attentions.0", "added_kv", 4, 4_224),
            ("mid_block.attentions.0", "added_kv", 4, 4_224),
            ("up_blocks.0.attentions.0", "added_kv", 4, 4_224),
            ("up_blocks.0.attentions.1", "added_kv", 4, 4_224),
            ("add_embedding", "pooled", None, 7_744),
        ],
    ),
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def exit_of(capsys, *argv: str) -> tuple[int, str, str]:
    """Status, stdout and stderr of an argument error (argparse exits)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


# --------------------------------------------------------------------------------------------
# layers


@pytest.mark.parametrize("arch", EXPECTED_LAYERS)
def test_layers_json_lists_every_text_layer_with_its_parameters(capsys, arch):
    status, out, _ = run(capsys, "layers", "--model", f"tiny-random-{arch}", "--json", "--device", "cpu")
    assert status == 0
    report = json.loads(out)
    denoiser, params, layers = EXPECTED_LAYERS[arch]
    assert report["model"] == f"tiny-random-{arch}"
    assert report["denoiser"] == denoiser and report["denoiser_params"] == params
    rows = [(row["index"], row["name"], row["kind"], row["heads"], row["text_kv_params"]) for row in report["layers"]]
    assert rows == [(index, *layer) for index, layer in enumerate(layers)]
    kv_params = sum(layer[3] for layer in layers)
    assert report["total"] == {"layers": len(layers), "text_kv_params": kv_params, "share": pytest.approx(kv_params / params)}
    assert [row["share"] for row in report["layers"]] == [pytest.approx(layer[3] / params) for layer in layers]


def test_layers_table_has_one_line_per_layer_and_a_total(capsys):
    status, out, _ = run(capsys, "layers", "--model", "tiny-random-sdxl", "--device", "cpu")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "tiny-random-sdxl: UNet2DConditionModel, 542,260 parameters"
    for index, block in enumerate(_SDXL_BLOCKS):
        (line,) = [line for line in lines if f" {block}.attn2 " in line]
        assert line.split() == [str(index), f"{block}.attn2", "cross", "2", "4,096", "0.755%"]
    assert lines[-3].split() == ["11", "add_embedding", "pooled", "-", "9,344", "1.723%"]
    assert lines[-1].split() == ["total", "12", "text", "units", "54,400", "10.032%"]


def test_layers_kind_and_all_filter_the_listing(capsys):
    _, out, _ = run(capsys, "layers", "--model", "tiny-random-flux", "--kind", "single", "--json", "--device", "cpu")
    assert [(row["index"], row["name"]) for row in json.loads(out)["layers"]] == [
        (2, "single_transformer_blocks.0.attn"),
        (3, "single_transformer_blocks.1.attn"),
    ]
    _, out, _ = run(capsys, "layers", "--model", "tiny-random-sdxl", "--all", "--json", "--device", "cpu")
    report = json.loads(out)
    self_layers = [row for row in report["layers"] if row["kind"] == "self"]
    assert sorted(row["name"] for row in self_layers) == sorted(f"{block}.attn1" for block in _SDXL_BLOCKS)
    assert all(row["index"] is None for row in self_layers)  # a selector's index counts text layers only
    assert report["total"]["layers"] == 12


# --------------------------------------------------------------------------------------------
# generate


def test_generate_writes_a_png_grid(capsys, tmp_path):
    out = tmp_path / "sub" / "grid.png"
    status, stdout, _ = run(
        capsys, "generate", "--model", "tiny-random-sd3", 'A sign that says "HELLO".', "--num", "3",
        "--num-inference-steps", "2", "--device", "cpu", "--out", str(out),
    )
    assert status == 0 and str(out) in stdout and "3 images of 32x32, seed 0" in stdout
    assert out.stat().st_size > 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (64, 64)  # three 32x32 images on a 2x2 grid


def test_generate_batches_without_changing_an_image_and_refuses_an_unwritable_grid(capsys, tmp_path):
    common = ["generate", "--model", "tiny-random-sd3", "a sign", "--num-inference-steps", "2", "--device", "cpu"]
    for name, extra in (("one.png", ["--num", "3", "--batch-size", "1"]), ("all.png", ["--num", "3"]), ("third.png", ["--seed", "2"])):
        assert run(capsys, *common, *extra, "--out", str(tmp_path / name))[0] == 0
    one, every, third = (np.asarray(Image.open(tmp_path / name), dtype=int) for name in ("one.png", "all.png", "third.png"))
    # Batches of 1 or of 3 give the same images, up to a float rounding in one 8-bit level; image 2 has seed 0 + 2.
    assert np.abs(one - every).max() <= 1 and np.abs(every[32:, :32] - third).max() <= 1
    assert np.abs(every[:32, :32] - third).max() > 10  # and seed 0's image is another
    status, _, err = run(capsys, *common, "--num", "100000", "--batch-size", "1", "--out", str(tmp_path / "huge.png"))
    assert status == 2 and "more than an image PIL reads back" in err and not (tmp_path / "huge.png").exists()


def test_generate_same_seed_same_image(capsys, tmp_path):
    paths = [tmp_path / name for name in ("a.png", "b.png", "c.png")]
    for path, seed in zip(paths, ("1", "1", "2")):
        assert run(capsys, "generate", "--model", "tiny-random-sdxl", "a sign", "--seed", seed, "--device", "cpu", "--out", str(path))[0] == 0
    pixels = [Image.open(path).tobytes() for path in paths]
    assert pixels[0] == pixels[1] != pixels[2]
    # --prompt, as edit and guard take it, is the same prompt.
    assert run(capsys, "generate", "--model", "tiny-random-sdxl", "--prompt", "a sign", "--seed", "1", "--device", "cpu", "--out", str(paths[2]))[0] == 0
    assert Image.open(paths[2]).tobytes() == pixels[0]


def test_generate_takes_diffusers_option_names_over_the_models_settings(capsys, tmp_path, monkeypatch):
    calls = []
    real = textloc.cli.generate.generate_kwargs
    monkeypatch.setattr(textloc.cli.generate, "generate_kwargs", lambda *args, **kwargs: calls.append(real(*args, **kwargs)) or calls[-1])
    out = str(tmp_path / "a.png")
    assert run(capsys, "generate", "--model", "tiny-random-sd15", "a", "--device", "cpu", "--out", out)[0] == 0
    assert run(capsys, "generate", "--model", "tiny-random-sd15", "a", "--device", "cpu", "--out", out,
               "--num-inference-steps", "3", "--guidance-scale", "1.5", "--size", "24")[0] == 0
    own, given = calls
    # tiny-random-*: 2 steps, guidance 4, 32x32 unless told otherwise.
    assert (own["num_inference_steps"], own["guidance_scale"], own["height"], own["width"]) == (2, 4.0, 32, 32)
    assert (given["num_inference_steps"], given["guidance_scale"], given["height"], given["width"]) == (3, 1.5, 24, 24)
    assert given["generator"].device.type == "cpu"  # the same noise on every device
    with Image.open(out) as image:
        assert image.size == (24, 24)


@pytest.mark.parametrize("command", [["generate", "a sign"], ["localize", "--out", "x"]])
@pytest.mark.parametrize("old, new", [("--steps", "--num-inference-steps"), ("--guidance", "--guidance-scale")])
def test_old_option_names_are_a_one_line_error_naming_the_new_one(capsys, command, old, new):
    status, out, err = exit_of(capsys, *command, "--model", "tiny-random-sd15", old, "3")
    assert status == 2 and out == ""
    assert err == f"textloc {command[0]}: error: {old} is now {new} (diffusers' name for it).\n"
    status, _, err = exit_of(capsys, *command, old)  # with no value as well
    assert status == 2 and new in err


def test_bad_generate_options_are_errors_with_status_2(capsys, tmp_path):
    status, _, err = run(capsys, "generate", "--model", "tiny-random-sdxl", "x", "--out", str(tmp_path / "x.jpg"))
    assert status == 2 and "--out must be a .png" in err
    status, _, err = exit_of(capsys, "generate", "--model", "tiny-random-sdxl", "x", "--num", "0")
    assert status == 2 and "must be 1 or more" in err
    status, _, err = exit_of(capsys, "generate", "x", "--num-inference-steps", "0")
    assert status == 2 and "must be 1 or more" in err
    for prompts in ([], ["x", "--prompt", "y"]):
        status, _, err = run(capsys, "generate", "--model", "tiny-random-sdxl", *prompts)
        assert status == 2 and "give the prompt once" in err


# --------------------------------------------------------------------------------------------
# localize (the run itself is tested in test_localize.py; here, what the CLI hands it)


@pytest.fixture
def localize_calls(monkeypatch):
    """Replace the localization with a recorder: the CLI's part ends at the call."""
    calls = []

    def record(pipe, pairs, layers="all", config=None, **kwargs):
        calls.append({"pipe": pipe, "pairs": pairs, "layers": layers, "config": config, **kwargs})
        return SimpleNamespace(summary=lambda: "summary")

    # The package, not textloc.localization: the top-level API exports the function under that name.
    monkeypatch.setattr(importlib.import_module("textloc.localization"), "localize", record)
    return calls


def test_localize_passes_the_models_settings_pairs_and_judge(capsys, tmp_path, localize_calls):
    from textloc.tiny.pairs import localization_pairs, scene_judge

    status, out, _ = run(capsys, "localize", "--model", "textloc-tiny", "--pairs", "3", "--seed", "2", "--device", "cpu", "--out", str(tmp_path))
    assert status == 0 and "summary" in out
    (call,) = localize_calls
    assert (call["num_inference_steps"], call["guidance_scale"]) == (25, 5.0)  # textloc-tiny's sampler
    assert call["pairs"] == localization_pairs(3, seed=2) and call["scene_judge"] is scene_judge

    status, _, _ = run(capsys, "localize", "--model", "tiny-random-sd15", "--pairs", "2", "--device", "cpu", "--out", str(tmp_path),
                       "--num-inference-steps", "3", "--guidance-scale", "2", "--size", "24")
    assert status == 0
    call = localize_calls[-1]
    assert (call["num_inference_steps"], call["guidance_scale"], call["height"], call["width"]) == (3, 2.0, 24, 24)
    assert call["scene_judge"] is None and len(call["pairs"]) == 2
    assert "generator" not in call and "output_type" not in call  # localize sets both itself


def test_localize_estimate_needs_no_out_and_hands_localize_the_assumed_selection(capsys, tmp_path, localize_calls):
    status, _, _ = run(capsys, "localize", "--model", "tiny-random-sd15", "--pairs", "2", "--device", "cpu", "--estimate", "--assume-selected", "0")
    assert status == 0
    call = localize_calls[-1]
    assert call["estimate"] is True and call["assume_selected"] == [0] and "out" not in call
    status, _, err = run(capsys, "localize", "--model", "tiny-random-sd15", "--pairs", "2")
    assert status == 2 and "--out" in err
    status, _, err = run(capsys, "localize", "--model", "tiny-random-sd15", "--out", str(tmp_path), "--assume-selected", "0")
    assert status == 2 and "--estimate" in err


@pytest.mark.parametrize(
    "text, window",
    [("0:0.5", (0, 0.5)), ("4:", (4, None)), (":2", (None, 2)), ("0.25:0.75", (0.25, 0.75)), ("-2:", (-2, None)), ("1:0.5", (1, 0.5))],
)
def test_patch_steps_reach_localize_as_a_window(capsys, tmp_path, localize_calls, text, window):
    assert run(capsys, "localize", "--model", "tiny-random-sd15", "--pairs", "2", "--device", "cpu", "--out", str(tmp_path), f"--patch-steps={text}")[0] == 0
    assert localize_calls[-1]["config"].patch_steps == window


@pytest.mark.parametrize(
    "text, message",
    [
        ("5:2", "stops before it starts"),
        ("3:3", "stops before it starts"),
        ("0.5:0.2", "stops before it starts"),
        ("-1:-3", "stops before it starts"),
        ("late", "START:STOP"),
        ("1:2:3", "START:STOP"),
        ("1.5:", "fractions of the schedule from 0.0 to 1.0"),
        ("a:b", "step indices"),
        ("1e-1:", "step indices"),
    ],
)
def test_bad_patch_steps_are_refused_before_the_model_loads(capsys, tmp_path, monkeypatch, localize_calls, text, message):
    monkeypatch.setattr(textloc.pipelines, "load_pipeline", lambda *args, **kwargs: pytest.fail("loaded a model for a bad --patch-steps"))
    status, out, err = run(capsys, "localize", "--model", "tiny-random-sd15", "--out", str(tmp_path), f"--patch-steps={text}")
    assert status == 2 and out == "" and not localize_calls
    assert err.startswith("textloc: error: --patch-steps") and message in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------
# models, devices, errors


@pytest.mark.parametrize(
    "model, message",
    [
        ("tiny-random-nope", "unknown model 'tiny-random-nope': the named models are textloc-tiny, textloc-tiny-sd3, textloc-tiny-flux, tiny-random-sd15,"),
        ("textloc-tiny-typo", "Did you mean textloc-tiny or textloc-tiny-sd3 or textloc-tiny-flux?"),
        ("./no/such/folder", "cannot load model './no/such/folder': no such folder."),
    ],
)
def test_bad_model_is_one_line_on_stderr_and_status_2(capsys, model, message):
    status, out, err = run(capsys, "layers", "--model", model)
    assert status == 2 and out == ""
    assert err.startswith("textloc: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_device_and_dtype_choose_where_and_how_the_model_runs(capsys, tmp_path, monkeypatch):
    loaded = {}
    real = textloc.pipelines.load_pipeline

    def load_and_record(name, device, dtype):
        pipe = real(name, device=device, dtype=dtype)
        loaded.update(device=device, dtype=pipe.unet.dtype)
        return pipe

    monkeypatch.setattr(textloc.pipelines, "load_pipeline", load_and_record)
    status, _, _ = run(capsys, "generate", "--model", "tiny-random-sd15", "a", "--out", str(tmp_path / "a.png"), "--device", "cpu", "--dtype", "bfloat16")
    assert status == 0 and loaded == {"device": torch.device("cpu"), "dtype": torch.bfloat16}
    run(capsys, "layers", "--model", "tiny-random-sd15", "--device", "cpu")
    assert loaded["dtype"] == torch.float32  # auto: float32 on the CPU
    run(capsys, "layers", "--model", "tiny-random-sd15")
    if torch.cuda.is_available():  # no --device: the GPU if there is one, in half precision
        assert loaded["device"].type == "cuda" and loaded["dtype"] in (torch.bfloat16, torch.float16)
    else:
        assert loaded == {"device": torch.device("cpu"), "dtype": torch.float32}

    status, _, err = run(capsys, "layers", "--model", "tiny-random-sd15", "--device", "gpu")
    assert status == 2 and "not a device torch knows" in err
    if not torch.cuda.is_available():
        status, _, err = run(capsys, "layers", "--model", "tiny-random-sd15", "--device", "cuda")
        assert status == 2 and "no CUDA GPU" in err


def test_debug_shows_the_exception(capsys):
    with pytest.raises(Exception, match="unknown model 'tiny-random-nope'"):
        main(["--debug", "layers", "--model", "tiny-random-nope"])


def test_python_dash_m_runs_the_same_cli(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["textloc", "layers", "--model", "tiny-random-nope"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("textloc", run_name="__main__")
    assert exit_info.value.code == 2
    assert "unknown model 'tiny-random-nope'" in capsys.readouterr().err


def test_help_at_every_level_shows_examples_and_diffusers_option_names(capsys):
    for argv in ([], ["layers"], ["generate"], ["localize"]):
        status, out, _ = exit_of(capsys, *argv, "--help")
        assert status == 0 and "examples:" in out
        if argv in (["generate"], ["localize"]):
            assert "--num-inference-steps N" in out and "--guidance-scale G" in out
            # The old names are declared only to refuse them: help never shows them.
            assert not re.search(r"(?<![\w-])--(steps|guidance)(?![\w-])", out)
        if argv:
            assert "tiny-random-deepfloyd-if" in out  # --model lists the named models


# --------------------------------------------------------------------------------------------
# textloc edit


@pytest.mark.parametrize("text, parsed", [("4", 4), ("-2", -2), ("0.1", 0.1), (".5", 0.5)])
def test_start_step_reads_a_bound_as_patch_steps_does(text, parsed):
    assert textloc.cli.options.start_step(text) == parsed == textloc.cli.options.step_bound(text)


@pytest.mark.parametrize("text", ["1.5", "a", "", "1e-1"])
def test_a_bad_start_step_is_refused_with_the_step_bound_rule(capsys, text):
    status, _, err = exit_of(capsys, "edit", "--model", "tiny-random-sd15", "--prompt", 'A sign that says "HI".', "--new-text", "NO",
                             f"--start-step={text}", "--out", "/nonexistent")
    assert status == 2 and "--start-step" in err and "step ind" in err and "of the schedule from 0.0 to 1.0" in err


def test_edit_writes_the_pair_and_prints_what_was_read(capsys, tmp_path):
    status, out, _ = run(capsys, "edit", "--model", "tiny-random-sd15", "--device", "cpu", "--prompt", 'A sign that says "HELLO".',
                         "--new-text", "WORLD", "--layers", "all", "--start-step", "0", "--out", str(tmp_path))
    assert status == 0
    assert out.startswith("patch: read ") and "wanted 'WORLD'" in out
    data = json.loads((tmp_path / "edit.json").read_text())
    assert (data["new_prompt"], data["start_step"]) == ('A sign that says "WORLD".', 0)
    assert len(data["layers"]) == 7  # tiny-random-sd15's cross-attention layers
    assert Image.open(tmp_path / "edit.png").size[0] > 0


@pytest.mark.parametrize(
    "prompt, new_text, message",
    [("No quotes here.", "WORLD", "no quoted text"), ('A sign that says "HELLO".', "HELLO", "the prompt's own text")],
)
def test_edit_refuses_bad_text_before_the_model_loads(capsys, tmp_path, monkeypatch, prompt, new_text, message):
    monkeypatch.setattr(textloc.pipelines, "load_pipeline", lambda *args, **kwargs: pytest.fail("loaded a model for a bad edit"))
    status, _, err = run(capsys, "edit", "--prompt", prompt, "--new-text", new_text, "--out", str(tmp_path))
    assert status == 2 and message in err and err.count("\n") == 1


def test_edit_of_a_users_image_reports_its_reconstruction(capsys, tmp_path):
    from textloc.testing import tiny_pipeline

    pipe = tiny_pipeline("sd15")
    image = pipe(prompt='A sign that says "HELLO".', num_inference_steps=2, height=32, width=32, guidance_scale=1.0).images[0]
    image.save(tmp_path / "mine.png")
    status, out, _ = run(capsys, "edit", "--model", "tiny-random-sd15", "--device", "cpu", "--image", str(tmp_path / "mine.png"),
                         "--prompt", 'A sign that says "HELLO".', "--new-text", "WORLD", "--layers", "all", "--out", str(tmp_path / "out"))
    assert status == 0 and "the unedited regeneration of" in out
    assert json.loads((tmp_path / "out" / "edit.json").read_text())["reconstruction"]["psnr"] > 0


# --------------------------------------------------------------------------------------------
# Options given twice


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--prompt", 'A sign that says "A".', "--prompt", 'A sign that says "B".'],
        ["edit", "--prompt", 'A sign that says "A".', "--prompt", 'A sign that says "B".', "--new-text", "C", "--out", "x"],
        ["guard", "--prompt", 'A sign that says "A".', "--prompt", 'A sign that says "B".', "--out", "x"],
        ["generate", "P", "--seed", "1", "--seed", "2"],
        ["localize", "--pairs", "2", "--pairs", "3", "--out", "x"],
        ["finetune", "--data", "a", "--data", "b", "--max-train-steps", "1", "--out", "x"],
    ],
)
def test_an_option_given_twice_is_refused_not_half_dropped(capsys, monkeypatch, argv):
    monkeypatch.setattr(textloc.pipelines, "load_pipeline", lambda *args, **kwargs: pytest.fail("loaded a model for an option given twice"))
    status, _, err = exit_of(capsys, *argv)
    assert status == 2 and "was given twice" in err and "give it once" in err and err.count("\n") == 1
