"""Latent Consistency Models: Stable Diffusion's U-Net (``UNet2DConditionModel``, its ``attn2`` layers
cross-attending to CLIP's hidden states), consistency-distilled with the guidance scale as an input
(``time_cond_proj_dim``: the pipeline hands it ``timestep_cond``, an embedding of
``guidance_scale - 1``) and sampled by ``LCMScheduler``.

CFG: none. ``LatentConsistencyModelPipeline.__call__`` encodes no negative prompt (its
``do_classifier_free_guidance`` property is ``False``) and makes one conditional call a step: every
row is conditional. ``LCMScheduler`` adds fresh noise between steps from the call's generator.

The denoising objective would train its U-Net as a plain diffusion model, undoing the distillation,
and DDIM inversion regenerates with DDIM, not its consistency sampler (which takes
``original_inference_steps``), so ``train_lora`` and ``edit_image`` refuse it. The pipelines are
told by their class: a bare U-Net is SD's.
"""

from __future__ import annotations

from textloc.architectures.sd import FAMILY as SD
from textloc.architectures.spec import Family, Guidance

FAMILY = Family(
    name="lcm",
    denoisers=(),  # SD's: a UNet2DConditionModel of its own is SD's
    pipelines=("LatentConsistencyModelPipeline", "LatentConsistencyModelImg2ImgPipeline"),
    attention=SD.attention,
    signature=SD.signature,
    guidance=Guidance(distilled=True),
    refuses={
        "train_lora": "its U-Net is consistency-distilled: the denoising objective would train it as a plain diffusion model",
    },
)
