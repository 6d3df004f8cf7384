"""Sana Sprint: Sana's denoiser (``SanaTransformer2DModel`` with a guidance embedding), distilled into
a few-step consistency model (sCM, TrigFlow) and sampled by ``SCMScheduler``. Its text reaches the
image as Sana's does (``attn2`` cross-attention to Gemma's masked hidden states).

CFG: none. ``SanaSprintPipeline.__call__`` hands ``guidance_scale`` to the denoiser as its
``guidance`` input and makes one conditional call a step (no negative prompt is encoded, no
``do_classifier_free_guidance``): every row is conditional. Its scheduler's timesteps end with the
clean sample's time (``n + 1`` for ``n`` steps; the loop runs over ``timesteps[:-1]``).

The denoiser takes ``sin t / (sin t + cos t)`` of the scheduler's TrigFlow time, its sample rescaled
by it, and the pipeline turns its output into the TrigFlow velocity: neither the denoising objective
nor inversion (DDIM or a flow ODE) is this sampler, so ``train_lora``, ``denoiser_inputs`` and
``edit_image`` refuse it. The pipelines are told by their class: a bare denoiser is Sana's.
"""

from __future__ import annotations

from textloc.architectures.sana import FAMILY as SANA
from textloc.architectures.spec import Family, Guidance

_SCM = (
    "its sCM consistency sampler hands the denoiser sin t / (sin t + cos t) of its TrigFlow time and a rescaled "
    "sample, which the denoising objective does not"
)

FAMILY = Family(
    name="sana-sprint",
    denoisers=(),  # Sana's: a SanaTransformer2DModel of its own is Sana's
    pipelines=("SanaSprintPipeline", "SanaSprintImg2ImgPipeline"),
    attention=SANA.attention,
    guidance=Guidance(distilled=True),
    call_defaults=SANA.call_defaults,
    schedule_ends_clean=True,
    refuses={"train_lora": _SCM, "denoiser_inputs": _SCM},
)
