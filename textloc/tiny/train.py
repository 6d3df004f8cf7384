"""Train an embedded model from scratch: ``python -m textloc.tiny.train [--model textloc-tiny-sd3]``.

One trainer for every architecture (:mod:`textloc.tiny.architectures`): textloc-tiny, an IF
pixel U-Net on v-prediction; textloc-tiny-sd3, an SD3 MMDiT on flow matching over the latents
of an autoencoder that the same run trains first (:mod:`textloc.tiny.autoencoder`); and
textloc-tiny-flux, a FLUX transformer trained the same way on textloc-tiny-sd3's autoencoder. The recipe,
the probes, EMA, the learning-rate schedule, checkpoints and evaluations are shared.

Every step is a pure function of ``(seed, step)``: the batch comes from the deterministic
renderer, and the timesteps, noise and caption dropout from a generator seeded with both. So a
resumed run draws exactly the batches an uninterrupted one would, and no RNG state needs saving.

Files, under ``--run-dir`` (default ``runs/tiny``, ``runs/tiny-sd3``, ``runs/tiny-flux``):

- ``autoencoder.pt`` (latent models): the autoencoder stage's weights, optimizer and step.
- ``last.pt``: model, EMA, the training-only :class:`Probes`, optimizer and state; written
  every ``--checkpoint-every`` steps and on SIGINT/SIGTERM (the run finishes its step, saves, and
  exits).
- ``log.jsonl``: the losses and timing every 10 steps, the binding test (see
  :func:`~textloc.tiny.evaluate.swap_test`) at every checkpoint, full evaluations every
  ``--eval-every`` steps.
- ``samples/step_<6-digit step>.png``: held-out captions sampled with the EMA weights.

Every evaluation also exports the EMA weights as a stock pipeline folder to ``--export-dir``
(default: the shipped ``textloc/tiny/weights``, ``weights_sd3``, ``weights_flux``) when they score at
least as well as the best so far, with ``training_state.json`` (step, config, seed, evaluation history).

``--resume`` continues from ``last.pt``; without one, from the exported folder: its weights become
both the model and the EMA, the step comes from ``training_state.json``, and the optimizer starts
fresh (AdamW's moments rebuild within a few hundred steps; the learning-rate schedule continues).

It trains on the GPU when there is one (``--device``). The step's randomness is drawn on the CPU
either way, so a run may move between a GPU and the CPU when it resumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import save_file
from tqdm import tqdm

from textloc.distributed import resolve_device
from textloc.images import image_grid
from textloc.tiny import autoencoder
from textloc.tiny.architectures import ARCHITECTURES, Architecture, PixelIF, architecture_of
from textloc.tiny.data import training_batch
from textloc.tiny.evaluate import evaluate, swap_test
from textloc.tiny.model import SavedConfig
from textloc.tiny.model_sd3 import set_latent_statistics
from textloc.tiny.recipe import EMA, RECIPE_CHANGES, Probes, Recipe, learning_rate, training_loss
from textloc.tiny.runs import StopOnSignal, append_log, save_atomically, step_generator

CHECKPOINT_NAME = "last.pt"
STATE_NAME = "training_state.json"


def export(pipe: DiffusionPipeline, export_dir: Path, state: dict) -> None:
    """Save ``pipe`` as a stock pipeline folder, the architecture's large components in fp16.

    Their configs keep no dtype, so ``from_pretrained`` builds them in float32 and upcasts the fp16
    weights. The folder is written next to ``export_dir`` and swapped in by renames, so a run
    killed mid-export (or a commit taken meanwhile) never sees a half-written model; the model
    card (README.md) is carried over.
    """
    staging = export_dir.with_name(export_dir.name + ".staging")
    retired = export_dir.with_name(export_dir.name + ".retired")
    for leftover in (staging, retired):
        shutil.rmtree(leftover, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    for name in architecture_of(pipe).half_precision:
        [weights_file] = (staging / name).glob("*.safetensors")
        half = {key: tensor.half().contiguous().cpu() for key, tensor in getattr(pipe, name).state_dict().items()}
        save_file(half, weights_file, metadata={"format": "pt"})
    (staging / STATE_NAME).write_text(json.dumps(state, indent=2))
    if (export_dir / "README.md").exists():
        shutil.copy2(export_dir / "README.md", staging / "README.md")
    if export_dir.exists():
        export_dir.rename(retired)
    staging.rename(export_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _quality(evaluation: dict) -> float:
    """One number to pick the best export: the word counts as much as both colours together."""
    return evaluation["word_acc"] + (evaluation["sign_acc"] + evaluation["background_acc"]) / 2


def _exported_quality(export_dir: Path | None) -> float:
    """The quality of the weights already in ``export_dir``: a fresh run replaces them only once it
    does better (so a new run cannot overwrite the shipped model with its first, poor, export)."""
    path = None if export_dir is None else export_dir / STATE_NAME
    return json.loads(path.read_text()).get("best_quality", -1.0) if path is not None and path.exists() else -1.0


def _load_start(args: argparse.Namespace, arch: Architecture, config: SavedConfig) -> tuple[DiffusionPipeline, dict]:
    """The pipeline to train and the saved training state (empty for a fresh run)."""
    checkpoint_path = args.run_dir / CHECKPOINT_NAME
    stages = [path for path in (checkpoint_path, args.run_dir / autoencoder.CHECKPOINT_NAME) if path.exists()]
    if not args.resume and stages:
        raise SystemExit(f"{stages[0]} holds a run already: pass --resume to continue it, or another "
                         "--run-dir to start a new one.")
    if args.resume and checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, weights_only=False, map_location="cpu")
        pipe = arch.build_pipeline(arch.config_class.from_dict(checkpoint["state"]["config"]), args.seed)
        for name, module in arch.saved(pipe).items():
            module.load_state_dict(checkpoint["model"][name])
        return pipe, checkpoint
    if args.resume and (args.export_dir / STATE_NAME).exists():
        state = json.loads((args.export_dir / STATE_NAME).read_text())
        pipe = arch.build_pipeline(arch.config_class.from_dict(state["config"]), args.seed)
        shipped = arch.load(args.export_dir)
        for name, module in arch.saved(pipe).items():
            module.load_state_dict(getattr(shipped, name).state_dict())
        print(f"resuming from the exported weights at step {state['step']} (fresh optimizer)")
        return pipe, {"state": state}
    if args.resume and not stages:
        print(f"nothing to resume in {args.run_dir} or {args.export_dir}: starting from scratch")
    return arch.build_pipeline(config, args.seed), {}


def _train_autoencoder(args: argparse.Namespace, pipe: DiffusionPipeline, state: dict, stop: StopOnSignal) -> bool:
    """Run the autoencoder stage of a latent model unless the run has done it; False if stopped.

    Its latent statistics go into the pipeline and the run's config, so every pipeline built from
    the config (the sampler, a resumed run) encodes and decodes the same way.
    """
    vae = architecture_of(pipe).autoencoder(pipe)
    if vae is not None and "autoencoder" not in state:
        record = autoencoder.train_autoencoder(vae, args.run_dir, args.seed, stop, state["autoencoder_steps"],
                                               state["batch_size"], args.eval_count, args.checkpoint_every)
        if record is None:
            return False
        tqdm.write("autoencoder: " + ", ".join(f"{k}={v:.3f}" for k, v in record.items()))
        state["autoencoder"] = record
        state["config"] |= {"latent_shift": record["latent_shift"], "latent_scale": record["latent_scale"]}
        set_latent_statistics(pipe, record["latent_shift"], record["latent_scale"])
    if vae is not None:
        vae.requires_grad_(False).eval()
    return True


def train(args: argparse.Namespace) -> dict:
    """Run (or continue) training as ``args`` say; returns the final training state. SIGINT and
    SIGTERM stop it after the current step, saved (see :class:`~textloc.tiny.runs.StopOnSignal`)."""
    with StopOnSignal() as stop:
        return _train(args, stop)


def _train(args: argparse.Namespace, stop: StopOnSignal) -> dict:
    torch.set_num_threads(args.threads)
    arch = ARCHITECTURES[args.model]
    args.run_dir = args.run_dir or Path("runs") / arch.model_name.removeprefix("textloc-")
    args.export_dir = args.export_dir or arch.export_dir
    args.run_dir.mkdir(parents=True, exist_ok=True)
    (args.run_dir / "samples").mkdir(exist_ok=True)

    config = arch.test_config if args.config == "test" else arch.default_config
    device = args.device
    pipe, start = _load_start(args, arch, config)
    pipe.to(device)
    state = start.get("state") or {
        "model": arch.model_name, "step": 0, "seed": args.seed, "config": config.to_dict(), "evals": [],
        "best_quality": _exported_quality(args.export_dir), "recipe_since": dict.fromkeys(RECIPE_CHANGES, 0),
    }
    # Runs saved before there were two models name none: they are textloc-tiny's.
    if state.get("model", PixelIF.model_name) != arch.model_name:
        raise SystemExit(f"{args.run_dir} trains {state['model']}, not {arch.model_name}: pass --model {state['model']}.")
    # What the command line gives wins, on a resumed run too; otherwise a resumed run keeps its own.
    for key, default in arch.schedule.items():
        given = getattr(args, key)
        state[key] = given if given is not None else state.get(key, default)
    state["recipe_since"] |= args.recipe_since
    # A run saved before a recipe change existed switches to it where it resumes.
    for name in RECIPE_CHANGES:
        state["recipe_since"].setdefault(name, state["step"])
    if not _train_autoencoder(args, pipe, state, stop):
        tqdm.write("stopped in the autoencoder stage; resume with --resume")
        return state
    scheduler = arch.training_scheduler()
    trained = arch.trained(pipe)
    probes = Probes(pipe).to(device)
    # Two parameter groups: the shipped run added the glyph probe as a second group on resuming.
    optimizer = torch.optim.AdamW([p for m in (*trained.values(), probes.byte) for p in m.parameters()],
                                  lr=state["lr"], weight_decay=0.01)
    optimizer.add_param_group({"params": list(probes.glyph.parameters())})
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    ema = EMA(trained)
    if "optimizer" in start:
        probes.load_state_dict(start["probes"])
        optimizer.load_state_dict(start["optimizer"])
        ema.shadow = {name: {key: value.to(device) for key, value in weights.items()}
                      for name, weights in start["ema"].items()}
    # The EMA weights are sampled and exported from a second pipeline, never trained.
    sampler = arch.build_pipeline(arch.config_class.from_dict(state["config"]), args.seed).to(device)
    sampler.set_progress_bar_config(disable=True)

    def save_checkpoint() -> None:
        save_atomically({
            "model": {name: module.state_dict() for name, module in arch.saved(pipe).items()},
            "probes": probes.state_dict(), "ema": ema.shadow, "optimizer": optimizer.state_dict(), "state": state,
        }, args.run_dir / CHECKPOINT_NAME)

    def load_ema_sampler() -> None:
        # The EMA's weights for what trains; the others (a frozen autoencoder) as they are.
        for name, module in arch.saved(sampler).items():
            module.load_state_dict(ema.shadow[name] if name in ema.shadow else arch.saved(pipe)[name].state_dict())
            module.eval()

    def check_binding(step: int) -> None:
        # The swap test costs three forward passes: cheap enough to watch binding appear closely.
        load_ema_sampler()
        record = {"step": step, **swap_test(sampler, scheduler, args.eval_count)}
        append_log(args.run_dir, {"binding": record})
        tqdm.write(f"binding step {step}: colour_gap={record['colour_gap']:.3f}, "
                   f"word_gap={record['word_gap']:.3f} (letters {record['letters_word_gap']:.3f})")

    def evaluate_and_export(step: int) -> None:
        load_ema_sampler()
        record = {"step": step, **swap_test(sampler, scheduler, args.eval_count)}
        scores, images = evaluate(sampler, args.eval_count)
        record.update(scores)
        image_grid(images, columns=8).save(args.run_dir / "samples" / f"step_{step:06d}.png")
        state["evals"].append(record)
        append_log(args.run_dir, {"eval": record})
        tqdm.write(f"eval step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in record.items() if k != "step"))
        if args.export_dir is not None and _quality(scores) >= state["best_quality"]:
            state["best_quality"] = _quality(scores)
            export(sampler, args.export_dir, {**state, "exported_step": step})
            image_grid(images, columns=8).save(args.run_dir / "samples" / "best.png")

    for module in trained.values():
        module.train()
    progress = tqdm(range(state["step"], state["total_steps"]), initial=state["step"], total=state["total_steps"],
                    desc=arch.model_name)
    started, history = time.time(), []
    for step in progress:
        lr = learning_rate(step, state["lr"], state["total_steps"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        recipe = Recipe.at(step, state["recipe_since"])
        batch = training_batch(args.seed, step, state["batch_size"], recipe.layout)
        losses = training_loss(pipe, scheduler, batch, step_generator(args.seed, step), recipe, probes)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        ema.update(trained, step, recipe.ema_decay)
        state["step"] = step + 1
        history.append({name: value.item() for name, value in losses.items()})
        progress.set_postfix(loss=f"{history[-1]['total']:.4f}", lr=f"{lr:.2e}")
        if state["step"] % 10 == 0:
            means = {name: sum(h[name] for h in history[-10:]) / len(history[-10:]) for name in history[-1]}
            seconds = (time.time() - started) / len(history)
            append_log(args.run_dir, {"step": state["step"], "loss": means.pop("total"), **means, "lr": lr, "s_per_step": seconds})
        if state["step"] % args.eval_every == 0:
            evaluate_and_export(state["step"])
        elif state["step"] % args.checkpoint_every == 0:
            check_binding(state["step"])
        if state["step"] % args.checkpoint_every == 0 or stop.requested:
            save_checkpoint()
        if stop.requested:
            tqdm.write(f"stopped at step {state['step']}; resume with --resume")
            break
    else:
        save_checkpoint()
        if state["step"] % args.eval_every != 0 or not state["evals"]:
            evaluate_and_export(state["step"])
    return state


def _recipe_change(text: str) -> tuple[str, int]:
    name, _, step = text.partition("=")
    if name not in RECIPE_CHANGES or not step.isdigit():
        raise argparse.ArgumentTypeError(f"expected CHANGE=STEP with CHANGE one of {', '.join(RECIPE_CHANGES)}, got {text!r}")
    return name, int(step)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults reproduce the shipped weights."""
    parser = argparse.ArgumentParser(description="Train an embedded model from scratch (or resume).")
    parser.add_argument("--model", choices=tuple(ARCHITECTURES), default=PixelIF.model_name,
                        help="which embedded model: textloc-tiny (IF U-Net), textloc-tiny-sd3 (SD3 MMDiT) or "
                             "textloc-tiny-flux (FLUX double + single stream)")
    # The schedule defaults to None so that a resumed run keeps its own unless given.
    parser.add_argument("--steps", type=int, dest="total_steps",
                        help="total steps, the lr schedule spans them (default 30000, sd3 and flux: 20000; a resumed run keeps its own)")
    parser.add_argument("--batch-size", type=int, help="default 16; a resumed run keeps its own")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 5e-4; a resumed run keeps its own)")
    parser.add_argument("--autoencoder-steps", type=int,
                        help="sd3: steps of the autoencoder stage, before the transformer's (default "
                             f"{ARCHITECTURES['textloc-tiny-sd3'].schedule['autoencoder_steps']})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", choices=("default", "test"), default="default", help="'test': a very small model")
    parser.add_argument("--run-dir", type=Path, help="default runs/tiny, runs/tiny-sd3, runs/tiny-flux")
    parser.add_argument("--export-dir", type=Path,
                        help="where the best weights so far are saved as a diffusers folder; weights already there "
                             "are replaced only by better ones (default: the shipped model's folder)")
    parser.add_argument("--resume", action="store_true", help="continue from run-dir/last.pt, else from export-dir")
    parser.add_argument("--recipe-since", nargs="*", default=[], type=_recipe_change, metavar="CHANGE=STEP",
                        help="the step from which a recipe change applies (default 0 for all): high_noise (half of "
                             "each batch at t >= 900), text_weight (letters' pixels weigh 5x), byte_probe (the "
                             "text encoder must keep every caption byte), slot_layout (letter k of every word in the same "
                             "place), glyph_probe (the U-Net's 16x16 features must tell each cell's letter), short_ema (the sampled "
                             "weights average ~200 steps, not ~1000). The shipped weights' steps are in their "
                             "training_state.json, 'recipe_since'")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-count", type=int, default=24, help="held-out captions per evaluation")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--device", help="torch device to train on, e.g. cpu, cuda, cuda:1 (default: the GPU if "
                                         "there is one, else the CPU)")
    args = parser.parse_args(argv)
    args.recipe_since = dict(args.recipe_since)
    try:
        args.device = resolve_device(args.device)
    except ValueError as error:
        parser.error(f"--device {error}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m textloc.tiny.train``."""
    train(parse_args(argv))


if __name__ == "__main__":
    main()
