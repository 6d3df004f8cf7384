"""Put a LoRA on the denoiser, and save or load it the way plain diffusers does.

Saved with the pipeline class's own ``save_lora_weights`` (``pytorch_lora_weights.safetensors``
with the adapter's config as metadata), so ``pipe.load_lora_weights(folder)`` loads it in any
pipeline that has a LoRA loader: SD, SDXL, SD3, FLUX, IF, Sana. PixArt's pipelines have none, and
Kandinsky 3's has one its U-Net cannot serve (no ``load_lora_adapter``); for them the folder also
holds peft's ``adapter_config.json`` and :func:`load_lora` injects the adapter with peft directly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from diffusers.utils.peft_utils import set_adapter_layers
from safetensors.torch import load_file, save_file

from textloc.engine import denoiser
from textloc.fingerprint import weights_fingerprint

LORA_WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_NAME = "default"  # diffusers' add_adapter() name
#: What train_lora records beside the weights: settings, the base weights' fingerprint, history.
TRAINING_FILE = "training.json"

logger = logging.getLogger(__name__)


def add_lora(pipe: Any, targets: Sequence[str], rank: int, alpha: float | None, seed: int) -> LoraConfig:
    """Add a LoRA of ``rank`` on the ``targets`` (full module paths) of ``pipe``'s denoiser; only it trains.

    ``alpha`` defaults to ``rank`` (scale 1), as in the paper's code. The down-projections start
    Gaussian from ``seed`` (the global RNG is left as it was), the up-projections at zero, so the
    model starts exactly where it was.
    """
    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, init_lora_weights="gaussian", target_modules=list(targets))
    model = denoiser(pipe)
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(model, "add_adapter"):
            model.add_adapter(config, adapter_name=ADAPTER_NAME)
        else:  # PixArt's transformer has no diffusers adapter API
            inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    return config


def lora_parameters(pipe: Any) -> list[torch.nn.Parameter]:
    """The LoRA's parameters: the only ones that train."""
    return [parameter for name, parameter in denoiser(pipe).named_parameters() if "lora_" in name]


@contextlib.contextmanager
def lora_disabled(model: torch.nn.Module) -> Iterator[None]:
    """``model`` as it was before its LoRA, for the span of the block (diffusers' switch of peft's layers, off then on)."""
    set_adapter_layers(model, enabled=False)
    try:
        yield
    finally:
        set_adapter_layers(model, enabled=True)


def lora_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """The LoRA's weights, under peft's names (what a checkpoint stores)."""
    return get_peft_model_state_dict(denoiser(pipe), adapter_name=ADAPTER_NAME)


def set_lora_state_dict(pipe: Any, state: dict[str, torch.Tensor]) -> None:
    """Load weights saved by :func:`lora_state_dict` into the LoRA :func:`add_lora` put on ``pipe``."""
    result = set_peft_model_state_dict(denoiser(pipe), state, adapter_name=ADAPTER_NAME)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"These LoRA weights do not fit this model's adapter: {', '.join(sorted(unexpected)[:3])}...")


def save_lora(pipe: Any, directory: str | os.PathLike, config: LoraConfig) -> Path:
    """Save the LoRA to ``directory/pytorch_lora_weights.safetensors``, loadable by ``pipe.load_lora_weights``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # peft's key names, which every diffusers LoRA loader reads; diffusers' older "lora.down/up"
    # names cover to_q/to_k/to_v/to_out but not IF's add_k_proj/add_v_proj, and a file mixing
    # both loads only half.
    state = lora_state_dict(pipe)
    metadata = config.to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    component = _component(pipe)
    if _diffusers_loads(pipe):
        type(pipe).save_lora_weights(directory, **{f"{component}_lora_layers": state, f"{component}_lora_adapter_metadata": metadata})
    else:
        # Keys under the component's name, as diffusers' own LoRA files have them.
        save_file({f"{component}.{key}": value.contiguous() for key, value in state.items()}, directory / LORA_WEIGHTS_FILE)
        (directory / ADAPTER_CONFIG_FILE).write_text(json.dumps(metadata, indent=2, default=list))
    # diffusers writes the file through a private temporary one (mode 0600): give it the mode
    # every other output gets, so whoever may read the folder may read the weights.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory / LORA_WEIGHTS_FILE, 0o666 & ~umask)
    return directory / LORA_WEIGHTS_FILE


def load_lora(pipe: Any, directory: str | os.PathLike, *, other_weights: bool = False) -> None:
    """Load a LoRA that :func:`save_lora` (or :func:`textloc.finetune.train_lora`) wrote into ``pipe``.

    Pipelines with a LoRA loader use it (``pipe.load_lora_weights``); PixArt has none, so its
    transformer gets the peft adapter directly, with the same result. A LoRA that ``train_lora``
    trained on other weights (its ``training.json`` records their fingerprint) is refused unless
    ``other_weights=True`` says that is meant; one whose keys match no module of this model is
    always refused (diffusers would load nothing and only log it).
    """
    directory = Path(directory)
    if not (directory / LORA_WEIGHTS_FILE).is_file():
        raise ValueError(f"{directory} holds no {LORA_WEIGHTS_FILE}: give the folder train_lora wrote.")
    _check_trained_on(pipe, directory, other_weights)
    before = len(lora_parameters(pipe))
    _load(pipe, directory)
    if len(lora_parameters(pipe)) == before:
        raise ValueError(
            f"The LoRA in {directory} names no module of this {type(pipe).__name__}'s {type(denoiser(pipe)).__name__}: "
            "it was trained for another model."
        )


def _check_trained_on(pipe: Any, directory: Path, other_weights: bool) -> None:
    """Refuse a LoRA trained on other weights than ``pipe``'s, unless ``other_weights``."""
    record = directory / TRAINING_FILE
    if other_weights or not record.is_file():
        return
    trained = json.loads(record.read_text())
    recorded, here = trained.get("weights"), weights_fingerprint(pipe)
    if recorded is not None and recorded != here:
        raise ValueError(
            f"The LoRA in {directory} was trained on other weights ({trained.get('pipeline')}, fingerprint {recorded}); "
            f"this pipeline's are {here}. Load the model it was trained on, or pass other_weights=True "
            "(--lora-on-other-weights) if applying it elsewhere is meant."
        )


def _component(pipe: Any) -> str:
    return "unet" if hasattr(pipe, "unet") else "transformer"


def _diffusers_loads(pipe: Any) -> bool:
    """Whether diffusers' own loader reads a LoRA into ``pipe``: the pipeline has one (PixArt's has
    none), and its denoiser takes adapters (Kandinsky 3's pipeline has one, but its U-Net has no
    ``load_lora_adapter``, so ``load_lora_weights`` fails there)."""
    return hasattr(pipe, "load_lora_weights") and hasattr(denoiser(pipe), "load_lora_adapter")


def _load(pipe: Any, directory: Path) -> None:
    if _diffusers_loads(pipe):
        pipe.load_lora_weights(directory)
        return
    component = _component(pipe)
    logger.info("diffusers loads no LoRA into %s: loading it into its %s with peft.", type(pipe).__name__, component)
    config = LoraConfig(**json.loads((directory / ADAPTER_CONFIG_FILE).read_text()))
    model = denoiser(pipe)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    state = load_file(directory / LORA_WEIGHTS_FILE)
    set_peft_model_state_dict(model, {key.removeprefix(f"{component}."): value for key, value in state.items()}, adapter_name=ADAPTER_NAME)
