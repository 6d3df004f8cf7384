"""The one layer resolver that edit, guard and finetune share.

Every use takes its layers the same way:

- a :class:`~textloc.localization.Localization`, in memory or the folder it was saved to: its selected
  layers, refused on a model whose weights differ from the ones it was found on;
- ``"preset"``: the layers the paper found for SDXL base 1.0, SD3-medium or DeepFloyd IF-I-XL,
  recognised by the pipeline's model id or its denoiser's config (:data:`PRESETS`), and for
  textloc's embedded models the layers their committed localization selected;
- any layer selector :func:`textloc.engine.select_layers` takes: a full name, a glob, a forward
  index, a list of these, or ``"all"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from diffusers import SD3Transformer2DModel, UNet2DConditionModel

from textloc.architectures import deepfloyd_if, sd3, sdxl
from textloc.architectures.spec import ATTENTION_TEXT_KINDS
from textloc.engine import AttentionLayer, LayerSelector, attention_layers, check_step_window, denoiser, select_layers
from textloc.engine.choices import DEFAULT_START_STEP
from textloc.localization.report import REPORT_FILE, Localization
from textloc.models import embedded_model_of
from textloc.fingerprint import weights_fingerprint

PAPER = "Staniszewski et al., Precise Parameter Localization for Textual Generation in Diffusion Models, ICLR 2025 (arXiv 2502.09935)"


@dataclass(frozen=True)
class Preset:
    """Layers the paper localized in one published model, and the settings it used them with.

    ``denoiser_class`` and ``config`` are the published denoiser's: building them on the meta
    device checks the layer names without a download. A pipeline whose denoiser has that class
    and the ``identity`` config values is that model, whatever folder it was loaded from. ``settings`` are
    the generation settings the layers were found and used with; ``start_step`` the step from
    which the reference code patched an edit.
    """

    model: str
    model_ids: tuple[str, ...]
    denoiser_class: Callable[..., torch.nn.Module]
    config: Mapping[str, Any]
    layers: tuple[str, ...]
    num_text_layers: int  # attention layers that read the text (the pooled unit is not counted)
    settings: Mapping[str, Any]
    start_step: int
    source: str = PAPER
    notes: str = ""
    identity: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, pipe: Any) -> bool:
        """Whether ``pipe`` is this preset's model: by model id, else by its denoiser's config."""
        if getattr(pipe, "name_or_path", None) in self.model_ids:
            return True
        model = denoiser(pipe)
        if type(model).__name__ != self.denoiser_class.__name__:
            return False
        config = getattr(model, "config", {})
        return all(_same(config.get(key), value) for key, value in self.identity.items())

    def build_on_meta(self) -> torch.nn.Module:
        """The published denoiser, shapes only (no weights, no download)."""
        with torch.device("meta"):
            return self.denoiser_class(**self.config)


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, (tuple, list)):
        return isinstance(value, (tuple, list)) and list(value) == list(expected)
    return value == expected


SDXL_BASE = Preset(
    model="SDXL base 1.0",
    model_ids=("stabilityai/stable-diffusion-xl-base-1.0",),
    denoiser_class=UNet2DConditionModel,
    config=sdxl.SDXL_BASE.config,
    identity={"block_out_channels": (320, 640, 1280), "transformer_layers_per_block": (1, 2, 10), "cross_attention_dim": 2048},
    layers=tuple(f"up_blocks.0.attentions.2.transformer_blocks.{i}.attn2" for i in (1, 2, 3)),
    num_text_layers=70,
    settings={"num_inference_steps": 50, "guidance_scale": 5.0},
    start_step=4,
    notes="forward order 55-57 of 70 cross-attention layers; 15.7M K/V parameters (0.61%)",
)

SD3_MEDIUM = Preset(
    model="SD3-medium",
    model_ids=("stabilityai/stable-diffusion-3-medium-diffusers",),
    denoiser_class=SD3Transformer2DModel,
    config=sd3.SD3_MEDIUM.config,
    # SD3.5-medium also has 24 blocks of width 1536, but dual-attention layers and QK norm.
    identity={"num_layers": 24, "caption_projection_dim": 1536, "dual_attention_layers": (), "qk_norm": None},
    layers=("transformer_blocks.10.attn",),
    num_text_layers=24,
    settings={"num_inference_steps": 28, "guidance_scale": 7.0},
    start_step=2,
    notes="block 10 of 24 joint blocks; 4.7M text K/V parameters (0.23%)",
)

IF_I_XL = Preset(
    model="DeepFloyd IF-I-XL v1.0",
    model_ids=("DeepFloyd/IF-I-XL-v1.0",),
    denoiser_class=UNet2DConditionModel,
    config=deepfloyd_if.IF_I_XL.config,  # its source says how it was inferred
    identity={"block_out_channels": (704, 1408, 2112, 2816), "encoder_hid_dim": 4096, "cross_attention_dim": 2816},
    layers=("up_blocks.1.attentions.3",),
    num_text_layers=22,
    settings={"num_inference_steps": 50, "guidance_scale": 7.0},
    start_step=2,
    notes=(
        "forward order 17 of 22; its text K/V (add_k_proj, add_v_proj) hold 11.9M parameters (0.28%); "
        "the paper's 8.9M (0.21%) are that layer's image to_k/to_v"
    ),
)

PRESETS: tuple[Preset, ...] = (SDXL_BASE, SD3_MEDIUM, IF_I_XL)

LayerSource = Union[LayerSelector, Localization, os.PathLike]


def find_preset(pipe: Any) -> Preset:
    """The preset of ``pipe``'s model; a clear error naming the models that have one."""
    embedded = embedded_model_of(pipe)
    if embedded is not None and embedded.text_layers:
        network = denoiser(pipe)
        return Preset(
            model=embedded.name, model_ids=(embedded.name,), denoiser_class=type(network), config=dict(network.config),
            layers=embedded.text_layers, num_text_layers=len(attention_layers(pipe, ATTENTION_TEXT_KINDS)), settings=embedded.settings,
            start_step=DEFAULT_START_STEP if embedded.start_step is None else embedded.start_step, source=f"textloc's localization of {embedded.name}",
        )
    for preset in PRESETS:
        if preset.matches(pipe):
            found = len(attention_layers(pipe, ATTENTION_TEXT_KINDS))
            if found != preset.num_text_layers:
                raise ValueError(
                    f"This pipeline looks like {preset.model} but has {found} text layers, not "
                    f"{preset.num_text_layers}: its preset layers would not be the paper's."
                )
            return preset
    known = ", ".join([*(preset.model for preset in PRESETS), "textloc's embedded models"])
    raise ValueError(
        f"No preset for {getattr(pipe, 'name_or_path', None) or type(pipe).__name__}: presets exist for "
        f"{known}. Localize this model (`tl.localize`) and pass the result, or name the layers."
    )


def resolve_layers(pipe: Any, layers: LayerSource) -> list[AttentionLayer]:
    """The text layers ``layers`` names in ``pipe``, in forward order (see the module docstring)."""
    if isinstance(layers, Localization):
        return _from_localization(pipe, layers, "this localization")
    if isinstance(layers, os.PathLike) or isinstance(layers, str) and _names_a_folder(layers):
        folder = Path(layers).expanduser()
        if not folder.is_dir():
            raise ValueError(f"No folder {os.fspath(layers)!r}: give the folder a localization was saved to ({REPORT_FILE} inside), 'preset', or layer names.")
        if not (folder / REPORT_FILE).is_file():
            raise ValueError(f"{folder} holds no {REPORT_FILE}: give the folder a localization was saved to.")
        return _from_localization(pipe, Localization.load(folder), str(folder))
    if isinstance(layers, str) and layers == "preset":
        return select_layers(pipe, list(find_preset(pipe).layers))
    return select_layers(pipe, layers)


def _names_a_folder(text: str) -> bool:
    """Whether a layer source string is a path: a folder holding a localization, or anything with a
    path separator (no module name holds one) or starting like a relative or home path."""
    return "/" in text or os.sep in text or text.startswith((".", "~")) or (Path(text) / REPORT_FILE).is_file()


def _from_localization(pipe: Any, localization: Localization, where: str) -> list[AttentionLayer]:
    recorded = localization.settings.get("weights")
    if recorded is not None and recorded != weights_fingerprint(pipe):
        raise ValueError(
            f"{where} was found on other weights ({localization.model}, fingerprint {recorded}); this "
            f"pipeline's are {weights_fingerprint(pipe)}. Localize this model, or name its layers."
        )
    if not localization.selected:
        raise ValueError(f"{where} selected no layer: nothing reached its threshold. Name the layers instead.")
    return select_layers(pipe, localization.selected)


def start_step_for(pipe: Any, layers: LayerSource, start_step: int | float | None) -> int | float:
    """The step an edit or guard of ``layers`` starts patching from: ``start_step`` if given, else
    the preset's with ``layers="preset"``, else :data:`~textloc.engine.choices.DEFAULT_START_STEP`;
    a clear error unless it starts a window that can cover some step."""
    if start_step is None:
        preset = isinstance(layers, str) and layers == "preset"
        start_step = find_preset(pipe).start_step if preset else DEFAULT_START_STEP
    check_step_window((start_step, None))
    return start_step
