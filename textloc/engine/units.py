"""Find the attention layers of a diffusion pipeline's denoiser, name them and say what kind they are.

Kinds, by how the text reaches the layer (each family's spec says which layer is which, through
which projections: :mod:`textloc.architectures`):

- ``cross``: queries from the image, keys/values from the text only (attn2 of U-Nets, PixArt, Sana).
- ``added_kv``: the text gets its own K/V projections (``add_k_proj``/``add_v_proj``) whose output is
  concatenated with the image K/V inside one attention (DeepFloyd IF).
- ``joint``: text and image are two streams with their own projections attending jointly
  (SD3, FLUX double-stream blocks); the text stream is rewritten by every block. Kandinsky 5's
  text blocks and the cross-attention that reads them count as joint: their text K/V come from
  a text stream that the timestep modulates, so they change at every step.
- ``single``: text and image tokens share one sequence and one set of projections (FLUX
  single-stream blocks: text first); the family's spec says where the text sits.
- ``prefix``: as ``single``, text first, but block-causal: the text attends only to earlier text
  and is modulated as at t = 0, so its K/V depend on the prompt alone (Qwen-Image 2.1).
- ``pooled``: not an attention: the pooled (global) text vector that joins the timestep
  embedding of every block (SD3 and FLUX ``pooled_projections``, SDXL ``text_embeds``, IF's and
  HunyuanDiT's attention pools of their T5 tokens, HiDream ``pooled_embeds``, Kandinsky 5's CLIP
  vector). The unit is the module that reads it, named by its full path and selectable as
  ``"pooled"``; its output, one vector per row (SDXL's: the text columns of its input, beside the
  size conditioning), is recorded and patched like a layer's text K/V, all of it at once (no
  heads, no keys vs values). It is listed after the attention layers, so they keep their indices
  whether or not a model has one.
- ``self``: no text at all. Listed for completeness; never patched.
"""

from __future__ import annotations

import difflib
import fnmatch
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch

from textloc.architectures import denoiser, family_of
from textloc.architectures.spec import KINDS, POOLED, Family, Kind, TextRoute
from textloc.fingerprint import modules_of

# named_modules() follows registration order; a U-Net registers up_blocks before mid_block but runs
# the mid block first. These ranks put top-level children in the order the forward pass visits them.
_FORWARD_RANK = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}

LayerSelector = Union[str, int, "AttentionLayer", Sequence[Union[str, int, "AttentionLayer"]]]

#: The selector of a family's pooled text vector, whatever its module is called.
POOLED_SELECTOR = "pooled"
#: The selector of every attention layer that reads the text: "all" but the pooled vector.
ATTENTION_SELECTOR = "attention"


@dataclass(frozen=True)
class AttentionLayer:
    """One attention module of the denoiser, or the module that reads its pooled text vector.

    ``name`` is its full module path inside the denoiser, ``index`` its forward order among the
    text-conditioned layers (``None`` for ``self`` layers; the pooled unit comes last),
    ``num_text_kv_params`` the parameters of the projections that make its text keys and values
    (of the pooled unit: of the module that reads the vector), ``route`` how its family's spec says
    the text reaches it (``None`` for ``self`` layers).
    """

    name: str
    kind: Kind
    index: int | None
    num_heads: int
    num_text_kv_params: int
    module: torch.nn.Module = field(repr=False, compare=False)
    route: TextRoute | None = field(default=None, repr=False, compare=False)

    @property
    def text_kv_projections(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The (key, value) projection modules whose outputs carry this layer's text (one module
        twice where the projections are fused)."""
        if self.route is None:
            raise ValueError(f"{self.name} is a self-attention layer: it has no text keys or values.")
        if self.kind == "pooled":
            raise ValueError(f"{self.name} reads the pooled text vector: it has no keys or values, its output is the unit.")
        if _runs_fused_projections(self.module):
            raise ValueError(
                f"{self.name} runs fused QKV projections (fuse_qkv_projections()), where textloc's hooks on its "
                "text K/V never fire; call `pipe.unfuse_qkv_projections()` (or the denoiser's) first."
            )
        key, value = self.route.key.module(self.module), self.route.value.module(self.module)
        if key is None or value is None:
            raise ValueError(
                f"{self.name} has no {self.route.key.name}/{self.route.value.name} (fused QKV projections?); call "
                "`pipe.unfuse_qkv_projections()` (or the denoiser's) before patching."
            )
        return key, value

    @property
    def text_kv_width(self) -> int:
        """The values one text token's keys and values take together here (a fused projection's
        columns that are this layer's keys and values): what a cache keeps per token and row."""
        if self.route is None or self.kind == "pooled":
            raise ValueError(f"{self.name} has no text keys or values.")
        width = 0
        for projection in (self.route.key, self.route.value):
            columns = projection.columns(self.module)
            width += columns.stop - columns.start if columns is not None else projection.module(self.module).out_features
        return width


def _runs_fused_projections(module: torch.nn.Module) -> bool:
    """Whether ``fuse_qkv_projections()`` has the attention run ``to_qkv``/``to_kv``, keeping ``to_k``
    and ``to_v`` but never calling them: hooks on them would never fire, a patch do nothing."""
    # The older Attention class swaps in a Fused* processor (and leaves its flag set after unfusing);
    # the newer ones (FluxAttention, ...) keep their processor and read the flag.
    if type(getattr(module, "processor", None)).__name__.startswith("Fused"):
        return True
    return getattr(module, "fused_projections", False) and hasattr(type(module), "unfuse_projections")


def _is_attention(module: torch.nn.Module) -> bool:
    # Every diffusers attention module (Attention, FluxAttention, ...) carries a processor. The class
    # is asked first: hasattr on any other module goes through nn.Module.__getattr__ and raises.
    return hasattr(type(module), "set_processor") and hasattr(module, "processor")


def _num_heads(module: torch.nn.Module, route: TextRoute | None) -> int:
    """The heads of a layer's text K/V: its query heads, or fewer where heads share K/V (grouped-query
    attention, as in Lumina 2 and Krea 2): the units a head patch addresses."""
    heads = int(getattr(module, "heads", None) or getattr(module, "num_heads", 1))
    inner_dim = getattr(module, "inner_dim", None)
    # diffusers' Attention states its query width; the attentions of their own (Krea 2's) their head size.
    head_dim = inner_dim // heads if inner_dim else getattr(module, "head_dim", None)
    if route is None or not isinstance(head_dim, int) or not head_dim:
        return heads
    columns = route.key.columns(module)
    width = columns.stop - columns.start if columns is not None else route.key.module(module).out_features
    return width // head_dim


def _forward_sort_key(item: tuple[int, str]) -> tuple[int, int]:
    position, name = item
    return _FORWARD_RANK.get(name.split(".", 1)[0], 1), position


def attention_layers(pipe_or_model: object, kind: Kind | Iterable[Kind] | None = None) -> list[AttentionLayer]:
    """Every attention module of the denoiser in forward order, with full names and kinds.

    ``kind`` filters by one kind or several; ``None`` lists them all, ``self`` layers included.
    """
    model = denoiser(pipe_or_model)
    wanted = None if kind is None else ({kind} if isinstance(kind, str) else set(kind))
    for requested in wanted or ():
        if requested not in KINDS:
            raise ValueError(f"Unknown layer kind {requested!r}; kinds are {', '.join(KINDS)}.")
    family = family_of(pipe_or_model)
    modules = tuple(map(id, modules_of(model)))
    listed = _listed.get(model)
    if listed is None or listed[0] is not family or listed[1] != modules:
        listed = _listed[model] = (family, modules, _list_layers(model, family))
    return [layer for layer in listed[2] if wanted is None or layer.kind in wanted]


# Listing the layers walks the denoiser by name and asks the family's spec about every attention;
# entering tl.patch lists them each time. Kept per denoiser for as long as its modules are the
# same objects (a module replaced, wrapped or added, as a LoRA does, lists them again).
_listed: weakref.WeakKeyDictionary[torch.nn.Module, tuple[Family, tuple[int, ...], list[AttentionLayer]]] = weakref.WeakKeyDictionary()


def _list_layers(model: torch.nn.Module, family: Family) -> list[AttentionLayer]:
    """Every attention module of ``model`` and its pooled text unit, in forward order, with kinds."""
    found = [(position, name, module) for position, (name, module) in enumerate(model.named_modules()) if _is_attention(module)]
    found.sort(key=lambda item: _forward_sort_key(item[:2]))
    layers, index = [], 0
    for _, name, module in found:
        if name == family.pooled:  # an attention pool (Kandinsky 3's) is the pooled unit, listed once, below
            continue
        route = family.route(name, module)
        if route is None:
            layer_kind, params, layer_index = "self", 0, None
        else:
            layer_kind, layer_index, index = route.kind, index, index + 1
            params = sum(projection.num_params(module) for projection in (route.key, route.value))
        layers.append(AttentionLayer(name, layer_kind, layer_index, _num_heads(module, route), params, module, route))
    pooled = _pooled_unit(model, family.pooled, index)
    return layers if pooled is None else [*layers, pooled]


def _pooled_unit(model: torch.nn.Module, path: str | None, index: int) -> AttentionLayer | None:
    """The unit of the pooled text vector: the module at ``path`` that reads it, if the model has one."""
    try:
        module = None if path is None else model.get_submodule(path)
    except AttributeError:  # a checkpoint of the family without it
        module = None
    if module is None:  # a U-Net built without one sets add_embedding = None
        return None
    params = sum(p.numel() for p in module.parameters())
    return AttentionLayer(path, "pooled", index, 1, params, module, POOLED)


def select_layers(pipe_or_model: object, selector: LayerSelector = "all") -> list[AttentionLayer]:
    """Resolve a layer selector to text-conditioned layers, in forward order, without repeats.

    A selector is ``"all"``, a full module name, the name of a block that holds text-conditioned
    layers (``up_blocks.1.attentions.1``, ``transformer_blocks.3``: every one inside it), a glob
    (``up_blocks.0.*attn2``), a forward index among the text-conditioned layers, ``"pooled"`` (the
    pooled text vector's unit, where the model has one), ``"attention"`` (every attention layer that
    reads the text), an :class:`AttentionLayer`, or a list of these. ``"all"`` is every
    text-conditioned unit, the pooled one included. A name or glob that
    matches nothing, an index out of range, or a ``self`` layer raise ``ValueError``.
    """
    every = attention_layers(pipe_or_model)
    text_layers = [layer for layer in every if layer.kind != "self"]
    if not text_layers:
        # An empty selection would record an empty cache and patch nothing, without a word.
        model = denoiser(pipe_or_model)
        raise ValueError(
            f"textloc finds no text-conditioned attention layer in this {type(model).__name__} "
            f"({len(every)} attention layers, none reading the text through projections it knows): it cannot "
            "record or patch its text."
        )
    if isinstance(selector, str) and selector == "all":
        return text_layers
    if isinstance(selector, (str, int, AttentionLayer)):
        items = [selector]
    elif isinstance(selector, (list, tuple)):
        items = list(selector)
    else:
        raise TypeError(
            f"A layer selector is 'all', a name, a block, a glob, an index or a list of these, not {type(selector).__name__} "
            f"({selector!r})."
        )
    if not items:
        raise ValueError("Empty layer selection: name at least one layer, a glob, an index or 'all'.")

    by_name = {layer.name: layer for layer in every}
    chosen: dict[str, AttentionLayer] = {}
    for item in items:
        for layer in _resolve_one(item, every, text_layers, by_name):
            if layer.kind == "self":
                raise ValueError(
                    f"{layer.name} is a self-attention layer and carries no text; choose among the "
                    f"text-conditioned layers, e.g. {_nearest(layer.name, text_layers)}."
                )
            chosen[layer.name] = layer
    return sorted(chosen.values(), key=lambda layer: layer.index)


def _resolve_one(item, every, text_layers, by_name) -> list[AttentionLayer]:
    if isinstance(item, AttentionLayer):
        item = item.name
    if isinstance(item, bool) or not isinstance(item, (str, int)):
        raise ValueError(f"A layer selector is a name, a glob or an index, not {type(item).__name__}.")
    if isinstance(item, int):
        if not -len(text_layers) <= item < len(text_layers):
            raise ValueError(f"Layer index {item} is out of range: this model has {len(text_layers)} text-conditioned layers (0–{len(text_layers) - 1}).")
        return [text_layers[item]]
    if item in by_name:
        return [by_name[item]]
    if item == ATTENTION_SELECTOR:
        return [layer for layer in text_layers if layer.kind != "pooled"]
    if item == POOLED_SELECTOR:
        pooled = [layer for layer in text_layers if layer.kind == "pooled"]
        if not pooled:
            raise ValueError("This model has no pooled text vector: its text reaches the image through attention alone.")
        return pooled
    inside = [layer for layer in text_layers if layer.name.startswith(f"{item}.")]
    if inside:
        return inside
    if any(char in item for char in "*?["):
        matches = [layer for layer in text_layers if fnmatch.fnmatchcase(layer.name, item)]
        if matches:
            return matches
        raise ValueError(f"No text-conditioned layer matches {item!r}; some layers: {_nearest(item, text_layers)}.")
    raise ValueError(f"Unknown layer {item!r}. Closest real layers: {_nearest(item, text_layers)}.")


def _nearest(name: str, layers: list[AttentionLayer], count: int = 3) -> str:
    names = [layer.name for layer in layers]
    close = difflib.get_close_matches(name, names, n=count, cutoff=0.0) or names[:count]
    return ", ".join(close)


def denoiser_parameter_count(pipe_or_model: object) -> int:
    """All parameters of the denoiser, the denominator of a layer set's parameter share."""
    return sum(p.numel() for p in denoiser(pipe_or_model).parameters())
