"""Fine-tune: a LoRA on textloc-tiny's text layers only, every other weight frozen.

The LoRA goes on the projections of the preset's three cross-attention layers and trains on signs
the renderer draws; it is saved as diffusers saves a LoRA, so plain ``pipe.load_lora_weights``
reads it back. Four steps of two signs change little: ``textloc finetune --max-train-steps 150
--batch-size 16`` is the run of the fine-tuning guide.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import textloc as tl
from textloc.finetune import RenderedSigns


def main(out: str | Path = "runs/examples/finetune") -> tl.TrainedLora:
    """Train into ``out`` (``pytorch_lora_weights.safetensors``, ``training.json``), then load the
    LoRA into a fresh pipeline and draw one sign with it (``sample.png``)."""
    out = Path(out)
    pipe = tl.load_pipeline("textloc-tiny")
    lora = tl.train_lora(pipe, "preset", RenderedSigns(), tl.TrainConfig(steps=4, batch_size=2, lr=1e-3),
                         output_dir=out, progress=False)
    print(lora.summary())

    plain = tl.load_pipeline("textloc-tiny")
    plain.load_lora_weights(out)  # diffusers' own loader
    image = plain('A red sign on a blue background that says "LAMP".', generator=tl.generator(0), num_inference_steps=8).images[0]
    image.save(out / "sample.png")
    return lora


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default="runs/examples/finetune", help="folder to write into")
    main(parser.parse_args().out)
