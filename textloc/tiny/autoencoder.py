"""The first stage of textloc-tiny-sd3's training: its ``AutoencoderKL``, on the rendered signs.

The transformer trains on latents, so the autoencoder is trained first and then frozen. Its loss
is L1 + MSE of the reconstruction, the letters' pixels weighted ``LETTER_WEIGHT``, plus a small KL
(``KL_WEIGHT``) that keeps the latents near a unit Gaussian without blurring them. Measured before
this code (same settings, 0.5 s/step on one thread): OCR read the word on 19% of 32 held-out
reconstructions at step 150, 81% at 300, 97% at 600, 100% at 750, colours 100%.

Like the transformer's steps, every step is a pure function of ``(seed, step)``, and the stage
checkpoints to ``autoencoder.pt`` in the run folder, so an interrupted stage resumes exactly.
Once done, the latents' mean and spread are measured and become the pipeline's ``shift_factor``
and ``scaling_factor``, so the transformer sees latents of mean 0 and standard deviation 1.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor

from textloc.tiny.data import TrainingBatch, letter_map, to_tensor, training_batch
from textloc.tiny.evaluate import heldout_examples, score
from textloc.tiny.runs import StopOnSignal, append_log, save_atomically, step_generator

CHECKPOINT_NAME = "autoencoder.pt"
#: The stage's default batch size, and its learning rate (constant).
BATCH_SIZE = 16
LR = 1e-3
# Letters are ~8% of the pixels: unweighted, the reconstructions' letters came out soft first.
LETTER_WEIGHT = 5.0
KL_WEIGHT = 1e-5
# Training batches whose latents measure the shift and scale.
STATISTICS_BATCHES = 16
# Held-out reconstructions the OCR reads when the stage ends.
CHECK_COUNT = 32


def autoencoder_loss(vae: AutoencoderKL, batch: TrainingBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"total", "reconstruction", "kl"}`` of one batch; the latents are sampled from the posterior
    with ``generator``, so the decoder learns to take the encoder's spread too."""
    device = vae.device
    images, ink = batch.images.to(device), batch.ink.to(device)
    posterior = vae.encode(images).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator).to(device)
    reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample
    error = (reconstruction - images).abs() + (reconstruction - images) ** 2
    weight = 1 + (LETTER_WEIGHT - 1) * letter_map(ink, images.shape[-1])
    losses = {"reconstruction": (weight * error).mean() / weight.mean(), "kl": posterior.kl().mean()}
    losses["total"] = losses["reconstruction"] + KL_WEIGHT * losses["kl"]
    return losses


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, seed: int, batch_size: int = BATCH_SIZE) -> tuple[float, float]:
    """(shift, scale): the mean of the training images' latent means, and 1 / their spread."""
    latents = torch.cat([
        vae.encode(training_batch(seed, step, batch_size).images.to(vae.device)).latent_dist.mode()
        for step in range(STATISTICS_BATCHES)
    ])
    return latents.mean().item(), 1.0 / latents.std().item()


@torch.no_grad()
def reconstruction_scores(vae: AutoencoderKL, count: int = CHECK_COUNT) -> dict[str, float]:
    """The OCR and colour judge's scores on the reconstructions of ``count`` held-out signs."""
    examples = heldout_examples(count)
    images = to_tensor([example.image for example in examples]).to(vae.device)
    reconstructions = vae.decode(vae.encode(images).latent_dist.mode()).sample
    return score(VaeImageProcessor().postprocess(reconstructions.cpu(), output_type="pil"), examples)


def train_autoencoder(
    vae: AutoencoderKL,
    run_dir: Path,
    seed: int,
    stop: StopOnSignal,
    steps: int,
    batch_size: int = BATCH_SIZE,
    check_count: int = CHECK_COUNT,
    checkpoint_every: int = 100,
) -> dict[str, float] | None:
    """Train ``vae`` for ``steps`` steps (or what is left of them in ``run_dir``), then measure it on
    ``check_count`` held-out reconstructions.

    Returns the latent statistics and the reconstruction scores, or ``None`` when ``stop`` was
    requested first (the stage is saved; calling again continues it).
    """
    path = run_dir / CHECKPOINT_NAME
    optimizer = torch.optim.AdamW(vae.parameters(), lr=LR, weight_decay=0.0)
    start = 0
    if path.exists():
        checkpoint = torch.load(path, weights_only=False, map_location="cpu")
        vae.load_state_dict(checkpoint["vae"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start = checkpoint["step"]

    def save(step: int) -> None:
        save_atomically({"vae": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, path)

    vae.train()
    started = time.time()
    for step in range(start, steps):
        losses = autoencoder_loss(vae, training_batch(seed, step, batch_size), step_generator(seed, step))
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        done = step + 1
        if done % 10 == 0:
            seconds = (time.time() - started) / (done - start)
            append_log(run_dir, {"autoencoder": {"step": done, **{name: value.item() for name, value in losses.items()},
                                                 "s_per_step": seconds}})
        if done % checkpoint_every == 0 or stop.requested or done == steps:
            save(done)
        if stop.requested:
            return None
    vae.eval()
    shift, scale = latent_statistics(vae, seed, batch_size)
    record = {"steps": steps, "latent_shift": shift, "latent_scale": scale, **reconstruction_scores(vae, check_count)}
    append_log(run_dir, {"autoencoder_done": record})
    return record
