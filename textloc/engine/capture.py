"""How a pipeline conditions its denoiser, captured from its own first call (:class:`DenoiserInputs`)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from textloc.architectures import denoiser, family_of
from textloc.architectures.spec import DenoiserSignature, Training
from textloc.engine.install import hooked, pipeline_kwargs, run_pipeline
from textloc.engine.run_state import DenoiserCall, StopRun, prediction_of, sample_and_timestep


@dataclass(frozen=True)
class DenoiserInputs:
    """How a pipeline conditions its denoiser for some prompts: its call, less the noisy sample and timestep.

    Captured from the pipeline's own first denoiser call (:func:`denoiser_inputs`), so the text
    embeddings, pooled projections, micro-conditioning (SDXL's time ids), position ids (FLUX), text
    masks (PixArt, Sana) and guidance embedding are what the pipeline itself passes; nothing about
    an architecture is restated here. ``sample_shape`` is the shape of the pipeline's ``latents``
    as the denoiser takes them (FLUX: packed into tokens; Z-Image, which takes a list of rows: the
    batch they make); ``time`` turns scheduler timesteps into the values the pipeline hands the
    denoiser (FLUX: ``t / 1000``, Lumina 2: ``1 - t / 1000``, most: ``t``).
    """

    args: tuple
    kwargs: dict[str, Any]
    sample_shape: torch.Size
    time: Callable[[torch.Tensor], torch.Tensor]
    signature: DenoiserSignature  # the family's names for the sample and timestep arguments
    training: Training = field(default_factory=Training)  # the family's layouts, where they differ
    #: The dtype the pipeline hands its denoiser the time in (HunyuanImage: the latents'; most: float32).
    time_dtype: torch.dtype = torch.float32

    def __call__(self, model: torch.nn.Module, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The prediction of ``model`` (this pipeline's denoiser, or a wrapper of it) for ``sample`` at ``timesteps``.

        ``timesteps`` are scheduler timesteps, one per row. A denoiser that also predicts a variance
        (IF, PixArt: twice the sample's channels) gives its first half, the part a scheduler's
        ``prediction_type`` names.
        """
        if sample.shape != self.sample_shape:
            raise ValueError(f"The denoiser was called with samples of shape {tuple(self.sample_shape)}, not {tuple(sample.shape)}.")
        args, kwargs = list(self.args), dict(self.kwargs)
        timestep = self.time(timesteps.to(sample.device)).to(self.time_dtype)
        rows, batch = self.training.rows, self.training.batch
        given = sample if rows is None else rows(sample)
        start = 0 if self.training.sample_start is None else self.training.sample_start(self.kwargs)
        if start:  # the tokens the pipeline puts ahead of its latents, as it put them (Ideogram 4)
            ahead = sample_and_timestep(self.signature, self.args, self.kwargs)[0][:, :start]
            given = torch.cat([ahead.to(given), given], dim=1)
        for key, position, value in ((self.signature.sample, 0, given), (self.signature.timestep, 1, timestep)):
            if key in kwargs:
                kwargs[key] = value
            elif len(args) > position:  # a U-Net is called with both by position
                args[position] = value
        prediction = prediction_of(model(*args, **kwargs))
        if batch is not None:
            prediction = batch(prediction)
        prediction = prediction[:, start:]
        if self.training.prediction is not None:
            prediction = self.training.prediction(prediction, sample)
        if prediction.shape[1] == 2 * sample.shape[1] and prediction.shape[2:] == sample.shape[2:]:
            prediction = prediction[:, : sample.shape[1]]
        return prediction


def conditional_settings(pipe: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (pipeline-call arguments) as a call that conditions the denoiser on the prompt
    alone: no negative prompt, no classifier-free guidance (``guidance_scale`` at the family's
    ``Training.unguided_scale``, no ``true_cfg_scale``); a distilled guidance embedding (FLUX-dev's)
    is conditioning, and keeps its scale. HunyuanImage takes no ``guidance_scale``: its guiders run
    CFG as passes, the conditional one first, which is the one :func:`denoiser_inputs` captures."""
    unguided = {key: value for key, value in settings.items() if not key.startswith("negative_") and key != "true_cfg_scale"}
    parameters = inspect.signature(pipe.__call__).parameters
    if not denoiser(pipe).config.get("guidance_embeds") and "guidance_scale" in parameters:
        unguided["guidance_scale"] = family_of(pipe).training.unguided_scale
        if "guidance_schedule" in parameters:  # Ideogram 4: a per-step schedule, which a scale excludes
            unguided["guidance_schedule"] = None
    return unguided


def denoiser_inputs(pipe: Any, prompt: str | list[str], **generate_kwargs: Any) -> DenoiserInputs:
    """Run ``pipe`` up to its first denoiser call and return that call (see :class:`DenoiserInputs`).

    The call must carry no classifier-free guidance batch (give the settings that turn it off,
    e.g. ``guidance_scale=1``); the run stops before the denoiser computes anything.
    """
    family = family_of(pipe)
    family.check_supports("denoiser_inputs")
    captured: list[DenoiserInputs] = []
    signature, training = family.signature, family.training

    def capture(call: DenoiserCall, args: tuple, kwargs: dict[str, Any]) -> None:
        if set(call.branch_rows) != {"cond"}:
            raise ValueError(
                f"{type(pipe).__name__} ran this call with classifier-free guidance "
                f"({', '.join(call.branch_rows)} rows); capture its inputs with guidance off (guidance_scale=1)."
            )
        sample, timestep = sample_and_timestep(signature, args, kwargs)
        if training.batch is not None:
            sample = training.batch(sample)
        if training.sample_start is not None:
            sample = sample[:, training.sample_start(kwargs):]
        scheduled = pipe.scheduler.timesteps[call.position]
        given = float(torch.as_tensor(timestep).flatten()[0])
        if float(scheduled) == 0:
            raise ValueError("The first scheduled timestep is 0: run the capture with num_inference_steps >= 2.")
        if training.timestep is None:
            time = functools.partial(torch.mul, other=given / float(scheduled))
        else:
            time = functools.partial(training.timestep, pipe.scheduler)
            stated = float(time(torch.as_tensor(scheduled, dtype=torch.float64)))
            if abs(stated - given) > 1e-4 * max(1.0, abs(given)):
                raise ValueError(
                    f"{type(pipe).__name__} handed its denoiser the time {given} at timestep {float(scheduled)}, where "
                    f"the {family.name} spec's Training.timestep says {stated}: the spec does not match this pipeline."
                )
        time_dtype = torch.as_tensor(timestep).dtype
        captured.append(DenoiserInputs(args, kwargs, sample.shape, time, signature, training, time_dtype))
        raise StopRun

    kwargs = pipeline_kwargs(pipe, generate_kwargs)
    with hooked(pipe, [], on_call=capture):
        run_pipeline(pipe, prompt=prompt, **kwargs)
    if not captured:
        raise ValueError(f"{type(pipe).__name__} finished without calling its denoiser.")
    return captured[0]


