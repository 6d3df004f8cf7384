"""What an architecture spec says, as data: how text enters each attention, how CFG runs, how the
denoiser is called, and how to build a tiny random pipeline of the family.

The engine asks a family's :class:`Family` instead of branching on pipeline classes: a new family
is one new file that builds one of these (see :mod:`textloc.architectures`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # only for annotations: the specs are data, importing them imports no torch
    import torch

    from textloc.architectures.inversion import Inversion

Kind = Literal["cross", "added_kv", "joint", "single", "refiner", "prefix", "pooled", "self"]
#: The kinds of attention layer that read the text.
ATTENTION_TEXT_KINDS: tuple[Kind, ...] = ("cross", "added_kv", "joint", "single", "refiner", "prefix")
#: Every kind of unit that carries text: the attention layers, and the pooled text vector (the
#: global text vector a family adds to the timestep embedding, which no attention carries).
TEXT_KINDS: tuple[Kind, ...] = (*ATTENTION_TEXT_KINDS, "pooled")
KINDS: tuple[Kind, ...] = (*TEXT_KINDS, "self")
# Kinds whose text K/V depend on the prompt only, not on the step or the image: a cache holds them
# once, and a prompt can be injected into them directly.
STEP_INDEPENDENT_KINDS: tuple[Kind, ...] = ("cross", "added_kv", "refiner", "prefix", "pooled")

# The CFG branch a denoiser call's rows belong to. "skip_layer" is the extra pass of SD3's
# skip-layer guidance: the conditional rows again, with some blocks skipped.
Branch = Literal["cond", "uncond", "skip_layer"]

#: Where a layer's text tokens sit in its projection's output: the projection sees the text only
#: (``"all"``), or text and image share one sequence with the text first or last.
TextPosition = Literal["all", "first", "last"]


@dataclass(frozen=True)
class Projection:
    """A linear module of an attention whose output holds text keys or values.

    ``block`` is for a fused projection (Q, K, V and more in one output): which block of
    ``attention.inner_dim`` columns is this one (FLUX.2's ``to_qkv_mlp_proj``: K is block 1).
    """

    name: str
    block: int | None = None

    def module(self, attention: torch.nn.Module) -> torch.nn.Module | None:
        module = attention
        for part in self.name.split(".") if self.name else ():
            module = getattr(module, part, None)
            if module is None:
                return None
        return module

    def columns(self, attention: torch.nn.Module) -> slice | None:
        """The output columns that are this projection's, or ``None`` for all of them."""
        if self.block is None:
            return None
        width = attention.inner_dim
        return slice(self.block * width, (self.block + 1) * width)

    def num_params(self, attention: torch.nn.Module) -> int:
        """The parameters that make this projection's columns (a fused projection's share)."""
        module = self.module(attention)
        total = sum(p.numel() for p in module.parameters())
        if self.block is None:
            return total
        return total * attention.inner_dim // module.out_features


@dataclass(frozen=True)
class TextRoute:
    """How the text reaches one attention: its kind, the projections that make its text keys and
    values, where the text sits in their output, what a LoRA on the layer trains by default
    (module paths inside the attention; a joint layer's image stream, the paper's choice), and
    ``text_mask``: the attention keyword that carries a ``(batch, text tokens)`` keep-mask which the
    pipeline leaves ``None`` when no token is padding (Qwen-Image); without one, the engine reads
    the layer's ``attention_mask``, as the pipeline built it. ``mask_text_at``: where the text sits on
    that mask's last axis: the mask is the text's alone (``"all"``), or covers a key sequence of
    image and text with the text last (NucleusMoE: ``[image, text]``, the image's always kept) or first
    (Krea 2: ``[text, image]``), or
    ``None``: the layer's mask is the family's own layout, not the text's, and is neither recorded nor
    swapped (Ideogram 4's square segment mask over ``[padding, text, image]``: a family that states
    this runs only prompts, and sources, of one token length, whose masks are the same).
    ``key_mask_dims``: the axes of the mask the engine makes where the pipeline left ``text_mask``
    ``None`` and a patch needs one: ``(batch, keys)``, or SDPA's ``(batch, 1, 1, keys)`` (4: Bria FIBO)."""

    kind: Kind
    key: Projection
    value: Projection
    text_at: TextPosition = "all"
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    text_mask: str | None = None
    mask_text_at: Literal["all", "first", "last"] | None = "all"
    key_mask_dims: int = 2

    @property
    def roles(self) -> tuple[str, ...]:
        """What the unit's hooks record and patch: ``"key"`` and ``"value"``, or the pooled vector
        alone, as its ``"value"``."""
        return ("value",) if self.kind == "pooled" else ("key", "value")


CROSS = TextRoute("cross", Projection("to_k"), Projection("to_v"))
# IF: the text reaches the layer through its own K/V projections.
ADDED_KV = TextRoute(
    "added_kv", Projection("add_k_proj"), Projection("add_v_proj"),
    lora_targets=("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"),
)
JOINT = TextRoute("joint", Projection("add_k_proj"), Projection("add_v_proj"))
# Single-stream blocks share their output projection with the MLP, so it is not the layer's.
TEXT_FIRST = TextRoute("single", Projection("to_k"), Projection("to_v"), "first", ("to_q", "to_k", "to_v"))
TEXT_LAST = TextRoute("single", Projection("to_k"), Projection("to_v"), "last", ("to_q", "to_k", "to_v"))
# A text refiner's self-attention (Lumina 2, Z-Image): text only, from the prompt alone, before the
# text joins the image.
REFINER = TextRoute("refiner", Projection("to_k"), Projection("to_v"))
# A text prefix (Qwen-Image 2.1): text first in one sequence with the image, attending only to
# earlier text and modulated as at t = 0, so its K/V depend on the prompt alone, at every layer.
PREFIX = TextRoute("prefix", Projection("to_k"), Projection("to_v"), "first")
# The pooled text vector: the unit is the module that reads it (``Family.pooled``), and its output,
# one vector per row, is what is recorded and patched; it is kept as the unit's "value" (it has no
# key). A LoRA on it trains every linear layer of that module (:mod:`textloc.finetune.targets`).
POOLED = TextRoute("pooled", Projection(""), Projection(""), lora_targets=())
#: The use a family refuses (``Family.refuses``) where no LoRA can train its pooled unit: the module
#: hands its linear layers' weights to a functional op and never calls them (HunyuanDiT's attention
#: pool), so adapters on them would never run.
POOLED_LORA = "train_lora on the pooled unit"


@dataclass(frozen=True)
class AttentionRule:
    """Attention modules of class ``attention_class`` (or a subclass) take ``route``; with ``when``,
    only those whose attribute of that name is set (not ``None``, not ``False``); with ``where``,
    only those whose full module name matches that glob (where one class serves blocks that read
    the text differently, and only the path tells them apart). ``route=None`` says they read no
    text. A family's first matching rule wins; an attention no rule matches is a self-attention."""

    attention_class: str
    route: TextRoute | None
    when: str | None = None
    where: str | None = None

    def matches(self, name: str, module: torch.nn.Module) -> bool:
        if self.attention_class not in {cls.__name__ for cls in type(module).__mro__}:
            return False
        if self.where is not None and not fnmatch.fnmatchcase(name, self.where):
            return False
        return self.when is None or getattr(module, self.when, None) not in (None, False)


@dataclass(frozen=True)
class Guidance:
    """How a family's pipelines run classifier-free guidance, and how the engine tells the branches.

    - ``batch_order``: one batch holding both branches, in this order (most pipelines).
    - ``contexts``: separate passes inside ``denoiser.cache_context(name)``: name -> branch.
    - ``call_order``: separate passes with no context: the branch of each denoiser call of a step,
      in the order the pipeline makes them (stated here, read from the pipeline's code).
    - ``distilled``: guidance-distilled, no unconditional pass at all: every row is conditional.

    Whether CFG is on comes from the pipeline: its ``do_classifier_free_guidance`` property, or the
    flag it passes to its own ``encode_prompt``; for a pipeline with neither (Kandinsky 5),
    ``enabled(pipe)``: the test its own loop makes, on its state (stated here, read from the
    pipeline's code).
    """

    batch_order: tuple[Branch, Branch] = ("uncond", "cond")
    contexts: Mapping[str, Branch] = field(default_factory=lambda: MappingProxyType({"cond": "cond", "uncond": "uncond"}))
    call_order: tuple[Branch, ...] | None = None
    distilled: bool = False
    enabled: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class DenoiserSignature:
    """The keyword names a pipeline calls its denoiser with (a U-Net takes the first two by position)."""

    sample: str = "hidden_states"
    timestep: str = "timestep"
    text: str = "encoder_hidden_states"


UNET_SIGNATURE = DenoiserSignature(sample="sample")


@dataclass(frozen=True)
class Training:
    """How ``train_lora``'s objective meets the family's denoiser, where the defaults do not fit.
    Each part is read from the family's pipeline ``__call__``, which fixes the conventions the
    denoiser was trained in.

    - ``encode(pipe, pixels, generators)``: the clean sample the pipeline's sampler ends at for
      ``pixels`` (B x 3 x H x W in [-1, 1]), in the layout the pipeline samples in, one VAE
      posterior sample per image drawn from its generator. Default: the family's
      ``inversion.encode_image`` where it has one, else the latents the pipeline decodes as
      ``latents / scaling_factor + shift_factor`` (packed 2x2 into tokens where the pipeline
      packs them, FLUX-style), or the pixels themselves for a pixel-space model.
    - ``timestep(scheduler, t)``: the time the pipeline hands its denoiser at scheduler timestep
      ``t`` (1000 is noise). Default: ``t`` times the ratio read from the pipeline's own call (1, or
      FLUX's 1/1000); a family whose time is not a multiple (Lumina 2, Z-Image, Ideogram 4: ``1 - t/1000``, 0
      is noise) states it, and the capture checks it against the pipeline's call.
    - ``prediction_sign``: the pipeline steps its scheduler with this sign times the denoiser's
      output, so the denoiser was trained to predict this sign times the scheduler's target
      (HiDream, Lumina 2, Z-Image, NucleusMoE-Image, Ideogram 4: -1, the negated velocity).
    - ``rows`` and ``batch``: where the denoiser takes its samples as a list of per-row tensors
      (Z-Image), the batch as that list, and the denoiser's output (that list, or it stacked)
      back as one batch in the layout of ``latents``.
    - ``prediction(output, sample)``: where the denoiser, in training mode, returns its prediction
      in another layout than its sample's, that output in the sample's layout (HiDream: its
      patches, B x C x tokens x p²).
    - ``unguided_scale``: the ``guidance_scale`` at which the pipeline runs no classifier-free
      guidance, as training conditions the denoiser and inversion regenerates (most: 1; Z-Image
      and Krea 2 guide at any scale above 0).
    - ``sample_start(kwargs)``: where the denoiser's sample argument holds, ahead of the latents the
      pipeline samples, tokens the pipeline fills itself (Ideogram 4: zeros where each row's text
      sits), how many, from a denoiser call's keyword arguments: the denoiser is handed them as the
      pipeline handed them, then the latents, and its prediction is read after them.

    Image inversion (``Family.inversion``) reads ``timestep``, ``prediction_sign``, ``rows`` and
    ``batch`` from here too: one place for each of the family's conventions.
    """

    encode: Callable[[Any, torch.Tensor, Sequence[torch.Generator]], torch.Tensor] | None = None
    timestep: Callable[[Any, torch.Tensor], torch.Tensor] | None = None
    prediction_sign: float = 1.0
    rows: Callable[[torch.Tensor], list[torch.Tensor]] | None = None
    batch: Callable[[Any], torch.Tensor] | None = None
    prediction: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    unguided_scale: float = 1.0
    sample_start: Callable[[Mapping[str, Any]], int] | None = None


@dataclass(frozen=True)
class TinyPipeline:
    """A random-init pipeline of the family, built in code (no file read, nothing downloaded).

    ``components(seed)`` returns the stock ``pipeline`` class's constructor arguments; ``call`` the
    keyword arguments, beyond size, steps and guidance, that run it fast and with CFG; ``adjust``,
    where given, sets what the pipeline's constructor fixes and no call argument reaches (its text
    lengths, for one).
    """

    pipeline: str
    components: Callable[[int], dict[str, Any]]
    call: Mapping[str, Any] = field(default_factory=dict)
    adjust: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class PublishedDenoiser:
    """A published checkpoint's denoiser, shapes only: built on the meta device (no weights, no
    download) to list its text layers at real size.

    ``config`` holds the values of the checkpoint's ``config.json`` that differ from the
    ``denoiser`` class's defaults (diffusers' defaults are most families' flagship model);
    ``source`` says where they come from, and says "inferred" where they were not read from the
    published file. ``text_tokens`` is the text length the pipeline feeds the denoiser by default
    (its ``max_sequence_length``, or the encoders' lengths added up).
    """

    model: str
    denoiser: str
    config: Mapping[str, Any]
    text_tokens: int
    source: str

    def build_on_meta(self) -> torch.nn.Module:
        import diffusers
        import torch

        with torch.device("meta"):
            return getattr(diffusers, self.denoiser)(**self.config)


# Call defaults several families share (Family.call_defaults).
#: The prompt as given: ``clean_caption`` lowercases it and strips URLs and punctuation where bs4 and
#: ftfy are installed, and is skipped with a warning where not, so the text encoded would be neither
#: the prompt given nor the same from one machine to the next.
CAPTION_AS_GIVEN: Mapping[str, Any] = MappingProxyType({"clean_caption": False})
#: The size asked for: ``use_resolution_binning`` generates at the nearest of the pipeline's trained
#: sizes and resizes the image back, so a run (and its latents, its text tokens' image) would not be
#: at the size textloc asked for.
SIZE_AS_ASKED: Mapping[str, Any] = MappingProxyType({"use_resolution_binning": False})


@dataclass(frozen=True)
class Family:
    """One text-to-image family: what the engine and the uses need to know about it.

    ``denoisers`` and ``pipelines`` are class names (the family of a pipeline is found by its class,
    or failing that by its denoiser's); ``attention`` the rules that give each attention its text
    route; ``text_length(args, kwargs)`` how many text tokens a denoiser call's shared sequences
    hold (default: the text argument's second dimension), and ``text_start`` where they start when
    not first; ``check_run(pipe)``, where given, refuses
    a run whose settings the engine cannot follow; ``check_text(encoded)``, where given, refuses a
    text encoding it cannot follow, from what the pipeline's ``encode_prompt`` returned (Kandinsky
    5: prompts padded with no mask); ``refuses`` the uses it does not support yet, each with the
    reason (``{"train_lora": "..."}``); ``tiny`` its tiny random pipelines by architecture name;
    ``pooled``, where the family has a pooled text vector, the module (path in the denoiser) that
    reads it, whose output is the pooled unit (a checkpoint without that module, SD 1.5's U-Net for
    one, has none); ``pooled_columns(args, kwargs)``, where that module reads the pooled text
    beside something else (SDXL: ``text_embeds``, then the size conditioning), how many of the
    first columns of its input are the text in a denoiser call: the unit is then those columns,
    not the module's output; ``published`` its published denoisers, shapes only.
    """

    name: str
    denoisers: tuple[str, ...]
    attention: tuple[AttentionRule, ...]
    pipelines: tuple[str, ...] = ()
    guidance: Guidance = field(default_factory=Guidance)
    signature: DenoiserSignature = field(default_factory=DenoiserSignature)
    tiny: Mapping[str, TinyPipeline] = field(default_factory=dict)
    text_length: Callable[[tuple, Mapping[str, Any]], int] | None = None
    #: Where a shared sequence's text starts, for layers with the text first, when each row is
    #: left-padded ahead of it (Ideogram 4: ``[padding, text, image]``); default: at its first token.
    text_start: Callable[[tuple, Mapping[str, Any]], int] | None = None
    check_run: Callable[[Any], None] | None = None
    check_text: Callable[[Any], None] | None = None
    refuses: Mapping[str, str] = field(default_factory=dict)
    pooled: str | None = None
    pooled_columns: Callable[[tuple, Mapping[str, Any]], int] | None = None
    #: Where families share a denoiser class (the U-Nets), the config values that tell a bare
    #: denoiser of this one from the others'; a pipeline is told by its class first.
    denoiser_config: Mapping[str, Any] = field(default_factory=dict)
    published: tuple[PublishedDenoiser, ...] = ()
    #: Pipeline-call arguments textloc sets unless the caller does, where the pipeline's own default
    #: would change the text it encodes or the size it runs at behind textloc's back (each spec
    #: says why); passed only to a pipeline whose ``__call__`` takes them
    #: (:func:`textloc.pipeline_calls.call_kwargs`).
    call_defaults: Mapping[str, Any] = field(default_factory=dict)
    #: Pipeline methods the engine stands in for while it runs the pipeline: name -> ``wrap(pipe,
    #: method)``, which returns what to call instead. Where a pipeline draws, for a whole batch at
    #: once, something each row's image depends on (GLM-Image's autoregressive prior tokens), the
    #: family's wrapper draws it one prompt at a time, so that a row is what its prompt alone gives.
    wraps: Mapping[str, Callable[[Any, Callable[..., Any]], Callable[..., Any]]] = field(default_factory=dict)
    #: The family's pipeline outputs that hold their images under another field than ``images``:
    #: output class name -> field (:func:`textloc.pipeline_calls.images_of`).
    image_outputs: Mapping[str, str] = field(default_factory=dict)
    #: How image inversion encodes an image and conditions the denoiser for this family
    #: (:mod:`textloc.architectures.inversion`); ``None`` where inversion does not cover it yet, and
    #: ``invert``/``edit_image`` refuse it.
    inversion: Inversion | None = None
    #: How ``train_lora``'s objective encodes an image for the denoiser, and the time and sign of
    #: its prediction, where the family's pipeline differs from the defaults (:class:`Training`).
    training: Training = field(default_factory=Training)
    #: The scheduler's timesteps end with the clean sample's time, which the pipeline steps to but
    #: never calls its denoiser at (Sana Sprint's SCM scheduler: ``n + 1`` timesteps for ``n``
    #: steps, the loop over ``timesteps[:-1]``): the denoiser's positions are one fewer.
    schedule_ends_clean: bool = False
    #: The pipeline takes one prompt per call, a string (DreamLite fixes its batch at 1 and refuses a
    #: list): the engine hands it a one-prompt batch as that prompt and refuses a batch of several.
    one_prompt: bool = False

    def check_supports(self, use: str) -> None:
        """A one-line ``ValueError`` if this family does not support ``use`` (e.g. ``"train_lora"``)."""
        if use in self.refuses:
            raise ValueError(f"{use} does not support the {self.name} family yet: {self.refuses[use]}.")

    def route(self, name: str, module: torch.nn.Module) -> TextRoute | None:
        """The text route of the attention module ``name``, ``None`` for one that reads no text."""
        return next((rule.route for rule in self.attention if rule.matches(name, module)), None)

    def text_tokens(self, args: tuple, kwargs: Mapping[str, Any]) -> int | None:
        """How many text tokens the shared sequences of a denoiser call with ``args``, ``kwargs`` hold."""
        if self.text_length is not None:
            return self.text_length(args, kwargs)
        text = kwargs.get(self.signature.text)
        return None if text is None else text.shape[1]

    def text_offset(self, args: tuple, kwargs: Mapping[str, Any]) -> int:
        """Where the text of a shared sequence that has it first starts in a denoiser call (0 unless padded ahead)."""
        return 0 if self.text_start is None else self.text_start(args, kwargs)


#: U-Nets (SD, SDXL, Kolors, IF): added-K/V attention where the layer has text projections of its
#: own, else cross-attention where it reads the text.
UNET_ATTENTION: tuple[AttentionRule, ...] = (
    AttentionRule("Attention", ADDED_KV, when="add_k_proj"),
    AttentionRule("Attention", CROSS, when="is_cross_attention"),
)
