"""The engine patches the right rows at the right steps: step and branch come from the pipeline.

Each test here names a case where a guess about the batch layout or the step count would patch
the wrong rows or steps silently; each failed on the engine that guessed.
"""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    FlowMatchHeunDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

import textloc as tl
from conftest import OTHER, PROMPT, THIRD, _pipeline, generate, seeded
from textloc.edit.inversion import invert
from textloc.engine import RowPatch, check_step_window, denoiser, record, run_with_patches, window_steps
from textloc.pipeline_calls import images_of
from textloc.seeding import generator
from textloc.testing import tiny_call_kwargs, tiny_pipeline

BATCH_TOLERANCE = 1e-4  # as in test_engine: batching reorders float reductions, a wrong patch moves 1e-3+
# KDPM2 hands torch tensors to numpy in set_timesteps; numpy 2 warns about it thousands of times.
KDPM2_WARNINGS = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")


def text_layer_names(pipe) -> list[str]:
    return [layer.name for layer in tl.select_layers(pipe, "all")]


def with_scheduler(pipe, scheduler_class):
    """A pipeline sharing ``pipe``'s models, with another scheduler."""
    return type(pipe)(**{**pipe.components, "scheduler": scheduler_class.from_config(pipe.scheduler.config)})


def steps_seen(pipe, prompts, **kwargs) -> list[tuple[int, tuple[str, ...]]]:
    """(step, branches) of every denoiser call of a run, as the engine places them."""
    seen = []
    run_with_patches(pipe, prompts, [], on_output=lambda call, _: seen.append((call.step, tuple(sorted(call.branch_rows)))), **kwargs)
    return seen


def kwargs_of(pipe, **overrides):
    kwargs = {**tiny_call_kwargs(pipe), **overrides}
    return kwargs


# ---- 1. LCM-distilled U-Nets run no CFG batch at guidance > 1


def lcm_pipeline() -> StableDiffusionPipeline:
    sd15 = _pipeline("sd15")
    torch.manual_seed(0)
    config = {key: value for key, value in sd15.unet.config.items() if not key.startswith("_")}
    unet = UNet2DConditionModel.from_config({**config, "time_cond_proj_dim": 8}).eval()
    pipe = StableDiffusionPipeline(**{**sd15.components, "unet": unet})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_lcm_unet_rows_are_all_conditional():
    pipe = lcm_pipeline()
    kwargs = kwargs_of(pipe, guidance_scale=4.0)
    assert {branches for _, branches in steps_seen(pipe, [PROMPT, OTHER, THIRD], **kwargs)} == {("cond",)}
    layer = text_layer_names(pipe)[0]
    batched = images_of(run_with_patches(pipe, [PROMPT, OTHER], [RowPatch((layer,), source=1, row=0)], **kwargs))
    plain = images_of(run_with_patches(pipe, [PROMPT, OTHER], [], **kwargs))
    with tl.patch(pipe, layer, OTHER, guidance_scale=4.0):
        alone = images_of(pipe(prompt=PROMPT, generator=generator(0), **kwargs))
    assert abs(batched[0] - plain[0]).max() > 1e-3  # row 0 was patched
    assert abs(batched[1] - plain[1]).max() < BATCH_TOLERANCE  # row 1 was not
    assert abs(batched[0] - alone[0]).max() < BATCH_TOLERANCE


def latent_consistency_pipeline() -> diffusers.LatentConsistencyModelPipeline:
    """tiny sd15's parts with an LCM-distilled U-Net (a guidance embedding) and LCMScheduler."""
    sd15 = _pipeline("sd15")
    parts = {name: sd15.components[name] for name in ("vae", "text_encoder", "tokenizer", "safety_checker", "feature_extractor")}
    pipe = diffusers.LatentConsistencyModelPipeline(
        **parts, unet=lcm_pipeline().unet, scheduler=diffusers.LCMScheduler.from_config(sd15.scheduler.config), requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sana_sprint_pipeline() -> diffusers.SanaSprintPipeline:
    """tiny sana's parts with a guidance-embedded transformer and the sCM scheduler."""
    sana = _pipeline("sana")
    config = {key: value for key, value in sana.transformer.config.items() if not key.startswith("_")}
    torch.manual_seed(0)
    transformer = diffusers.SanaTransformer2DModel.from_config({**config, "guidance_embeds": True}).eval()
    parts = {name: sana.components[name] for name in ("vae", "text_encoder", "tokenizer")}
    pipe = diffusers.SanaSprintPipeline(**parts, transformer=transformer, scheduler=diffusers.SCMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


DISTILLED = {
    # family name, its pipeline, the call arguments beyond size and steps
    "lcm": (latent_consistency_pipeline, {"guidance_scale": 4.0}),
    "sana-sprint": (sana_sprint_pipeline, {"guidance_scale": 4.0, "complex_human_instruction": [], "max_sequence_length": 48, "use_resolution_binning": False}),
}


@pytest.mark.parametrize("family", DISTILLED)
def test_a_guidance_distilled_pipeline_of_a_familys_denoiser_runs_conditional_rows_only(family, tmp_path):
    # LatentConsistencyModelPipeline (SD's U-Net) and SanaSprintPipeline (Sana's transformer) take the
    # guidance scale as a model input and make one conditional call a step: their spec says so; none
    # is guessed from the batch. Sana Sprint's scheduler has n + 1 timesteps for its n calls.
    build, extra = DISTILLED[family]
    pipe = build()
    kwargs = {"height": 32, "width": 32, "num_inference_steps": 2, "output_type": "np", **extra}
    assert tl.architectures.family_of(pipe).name == family
    assert steps_seen(pipe, [PROMPT, OTHER], **kwargs) == [(0, ("cond",)), (1, ("cond",))]
    # A row that reads every text unit of another row (same seed) is that row.
    names = tuple(text_layer_names(pipe))
    plain = images_of(run_with_patches(pipe, [PROMPT, OTHER], [], **kwargs))
    copied = images_of(run_with_patches(pipe, [PROMPT, OTHER], [RowPatch(names, source=1, row=0)], **kwargs))
    assert abs(plain[0] - plain[1]).max() > 1e-3
    assert abs(copied[0] - copied[1]).max() < BATCH_TOLERANCE
    # A record holds the conditional branch alone; a patch of the unconditional one patches nothing.
    source = record(pipe, "all", OTHER, generator=generator(0), **kwargs)
    assert {branch for _, _, branch in source.entries} == {"cond"}
    alone = images_of(pipe(prompt=PROMPT, generator=generator(0), **kwargs))
    with tl.patch(pipe, "all", source, branch="uncond"):
        assert np.array_equal(images_of(pipe(prompt=PROMPT, generator=generator(0), **kwargs)), alone)
    with tl.patch(pipe, "all", source, branch="cond"):
        patched = images_of(pipe(prompt=PROMPT, generator=generator(0), **kwargs))
    assert abs(patched[0] - images_of(pipe(prompt=OTHER, generator=generator(0), **kwargs))[0]).max() < BATCH_TOLERANCE
    # Their samplers are neither the denoising objective nor DDIM/flow inversion: refused in one line.
    with pytest.raises(ValueError, match=f"train_lora does not support the {family} family yet: "):
        tl.train_lora(pipe, names[-1:], [], output_dir=tmp_path)
    with pytest.raises(ValueError, match=f"invert does not know {type(pipe).__name__} \\(the {family} family\\)"):
        invert(pipe, np.zeros((32, 32, 3), dtype=np.uint8), PROMPT, num_inference_steps=2)


# ---- 2. No CFG guessed from equal batch halves (two same-seed prompts at guidance 1)


@pytest.mark.parametrize("arch", ["deepfloyd-if", "pixart-alpha", "flux", "hunyuandit"])
@pytest.mark.parametrize("guidance", ["off", "on"])
def test_same_seed_batch_under_patch_equals_each_prompt_patched_alone(arch, guidance):
    pipe = _pipeline(arch)
    off = {"guidance_scale": 1.0} if arch != "flux" else {"true_cfg_scale": 1.0}
    kwargs = kwargs_of(pipe, **(off if guidance == "off" else {}))
    layer = text_layer_names(pipe)[0]
    source = record(pipe, layer, OTHER, generator=generator(0), **kwargs)
    with tl.patch(pipe, layer, source):
        batch = images_of(pipe(prompt=[PROMPT, THIRD], generator=[generator(0), generator(0)], **kwargs))
        alone = [images_of(pipe(prompt=prompt, generator=generator(0), **kwargs))[0] for prompt in (PROMPT, THIRD)]
    plain = images_of(pipe(prompt=PROMPT, generator=generator(0), **kwargs))[0]
    assert abs(alone[0] - plain).max() > 1e-3  # the patch does change the image
    for row in range(2):
        assert abs(batch[row] - alone[row]).max() < BATCH_TOLERANCE


def test_flux_true_cfg_branches_come_from_the_pipeline():
    pipe = _pipeline("flux")
    seen = steps_seen(pipe, [PROMPT, OTHER], **kwargs_of(pipe))
    assert seen == [(0, ("cond",)), (0, ("uncond",)), (1, ("cond",)), (1, ("uncond",))]


@pytest.mark.parametrize("guidance_scale", [4.0, 1.0])
def test_kandinsky5_runs_its_uncond_pass_second_while_its_guidance_scale_is_above_1(guidance_scale):
    # Its pipeline states no CFG layout (no property, no flag to encode_prompt): the spec reads
    # guidance_scale as the pipeline's loop does, and the call order from its code.
    pipe = _pipeline("kandinsky5")
    seen = steps_seen(pipe, [PROMPT, OTHER], **kwargs_of(pipe, guidance_scale=guidance_scale))
    branches = [("cond",), ("uncond",)] if guidance_scale > 1 else [("cond",)]
    assert seen == [(step, branch) for step in (0, 1) for branch in branches]


@pytest.mark.parametrize("guidance_scale", [4.0, 1.0])
def test_nucleusmoe_image_runs_its_uncond_pass_second_while_its_guidance_scale_is_above_1(guidance_scale):
    # As Kandinsky 5: two plain calls a step (no context, no property, no flag to encode_prompt),
    # CFG on where its loop's own test, guidance_scale > 1, is.
    pipe = _pipeline("nucleusmoe-image")
    seen = steps_seen(pipe, [PROMPT, OTHER], **kwargs_of(pipe, guidance_scale=guidance_scale))
    branches = [("cond",), ("uncond",)] if guidance_scale > 1 else [("cond",)]
    assert seen == [(step, branch) for step in (0, 1) for branch in branches]


def test_a_pipeline_that_states_no_cfg_layout_is_refused():
    pipe = _pipeline("deepfloyd-if")
    unet = tl.engine.denoiser(pipe)
    layer = text_layer_names(pipe)[0]
    sample = torch.zeros(2, unet.config.in_channels, 8, 8)
    text = torch.zeros(2, 77, unet.config.encoder_hid_dim)
    pipe.scheduler.set_timesteps(2)
    with tl.patch(pipe, layer, record(pipe, layer, OTHER, **kwargs_of(pipe))):
        with pytest.raises(ValueError, match="cannot tell the classifier-free guidance layout"):
            unet(sample, pipe.scheduler.timesteps[0], encoder_hidden_states=text)


#: diffusers' PAG pipelines of the families with a tiny pipeline, each built from that pipeline's
#: components (KolorsPAGPipeline, SDXL's family, has no tiny Kolors to build from; the refusal is the same).
PAG_PIPELINES = {
    "sd15": "StableDiffusionPAGPipeline",
    "sdxl": "StableDiffusionXLPAGPipeline",
    "sd3": "StableDiffusion3PAGPipeline",
    "pixart-sigma": "PixArtSigmaPAGPipeline",
    "sana": "SanaPAGPipeline",
    "hunyuandit": "HunyuanDiTPAGPipeline",
}


@pytest.mark.parametrize(("arch", "pag_pipeline"), PAG_PIPELINES.items())
def test_a_pipeline_set_up_for_perturbed_attention_guidance_is_refused_and_runs_as_its_family_without_it(arch, pag_pipeline):
    # With PAG on, a call batches [uncond, cond, perturbed cond]: no spec names the third branch, and
    # an even batch (two prompts) would be split in two and mislabelled without a word.
    plain = _pipeline(arch)
    pipe = getattr(diffusers, pag_pipeline).from_pipe(plain)
    pipe.set_progress_bar_config(disable=True)
    processors = {name: type(processor) for name, processor in denoiser(pipe).attn_processors.items()}
    kwargs = kwargs_of(plain)
    source = record(plain, "all", OTHER, generator=generator(0), **kwargs)  # the same weights: it fits both
    with pytest.raises(ValueError, match=f"{pag_pipeline} is set up for perturbed-attention guidance"):
        record(pipe, "all", [PROMPT, OTHER], **kwargs)
    with pytest.raises(ValueError, match="perturbed-attention guidance"):
        with tl.patch(pipe, "all", source):
            pass
    # Refused before the pipeline swapped any processor in: nothing to put back.
    assert {name: type(processor) for name, processor in denoiser(pipe).attn_processors.items()} == processors
    # Without PAG layers it is its family's plain pipeline, and followed as one.
    pipe.set_pag_applied_layers([])
    with tl.patch(pipe, "all", source):
        patched = images_of(pipe(prompt=PROMPT, generator=generator(0), **kwargs))
    with tl.patch(plain, "all", source):
        expected = images_of(plain(prompt=PROMPT, generator=generator(0), **kwargs))
    assert np.array_equal(patched, expected)
    assert not np.array_equal(patched, images_of(pipe(prompt=PROMPT, generator=generator(0), **kwargs)))


@pytest.mark.parametrize("fused_arch", ["hunyuandit", "sd15", "sd3", "flux"])
def test_fused_qkv_projections_are_refused(fused_arch):
    # fuse_qkv_projections() keeps to_k and to_v but runs to_qkv/to_kv: hooks on them would record and patch nothing.
    pipe = tiny_pipeline(fused_arch)
    denoiser(pipe).fuse_qkv_projections()
    with pytest.raises(ValueError, match="fused QKV projections"):
        record(pipe, "attention", PROMPT, **tiny_call_kwargs(pipe))
    denoiser(pipe).unfuse_qkv_projections()
    assert record(pipe, "attention", PROMPT, **tiny_call_kwargs(pipe)).entries


# ---- 3. Second-order correctors and skip-layer passes are not "uncond"


def test_heun_corrector_passes_are_conditional_and_recorded_apart():
    pipe = with_scheduler(_pipeline("sd3"), FlowMatchHeunDiscreteScheduler)
    kwargs = kwargs_of(pipe, guidance_scale=1.0, num_inference_steps=3)
    cache = record(pipe, "all", OTHER, generator=generator(0), **kwargs)
    assert {branch for (_, _, branch) in cache.entries} == {"cond"}
    assert {position for (_, position, _) in cache.entries} == {None, *range(5)}  # 2n - 1 passes, and the pooled vector once
    assert (cache.num_steps, cache.num_positions) == (3, 5)
    plain = images_of(pipe(prompt=OTHER, generator=generator(0), **kwargs))
    with tl.patch(pipe, "all", cache):  # its own K/V at every pass: nothing changes
        again = images_of(pipe(prompt=OTHER, generator=generator(0), **kwargs))
        assert torch.equal(torch.as_tensor(again), torch.as_tensor(plain))
    sd15 = with_scheduler(_pipeline("sd15"), HeunDiscreteScheduler)
    steps = [step for step, _ in steps_seen(sd15, [PROMPT], **kwargs_of(sd15, guidance_scale=1.0, num_inference_steps=3))]
    assert steps == [0, 0, 1, 1, 2]


def test_sd3_skip_layer_guidance_pass_is_its_own_branch():
    pipe = _pipeline("sd3")
    kwargs = kwargs_of(pipe, num_inference_steps=3, skip_guidance_layers=[0], skip_layer_guidance_stop=1.0)
    seen = steps_seen(pipe, [PROMPT], **kwargs)
    assert seen == [(0, ("cond", "uncond")), (1, ("cond", "uncond")), (1, ("skip_layer",)), (2, ("cond", "uncond")), (2, ("skip_layer",))]
    cache = record(pipe, "all", PROMPT, generator=generator(0), **kwargs)
    later = text_layer_names(pipe)[1]  # after the skipped block 0, so its text differs in that pass
    for branch in ("cond", "uncond", "skip_layer"):
        assert cache.entries[later, 1, branch].key.shape[0] == 1
    assert not torch.equal(cache.entries[later, 1, "cond"].key, cache.entries[later, 1, "skip_layer"].key)
    plain = images_of(pipe(prompt=PROMPT, generator=generator(0), **kwargs))
    with tl.patch(pipe, "all", cache):
        assert torch.equal(torch.as_tensor(images_of(pipe(prompt=PROMPT, generator=generator(0), **kwargs))), torch.as_tensor(plain))


# ---- 4. Steps are counted as the scheduler counts them


@KDPM2_WARNINGS
@pytest.mark.parametrize(
    "scheduler_class, expected",
    [(KDPM2DiscreteScheduler, [0, 0, 1, 1, 2]), (PNDMScheduler, [0, 0, 1, 2])],
    ids=["kdpm2", "pndm-plms-warmup"],
)
def test_step_index_follows_the_scheduler(scheduler_class, expected):
    pipe = with_scheduler(_pipeline("sd15"), scheduler_class)
    if scheduler_class is PNDMScheduler:
        pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)  # SD 1.5's setting
    steps = [step for step, _ in steps_seen(pipe, [PROMPT], **kwargs_of(pipe, num_inference_steps=3))]
    assert steps == expected


@KDPM2_WARNINGS
def test_step_window_on_a_second_order_scheduler_leaves_earlier_steps_alone():
    pipe = with_scheduler(_pipeline("sd15"), KDPM2DiscreteScheduler)
    kwargs = kwargs_of(pipe, num_inference_steps=3)
    layer = text_layer_names(pipe)[0]
    predictions: dict[str, list[torch.Tensor]] = {"plain": [], "late": []}

    def keep(name):
        return lambda call, prediction: predictions[name].append(prediction.clone())

    run_with_patches(pipe, [PROMPT, OTHER], [], on_output=keep("plain"), **kwargs)
    run_with_patches(pipe, [PROMPT, OTHER], [RowPatch((layer,), source=1, row=0, patch_steps=(2, None))], on_output=keep("late"), **kwargs)
    # Steps 0 and 1 are four passes of KDPM2: all identical; the fifth (step 2) is patched.
    assert all(torch.equal(a, b) for a, b in zip(predictions["plain"][:4], predictions["late"][:4]))
    assert not torch.equal(predictions["plain"][4], predictions["late"][4])


# ---- 5. One rule for step windows


def test_step_window_rule():
    assert list(window_steps((0.25, 0.75), 6)) == [1, 2, 3]  # floor(f * n), as Prompt-to-Prompt
    assert list(window_steps((-2, None), 5)) == [3, 4]  # negative: from the end, as in Python
    assert list(window_steps((2, None), 5)) == [2, 3, 4]
    assert list(window_steps((0.0, 1.0), 3)) == [0, 1, 2]
    assert list(window_steps(None, 3)) == [0, 1, 2]
    for bad, message in [(10, r"\(10, None\)"), ((5, 2), "stops before it starts"), ((0.5, 0.25), "stops before"),
                         ((0, 1, 2), "is \\(start, stop\\)"), ((True, None), "int index"), ((0.5, 1.5), r"\[0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            check_step_window(bad)


def test_a_window_that_covers_no_step_of_the_run_is_refused():
    pipe = _pipeline("sdxl")
    with tl.patch(pipe, "all", OTHER, patch_steps=(5, None)):
        with pytest.raises(ValueError, match=r"covers no step of this 2-step run"):
            generate(pipe)
    with pytest.raises(TypeError, match="patch_steps"):
        with tl.patch(pipe, "all", OTHER, steps=(0, 1)):
            pass


# ---- 6. The fingerprint follows the weights, also offloaded ones


def test_fingerprint_reads_offloaded_weights():
    from accelerate import cpu_offload

    from textloc.fingerprint import module_fingerprint

    pipe = tiny_pipeline("sd15")
    before = module_fingerprint(pipe.unet)
    cpu_offload(pipe.unet, execution_device=torch.device("cpu"))
    assert any(p.device.type == "meta" for p in pipe.unet.parameters())
    assert module_fingerprint(pipe.unet) == before
    assert module_fingerprint(tiny_pipeline("sd15", seed=1).unet) != before
    # Remembered, but not past a change of the weights (fine-tuning writes them in place).
    trained = tiny_pipeline("sd15").unet
    assert module_fingerprint(trained) == before
    with torch.no_grad():
        next(trained.parameters()).add_(1.0)
    assert module_fingerprint(trained) != before


# ---- 7. Early stops free offloaded models; caches go to their device as they are recorded


def count_frees(pipe, monkeypatch) -> list[int]:
    calls = []
    original = pipe.maybe_free_model_hooks
    monkeypatch.setattr(pipe, "maybe_free_model_hooks", lambda: (calls.append(1), original())[1])
    return calls


def test_early_stops_free_model_hooks(monkeypatch):
    pipe = _pipeline("sdxl")
    frees = count_frees(pipe, monkeypatch)
    record(pipe, "all", OTHER, **seeded(pipe))  # cross layers: stops in the first pass
    assert len(frees) == 1
    with tl.patch(pipe, "all", OTHER):
        assert len(frees) == 2


def test_cache_is_written_to_its_device():
    pipe = _pipeline("sd3")
    cache = record(pipe, "all", OTHER, cache_device="meta", **seeded(pipe))
    assert {entry.value.device.type for entry in cache.entries.values()} == {"meta"}


# ---- 8. A prompt source costs a text encoding, not a hidden generation


def test_prompt_source_runs_one_small_pass_and_leaves_the_global_rng_alone():
    pipe = _pipeline("sdxl")
    shapes = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    try:
        with tl.patch(pipe, "all", OTHER):
            assert torch.equal(torch.get_rng_state(), rng)
    finally:
        handle.remove()
    default_side = pipe.unet.config.sample_size
    assert len(shapes) == 1 and shapes[0][-1] <= default_side


# ---- One vocabulary, clear errors


def test_engine_arguments_speak_diffusers():
    pipe = _pipeline("sd15")
    kwargs = kwargs_of(pipe)
    with pytest.raises(ValueError, match="Unknown layer 'A sign"):  # layers come before the prompt
        record(pipe, PROMPT, "all", **kwargs)
    with pytest.raises(TypeError, match="one prompt per batch row"):
        run_with_patches(pipe, PROMPT, [], **kwargs)
    with pytest.raises(TypeError, match="not seed="):
        run_with_patches(pipe, [PROMPT], [], seed=0, **kwargs)
    with pytest.raises(TypeError, match="did you mean num_inference_steps"):
        run_with_patches(pipe, [PROMPT], [], num_inference_step=3)
    # One generator is copied to every row: the same noise, whatever the generator's seed.
    images = images_of(run_with_patches(pipe, [PROMPT, PROMPT], [], generator=generator(7), **kwargs))
    assert abs(images[0] - images[1]).max() < BATCH_TOLERANCE
    assert abs(images[0] - images_of(pipe(prompt=PROMPT, generator=generator(7), **kwargs))[0]).max() < BATCH_TOLERANCE


# ---- Per-row patches in the caller's own call (a guard patches only some prompts of a batch)


def test_patch_rows_patches_only_its_rows_and_refuses_rows_outside_the_batch():
    pipe = _pipeline("sdxl")
    kwargs = kwargs_of(pipe)
    names = tuple(text_layer_names(pipe))
    cache = tl.record_text(pipe, names, OTHER, **kwargs)
    plain = images_of(pipe(prompt=[PROMPT, PROMPT], generator=[generator(0), generator(0)], **kwargs))
    with tl.patch_rows(pipe, [RowPatch(names, source=cache, row=1)]):
        mixed = images_of(pipe(prompt=[PROMPT, PROMPT], generator=[generator(0), generator(0)], **kwargs))
        with pytest.raises(ValueError, match="Patch row 1 is outside this call's batch of 1 rows"):
            pipe(prompt=PROMPT, generator=generator(0), **kwargs)
    assert abs(mixed[0] - plain[0]).max() < BATCH_TOLERANCE
    assert abs(mixed[1] - plain[1]).max() > 1e-3


def test_a_joint_block_is_joint_wherever_it_comes_from():
    # FLUX.2's attention declares no context_pre_only; its text stream still has queries of its own,
    # so each block rewrites the text. Listed as added_kv it was cached at step 0 and replayed
    # at every step: a silent wrong patch.
    from diffusers import Flux2Transformer2DModel

    model = Flux2Transformer2DModel(
        num_layers=2, num_single_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
        in_channels=16, axes_dims_rope=(4, 4, 4, 4), timestep_guidance_channels=32,
    )
    kinds = {layer.name: layer.kind for layer in tl.attention_layers(model, kind=("joint", "added_kv"))}
    assert kinds == {"transformer_blocks.0.attn": "joint", "transformer_blocks.1.attn": "joint"}
    # IF's added K/V, which read the prompt's own embeddings, stay step-independent.
    assert {layer.kind for layer in tl.attention_layers(_pipeline("deepfloyd-if"), kind=("joint", "added_kv"))} == {"added_kv"}


def test_a_model_with_no_text_layer_is_refused_not_given_an_empty_selection(monkeypatch):
    from diffusers import UNet2DModel

    from textloc import architectures
    from textloc.architectures.spec import UNET_ATTENTION, Family

    model = UNet2DModel(sample_size=8, block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    # A denoiser of no known family is refused outright: no guess at how text would reach it.
    with pytest.raises(ValueError, match="textloc has no spec for UNet2DModel"):
        tl.attention_layers(model)
    # One a spec describes, with no text-conditioned attention, lists its layers and selects none.
    monkeypatch.setattr(architectures, "FAMILIES", list(architectures.FAMILIES))
    architectures.register(Family("unconditional-unet", ("UNet2DModel",), UNET_ATTENTION))
    assert tl.attention_layers(model) and not tl.attention_layers(model, kind=("cross", "added_kv", "joint", "single"))
    for selector in ("all", "up_blocks.0", 0):
        with pytest.raises(ValueError, match="finds no text-conditioned attention layer in this UNet2DModel"):
            tl.select_layers(model, selector)