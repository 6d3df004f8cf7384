"""``train_lora``: LoRA on the layers that write text, and nothing else.

The loop is diffusers' LoRA scripts' (the model's own objective, the text encoders frozen,
accelerate for the device, mixed precision, gradient accumulation and data parallelism), with
three things they leave to chance made exact:

- **Every draw is a pure function of the run's seed and the sample's place in training**: which
  example (a per-epoch shuffle), its VAE sample, timestep and noise. A checkpoint therefore needs
  only the LoRA, the optimizer and the step, a resumed run ends where an uninterrupted one does,
  and N processes with batch B/N train the LoRA one process trains with batch B.
- **The denoiser is conditioned by its own pipeline** (:func:`textloc.engine.denoiser_inputs`):
  text embeddings, pooled projections, SDXL's time ids, FLUX's ids and guidance, masks; no
  per-architecture code here to drift from the pipeline.
- **Bad input stops the run before its first step**: an empty or unreadable dataset, a caption
  missing, layers of another model, a rank the layers cannot hold, a folder holding another run.

Files in ``output_dir``: ``pytorch_lora_weights.safetensors`` (``pipe.load_lora_weights`` loads
it), ``training.json`` (settings, targets, parameter counts, validation history),
``checkpoint-<step>/`` (the last two; with ``ema_decay``, the average too), and with validation prompts ``validation.csv``,
``validation.png`` and ``validation/step_<step>.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from textloc import distributed, seeding
from textloc.architectures import family_of
from textloc.engine import conditional_settings, denoiser, denoiser_inputs, denoiser_parameter_count, text_input_moments
from textloc.finetune.anchor import TextAnchor, anchored_paths
from textloc.finetune.config import TrainConfig
from textloc.finetune.data import as_captioned_images, example_index
from textloc.finetune.lora import TRAINING_FILE, add_lora, lora_parameters, lora_state_dict, save_lora, set_lora_state_dict
from textloc.finetune.objective import Objective
from textloc.finetune.targets import Targets, check_rank, lora_targets
from textloc.finetune.validation import Validation
from textloc.layers import LayerSource, resolve_layers
from textloc.pipeline_calls import call_kwargs, refuse_modular
from textloc.pipelines import model_image_side
from textloc.files import write_json_atomic
from textloc.fingerprint import weights_fingerprint
from textloc.settings import split_settings

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINTS_KEPT = 2
EMA_FILE = "ema.pt"
# Settings a resumed run may change: how long it runs and how often it saves and validates.
_RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "validate_every"})


@dataclass
class TrainedLora:
    """What :func:`train_lora` trained and where it saved it."""

    output_dir: Path
    layers: list[str]
    targets: list[str]
    trainable_parameters: int
    denoiser_parameters: int
    steps: int
    validation: list[dict[str, float]] = field(default_factory=list)

    @property
    def trainable_share(self) -> float:
        """The LoRA's parameters as a share of the denoiser's."""
        return self.trainable_parameters / self.denoiser_parameters

    @property
    def weights(self) -> Path:
        """The file ``pipe.load_lora_weights(output_dir)`` loads."""
        return self.output_dir / "pytorch_lora_weights.safetensors"

    def summary(self) -> str:
        lines = [
            f"LoRA on {len(self.layers)} layers ({len(self.targets)} projections), {self.steps} steps: "
            f"{self.trainable_parameters:,} trainable parameters, {self.trainable_share:.3%} of the denoiser's {self.denoiser_parameters:,}",
            f"saved to {self.weights}",
        ]
        if self.validation:
            first, last = self.validation[0], self.validation[-1]
            lines.append(
                f"validation word accuracy {first['word_accuracy']:.1%} (step {first['step']:.0f}) -> "
                f"{last['word_accuracy']:.1%} (step {last['step']:.0f}); edit distance {first['edit_distance']:.2f} -> {last['edit_distance']:.2f}"
            )
        return "\n".join(lines)


def train_lora(
    pipe: Any,
    layers: LayerSource | None,
    dataset: Any,
    config: TrainConfig | None = None,
    *,
    targets: Targets = None,
    output_dir: str | os.PathLike = "lora",
    resume: bool = False,
    caption_column: str = "text",
    image_column: str = "image",
    generate_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    **overrides: Any,
) -> TrainedLora:
    """Train a LoRA on the projections of ``layers`` of ``pipe``'s denoiser; everything else stays frozen.

    - ``layers``: a ``Localization``, the folder it was saved to, a selector or ``"preset"``.
    - ``dataset``: an ``imagefolder`` directory (``metadata.jsonl`` with ``file_name`` and
      ``caption_column``), a ``datasets.Dataset`` (``image_column``, ``caption_column``) or a
      :class:`~textloc.finetune.data.RenderedSigns`.
    - ``config``: a :class:`TrainConfig` (rank, alpha, steps, lr, batch size, accumulation,
      mixed precision, checkpoints, validation, seed, resolution); its fields may also be given
      as keywords (``rank=8``), which override ``config``'s.
    - ``targets``: which projections of each layer (:func:`~textloc.finetune.targets.lora_targets`);
      with ``layers=None``, the full module paths to train.
    - ``resume=True`` continues from the last checkpoint in ``output_dir``, to the LoRA an
      uninterrupted run trains.
    - Validation prompts are generated with ``generate_kwargs`` (the model's sampler settings)
      and scored by OCR.

    The pipeline keeps the trained LoRA (its denoiser is moved to accelerate's device). Under
    ``accelerate launch`` each process trains on its share of every batch.
    """
    if config is not None and not isinstance(config, TrainConfig):
        raise TypeError(f"config is a TrainConfig, not {type(config).__name__}.")
    fields_given, unknown = split_settings(TrainConfig, overrides)
    if unknown:
        raise TypeError(f"train_lora got unexpected arguments {sorted(unknown)}; its settings are TrainConfig's fields.")
    config = dataclasses.replace(config or TrainConfig(), **fields_given)  # checked as it is made
    family_of(pipe).check_supports("train_lora")
    refuse_modular(pipe, "train_lora")
    generate_kwargs = dict(generate_kwargs or {})
    if lora_parameters(pipe):
        raise ValueError("This pipeline's denoiser already carries a LoRA: train on a freshly loaded pipeline (a LoRA is saved to its output_dir).")
    data = as_captioned_images(dataset, caption_column, image_column)
    selected = [] if layers is None else resolve_layers(pipe, layers)
    paths = lora_targets(pipe, selected or None, targets)
    check_rank(pipe, paths, config.rank)
    rank, alpha, steps, lr, seed = config.rank, config.lora_alpha, config.steps, config.lr, config.seed
    batch_size, grad_accum, mixed_precision = config.batch_size, config.grad_accum, config.mixed_precision
    checkpoint_every, validate_every, validation_prompts = config.checkpoint_every, config.validate_every, config.validation_prompts
    resolution = config.resolution or model_image_side(pipe)
    anchor_prompts = _anchor_prompts(config, data)
    anchored = anchored_paths(selected, paths) if anchor_prompts else []

    accelerator = distributed.accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum)
    output_dir = Path(output_dir)
    settings = {
        "pipeline": type(pipe).__name__,
        "weights": weights_fingerprint(pipe),
        "layers": [layer.name for layer in selected] if selected else sorted({path.rsplit(".", 1)[0].removesuffix(".to_out") for path in paths}),
        "targets": paths,
        "rank": rank,
        "alpha": alpha,
        "lr": lr,
        "global_batch_size": batch_size * grad_accum * accelerator.num_processes,
        "mixed_precision": mixed_precision,
        "resolution": resolution,
        "seed": seed,
        "dataset": _describe(data),
        "ema_decay": config.ema_decay,
        **({"anchor_weight": config.anchor_weight, "anchor_prompts": list(anchor_prompts)} if anchor_prompts else {}),
        "steps": steps,
        "checkpoint_every": checkpoint_every,
        "validate_every": validate_every,
    }
    validation = None
    if validation_prompts:
        validation = Validation(pipe, validation_prompts, output_dir, call_kwargs(pipe, **generate_kwargs), seed)
    # One process checks and writes the folder; the others would find each other's files in it.
    if accelerator.is_main_process:
        _check_output(output_dir, settings, resume)
    accelerator.wait_for_everyone()
    start = 0

    total = denoiser_parameter_count(pipe)  # the model's own, before the LoRA adds any
    moments = None
    if anchor_prompts:  # what the anchor prompts' text tokens give the projections, read on the base model
        conditioning = conditional_settings(pipe, generate_kwargs)
        # As many prompts a call as a training batch holds (joint layers are read over a generation).
        held = [layer for layer in selected if any(path.startswith(f"{layer.name}.") for path in anchored)]
        moments = text_input_moments(pipe, held, anchor_prompts, batch_size=batch_size, progress=progress and accelerator.is_main_process, **conditioning)
    lora_config = add_lora(pipe, paths, rank, alpha, seed)
    trainable = sum(parameter.numel() for parameter in lora_parameters(pipe))
    if accelerator.is_main_process:
        print(f"LoRA on {len(settings['layers'])} layers ({len(paths)} projections): {trainable:,} trainable parameters, "
              f"{trainable / total:.3%} of the denoiser's {total:,}.")
    checkpoint = last_checkpoint(output_dir, up_to=steps) if resume else None
    if checkpoint is not None:
        set_lora_state_dict(pipe, load_file(checkpoint / "lora.safetensors"))
        start = json.loads((checkpoint / "state.json").read_text())["step"]

    pipe.to(accelerator.device)
    anchor = None if moments is None else TextAnchor(pipe, anchored, moments)  # its matrices beside the weights
    model = denoiser(pipe)
    model.train()
    optimizer = torch.optim.AdamW(lora_parameters(pipe), lr=lr)
    trained_model, optimizer = accelerator.prepare(model, optimizer)
    # The average validation samples and the run saves; a constant learning rate leaves the last
    # step's weights one noisy draw around where training has got to.
    ema = None if config.ema_decay is None else EMAModel(lora_parameters(pipe), decay=config.ema_decay)
    if checkpoint is not None:
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location=accelerator.device, weights_only=True))
        if ema is not None:
            ema.load_state_dict(torch.load(checkpoint / EMA_FILE, map_location=accelerator.device, weights_only=True))
    objective = Objective(pipe, resolution)
    capture = capture_settings(pipe, generate_kwargs, resolution)
    if accelerator.is_main_process:
        write_json_atomic(output_dir / TRAINING_FILE, {**settings, "finished": False})

    history: list[dict[str, float]] = []
    if validation is not None and accelerator.is_main_process:
        validation.restart_at(start)
        history = validation.history()
        if not history:
            history.append(_validate(validation, model, 0, None, pipe, ema))

    bar = tqdm(total=steps, initial=start, desc="LoRA", disable=not (progress and accelerator.is_main_process))
    step, loss = start, math.nan
    try:
        while step < steps:
            began = time.perf_counter()
            losses = []
            for micro in range(grad_accum):
                first = ((step * grad_accum + micro) * accelerator.num_processes + accelerator.process_index) * batch_size
                items = range(first, first + batch_size)
                with accelerator.accumulate(trained_model):
                    micro_loss = batch_loss(pipe, trained_model, objective, data, items, seed, capture)
                    if anchor is not None:
                        micro_loss = micro_loss + config.anchor_weight * anchor()
                    accelerator.backward(micro_loss)
                    optimizer.step()
                    optimizer.zero_grad()
                losses.append(accelerator.reduce(micro_loss.detach(), "mean").item())
            if ema is not None:
                ema.step(lora_parameters(pipe))
            step += 1
            loss = sum(losses) / len(losses)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", s_per_step=f"{time.perf_counter() - began:.2f}")
            if step % checkpoint_every == 0 or step == steps:
                _save_checkpoint(accelerator, pipe, optimizer, ema, output_dir, step, loss)
            if validation is not None and accelerator.is_main_process and (step == steps or validate_every and step % validate_every == 0):
                history.append(_validate(validation, model, step, loss, pipe, ema))
    except KeyboardInterrupt:
        if step > start and step % checkpoint_every:
            _save_checkpoint(accelerator, pipe, optimizer, ema, output_dir, step, loss)
        raise
    finally:
        bar.close()
        accelerator.unwrap_model(trained_model, keep_fp32_wrapper=False)  # the user's denoiser, without autocast
    model.eval()
    if ema is not None:  # the pipeline keeps, and the folder holds, the average
        ema.copy_to(lora_parameters(pipe))

    result = TrainedLora(output_dir, settings["layers"], paths, trainable, total, steps, history)
    if accelerator.is_main_process:
        save_lora(pipe, output_dir, lora_config)
        summary = {"trainable_parameters": trainable, "denoiser_parameters": total, "trainable_share": result.trainable_share}
        write_json_atomic(output_dir / TRAINING_FILE, {**settings, **summary, "validation": history, "finished": True})
    accelerator.wait_for_everyone()
    return result


def batch_loss(pipe: Any, model: torch.nn.Module, objective: Objective, data: Any, items: range, seed: int, capture: dict[str, Any]) -> torch.Tensor:
    """The loss of training samples ``items`` (their places in the run's order) for ``model``:
    each sample's example, VAE draw, timestep and noise come from ``seed`` and its place alone."""
    indices = [example_index(data, item, seed) for item in items]
    examples = [data.example(index) for index in indices]
    seeds = [seeding.derived_seed(seed, item) for item in items]
    clean = objective.clean_samples([image for image, _ in examples], seeds)
    inputs = denoiser_inputs(pipe, [caption for _, caption in examples], **capture)
    # A source may flag examples the model already draws as wanted (the guard's ordinary signs):
    # their target is the model's own prediction (see Objective.loss).
    preserved = getattr(data, "preserved", None)
    return objective.loss(model, inputs, clean, seeds, [bool(preserved(index)) for index in indices] if preserved else ())


def _anchor_prompts(config: TrainConfig, data: Any) -> tuple[str, ...]:
    """The prompts the anchor holds: the config's, else those the dataset offers (``data.anchor_prompts``)."""
    if config.anchor_weight is None:
        return ()
    prompts = config.anchor_prompts or tuple(getattr(data, "anchor_prompts", ()))
    if not prompts:
        raise ValueError("anchor_weight needs anchor_prompts: prompts whose text keys and values the LoRA should leave as they are.")
    return prompts


def capture_settings(pipe: Any, generate_kwargs: dict[str, Any], resolution: int) -> dict[str, Any]:
    """The pipeline-call settings under which the pipeline conditions one training batch: the
    caller's text settings, the training size, and no classifier-free guidance (a distilled
    guidance embedding, FLUX-dev's, is conditioning and stays)."""
    settings = conditional_settings(pipe, generate_kwargs)
    latent = "latent" if getattr(pipe, "vae", None) is not None else "pt"
    settings.update(num_inference_steps=2, height=resolution, width=resolution, output_type=latent, generator=seeding.generator(0))
    return call_kwargs(pipe, **settings)


def _describe(data: Any) -> str:
    # A source that says what it is (e.g. the guard's pairs) is recorded so; a resumed run must match it.
    description = getattr(data, "description", None)
    if isinstance(description, str):
        return description
    folder = getattr(data, "folder", None)
    if folder is not None:
        return f"imagefolder {folder} ({data.size} images)"
    words = getattr(data, "words", None)
    if words is not None:
        return f"rendered signs, seed {data.seed}, words {', '.join(words)}"
    return f"{type(data).__name__} ({data.size} rows)"


def _check_output(output_dir: Path, settings: dict[str, Any], resume: bool) -> None:
    """A one-line error unless ``output_dir`` is new, empty, or (with ``resume``) holds this same run."""
    record = output_dir / TRAINING_FILE
    if record.is_file():
        previous = json.loads(record.read_text())
        changed = sorted(key for key in settings if key not in _RESUMABLE_CHANGES and previous.get(key) != settings[key])
        if not resume:
            raise ValueError(f"{output_dir} already holds a LoRA run: pass resume=True (--resume) to continue it, or choose another folder.")
        if changed:
            raise ValueError(
                f"{output_dir} holds another run: its {', '.join(changed)} differ from this one's; "
                "choose another folder, or continue it with its own settings."
            )
    elif output_dir.is_dir() and any(output_dir.iterdir()):
        raise ValueError(f"{output_dir} is not empty and holds no LoRA run ({TRAINING_FILE}): choose an empty or new folder.")
    output_dir.mkdir(parents=True, exist_ok=True)


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in output_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX):]
        if suffix.isdigit() and (path / "state.json").is_file():
            found.append((int(suffix), path))
    return sorted(found)


def last_checkpoint(output_dir: Path, up_to: int) -> Path | None:
    """The newest ``checkpoint-<step>`` folder of a run with step ≤ ``up_to``, or None."""
    usable = [path for step, path in _checkpoints(output_dir) if step <= up_to]
    return usable[-1] if usable else None


def _save_checkpoint(accelerator: Any, pipe: Any, optimizer: Any, ema: EMAModel | None, output_dir: Path, step: int, loss: float) -> None:
    """Write ``checkpoint-<step>`` (written aside, then renamed: never half there) and keep the last few."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
        partial = output_dir / f".{final.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        save_file({key: value.contiguous() for key, value in lora_state_dict(pipe).items()}, partial / "lora.safetensors")
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        if ema is not None:
            torch.save(ema.state_dict(), partial / EMA_FILE)
        (partial / "state.json").write_text(json.dumps({"step": step, "loss": loss}))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for _, old in _checkpoints(output_dir)[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _validate(validation: Validation, model: torch.nn.Module, step: int, loss: float | None, pipe: Any, ema: EMAModel | None) -> dict[str, float]:
    """Validate what the run would save at ``step``: the average of the LoRA's weights where there is one."""
    model.eval()
    if ema is not None:
        ema.store(lora_parameters(pipe))
        ema.copy_to(lora_parameters(pipe))
    try:
        return validation(step, loss)
    finally:
        if ema is not None:
            ema.restore(lora_parameters(pipe))
        model.train()
