"""What image inversion needs from a family (``Family.inversion``), and the parts families share.

A family's :class:`Inversion` says, as its pipeline ``__call__`` does it: how an image becomes the
clean sample the sampler ends at (and back), the conditioning of the conditional branch, and one
conditional prediction of the denoiser. What the family's ``Training`` states (the time handed to
the denoiser, the sign the pipeline steps with, list layouts) is read from there, not restated.
:class:`CapturedInversion` takes the conditioning and the prediction from the pipeline's own
denoiser call. :mod:`textloc.edit.inversion` runs the sampler backwards with it.

Like the rest of a spec, importing this imports no torch: each part imports what it uses when called.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

# encode_prompt's arguments that inversion sets itself: one conditional prediction per image.
_OWN_ENCODE_ARGUMENTS = frozenset({"prompt", "device", "num_images_per_prompt", "do_classifier_free_guidance"})


class Inversion(abc.ABC):
    """How one family's pipelines encode an image and make one conditional prediction."""

    #: Flow-matching (velocity) model, inverted along the flow ODE; else DDIM.
    flow: ClassVar[bool] = False

    @abc.abstractmethod
    def size_multiple(self, pipe: Any) -> int:
        """Heights and widths the pipeline takes are multiples of this (pixels)."""

    def generated_size(self, pipe: Any, height: int, width: int) -> tuple[int, int]:
        """The size the pipeline generates at when asked for ``height`` x ``width`` (most: that size;
        HiDream rescales every size to its default area, Kandinsky 5 snaps it to its list of
        resolutions): an image inverts only at a size the pipeline keeps."""
        return height, width

    def encode_image(self, pipe: Any, pixels: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """The clean sample the pipeline's sampler ends at, in the layout it samples in (:meth:`latents_argument`
        turns it into the one its ``latents`` argument takes), for ``pixels`` (B x 3 x H x W in [-1, 1]):
        from the VAE posterior's mode, or with ``generators`` (one per image, as training draws) from
        one posterior sample per image (:func:`vae_encoding`)."""
        return vae_latents(pipe, pixels, generators)

    def decode_sample(self, pipe: Any, sample: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``pixels`` back from :meth:`encode_image`'s sample (the sampler's layout), as the pipeline decodes it."""
        return vae_decoding(pipe.vae, sample / pipe.vae.config.scaling_factor + shift_factor(pipe))

    def latents_argument(self, pipe: Any, sample: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """A ``sample`` in the sampler's layout (the inverted noise, or the encoded image, of ``height`` x
        ``width`` pixels) in the layout the pipeline's ``latents`` argument takes, which is what
        ``invert`` and ``encode_image`` return: most take the layout they sample in; FLUX.2 takes
        its patches unpacked and packs them into tokens itself."""
        return sample

    def latents_dtype(self, pipe: Any) -> torch.dtype:
        """The dtype the pipeline draws its starting noise in."""
        from textloc.architectures import denoiser

        return denoiser(pipe).dtype

    @abc.abstractmethod
    def conditioning(self, pipe: Any, prompts: list[str], arguments: dict[str, Any], height: int, width: int) -> dict[str, Any]:
        """Everything the denoiser takes besides the sample and the timestep, conditional branch only.

        ``arguments``: every argument of the pipeline's ``__call__``, as the regeneration passes them.
        """

    @abc.abstractmethod
    def predict(self, pipe: Any, sample: torch.Tensor, timestep: torch.Tensor, conditioning: dict[str, Any]) -> torch.Tensor:
        """The denoiser's prediction at scheduler timestep ``timestep``, as the pipeline receives it
        (the time handed to the denoiser as the family's ``Training.timestep`` states, where it
        does); the inversion steps with it times ``Training.prediction_sign``, as the pipeline does."""

    def set_flow_timesteps(self, pipe: Any, scheduler: Any, num_inference_steps: int, sample: torch.Tensor) -> None:
        """``scheduler.set_timesteps`` as the pipeline calls it (flow families only; ``scheduler`` is
        a ``FlowMatchEulerDiscreteScheduler``)."""
        scheduler.set_timesteps(num_inference_steps, device=sample.device)


class CapturedInversion(Inversion):
    """An inversion whose conditioning and prediction are the pipeline's own: its first denoiser call
    for the prompts at the image's size, captured with classifier-free guidance off
    (:func:`textloc.engine.denoiser_inputs`, as ``train_lora`` conditions the denoiser), then made
    again at each sample and timestep, the time handed to the denoiser and the list layouts as the
    capture and the family's ``Training`` state them. Text embeddings, masks, position ids, size
    conditioning and distilled guidance are then what the pipeline itself passes, so the family
    states only how an image becomes the sampler's sample and back, and the sampler's schedule."""

    flow = True

    def conditioning(self, pipe, prompts, arguments, height, width):
        from textloc import seeding
        from textloc.engine import conditional_settings, denoiser_inputs

        # The call's own arguments, but what the capture sets: the prompts, the size, two steps
        # (the capture checks the time at the first, which must not be 0), no latents of the caller's.
        settings = {name: value for name, value in arguments.items() if name not in _SET_BY_CAPTURE}
        settings = conditional_settings(pipe, settings)
        settings.update(height=height, width=width, num_inference_steps=2, generator=seeding.generator(0))
        return {"inputs": denoiser_inputs(pipe, prompts, **settings)}

    def predict(self, pipe, sample, timestep, conditioning):
        from textloc.architectures import denoiser

        return conditioning["inputs"](denoiser(pipe), sample, timestep.expand(sample.shape[0]))


# What CapturedInversion's capture sets itself; the rest of a call's arguments reach the pipeline.
_SET_BY_CAPTURE = frozenset({"prompt", "height", "width", "num_inference_steps", "latents", "generator", "timesteps", "sigmas"})


def shift_factor(pipe: Any) -> float:
    """The VAE's latent shift: SD3 and FLUX have one, the others none."""
    return pipe.vae.config.get("shift_factor") or 0.0


def _vae_dtype(vae: Any) -> torch.dtype:
    import torch

    # SDXL's VAE overflows in float16: it runs in float32, as its pipelines do.
    upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
    return torch.float32 if upcast else vae.dtype


def vae_encoding(vae: Any, pixels: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """The VAE's encoding, in float32: the posterior's mode (inversion: the image itself), or with
    ``generators``, one per image, one posterior sample per image, its standard-normal draw (on the
    CPU, of one image's latent shape) from its generator (training: the sample's own seed)."""
    import torch

    dtype = _vae_dtype(vae)
    with cast(vae, dtype):
        # On the pipeline's execution device already: an offloaded VAE moves there when called.
        encoded = vae.encode(pixels.to(dtype=dtype))
    if not hasattr(encoded, "latent_dist"):
        return encoded.latent.float()  # AutoencoderDC (Sana) is deterministic
    posterior = encoded.latent_dist
    if generators is None:
        return posterior.mode().float()
    draws = torch.stack([torch.randn(posterior.mean.shape[1:], generator=generator) for generator in generators])
    return (posterior.mean + posterior.std * draws.to(posterior.mean)).float()


def vae_latents(pipe: Any, pixels: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """The latents most latent pipelines decode as ``latents / scaling_factor + shift_factor``."""
    return (vae_encoding(pipe.vae, pixels, generators) - shift_factor(pipe)) * pipe.vae.config.scaling_factor


def vae_decoding(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """The VAE's decoding of ``latents``, in float32."""
    dtype = _vae_dtype(vae)
    with cast(vae, dtype):
        return vae.decode(latents.to(dtype=dtype), return_dict=False)[0].float()


@contextlib.contextmanager
def cast(module: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """``module`` in ``dtype`` inside the context, in its own dtype again after it."""
    original = next(module.parameters()).dtype
    if original != dtype:
        module.to(dtype=dtype)
    try:
        yield
    finally:
        if original != dtype:
            module.to(dtype=original)


def encode_prompt(pipe: Any, prompts: list[str], arguments: dict[str, Any]) -> Any:
    """``pipe.encode_prompt`` for the conditional branch, with the call's arguments it shares
    (``prompt_2``, ``max_sequence_length``, ``clean_caption``, ...)."""
    parameters = inspect.signature(pipe.encode_prompt).parameters
    shared = {
        name: value
        for name, value in arguments.items()
        if name in parameters and name not in _OWN_ENCODE_ARGUMENTS and not name.startswith("negative_")
    }
    own = {"device": pipe._execution_device, "num_images_per_prompt": 1, "do_classifier_free_guidance": False}
    shared.update({name: value for name, value in own.items() if name in parameters})
    return pipe.encode_prompt(prompts, **shared)


def learned_sigma_mean(transformer: Any, output: torch.Tensor) -> torch.Tensor:
    """The prediction of a DiT that also predicts its variance (twice the channels): the first half."""
    if transformer.config.out_channels // 2 == transformer.config.in_channels:
        return output.chunk(2, dim=1)[0]
    return output


def resolution_shift(scheduler: Any, image_seq_len: int, max_shift: float) -> float:
    """The resolution-dependent shift ``mu`` of a flow schedule, with the defaults the pipeline
    uses where the scheduler's config has none (``max_shift``: SD3 1.16, FLUX 1.15)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = scheduler.config
    return calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", max_shift),
    )


def set_shifted_linspace_timesteps(scheduler: Any, num_inference_steps: int, sample: torch.Tensor) -> None:
    """``scheduler.set_timesteps`` as the pipelines of packed-token models call it (Qwen-Image,
    Chroma): sigmas evenly spaced from 1 to ``1 / num_inference_steps``, shifted by the ``mu`` of
    the sample's token count."""
    import numpy as np

    sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
    mu = resolution_shift(scheduler, sample.shape[1], max_shift=1.15)
    scheduler.set_timesteps(num_inference_steps, device=sample.device, sigmas=sigmas, mu=mu)
