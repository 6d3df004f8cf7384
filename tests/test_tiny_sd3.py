"""textloc-tiny-sd3: its architecture, the shared trainer on it (resuming to the same result), and
its export as a folder that plain diffusers loads."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from conftest import stop_trainer_at
import textloc.tiny.autoencoder as tiny_autoencoder
import textloc.tiny.train as tiny_train
from textloc.tiny.architectures import HIGH_NOISE_FROM, LatentSD3, architecture_of
from textloc.tiny.data import training_batch
from textloc.tiny.model_sd3 import (
    TEST_SD3_CONFIG,
    TinySD3Config,
    build_pipeline,
    encode,
)
from textloc.tiny.recipe import HIGH_NOISE_SHARE, Probes, Recipe, glyph_features, training_loss
from textloc.tiny.train import CHECKPOINT_NAME, STATE_NAME, export, parse_args, train

ARCH = LatentSD3()
# A few steps of each stage, tiny batches, two held-out captions per check.
FAST = ["--model", "textloc-tiny-sd3", "--config", "test", "--batch-size", "2", "--eval-count", "2", "--threads", "1",
        "--autoencoder-steps", "3", "--steps", "4", "--eval-every", "100", "--checkpoint-every", "100"]


def test_training_encoding_matches_the_pipelines() -> None:
    pipe = build_pipeline(TEST_SD3_CONFIG)
    captions = ['  A Red sign on a blue background that says "LAMP".', ""]
    with torch.no_grad():
        states, negative, pooled, negative_pooled = pipe.encode_prompt(
            captions[:1], None, None, do_classifier_free_guidance=True, max_sequence_length=0)
        ours = encode(pipe, captions)
    torch.testing.assert_close(ours.states, torch.cat([states, negative]), rtol=0, atol=0)
    # The pooled projection of a batch of two may differ from two of one in the last bit.
    torch.testing.assert_close(ours.pooled, torch.cat([pooled, negative_pooled]), rtol=0, atol=1e-6)
    assert ours.states.shape == (2, 77, pipe.transformer.config.joint_attention_dim)


def test_training_target_is_what_the_shipped_sampler_integrates() -> None:
    # Along the straight path the training target (noise - clean) is the velocity at every sigma,
    # so the pipeline's Euler sampler fed that target must land exactly on the clean sample.
    clean, noise = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    scheduler = ARCH.training_scheduler()
    scheduler.set_timesteps(7)
    sample = noise
    for timestep in scheduler.timesteps:
        noisy, target = ARCH.noised(scheduler, clean, noise, timestep.repeat(2))
        torch.testing.assert_close(noisy, sample, rtol=0, atol=1e-5)
        sample = scheduler.step(target, timestep, sample).prev_sample
    torch.testing.assert_close(sample, clean, rtol=0, atol=1e-5)


def test_training_timesteps_are_logit_normal_with_half_at_high_noise() -> None:
    timesteps = ARCH.draw_timesteps(4000, torch.Generator().manual_seed(0), HIGH_NOISE_SHARE)
    assert 0 < timesteps.min() and timesteps.max() < 1000
    # Half redrawn from the top tenth, and ~1.4% of a logit-normal lands there anyway.
    assert 0.48 < (timesteps >= HIGH_NOISE_FROM).float().mean() < 0.54
    plain = ARCH.draw_timesteps(4000, torch.Generator().manual_seed(0), 0.0)
    assert 0.45 < (plain < 500).float().mean() < 0.55 and (plain >= HIGH_NOISE_FROM).float().mean() < 0.03


def test_probes_read_the_text_states_and_the_image_tokens_halfway() -> None:
    pipe = build_pipeline(TinySD3Config(autoencoder_channels=(8, 8, 8), joint_layers=4, attention_heads=2,
                                        attention_head_dim=8, text_width=16, text_layers=1, text_heads=2))
    assert architecture_of(pipe) is architecture_of(pipe.transformer)
    assert glyph_features(pipe.transformer) is pipe.transformer.transformer_blocks[1]
    seen = []
    glyph_features(pipe.transformer).register_forward_hook(lambda module, args, output: seen.append(ARCH.glyph_map(output)))
    text = encode(pipe, ["a"])
    ARCH.predict(pipe, torch.zeros(1, 4, 16, 16), torch.tensor([999.0]), text)
    probes = Probes(pipe)
    assert seen[0].shape == (1, probes.glyph.in_channels, 8, 8)  # 16x16 latents in 2x2 patches
    assert probes.byte.in_features == text.states.shape[-1]


def test_training_loss_weights_the_letters_latent_cells() -> None:
    pipe = build_pipeline(TEST_SD3_CONFIG)
    batch = training_batch(0, 0, 2)

    def denoising(ink: torch.Tensor, text_weight: float) -> float:
        recipe = Recipe(0.5, text_weight, 0.1, "slots", 0.1)
        with torch.no_grad():
            losses = training_loss(pipe, ARCH.training_scheduler(), replace(batch, ink=ink),
                                              torch.Generator().manual_seed(0), recipe, Probes(pipe))
        return losses["denoising"].item()

    plain = denoising(batch.ink, 1.0)
    assert denoising(torch.ones_like(batch.ink), 5.0) == pytest.approx(plain, rel=1e-5)
    assert denoising(batch.ink, 5.0) != pytest.approx(plain, rel=1e-3)


def _final(run_dir: Path) -> dict:
    return torch.load(run_dir / CHECKPOINT_NAME, weights_only=False)


def test_trainer_interrupted_in_either_stage_resumes_to_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rapidocr")
    handler = signal.getsignal(signal.SIGTERM)
    straight = train(parse_args([*FAST, "--run-dir", str(tmp_path / "a"), "--export-dir", str(tmp_path / "wa")]))
    assert straight["step"] == 4 and straight["autoencoder"]["steps"] == 3

    interrupted = [*FAST, "--run-dir", str(tmp_path / "b"), "--export-dir", str(tmp_path / "wb")]
    stop_trainer_at(monkeypatch, tiny_autoencoder, 1)
    stop_trainer_at(monkeypatch, tiny_train, 2)
    stopped = train(parse_args(interrupted))
    assert "autoencoder" not in stopped and torch.load(tmp_path / "b" / "autoencoder.pt")["step"] == 2
    with pytest.raises(SystemExit, match="--resume"):  # a fresh run never overwrites a stage in progress
        train(parse_args(interrupted))
    assert train(parse_args([*interrupted, "--resume"]))["step"] == 3
    resumed = train(parse_args([*interrupted, "--resume"]))
    assert resumed["step"] == 4 and resumed["autoencoder"] == straight["autoencoder"]

    expected, actual = _final(tmp_path / "a"), _final(tmp_path / "b")
    for part in ("model", "ema"):
        for component, weights in expected[part].items():
            for key, value in weights.items():
                assert torch.equal(actual[part][component][key], value), f"{part} {component}.{key}"
    assert actual["state"]["config"] == expected["state"]["config"]
    # Leaving the trainer gives SIGTERM back to whoever had it.
    assert signal.getsignal(signal.SIGTERM) is handler


def test_export_is_a_stock_sd3_folder_plain_diffusers_loads(tmp_path: Path) -> None:
    pipe = build_pipeline(TEST_SD3_CONFIG)
    ARCH.autoencoder(pipe).register_to_config(shift_factor=0.1, scaling_factor=1.7)
    export(pipe, tmp_path / "weights", {"step": 0})
    loaded = StableDiffusion3Pipeline.from_pretrained(tmp_path / "weights", text_encoder_3=None, tokenizer_3=None)
    assert loaded.transformer.dtype == loaded.text_encoder.dtype == loaded.vae.dtype == torch.float32
    assert (loaded.vae.config.shift_factor, loaded.vae.config.scaling_factor) == (0.1, 1.7)
    for name in ARCH.half_precision:  # stored in fp16: equal up to its rounding
        for key, value in getattr(pipe, name).state_dict().items():
            torch.testing.assert_close(getattr(loaded, name).state_dict()[key], value.half().float(), rtol=0, atol=0)
    image = loaded('A sign that says "CAT".', num_inference_steps=2, max_sequence_length=0).images[0]
    assert image.size == (64, 64)
    assert (tmp_path / "weights" / STATE_NAME).exists()
    assert isinstance(ARCH.load(tmp_path / "weights"), StableDiffusion3Pipeline)  # how the trainer resumes from it


def test_full_size_model_fits_the_size_limit(tmp_path: Path) -> None:
    pipe = build_pipeline(ARCH.default_config)
    assert len(pipe.transformer.transformer_blocks) >= 8
    export(pipe, tmp_path / "weights", {"step": 0})
    size = sum(f.stat().st_size for f in (tmp_path / "weights").rglob("*") if f.is_file())
    assert size <= 25 * 2**20
