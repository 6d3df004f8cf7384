"""LoRA fine-tuning of only the layers that write text: train (or edit in closed form), save and load as plain diffusers does.

Each public name is imported from its module when first used (:mod:`textloc.lazy`): the command
line builds its options from :class:`TrainConfig` without importing torch.
"""

from __future__ import annotations

from textloc.lazy import lazy_namespace

#: Each public name and the module it comes from.
_EXPORTS: dict[str, str] = {
    "TrainConfig": "textloc.finetune.config",
    **dict.fromkeys(("ClosedFormEdit", "closed_form_edit"), "textloc.finetune.closed_form"),
    **dict.fromkeys(("ImageFolder", "RenderedSigns", "RowsDataset"), "textloc.finetune.data"),
    "load_lora": "textloc.finetune.lora",
    **dict.fromkeys(("JOINT_STREAMS", "lora_targets"), "textloc.finetune.targets"),
    **dict.fromkeys(("TrainedLora", "train_lora"), "textloc.finetune.train"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)
