"""The engine on real-size denoisers, on a GPU: plain against patched generation, eager and compiled.

    python bench/gpu_check.py                 # on a machine with a CUDA GPU: about 8 minutes
    python bench/gpu_check.py --tiny          # the same checks on the tiny random pipelines, on the CPU

For SDXL base, SD3.5 Large, FLUX.1-dev and Qwen-Image, the denoiser is built from its family's
published config (``Family.published``) with random weights, in bfloat16 on the GPU: nothing is
downloaded. It sits in its family's tiny random pipeline, whose tiny text encoders and autoencoder
stand in for the real ones (the generation stops at the latents), so the denoiser's text input
(SDXL's cross-attention input, the others' text and pooled embedders) is narrowed to the tiny
encoders' width: every attention layer, and the text keys and values the engine patches, keep
their real size. At the native resolution (128x128 latents), a few steps, with each model's
guidance:

- plain against ``tl.patch(pipe, "all", cache)`` (the cache recorded from another prompt with
  the same settings), alternating, eager;
- the same with the denoiser compiled (``--compile regional``: its repeated blocks, diffusers'
  regional compilation; ``whole``: ``torch.compile`` of the denoiser), after one warm-up of each:
  the graphs compiled during the timed runs (0 is the goal), the graph breaks, and how far the
  compiled latents lie from the eager ones.

Every phase that fails or would overrun the time budget is skipped and named at the end; the
results go to ``bench/results/gpu.json`` (``--tiny``: ``gpu-tiny.json``), what ran and what did not.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from torch._dynamo.utils import counters

import textloc as tl
from textloc.architectures import flux, qwenimage, sd3, sdxl
from textloc.architectures.spec import PublishedDenoiser
from textloc.engine import denoiser, denoiser_parameter_count
from textloc.testing import tiny_call_kwargs, tiny_pipeline

ROOT = Path(__file__).resolve().parent.parent
PROMPT = 'A sign that says "HELLO".'
OTHER = 'A sign that says "WORLD".'
NATIVE_LATENT = 128  # 1024 px for the autoencoders of all four (8x)


def _sdxl_text(real: dict[str, Any], tiny: Any) -> dict[str, Any]:
    """SDXL reads the text in every cross-attention and the pooled vector beside 6 size embeddings."""
    pooled = tiny.projection_class_embeddings_input_dim - 6 * tiny.addition_time_embed_dim
    return {"cross_attention_dim": tiny.cross_attention_dim, "projection_class_embeddings_input_dim": 6 * real.get("addition_time_embed_dim", 256) + pooled}


def _embedder_text(real: dict[str, Any], tiny: Any) -> dict[str, Any]:
    """SD3 and FLUX read the text through one embedder and the pooled vector through another."""
    return {"joint_attention_dim": tiny.joint_attention_dim, "pooled_projection_dim": tiny.pooled_projection_dim}


@dataclass(frozen=True)
class Model:
    """A published denoiser in its family's tiny pipeline: ``narrow`` gives the config values that
    make its text inputs as wide as the tiny encoders' (``real config``, ``tiny denoiser config``);
    ``call`` its pipeline's guidance at real size."""

    arch: str
    published: PublishedDenoiser
    narrow: Callable[[dict[str, Any], Any], dict[str, Any]]
    call: dict[str, Any]


MODELS: dict[str, Model] = {
    "sdxl": Model("sdxl", sdxl.SDXL_BASE, _sdxl_text, {"guidance_scale": 5.0}),
    "sd3.5-large": Model("sd3", sd3.SD3_5_LARGE, _embedder_text, {"guidance_scale": 4.5, "max_sequence_length": 256}),
    # FLUX.1-dev is guidance-distilled: one conditional pass a step.
    "flux.1-dev": Model("flux", flux.FLUX_1_DEV, _embedder_text, {"guidance_scale": 3.5, "max_sequence_length": 512}),
    "qwen-image": Model(
        "qwenimage", qwenimage.QWEN_IMAGE, lambda real, tiny: {"joint_attention_dim": tiny.joint_attention_dim},
        {"true_cfg_scale": 4.0, "negative_prompt": " "},
    ),
}


class Budget:
    """Wall seconds left; a phase that would not fit is skipped, and said so."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.end - time.monotonic()

    @contextlib.contextmanager
    def phase(self, name: str, needs: float, result: dict[str, Any]) -> Iterator[bool]:
        """Yields whether to run ``name`` (it needs about ``needs`` seconds); a failure is kept, not raised."""
        if self.left() < needs:
            self.skipped.append(f"{name}: skipped, {self.left():.0f} s left of the budget and it needs about {needs:.0f} s")
            yield False
            return
        began = time.monotonic()
        try:
            yield True
        except Exception as error:  # any failure of one phase: the others still run
            self.skipped.append(f"{name}: failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
            result.setdefault("errors", {})[name] = traceback.format_exc(limit=3)
        finally:
            result.setdefault("phase_seconds", {})[name] = time.monotonic() - began


def build(model: Model, tiny: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """The family's tiny pipeline; at real size, with the published denoiser (random weights) in it."""
    pipe = tiny_pipeline(model.arch)
    if not tiny:
        attribute = "unet" if hasattr(pipe, "unet") else "transformer"
        small = getattr(pipe, attribute).config
        config = {**model.published.config, **model.narrow(dict(model.published.config), small)}
        with _default_dtype(dtype), torch.device(device):
            setattr(pipe, attribute, getattr(diffusers, model.published.denoiser)(**config).eval())
    return pipe.to(device, dtype)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    # Made in bfloat16 directly: a 20B-parameter model made in float32 first would need 80 GB.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def settings(pipe: Any, model: Model, tiny: bool, steps: int) -> dict[str, Any]:
    if tiny:
        return {**tiny_call_kwargs(pipe), "num_inference_steps": steps, "output_type": "latent"}
    side = NATIVE_LATENT * pipe.vae_scale_factor  # the tiny autoencoder's scale, real latents
    return {**model.call, "height": side, "width": side, "num_inference_steps": steps, "output_type": "latent"}


def synchronized(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latents(output: Any) -> torch.Tensor:
    images = output.images
    return (images if isinstance(images, torch.Tensor) else torch.as_tensor(images)).float()


def plain_and_patched(pipe: Any, kwargs: dict[str, Any], cache: tl.TextCache, repeats: int, device: torch.device) -> dict[str, Any]:
    """Median seconds of plain and patched generations, alternating, and the last latents of each."""

    def plain() -> Any:
        return pipe(PROMPT, generator=tl.generator(0), **kwargs)

    def patched() -> Any:
        with tl.patch(pipe, "all", cache):
            return pipe(PROMPT, generator=tl.generator(0), **kwargs)

    times: dict[str, list[float]] = {"plain": [], "patched": []}
    outputs: dict[str, Any] = {}
    for repeat in range(repeats):
        for name, run in (("plain", plain), ("patched", patched)) if repeat % 2 == 0 else (("patched", patched), ("plain", plain)):
            synchronized(device)
            began = time.perf_counter()
            outputs[name] = run()
            synchronized(device)
            times[name].append(time.perf_counter() - began)
    ratios = [p / q for p, q in zip(times["patched"], times["plain"])]
    return {
        "plain_s": statistics.median(times["plain"]), "patched_s": statistics.median(times["patched"]),
        "patched_over_plain": statistics.median(ratios), "times_s": times,
        "patch_changes_latents": not torch.equal(latents(outputs["plain"]), latents(outputs["patched"])),
        "latents": {name: latents(output) for name, output in outputs.items()},
    }


def compile_denoiser(pipe: Any, how: str, backend: str) -> str:
    """Compile the pipeline's denoiser: its repeated blocks (diffusers' list, else the blocks of
    its longest module list), or whole. Says what was compiled."""
    model = denoiser(pipe)
    if how == "whole":
        attribute = "unet" if hasattr(pipe, "unet") else "transformer"
        setattr(pipe, attribute, torch.compile(getattr(pipe, attribute), backend=backend))
        return f"torch.compile({attribute})"
    names = set(getattr(model, "_repeated_blocks", None) or ())
    if not names:  # SD3's transformer lists none: its transformer_blocks are the repeated ones
        longest = max((child for child in model.children() if isinstance(child, torch.nn.ModuleList)), key=len)
        names = {type(block).__name__ for block in longest}
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    for block in blocks:
        block.compile(backend=backend)
    return f"{len(blocks)} blocks ({', '.join(sorted(names))}) compiled in place"


def check_model(name: str, model: Model, args: argparse.Namespace, budget: Budget, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    result: dict[str, Any] = {"model": model.published.model if not args.tiny else f"tiny-random-{model.arch}"}
    scale = 0.05 if args.tiny else 1.0  # what each phase needs, in seconds, at real size on an H100
    pipe = None
    with budget.phase(f"{name}: build", 60 * scale, result) as run:
        if run:
            began = time.perf_counter()
            pipe = build(model, args.tiny, device, dtype)
            synchronized(device)
            result.update(build_s=time.perf_counter() - began, denoiser_params=denoiser_parameter_count(pipe))
    if pipe is None:
        return result
    kwargs = settings(pipe, model, args.tiny, args.steps)
    result["settings"] = {key: value for key, value in kwargs.items() if key != "output_type"}
    cache = None
    with budget.phase(f"{name}: record", 30 * scale, result) as run:
        if run:
            cache = tl.record(pipe, "all", OTHER, generator=tl.generator(0), **kwargs)
            result.update(text_units=len(cache.layers), cache_bytes=cache.nbytes)
    eager = None
    if cache is not None:
        with budget.phase(f"{name}: eager", 60 * scale, result) as run:
            if run:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                eager = plain_and_patched(pipe, kwargs, cache, args.repeats, device)
                result["eager"] = {key: value for key, value in eager.items() if key != "latents"}
                if device.type == "cuda":
                    result["eager"]["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    if eager is not None and args.compile != "none":
        with budget.phase(f"{name}: compiled ({args.compile})", 180 * scale, result) as run:
            if run:
                torch._dynamo.reset()
                counters.clear()
                result["compiled"] = {"how": compile_denoiser(pipe, args.compile, args.backend)}
                began = time.perf_counter()
                plain_and_patched(pipe, kwargs, cache, 2, device)  # warm-up: compiles both
                warm = {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values())}
                result["compiled"]["warm_up_s"] = time.perf_counter() - began
                compiled = plain_and_patched(pipe, kwargs, cache, args.repeats, device)
                result["compiled"].update({key: value for key, value in compiled.items() if key != "latents"})
                result["compiled"].update(
                    graphs_after_warm_up=warm["graphs"], graph_breaks_in_warm_up=warm["graph_breaks"],
                    graphs_compiled_while_timed=counters["stats"]["unique_graphs"] - warm["graphs"],
                    max_abs_difference_from_eager={
                        key: float((compiled["latents"][key] - eager["latents"][key]).abs().max()) for key in ("plain", "patched")
                    },
                )
    del pipe, cache, eager
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def environment(device: torch.device) -> dict[str, Any]:
    found = {
        "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "device": str(device),
    }
    if device.type == "cuda":
        found["gpu"] = torch.cuda.get_device_name(device)
        found["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    else:
        found["torch_threads"] = torch.get_num_threads()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny random pipelines, on the CPU, in float32 (what the test suite runs)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--steps", type=int, help="denoising steps (default 4; --tiny: 2)")
    parser.add_argument("--repeats", type=int, help="timed generations of each kind (default 3; --tiny: 1)")
    parser.add_argument("--compile", choices=("regional", "whole", "none"), default="regional")
    parser.add_argument("--backend", help="torch.compile backend (default inductor; --tiny: aot_eager, which needs no C++ compiler)")
    parser.add_argument("--device", default="cuda", help="where the real-size denoisers run (default cuda; another device needs their memory, 5-41 GB)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall seconds for everything (default 540: a 10-minute slot with room to spare)")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/gpu.json; --tiny: gpu-tiny.json)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.tiny else 4)
    args.repeats = args.repeats or (1 if args.tiny else 3)
    args.backend = args.backend or ("aot_eager" if args.tiny else "inductor")
    args.out = args.out or ROOT / "bench" / "results" / ("gpu-tiny.json" if args.tiny else "gpu.json")
    transformers.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()

    budget = Budget(args.budget_s)
    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        torch.set_num_threads(1)
    elif args.device != "cuda" or torch.cuda.is_available():
        device, dtype = torch.device(args.device), torch.bfloat16
    else:
        print("No CUDA GPU here: nothing measured. Run it where there is one, or with --tiny on the CPU.", file=sys.stderr)
        return 1
    results = {"settings": {key: str(value) for key, value in vars(args).items()}, "environment": environment(device), "models": {}}
    for name in args.models:
        print(f"{name}...", flush=True)
        results["models"][name] = check_model(name, MODELS[name], args, budget, device, dtype)
        print(json.dumps(_summary(results["models"][name])), flush=True)
    results["could_not"] = budget.skipped
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    if budget.skipped:
        print("could not:\n  " + "\n  ".join(budget.skipped))
    return 0


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one model."""
    found = {key: result.get(key) for key in ("model", "denoiser_params", "text_units", "cache_bytes")}
    for kind in ("eager", "compiled"):
        if kind in result:
            found[kind] = {key: result[kind].get(key) for key in ("plain_s", "patched_s", "patched_over_plain", "graphs_compiled_while_timed")}
    return found


if __name__ == "__main__":
    sys.exit(main())
