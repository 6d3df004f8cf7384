"""textloc-tiny-flux: its architecture trained as FluxPipeline samples it, the shared trainer on
it (resuming to the same result), its export as a folder plain diffusers loads, and the engine's
view of its double- and single-stream layers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, FluxPipeline

from conftest import stop_trainer_at
import textloc as tl
from textloc.pipelines import model_image_side
import textloc.tiny.train as tiny_train
from textloc.models import TEXTLOC_TINY_FLUX, TEXTLOC_TINY_SD3, named_models
from textloc.tiny import model_flux
from textloc.tiny.architectures import LatentFlux, architecture_of
from textloc.tiny.data import IMAGE_SIZE, training_batch
from textloc.tiny.model import MAX_TOKENS, EncodedCaptions
from textloc.tiny.model_flux import TEST_FLUX_CONFIG, build_pipeline, encode
from textloc.tiny.recipe import Probes, Recipe, glyph_features, training_loss
from textloc.tiny.train import CHECKPOINT_NAME, STATE_NAME, export, parse_args, train

ARCH = LatentFlux()
FAST = ["--model", "textloc-tiny-flux", "--config", "test", "--batch-size", "2", "--eval-count", "2", "--threads", "1",
        "--steps", "4", "--eval-every", "100", "--checkpoint-every", "100"]


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def test_training_encoding_matches_the_pipelines() -> None:
    pipe = build_pipeline(TEST_FLUX_CONFIG)
    captions = ['  A Red sign on a blue background that says "LAMP".', ""]
    with torch.no_grad():
        states, pooled, text_ids = pipe.encode_prompt(captions, max_sequence_length=MAX_TOKENS)
        ours = encode(pipe, captions)
    torch.testing.assert_close(ours.states, states, rtol=0, atol=0)
    torch.testing.assert_close(ours.pooled, pooled, rtol=0, atol=0)
    assert ours.states.shape == (2, MAX_TOKENS, pipe.transformer.config.joint_attention_dim)
    assert not text_ids.any()  # every text token sits at rotary position 0


def test_training_prediction_is_the_transformer_call_the_pipeline_makes() -> None:
    # Packing, positions and the timestep's scale (FluxPipeline passes sigma = timestep / 1000),
    # read from the pipeline's own call rather than restated.
    pipe = build_pipeline(TEST_FLUX_CONFIG)
    calls, outputs = [], []
    pipe.transformer.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    pipe.transformer.register_forward_hook(lambda module, args, kwargs, output: outputs.append(output[0]),
                                           with_kwargs=True)
    settings = {**TEXTLOC_TINY_FLUX.settings, "num_inference_steps": 2, "output_type": "latent"}
    pipe(prompt=['A sign that says "CAT".'], generator=torch.Generator().manual_seed(0), **settings)
    call = calls[-1]  # the unconditional pass of the second step
    scheduler = pipe.scheduler
    timestep = scheduler.timesteps[-1].repeat(1)
    torch.testing.assert_close(call["timestep"], timestep / 1000, rtol=0, atol=0)
    noisy = model_flux.unpack(call["hidden_states"], IMAGE_SIZE, IMAGE_SIZE, pipe.vae_scale_factor)
    assert noisy.shape == (1, *ARCH.sample_shape(pipe))
    text = EncodedCaptions(call["encoder_hidden_states"], None, None, call["pooled_projections"])
    with torch.no_grad():
        prediction = ARCH.predict(pipe, noisy, timestep, text)
    torch.testing.assert_close(model_flux.pack(prediction), outputs[-1], rtol=0, atol=0)


def test_sampler_settings_are_what_the_model_is_trained_for() -> None:
    pipe = build_pipeline(TEST_FLUX_CONFIG)
    settings = TEXTLOC_TINY_FLUX.settings
    assert settings["max_sequence_length"] == MAX_TOKENS
    assert settings["height"] == settings["width"] == IMAGE_SIZE
    # No guidance embedding, so guidance is true CFG against the empty caption training drops to.
    assert not pipe.transformer.config.guidance_embeds
    assert settings["true_cfg_scale"] > 1 and settings["negative_prompt"] == ""
    # The static shift 3 ignores the mu FluxPipeline passes: its sigmas are SD3-tiny's shift-3 ones.
    sigmas = [1.0, 0.5, 0.25]
    pipe.scheduler.set_timesteps(sigmas=sigmas, mu=0.47)
    expected = torch.tensor([3 * s / (1 + 2 * s) for s in sigmas] + [0.0])
    torch.testing.assert_close(pipe.scheduler.sigmas, expected)


def test_full_size_model_reuses_the_sd3_autoencoder_frozen_and_fits_the_size_limit(tmp_path: Path) -> None:
    pipe = build_pipeline(ARCH.default_config)
    assert len(pipe.transformer.transformer_blocks) >= 4 and len(pipe.transformer.single_transformer_blocks) >= 8
    sd3_vae = AutoencoderKL.from_pretrained(TEXTLOC_TINY_SD3.folder / "vae")
    assert (pipe.vae.config.shift_factor, pipe.vae.config.scaling_factor) == (
        sd3_vae.config.shift_factor, sd3_vae.config.scaling_factor)
    for key, value in sd3_vae.state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[key], value), key
    assert not any(p.requires_grad for p in pipe.vae.parameters()) and not pipe.vae.training
    export(pipe, tmp_path / "weights", {"step": 0})
    size = sum(f.stat().st_size for f in (tmp_path / "weights").rglob("*") if f.is_file())
    assert size <= 25 * 2**20


def test_a_changed_autoencoder_is_refused() -> None:
    with pytest.raises(ValueError, match="not the one this config was made with"):
        model_flux.build_autoencoder(replace(ARCH.default_config, latent_scale=1.0))


def test_probes_read_the_t5_states_and_the_image_tokens_after_half_the_double_blocks() -> None:
    pipe = build_pipeline(replace(TEST_FLUX_CONFIG, double_layers=4))
    assert architecture_of(pipe) is architecture_of(pipe.transformer) is tiny_train.ARCHITECTURES["textloc-tiny-flux"]
    assert glyph_features(pipe.transformer) is pipe.transformer.transformer_blocks[1]
    seen = []
    glyph_features(pipe.transformer).register_forward_hook(lambda module, args, output: seen.append(ARCH.glyph_map(output)))
    text = encode(pipe, ["a"])
    ARCH.predict(pipe, torch.zeros(1, 4, 16, 16), torch.tensor([999.0]), text)
    probes = Probes(pipe)
    assert seen[0].shape == (1, probes.glyph.in_channels, 8, 8)  # 16x16 latents in 2x2 tokens
    assert probes.byte.in_features == text.states.shape[-1] == pipe.text_encoder_2.config.d_model


def test_training_loss_is_finite_and_trains_both_text_encoders() -> None:
    pipe = build_pipeline(TEST_FLUX_CONFIG)
    recipe = Recipe(0.5, 5.0, 0.1, "slots", 0.1)
    losses = training_loss(pipe, ARCH.training_scheduler(), training_batch(0, 0, 4),
                                      torch.Generator().manual_seed(0), recipe, Probes(pipe))
    assert all(torch.isfinite(value) for value in losses.values())
    losses["total"].backward()
    for name, module in ARCH.trained(pipe).items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name
    assert all(p.grad is None for p in pipe.vae.parameters())


def test_trainer_interrupted_resumes_to_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rapidocr")
    straight = train(parse_args([*FAST, "--run-dir", str(tmp_path / "a"), "--export-dir", str(tmp_path / "wa")]))
    assert straight["step"] == 4 and "autoencoder" not in straight  # no autoencoder stage: it is reused

    interrupted = [*FAST, "--run-dir", str(tmp_path / "b"), "--export-dir", str(tmp_path / "wb")]
    stop_trainer_at(monkeypatch, tiny_train, 2)
    assert train(parse_args(interrupted))["step"] == 3
    assert train(parse_args([*interrupted, "--resume"]))["step"] == 4

    expected = torch.load(tmp_path / "a" / CHECKPOINT_NAME, weights_only=False)
    actual = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=False)
    assert set(expected["model"]) == {"transformer", "text_encoder", "text_encoder_2", "vae"}
    for part in ("model", "ema"):
        for component, weights in expected[part].items():
            for key, value in weights.items():
                assert torch.equal(actual[part][component][key], value), f"{part} {component}.{key}"
    assert isinstance(FluxPipeline.from_pretrained(tmp_path / "wb"), FluxPipeline)


def test_export_is_a_stock_flux_folder_whose_layers_the_engine_lists(tmp_path: Path) -> None:
    pipe = build_pipeline(TEST_FLUX_CONFIG)
    export(pipe, tmp_path / "weights", {"step": 0})
    loaded = FluxPipeline.from_pretrained(tmp_path / "weights")
    assert loaded.transformer.dtype == loaded.text_encoder_2.dtype == loaded.vae.dtype == torch.float32
    for name in ARCH.half_precision:  # stored in fp16: equal up to its rounding
        for key, value in getattr(pipe, name).state_dict().items():
            torch.testing.assert_close(getattr(loaded, name).state_dict()[key], value.half().float(), rtol=0, atol=0)
    settings = {**TEXTLOC_TINY_FLUX.settings, "num_inference_steps": 2}
    assert loaded('A sign that says "CAT".', **settings).images[0].size == (IMAGE_SIZE, IMAGE_SIZE)
    assert (tmp_path / "weights" / STATE_NAME).exists()
    assert isinstance(ARCH.load(tmp_path / "weights"), FluxPipeline)  # how the trainer resumes from it

    kinds = {layer.name: layer.kind for layer in tl.attention_layers(loaded)}
    double, single = TEST_FLUX_CONFIG.double_layers, TEST_FLUX_CONFIG.single_layers
    assert kinds == {**{f"transformer_blocks.{i}.attn": "joint" for i in range(double)},
                     **{f"single_transformer_blocks.{i}.attn": "single" for i in range(single)},
                     "time_text_embed.text_embedder": "pooled"}


def test_its_export_loads_by_name_and_as_a_stock_flux_pipeline_from_its_folder() -> None:
    assert named_models()[TEXTLOC_TINY_FLUX.name] is TEXTLOC_TINY_FLUX  # in the registry: it met the bar
    assert isinstance(tl.load_pipeline(TEXTLOC_TINY_FLUX.name), FluxPipeline)
    # Its size, where edit_image and train_lora default to it: its own 64 pixels, not FluxPipeline's 512.
    assert model_image_side(tl.load_pipeline(TEXTLOC_TINY_FLUX.name)) == TEXTLOC_TINY_FLUX.settings["height"] == 64
    pipe = FluxPipeline.from_pretrained(TEXTLOC_TINY_FLUX.folder)  # plain diffusers, no textloc
    assert isinstance(pipe, FluxPipeline) and len(pipe.transformer.single_transformer_blocks) >= 8
