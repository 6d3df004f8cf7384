"""Every script of examples/ runs, on textloc-tiny, and writes what its docstring says.

Each is imported and its ``main(out)`` called in this process (the scripts' own command line only
parses the folder), so they share the imports; together they take well under a minute on one thread.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(path.stem for path in (ROOT / "examples").glob("*.py"))
PRESET = [f"up_blocks.1.attentions.{block}.transformer_blocks.0.attn2" for block in (1, 2, 0)]


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_there_is_an_example_per_use():
    assert EXAMPLES == ["edit", "edit_image", "engine", "finetune", "guard", "localize"]


@pytest.fixture
def out(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # nothing may depend on the folder a script is run from
    return tmp_path / "out"


def test_localize(out):
    result = example("localize").main(out)
    report = json.loads((out / "report.json").read_text())
    assert report["selected"] == result.selected and set(result.selected) <= set(PRESET)
    assert report["model"] == "textloc-tiny"  # an embedded model by its name, not its folder (a Path failed to write)
    assert {"layers.csv", "layers.png", "examples.png"} <= {path.name for path in out.iterdir()}


def test_edit(out):
    result = example("edit").main(out)
    assert json.loads((out / "edit.json").read_text())["new_text"] == "FISH"
    assert sorted(result.layers) == sorted(PRESET)
    edit = pixels(out / "edit.png")
    assert edit.shape[1] > edit.shape[0]  # source | edited, side by side
    assert not np.array_equal(np.asarray(result.source_image), np.asarray(result.edited_image))


def test_edit_image(out):
    result = example("edit_image").main(out)
    assert (out / "sign.png").exists() and (out / "edit.png").exists()
    assert json.loads((out / "edit.json").read_text())["new_text"] == "OPEN"
    assert result.reconstruction["psnr"] > 15  # the inversion regenerates the sign


def test_guard(out):
    example("guard").main(out)
    toxic, clean = json.loads((out / "reports.json").read_text())
    assert toxic["found"] == ["D4MN"] and toxic["rows"] == [0]
    assert clean["found"] == [] and clean["rows"] == []
    assert np.array_equal(pixels(out / "guarded-1.png"), pixels(out / "unguarded-1.png"))  # a clean prompt is untouched
    assert not np.array_equal(pixels(out / "guarded-0.png"), pixels(out / "unguarded-0.png"))


def test_finetune(out):
    lora = example("finetune").main(out)
    assert sorted(lora.layers) == sorted(PRESET)
    with safe_open(out / "pytorch_lora_weights.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert keys and all(".up_blocks.1.attentions." in key for key in keys)  # the text layers' LoRA, nothing else
    assert (out / "training.json").exists() and (out / "sample.png").exists()


def test_engine(out):
    images = example("engine").main(out)
    assert len(json.loads((out / "layers.json").read_text())) == 12  # 11 cross-attention layers and the pooled vector
    assert np.array_equal(images["plain again"], images["plain"])  # leaving tl.patch restored the pipeline
    assert not np.array_equal(images["patched"], images["plain"])
