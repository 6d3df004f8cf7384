"""LoRA fine-tuning of only the layers that write text: train, save and load as plain diffusers does."""

from textloc.finetune.config import TrainConfig
from textloc.finetune.data import ImageFolder, RenderedSigns, RowsDataset
from textloc.finetune.lora import load_lora
from textloc.finetune.targets import JOINT_STREAMS, lora_targets
from textloc.finetune.train import TrainedLora, train_lora

__all__ = ["ImageFolder", "JOINT_STREAMS", "RenderedSigns", "RowsDataset", "TrainConfig", "TrainedLora", "load_lora", "lora_targets", "train_lora"]
