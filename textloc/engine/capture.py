"""How a pipeline conditions its denoiser, captured from its own first call (:class:`DenoiserInputs`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from textloc.architectures import family_of
from textloc.architectures.spec import DenoiserSignature
from textloc.engine.install import hooked, pipeline_kwargs, run_pipeline
from textloc.engine.run_state import DenoiserCall, StopRun, prediction_of, sample_and_timestep


@dataclass(frozen=True)
class DenoiserInputs:
    """How a pipeline conditions its denoiser for some prompts: its call, less the noisy sample and timestep.

    Captured from the pipeline's own first denoiser call (:func:`denoiser_inputs`), so the text
    embeddings, pooled projections, micro-conditioning (SDXL's time ids), position ids (FLUX), text
    masks (PixArt, Sana) and guidance embedding are what the pipeline itself passes; nothing about
    an architecture is restated here. ``sample_shape`` is the shape the denoiser takes its sample
    in (FLUX: packed latents); ``timestep_scale`` turns a scheduler timestep into the value the
    pipeline hands the denoiser (FLUX: 1/1000, others: 1).
    """

    args: tuple
    kwargs: dict[str, Any]
    sample_shape: torch.Size
    timestep_scale: float
    signature: DenoiserSignature  # the family's names for the sample and timestep arguments

    def __call__(self, model: torch.nn.Module, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The prediction of ``model`` (this pipeline's denoiser, or a wrapper of it) for ``sample`` at ``timesteps``.

        ``timesteps`` are scheduler timesteps, one per row. A denoiser that also predicts a variance
        (IF, PixArt: twice the sample's channels) gives its first half, the part a scheduler's
        ``prediction_type`` names.
        """
        if sample.shape != self.sample_shape:
            raise ValueError(f"The denoiser was called with samples of shape {tuple(self.sample_shape)}, not {tuple(sample.shape)}.")
        args, kwargs = list(self.args), dict(self.kwargs)
        timestep = (timesteps * self.timestep_scale).to(sample.device)
        for key, position, value in ((self.signature.sample, 0, sample), (self.signature.timestep, 1, timestep)):
            if key in kwargs:
                kwargs[key] = value
            elif len(args) > position:  # a U-Net is called with both by position
                args[position] = value
        prediction = prediction_of(model(*args, **kwargs))
        if prediction.shape[1] == 2 * sample.shape[1] and prediction.shape[2:] == sample.shape[2:]:
            prediction = prediction[:, : sample.shape[1]]
        return prediction


def denoiser_inputs(pipe: Any, prompt: str | list[str], **generate_kwargs: Any) -> DenoiserInputs:
    """Run ``pipe`` up to its first denoiser call and return that call (see :class:`DenoiserInputs`).

    The call must carry no classifier-free guidance batch (give the settings that turn it off,
    e.g. ``guidance_scale=1``); the run stops before the denoiser computes anything.
    """
    family = family_of(pipe)
    family.check_supports("denoiser_inputs")
    captured: list[DenoiserInputs] = []
    signature = family.signature

    def capture(call: DenoiserCall, args: tuple, kwargs: dict[str, Any]) -> None:
        if set(call.branch_rows) != {"cond"}:
            raise ValueError(
                f"{type(pipe).__name__} ran this call with classifier-free guidance "
                f"({', '.join(call.branch_rows)} rows); capture its inputs with guidance off (guidance_scale=1)."
            )
        sample, timestep = sample_and_timestep(signature, args, kwargs)
        scheduled = float(pipe.scheduler.timesteps[call.position])
        given = float(torch.as_tensor(timestep).flatten()[0])
        if scheduled == 0:
            raise ValueError("The first scheduled timestep is 0: run the capture with num_inference_steps >= 2.")
        captured.append(DenoiserInputs(args, kwargs, sample.shape, given / scheduled, signature))
        raise StopRun

    kwargs = pipeline_kwargs(pipe, generate_kwargs)
    with hooked(pipe, [], on_call=capture):
        run_pipeline(pipe, prompt=prompt, **kwargs)
    if not captured:
        raise ValueError(f"{type(pipe).__name__} finished without calling its denoiser.")
    return captured[0]


