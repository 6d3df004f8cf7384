"""bench/gpu_check.py in its --tiny mode: the checks a GPU machine runs at real size, run here on
the tiny random pipelines, so that the script is known to work before a GPU is at hand."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_model_is_built_recorded_and_patched_eager(tmp_path):
    out = tmp_path / "gpu.json"
    assert _gpu_check().main(["--tiny", "--compile", "none", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["could_not"] == []
    assert sorted(results["models"]) == ["flux.1-dev", "qwen-image", "sd3.5-large", "sdxl"]
    for result in results["models"].values():
        assert result["eager"]["plain_s"] > 0 and result["eager"]["patched_s"] > 0
        assert result["eager"]["patch_changes_latents"] and result["cache_bytes"] > 0


def test_a_compiled_denoiser_patches_as_eager_and_compiles_nothing_once_warm(tmp_path):
    out = tmp_path / "gpu.json"
    assert _gpu_check().main(["--tiny", "--models", "sd3.5-large", "--out", str(out)]) == 0
    compiled = json.loads(out.read_text())["models"]["sd3.5-large"]["compiled"]
    assert compiled["graphs_compiled_while_timed"] == 0
    assert max(compiled["max_abs_difference_from_eager"].values()) <= 1e-5
