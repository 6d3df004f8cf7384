"""LoRA fine-tuning: only the named projections train, plain diffusers reloads the result, runs resume exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import textloc as tl
from textloc.architectures.spec import UNET_SIGNATURE, Family
from textloc.engine import denoiser, select_layers
from textloc.fingerprint import weights_fingerprint
from textloc.finetune import ImageFolder, RenderedSigns, RowsDataset, load_lora, lora_targets, train_lora
from textloc.finetune.train import CHECKPOINT_PREFIX, TRAINING_FILE
from textloc.localization import Localization
from textloc.pipeline_calls import images_of
from textloc.testing import ARCHITECTURES, tiny_call_kwargs, tiny_pipeline

from conftest import PROMPT

# Few steps at a high learning rate, so that the LoRA moves the images measurably.
QUICK = dict(steps=2, batch_size=2, lr=5e-2, resolution=32, checkpoint_every=2, progress=False)


def images(pipe, seed: int = 0) -> np.ndarray:
    kwargs = {**tiny_call_kwargs(pipe), "generator": torch.Generator("cpu").manual_seed(seed)}
    return np.asarray(images_of(pipe(prompt=PROMPT, **kwargs)))


TEXT_SETTINGS = ("max_sequence_length", "clean_caption", "complex_human_instruction", "text_encoder_out_layers")


def text_kwargs(arch: str) -> dict:
    """The tiny pipeline's call settings that shape its text (what a named model's settings hold).
    Ideogram 4 refuses a prompt longer than its ``max_sequence_length``, which the tiny one's (the
    tests' short prompts) is shorter than the rendered signs' captions: they get room."""
    kwargs = {key: value for key, value in tiny_call_kwargs(arch).items() if key in TEXT_SETTINGS}
    return {**kwargs, "max_sequence_length": 128} if arch == "ideogram4" else kwargs


def parameters(pipe) -> dict[str, torch.Tensor]:
    """The denoiser's own parameters, by their names before peft wrapped any layer (``.base_layer``)."""
    named = denoiser(pipe).named_parameters()
    return {name.replace(".base_layer", ""): value.detach().clone() for name, value in named if "lora_" not in name}


def lora_names(pipe) -> set[str]:
    return {name for name, _ in denoiser(pipe).named_parameters() if "lora_" in name}


# The families whose spec refuses train_lora, each with its reason (docs/families.md lists them): refused
# in one line, before anything is written.
NOT_TRAINED = ("cosmos2", "kandinsky5", "qwenimage21", "glm-image", "cogview3plus", "bria-fibo", "dreamlite")


@pytest.mark.parametrize("arch", NOT_TRAINED)
def test_a_family_the_objective_cannot_encode_for_is_refused_before_training(arch, tmp_path):
    pipe = tiny_pipeline(arch)
    with pytest.raises(ValueError, match="train_lora does not support the .* family yet: "):
        train_lora(pipe, select_layers(pipe, "all")[-1:], RenderedSigns(), output_dir=tmp_path, **QUICK)
    assert not any(tmp_path.iterdir()), "nothing is written before the refusal"


# The families whose pooled unit no LoRA can train (HunyuanDiT's attention pool hands its projections'
# weights to a functional op, never calling them): a LoRA on it is refused in one line.
POOLED_NOT_TRAINED = ("hunyuandit",)


@pytest.mark.parametrize("arch", POOLED_NOT_TRAINED)
def test_a_pooled_unit_no_lora_can_train_is_refused_before_training(arch, tmp_path):
    pipe = tiny_pipeline(arch)
    with pytest.raises(ValueError, match="train_lora on the pooled unit does not support the .* family yet: "):
        train_lora(pipe, select_layers(pipe, "all")[-2:], RenderedSigns(), output_dir=tmp_path, **QUICK)
    assert not any(tmp_path.iterdir()), "nothing is written before the refusal"


# The families that run a call's prompts only at one token length (Kandinsky 3): captions of different
# lengths are refused in one batch, so they train one caption a micro-step.
ONE_CAPTION_A_BATCH = ("kandinsky3",)


@pytest.mark.parametrize("arch", [arch for arch in ARCHITECTURES if arch not in NOT_TRAINED])
def test_only_the_lora_trains_and_plain_diffusers_reloads_it(arch, tmp_path):
    pipe = tiny_pipeline(arch)
    base = images(pipe)
    before = parameters(pipe)
    layers = select_layers(pipe, "attention" if arch in POOLED_NOT_TRAINED else "all")[-2:]
    quick = {**QUICK, "batch_size": 1, "grad_accum": 2} if arch in ONE_CAPTION_A_BATCH else QUICK
    result = train_lora(pipe, layers, RenderedSigns(), output_dir=tmp_path, generate_kwargs=text_kwargs(arch), **quick)

    after, lora = parameters(pipe), lora_names(pipe)
    assert lora and sum(denoiser(pipe).get_parameter(name).numel() for name in lora) == result.trainable_parameters
    # Up-projections start at zero: one still there never trained (a target the model never runs).
    assert all(denoiser(pipe).get_parameter(name).any() for name in lora if ".lora_B." in name)
    assert after.keys() == before.keys()
    assert all(torch.equal(before[name], after[name]) for name in before), "a frozen parameter changed"
    targeted = {name.split(".lora_")[0] for name in lora}
    assert targeted == set(result.targets) == set(lora_targets(pipe, layers))
    trained = images(pipe)
    assert np.abs(trained - base).max() > 1e-3, "the LoRA did not change the images: the reload check would be empty"

    fresh = tiny_pipeline(arch)
    load_lora(fresh, tmp_path)
    np.testing.assert_allclose(images(fresh), trained, atol=1e-5)
    # diffusers alone loads it where the pipeline has a loader its denoiser serves (not Kandinsky 3's U-Net)
    if hasattr(fresh, "load_lora_weights") and hasattr(denoiser(fresh), "load_lora_adapter"):
        plain = tiny_pipeline(arch)
        plain.load_lora_weights(tmp_path)  # diffusers alone, no textloc
        np.testing.assert_allclose(images(plain), trained, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "targets", "expected"),
    [
        ("sd15", None, {"to_q", "to_k", "to_v", "to_out.0"}),
        ("deepfloyd-if", None, {"to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"}),
        ("sd3", None, {"to_q", "to_k", "to_v", "to_out.0"}),
        ("sd3", "text", {"add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}),
        ("flux", "both", {"to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}),
        ("sd15", ("to_k", "to_v"), {"to_k", "to_v"}),
    ],
)
def test_targets_are_full_paths_of_the_chosen_projections(arch, targets, expected):
    pipe = tiny_pipeline(arch)
    layer = select_layers(pipe, "all")[0]
    paths = lora_targets(pipe, layer, targets)
    assert {path.removeprefix(layer.name + ".") for path in paths} == expected
    assert all(path.startswith(layer.name + ".") for path in paths)


def test_a_joint_block_without_text_output_leaves_it_out_unless_named():
    pipe = tiny_pipeline("sd3")
    last = select_layers(pipe, "attention")[-1]  # SD3's last block: context_pre_only, no to_add_out
    assert last.module.to_add_out is None
    assert not any(path.endswith("to_add_out") for path in lora_targets(pipe, last, "text"))
    with pytest.raises(ValueError, match="no linear projection 'to_add_out'"):
        lora_targets(pipe, last, ("to_add_out",))


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    settings = dict(QUICK, checkpoint_every=1)
    whole = tiny_pipeline("sd15")
    train_lora(whole, "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "whole", **dict(settings, steps=4))

    parted = tiny_pipeline("sd15")
    train_lora(parted, "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "parted", **dict(settings, steps=2))
    resumed = tiny_pipeline("sd15")
    train_lora(resumed, "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "parted", resume=True, **dict(settings, steps=4))

    first, second = (load_file(tmp_path / run / "pytorch_lora_weights.safetensors") for run in ("whole", "parted"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    kept = sorted(path.name for path in (tmp_path / "parted").glob(f"{CHECKPOINT_PREFIX}*"))
    assert kept == ["checkpoint-3", "checkpoint-4"]


def test_an_average_of_the_lora_is_saved_and_resumes_where_an_uninterrupted_run_ends(tmp_path):
    settings = dict(QUICK, checkpoint_every=1, ema_decay=0.5)
    whole = tiny_pipeline("sd15")
    train_lora(whole, "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "whole", **settings)
    train_lora(tiny_pipeline("sd15"), "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "parted", **dict(settings, steps=1))
    train_lora(tiny_pipeline("sd15"), "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "parted", resume=True, **settings)
    first, second = (load_file(tmp_path / run / "pytorch_lora_weights.safetensors") for run in ("whole", "parted"))
    assert all(torch.equal(first[key], second[key]) for key in first)
    # EMAModel's decay ramps as min(0.5, (1 + k) / (10 + k)): step 1 copies, step 2 keeps 2/11 of it.
    steps = [load_file(tmp_path / "whole" / f"{CHECKPOINT_PREFIX}{step}" / "lora.safetensors") for step in (1, 2)]
    saved = {name.removeprefix("unet."): value for name, value in first.items()}
    assert saved.keys() == steps[1].keys()
    for key in saved:
        torch.testing.assert_close(saved[key], 2 / 11 * steps[0][key] + 9 / 11 * steps[1][key])
    assert any(not torch.equal(saved[key], steps[1][key]) for key in saved)  # the average, not the last step
    kept = {name: value for name, value in denoiser(whole).named_parameters() if "lora_B" in name}
    assert any(value.abs().sum() > 0 for value in kept.values())
    assert all(torch.equal(value, saved[name.replace(".default", "")]) for name, value in kept.items())  # the pipeline keeps it too


def test_a_different_global_batch_or_seed_trains_a_different_lora(tmp_path):
    # The counterpart of the resume and data-parallel checks: they would pass if nothing trained.
    runs = {}
    for name, settings in {"a": {}, "seed": {"seed": 1}}.items():
        pipe = tiny_pipeline("sd15")
        train_lora(pipe, "up_blocks.*", RenderedSigns(), output_dir=tmp_path / name, **{**QUICK, **settings})
        runs[name] = load_file(tmp_path / name / "pytorch_lora_weights.safetensors")
    assert any(not torch.equal(runs["a"][key], runs["seed"][key]) for key in runs["a"])


DATA_PARALLEL = """
import sys, torch
torch.set_num_threads(1)
from textloc.finetune import RenderedSigns, train_lora
from textloc.testing import tiny_pipeline
batch, out = int(sys.argv[1]), sys.argv[2]
train_lora(tiny_pipeline("sd15"), "up_blocks.*", RenderedSigns(), steps=2, batch_size=batch, lr=5e-2,
           resolution=32, checkpoint_every=2, output_dir=out, progress=False)
"""


def test_two_processes_train_the_lora_one_process_trains_with_the_same_global_batch(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(DATA_PARALLEL)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    # The one-process run here, as the script runs it (one thread, as every test): a third
    # interpreter would import torch and diffusers again.
    train_lora(tiny_pipeline("sd15"), "up_blocks.*", RenderedSigns(), steps=2, batch_size=4, lr=5e-2,
               resolution=32, checkpoint_every=2, output_dir=tmp_path / "one", progress=False)
    # --standalone: torchrun picks a free port, so parallel test runs cannot collide.
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run = subprocess.run([*launch, str(script), "2", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    failures = [line for line in run.stderr.splitlines() if line.startswith("[rank")]
    assert run.returncode == 0, "\n".join(failures[-30:]) or run.stderr[-2000:]
    one, two = (load_file(tmp_path / name / "pytorch_lora_weights.safetensors") for name in ("one", "two"))
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "two" / TRAINING_FILE).read_text())["global_batch_size"] == 4


def test_an_imagefolder_and_a_datasets_dataset_train_alike(tmp_path):
    import datasets
    folder = tmp_path / "data"
    folder.mkdir()
    rows = []
    for index in range(3):
        image, caption = RenderedSigns().example(index)
        image.save(folder / f"{index}.png")
        rows.append({"file_name": f"{index}.png", "caption": caption})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    dataset = datasets.Dataset.from_dict({"image": [Image.open(folder / row["file_name"]) for row in rows], "caption": [row["caption"] for row in rows]})

    weights = []
    for name, data in {"folder": ImageFolder(folder, caption_column="caption"), "hf": RowsDataset(dataset, caption_column="caption")}.items():
        pipe = tiny_pipeline("sd15")
        train_lora(pipe, "up_blocks.*", data, output_dir=tmp_path / name, **QUICK)
        weights.append(load_file(tmp_path / name / "pytorch_lora_weights.safetensors"))
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_validation_logs_a_csv_a_plot_and_sample_grids(tmp_path):
    pipe = tiny_pipeline("sd15")
    prompts = ['A sign that says "OPEN".', 'A sign that says "STOP".']
    result = train_lora(
        pipe, "up_blocks.*", RenderedSigns(), output_dir=tmp_path, validate_every=1, validation_prompts=prompts,
        generate_kwargs=tiny_call_kwargs(pipe), **QUICK,
    )
    assert [row["step"] for row in result.validation] == [0, 1, 2]
    assert all(0 <= row["word_accuracy"] <= 1 for row in result.validation)
    assert (tmp_path / "validation.png").is_file() and (tmp_path / "validation.csv").read_text().count("\n") == 4
    assert sorted(path.name for path in (tmp_path / "validation").iterdir()) == [f"step_00000{i}.png" for i in range(3)]
    assert json.loads((tmp_path / TRAINING_FILE).read_text())["validation"] == result.validation


def image_folder(folder: Path, lines: list[str], image: bytes | None = None) -> Path:
    folder.mkdir(parents=True)
    if image is None:
        Image.new("RGB", (8, 8)).save(folder / "a.png")
    else:
        (folder / "a.png").write_bytes(image)
    (folder / "metadata.jsonl").write_text("\n".join(lines))
    return folder


def test_bad_input_is_refused_before_any_step(tmp_path):
    pipe = tiny_pipeline("sd15")
    before = parameters(pipe)
    (tmp_path / "plain").mkdir()
    folders = {
        "no metadata.jsonl": tmp_path / "plain",
        "lists no image": image_folder(tmp_path / "empty", []),
        "no caption in column 'text'": image_folder(tmp_path / "nocap", ['{"file_name": "a.png"}']),
        "not a readable image": image_folder(tmp_path / "bad", ['{"file_name": "a.png", "text": "x"}'], image=b"not a png"),
        "does not exist": tmp_path / "missing",
    }
    for message, folder in folders.items():
        with pytest.raises(ValueError, match=message):
            train_lora(pipe, "up_blocks.*", folder, output_dir=tmp_path / "out")
    settings = {
        "rank=0": dict(rank=0),
        "exceeds the width": dict(rank=4096),
        "steps=0": dict(steps=0),
        "needs validation_prompts": dict(validate_every=5),
        "quotes no text": dict(validation_prompts=["a sign"]),
    }
    for message, bad in settings.items():
        with pytest.raises(ValueError, match=message):
            train_lora(pipe, "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "out", **bad)
    with pytest.raises(ValueError, match="Unknown layer"):
        train_lora(pipe, "up_blocks.9.nothing", RenderedSigns(), output_dir=tmp_path / "out")
    assert not lora_names(pipe), "a LoRA was added before the input was checked"
    assert all(torch.equal(before[name], value) for name, value in parameters(pipe).items())
    assert not (tmp_path / "out").exists()


def test_layers_localized_on_other_weights_are_refused(tmp_path):
    pipe = tiny_pipeline("sd15")
    layer = select_layers(pipe, "all")[0].name
    other = Localization(model="other", settings={"weights": "0" * 16}, layers=[], baselines=None, selected=[layer])
    with pytest.raises(ValueError, match="found on other weights"):
        train_lora(pipe, other, RenderedSigns(), output_dir=tmp_path)


def test_a_folder_holding_another_run_is_refused(tmp_path):
    train_lora(tiny_pipeline("sd15"), "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "run", **QUICK)
    with pytest.raises(ValueError, match="already holds a LoRA run"):
        train_lora(tiny_pipeline("sd15"), "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "run", **QUICK)
    with pytest.raises(ValueError, match="its alpha, rank differ"):
        train_lora(tiny_pipeline("sd15"), "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "run", resume=True, **{**QUICK, "rank": 2})
    trained = tiny_pipeline("sd15")
    train_lora(trained, "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "first", **QUICK)
    with pytest.raises(ValueError, match="already carries a LoRA"):
        train_lora(trained, "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "second", **QUICK)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        train_lora(tiny_pipeline("sd15"), "up_blocks.*", RenderedSigns(), output_dir=tmp_path / "other", **QUICK)


def test_train_lora_is_public_api():
    assert tl.train_lora is train_lora and tl.load_lora is load_lora


def test_cli_trains_a_lora_that_generate_then_uses(tmp_path, capsys):
    from textloc.cli import main

    out = tmp_path / "lora"
    common = ["--threads", "1"]
    train = ["finetune", "--model", "tiny-random-sd15", "--layers", "up_blocks.*", "--data", "textloc-tiny", "--max-train-steps", "2",
             "--batch-size", "2", "--lr", "0.05", "--ema-decay", "0.9", "--out", str(out)]
    anchor = ["--anchor-weight", "1", "--anchor-prompt", 'A sign that says "DOOR".']
    assert main([*common, *train, "--anchor-weight", "1"]) == 2  # an anchor with no prompt to hold, before the model loads
    assert "--anchor-prompt" in capsys.readouterr().err and not out.exists()
    assert main([*common, *train, *anchor]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["ema_decay"] == 0.9 and record["anchor_weight"] == 1 and record["anchor_prompts"] == ['A sign that says "DOOR".']
    printed = capsys.readouterr().out
    assert "trainable parameters" in printed and "validation word accuracy" in printed
    assert (out / "pytorch_lora_weights.safetensors").is_file() and (out / "validation.png").is_file()
    modes = {name: os.stat(out / name).st_mode & 0o777 for name in ("pytorch_lora_weights.safetensors", "training.json")}
    assert len(set(modes.values())) == 1, f"the weights are written with another mode than the other outputs: {modes}"

    prompt = 'A sign that says "LAMP".'
    assert main([*common, "generate", "--model", "tiny-random-sd15", prompt, "--out", str(tmp_path / "base.png")]) == 0
    assert main([*common, "generate", "--model", "tiny-random-sd15", prompt, "--lora", str(out), "--out", str(tmp_path / "lora.png")]) == 0
    assert f"LoRA {out}" in capsys.readouterr().out
    base, lora = (np.asarray(Image.open(tmp_path / name), dtype=float) for name in ("base.png", "lora.png"))
    assert np.abs(base - lora).max() > 2, "generate --lora made the base model's image"
    # A LoRA for another model is an error, not an image made without it.
    other = [*common, "generate", "--model", "tiny-random-sd3", prompt, "--lora", str(out), "--out", str(tmp_path / "other.png")]
    assert main(other) == 2 and "was trained on other weights" in capsys.readouterr().err
    assert main([*other, "--lora-on-other-weights"]) == 2 and "names no module of this" in capsys.readouterr().err
    assert not (tmp_path / "other.png").exists()

    assert main([*common, *train, *anchor]) == 2  # the folder holds that run now
    assert "already holds a LoRA run" in capsys.readouterr().err
    assert main([*common, *train[:5], "--data", str(tmp_path / "nowhere"), *train[7:], *anchor]) == 2
    assert "does not exist" in capsys.readouterr().err


class TextbookDenoiser(torch.nn.Module):
    """Predicts exactly what the textbook says the target is, from the clean samples it is told."""

    def __init__(self, clean: torch.Tensor, prediction_type: str, alphas_cumprod: torch.Tensor | None, total: int):
        super().__init__()
        self.clean, self.prediction_type, self.alphas_cumprod, self.total = clean, prediction_type, alphas_cumprod, total

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, **_) -> tuple[torch.Tensor]:
        shape = (-1, 1, 1, 1)
        if self.prediction_type == "flow":  # x_t = (1 - s) x + s e, s = t / T; the target is e - x
            sigma = (timestep / self.total).view(shape)
            noise = (sample - (1 - sigma) * self.clean) / sigma
            return (noise - self.clean,)
        alpha = self.alphas_cumprod[timestep.long()].view(shape)
        noise = (sample - alpha.sqrt() * self.clean) / (1 - alpha).sqrt()
        target = {"epsilon": noise, "sample": self.clean, "v_prediction": alpha.sqrt() * noise - (1 - alpha).sqrt() * self.clean}
        return (target[self.prediction_type],)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample", "flow"])
def test_the_objective_is_zero_for_the_textbook_target_and_not_for_a_flipped_one(prediction_type):
    from types import SimpleNamespace

    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    from textloc.finetune.objective import Objective
    from textloc.engine import DenoiserInputs

    if prediction_type == "flow":
        scheduler, alphas = FlowMatchEulerDiscreteScheduler(shift=3.0), None
    else:
        scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)
        alphas = scheduler.alphas_cumprod
    objective = Objective(SimpleNamespace(scheduler=scheduler), resolution=8, family=Family("textbook", (), ()))
    clean = torch.rand(4, 3, 8, 8) * 2 - 1
    inputs = DenoiserInputs((), {"sample": None, "timestep": None}, clean.shape, lambda t: t, UNET_SIGNATURE)
    model = TextbookDenoiser(clean, prediction_type, alphas, scheduler.config.num_train_timesteps)
    assert objective.loss(model, inputs, clean, seeds=[0, 1, 2, 3]).item() < 1e-6
    flipped = TextbookDenoiser(-clean, prediction_type, alphas, scheduler.config.num_train_timesteps)
    assert objective.loss(flipped, inputs, clean, seeds=[0, 1, 2, 3]).item() > 1e-2


def test_the_shipped_textloc_tiny_lora_loads_with_plain_diffusers_on_its_localized_layers():
    shipped = Path(__file__).resolve().parent.parent / "samples" / "tiny" / "finetune"
    record = json.loads((shipped / TRAINING_FILE).read_text())
    base = tl.load_pipeline("textloc-tiny")
    assert record["targets"] == lora_targets(base, shipped.parent / "localize") and record["weights"] == weights_fingerprint(base)
    assert record["trainable_share"] <= 0.01
    kwargs = dict(prompt='A red sign on a blue background that says "LAMP".', num_inference_steps=4, guidance_scale=5.0,
                  clean_caption=False, output_type="np")
    plain = images_of(base(generator=tl.generator(0), **kwargs))
    base.load_lora_weights(shipped)
    assert np.abs(images_of(base(generator=tl.generator(0), **kwargs)) - plain).max() > 1e-3


def test_the_validation_plot_draws_a_loss_axis_only_when_there_is_a_loss_curve():
    import matplotlib.pyplot as plt

    from textloc.finetune.validation import history_figure

    def row(step, loss):
        return {"step": step, "word_accuracy": 0.5, "edit_distance": 0.3, "loss": loss}

    before_after = history_figure([row(0, None), row(10, 0.2)])  # the default: one trained point
    curve = history_figure([row(0, None), row(5, 0.3), row(10, 0.2)])
    assert (len(before_after.axes), len(curve.axes)) == (1, 2)
    plt.close("all")


# Each flow family's denoiser convention, stated here as its pipeline's __call__ has it (not read from
# its spec): the noise level sigma of the time the pipeline hands the denoiser, the sign the pipeline
# steps its scheduler with, and whether the denoiser takes a list of rows with a frame axis (Z-Image).
FLOW_CONVENTIONS = {
    "flux": (lambda time: time, 1.0, False),  # t / 1000
    "qwenimage": (lambda time: time, 1.0, False),  # t / 1000
    "flux2": (lambda time: time, 1.0, False),  # t / 1000
    "flux2-klein": (lambda time: time, 1.0, False),  # t / 1000
    "hidream": (lambda time: time / 1000, -1.0, False),  # t, prediction negated
    "lumina2": (lambda time: 1 - time, -1.0, False),  # 1 - t / 1000 (0 is noise), prediction negated
    "z-image": (lambda time: 1 - time, -1.0, True),  # (1000 - t) / 1000, per-row list, prediction negated
    "ernie-image": (lambda time: time / 1000, 1.0, False),  # t
    "nucleusmoe-image": (lambda time: time, -1.0, False),  # t / 1000, prediction negated
    "krea2": (lambda time: time, 1.0, False),  # t / 1000
    "ideogram4": (lambda time: 1 - time, -1.0, False),  # 1 - t / 1000 (0 is noise), prediction negated
}


class ExactVelocity(torch.nn.Module):
    """A denoiser that returns, in its family's convention, the exact flow velocity ``noise - clean``
    of the noisy sample it is given: the model whose loss is 0."""

    def __init__(self, signature, clean, sigma_of, sign, rows):
        super().__init__()
        self.signature, self.clean, self.sigma_of, self.sign, self.rows = signature, clean, sigma_of, sign, rows

    def forward(self, *args, **kwargs):
        from textloc.engine.run_state import sample_and_timestep

        sample, time = sample_and_timestep(self.signature, args, kwargs)
        if self.rows:
            sample = torch.stack(sample).squeeze(2)
        # Ideogram 4 hands its denoiser the text's zeros ahead of the latents, and reads the prediction after them.
        ahead = sample[:, : sample.shape[1] - self.clean.shape[1]] if sample.shape != self.clean.shape else sample[:, :0]
        sample = sample[:, ahead.shape[1]:]
        sigma = self.sigma_of(time.double()).view(-1, *[1] * (sample.dim() - 1))
        noise = (sample.double() - (1 - sigma) * self.clean) / sigma
        velocity = torch.cat([torch.zeros_like(ahead), (self.sign * (noise - self.clean)).to(ahead.dtype)], dim=1).float()
        return (list(velocity.unsqueeze(2).unbind(0)) if self.rows else velocity,)


@pytest.mark.parametrize("arch", FLOW_CONVENTIONS)
def test_the_objective_is_zero_for_the_exact_velocity_in_the_familys_convention(arch):
    from textloc.engine import denoiser_inputs
    from textloc.finetune.objective import Objective
    from textloc.finetune.train import capture_settings
    from textloc.architectures import family_of

    pipe = tiny_pipeline(arch)
    signs = RenderedSigns()
    examples = [signs.example(index) for index in range(2)]
    seeds = [3, 4]
    objective = Objective(pipe, resolution=32)
    clean = objective.clean_samples([image for image, _ in examples], seeds)
    inputs = denoiser_inputs(pipe, [caption for _, caption in examples], **capture_settings(pipe, text_kwargs(arch), 32))
    assert clean.shape == inputs.sample_shape
    sigma_of, sign, rows = FLOW_CONVENTIONS[arch]
    signature = family_of(pipe).signature
    exact = ExactVelocity(signature, clean.double(), sigma_of, sign, rows)
    assert objective.loss(exact, inputs, clean, seeds).item() < 1e-6
    flipped = ExactVelocity(signature, clean.double(), sigma_of, -sign, rows)
    assert objective.loss(flipped, inputs, clean, seeds).item() > 1e-2


@pytest.mark.parametrize("arch", FLOW_CONVENTIONS)
def test_the_denoiser_in_training_mode_predicts_what_it_predicts_in_eval_mode(arch):
    # HiDream's transformer returns its patches in training mode (its spec puts them back in the sample's layout).
    from textloc.engine import denoiser_inputs
    from textloc.finetune.train import capture_settings

    pipe = tiny_pipeline(arch)
    inputs = denoiser_inputs(pipe, [PROMPT, PROMPT], **capture_settings(pipe, text_kwargs(arch), 32))
    sample, timesteps = torch.randn(inputs.sample_shape, generator=torch.Generator().manual_seed(0)), torch.tensor([700.0, 300.0])
    model = denoiser(pipe)
    with torch.no_grad():
        evaluated = inputs(model.eval(), sample, timesteps)
        trained = inputs(model.train(), sample, timesteps)
    model.eval()
    assert trained.shape == sample.shape
    torch.testing.assert_close(trained, evaluated, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", FLOW_CONVENTIONS)
def test_the_pipeline_decodes_the_objectives_clean_sample_to_the_images_own_vae_latents(arch):
    # The sampler's last step made to return the objective's encoding (the posterior's mode) of an
    # image: the pipeline, unnormalising, unpacking and decoding its own way, must give what the VAE
    # decodes from that image's latents, so the encoding is the inverse of the pipeline's decoding.
    from diffusers import AutoencoderKLQwenImage
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput as SchedulerOutput

    from textloc.architectures.inversion import vae_decoding, vae_encoding
    from textloc.finetune.objective import Objective
    from textloc.finetune.train import capture_settings

    pipe = tiny_pipeline(arch)
    # The tiny VAEs normalise by identity statistics: other ones, so a missed normalisation shows.
    if hasattr(pipe.vae, "bn"):  # FLUX.2's and ERNIE-Image's batch-norm statistics
        pipe.vae.bn.running_mean.copy_(torch.linspace(-0.5, 0.5, pipe.vae.bn.num_features))
        pipe.vae.bn.running_var.copy_(torch.linspace(0.5, 2.0, pipe.vae.bn.num_features))
    if pipe.vae.config.get("latents_mean") is not None:  # Qwen-Image's and NucleusMoE-Image's per-channel mean and std
        channels = len(pipe.vae.config.latents_mean)
        pipe.vae.register_to_config(latents_mean=[0.1 * c for c in range(channels)], latents_std=[0.5 + 0.25 * c for c in range(channels)])
    objective = Objective(pipe, resolution=32)
    image, _ = RenderedSigns().example(0)
    pixels = objective.image_processor.preprocess([image], height=32, width=32, resize_mode="crop")
    with torch.no_grad():
        clean = objective.encode(pipe, pixels, None)
        frames = isinstance(pipe.vae, AutoencoderKLQwenImage)  # a video VAE: one frame
        latents = vae_encoding(pipe.vae, pixels[:, :, None] if frames else pixels)
        expected = vae_decoding(pipe.vae, latents)
        expected = (expected[:, :, 0] if frames else expected) / 2 + 0.5
    # An output both ways pipelines read it: indexed (return_dict=False) and by name (ERNIE-Image).
    pipe.scheduler.step = lambda output, timestep, sample, *args, **kwargs: SchedulerOutput(prev_sample=clean.to(sample.dtype))
    settings = dict(capture_settings(pipe, text_kwargs(arch), 32), output_type="pt")
    decoded = images_of(pipe(prompt=PROMPT, **settings))
    torch.testing.assert_close(torch.as_tensor(decoded).float(), expected.clamp(0, 1), rtol=1e-4, atol=1e-4)


def test_lora_disabled_gives_the_model_without_its_lora_and_then_gives_it_back():
    # What a preserved example's target is (GuardPairs(preserve=True)): a LoRA at its zero start
    # cannot tell a switched-off LoRA from one left on, so the LoRA here has weights of its own.
    from textloc.finetune.lora import add_lora, lora_disabled, lora_parameters

    pipe = tiny_pipeline("sd15")
    name = select_layers(pipe, "all")[0].name + ".to_k"
    projection = denoiser(pipe).get_submodule(name)
    text = torch.randn(1, 4, projection.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = projection(text)
        add_lora(pipe, [name], rank=2, alpha=None, seed=0)
        for parameter in lora_parameters(pipe):
            parameter.normal_(generator=torch.Generator().manual_seed(1))
        projection = denoiser(pipe).get_submodule(name)
        with_lora = projection(text)
        assert not torch.allclose(with_lora, base)
        with lora_disabled(denoiser(pipe)):
            torch.testing.assert_close(projection(text), base)
        torch.testing.assert_close(projection(text), with_lora)
