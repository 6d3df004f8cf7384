"""The registry of named models: everything textloc knows about the models it names.

Two kinds of model have names: the embedded ones (:class:`EmbeddedModel`, ``textloc-tiny``,
``textloc-tiny-sd3`` and ``textloc-tiny-flux``), trained by textloc on the signs it renders and shipped inside the package,
and the tiny random-init pipelines (:class:`RandomModel`, ``tiny-random-<arch>`` for every
architecture of :data:`textloc.testing.ARCHITECTURES`). Each entry says how the model loads, the
sampler settings it is meant to run with, and, where it has them, its own prompt pairs, its scene
judge and its training data. The loader, the CLI and every use ask :func:`named_model` (or
:func:`find_named_model`) instead of comparing model names.

Adding an embedded model is one more :class:`EmbeddedModel` in :data:`EMBEDDED_MODELS`.

The registry sits below the uses, which ask it (a guard for a model's vocabulary, ``"preset"`` for an
embedded model's layers): it builds on the engine, the scoring and the embedded models' renderer
only (``tests/test_layering.py``). The tiny random pipelines are imported when first asked for:
listing their architectures imports every pipeline class.
"""

from __future__ import annotations

import abc
import difflib
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from textloc.tiny.data import TrainingBatch

    from textloc.scoring.prompts import PromptPair, SceneJudge

#: ``pairs(n, seed)``: ``n`` prompt pairs of the model's own scenes, the same for the same seed.
PairMaker = Callable[[int, int], "list[PromptPair]"]
#: ``batch(seed, step, batch_size)``: training step ``step``'s batch, a pure function of its arguments.
BatchMaker = Callable[[int, int, int], "TrainingBatch"]

_RANDOM_PREFIX = "tiny-random-"


class UnknownModelError(ValueError):
    """A model name that is neither a named model, nor a hub id, nor a folder."""


@dataclass(frozen=True, eq=False)
class NamedModel(abc.ABC):
    """One model textloc knows by name. Parts the model does not have are ``None``."""

    name: str
    #: The keyword arguments of a pipeline call the model is meant to run with (steps, guidance,
    #: size, ...), in diffusers' names.
    settings: Mapping[str, Any]

    @abc.abstractmethod
    def load(self, dtype: torch.dtype | None = None, **from_pretrained_kwargs: Any) -> DiffusionPipeline:
        """The model's pipeline, on the CPU, in ``dtype`` (default: as stored)."""

    @property
    def prompt_pairs(self) -> PairMaker | None:
        """The model's own prompt pairs, for localization."""
        return None

    @property
    def scene_judge(self) -> SceneJudge | None:
        """Whether an image still shows its prompt's scene (judged without the text)."""
        return None

    @property
    def training_data(self) -> BatchMaker | None:
        """The batches the model was trained on."""
        return None

    @property
    def vocabulary(self) -> tuple[str, ...] | None:
        """The words the model was trained to write, none of them toxic: what a guard may write instead."""
        return None


@dataclass(frozen=True, eq=False)
class EmbeddedModel(NamedModel):
    """A model trained by ``textloc.tiny.train`` on the signs ``textloc.tiny.data`` renders,
    shipped in ``folder`` as a stock diffusers pipeline.

    Its pairs, judge and data are the renderer's: held-out sign captions that differ only in the
    word, the sign and background colours judged from pixels, the rendered signs.
    """

    folder: Path
    #: ``from_pretrained`` options the folder always needs (a caller's own take precedence), e.g.
    #: ``text_encoder_3=None`` for an SD3 pipeline saved without T5.
    load_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: The layers its committed localization selected (``samples/<short name>/localize``; a test
    #: holds the two equal): what ``layers="preset"`` names for it.
    text_layers: tuple[str, ...] = ()
    #: The step its edits and guards start patching from with ``"preset"``: a fraction of the
    #: schedule, the best of ``bench/bench_edit.py``'s sweep on it (``best_start`` in its results;
    #: a test holds the two equal). ``None``: textloc's default.
    start_step: float | None = None
    #: What ``edit_image`` runs with on it where the caller does not say (guidance, start step):
    #: the settings of ``bench/bench_edit.py``'s real-image edits (a test holds the two equal).
    image_edit: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def load(self, dtype: torch.dtype | None = None, **from_pretrained_kwargs: Any) -> DiffusionPipeline:
        if not (self.folder / "model_index.json").exists():
            raise FileNotFoundError(
                f"{self.name} weights are missing from {self.folder}; reinstall textloc, or "
                f"retrain them with `python -m textloc.tiny.train --model {self.name}`."
            )
        from textloc.pipeline_calls import from_pretrained

        # IFPipeline's signature names a T5 encoder; textloc-tiny's is a small CLIP by design, which
        # diffusers would call out on every load.
        loading = logging.getLogger("diffusers.pipelines.pipeline_utils")
        by_design = _DropMessages("Expected types for text_encoder:")
        loading.addFilter(by_design)
        try:
            pipe = from_pretrained(self.folder, dtype, **{**self.load_options, **from_pretrained_kwargs})
        finally:
            loading.removeFilter(by_design)
        _keep_captions_raw(pipe)
        return pipe

    @property
    def prompt_pairs(self) -> PairMaker:
        from textloc.tiny.pairs import localization_pairs

        return localization_pairs

    @property
    def scene_judge(self) -> SceneJudge:
        from textloc.tiny.pairs import scene_judge

        return scene_judge

    @property
    def training_data(self) -> BatchMaker:
        from textloc.tiny.data import training_batch

        return training_batch

    @property
    def vocabulary(self) -> tuple[str, ...]:
        from textloc.tiny.data import TOXIC_WORDS, VOCABULARY

        return tuple(word for word in VOCABULARY if word not in TOXIC_WORDS)


@dataclass(frozen=True, eq=False)
class RandomModel(NamedModel):
    """A random-init pipeline of one architecture, built in code (:func:`textloc.testing.tiny_pipeline`).

    Its images are noise: it has no prompt pairs, judge or data of its own.
    """

    arch: str

    def load(self, dtype: torch.dtype | None = None, **from_pretrained_kwargs: Any) -> DiffusionPipeline:
        from textloc.testing import tiny_pipeline

        if from_pretrained_kwargs:
            raise ValueError(f"{self.name} is built in code, not loaded: the from_pretrained options "
                             f"{sorted(from_pretrained_kwargs)} do not apply to it.")
        pipe = tiny_pipeline(self.arch)
        if dtype is not None:
            pipe.to(dtype=dtype)
        return pipe


def _random_model(arch: str) -> RandomModel:
    from textloc.testing import tiny_call_kwargs

    settings = tiny_call_kwargs(arch)
    # The caller picks the output type; the rest is what the tiny configs are built for.
    del settings["output_type"]
    return RandomModel(
        name=_RANDOM_PREFIX + arch,
        settings=MappingProxyType(settings),
        arch=arch,
    )


class _DropMessages(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _keep_captions_raw(pipe: DiffusionPipeline) -> None:
    """Make a direct ``pipe(prompt)`` read the caption as the embedded model learnt it: lowercased only.

    IFPipeline cleans captions by default (``clean_caption=True``): with Beautiful Soup and ftfy
    installed it rewrites them (quotes, punctuation, URLs...), without them it logs two notices a
    call saying it cannot. textloc's own calls pass ``clean_caption=False`` (the family's
    ``call_defaults``); this makes a user's plain call do the same, on this pipeline object only.
    """
    if not hasattr(pipe, "_text_preprocessing"):
        return
    preprocess = type(pipe)._text_preprocessing
    pipe._text_preprocessing = lambda text, clean_caption=False: preprocess(pipe, text, clean_caption=False)


#: The embedded model: a 64x64 IFPipeline trained on rendered signs, no download.
TEXTLOC_TINY = EmbeddedModel(
    name="textloc-tiny",
    # IFPipeline's own default is 100 steps; textloc-tiny samples as well in 25.
    settings=MappingProxyType({"num_inference_steps": 25, "guidance_scale": 5.0}),
    folder=Path(__file__).parent / "tiny" / "weights",
    text_layers=tuple(f"up_blocks.1.attentions.{block}.transformer_blocks.0.attn2" for block in (1, 2, 0)),
    start_step=0.2,  # bench/results/edit.json
    image_edit=MappingProxyType({"guidance_scale": 2.0, "start_step": 0.1}),  # bench/results/edit.json, "real"
)
#: The second embedded model: a 64x64 StableDiffusion3Pipeline (an MMDiT of 8 joint-attention
#: blocks on a small autoencoder's latents), trained on the same signs, no download.
TEXTLOC_TINY_SD3 = EmbeddedModel(
    name="textloc-tiny-sd3",
    # ``max_sequence_length=0``: it has no T5, and the pipeline would otherwise append 256 zero
    # rows to the text tokens that the model never saw in training.
    settings=MappingProxyType({"num_inference_steps": 25, "guidance_scale": 5.0, "max_sequence_length": 0}),
    folder=Path(__file__).parent / "tiny" / "weights_sd3",
    load_options=MappingProxyType({"text_encoder_3": None, "tokenizer_3": None}),
    # Three joint blocks and the pooled text vector, in the order its localization ranked them.
    text_layers=("transformer_blocks.3.attn", "time_text_embed.text_embedder", "transformer_blocks.2.attn", "transformer_blocks.1.attn"),
    start_step=0.5,  # bench/results/edit-tiny-sd3-pooled.json
    image_edit=MappingProxyType({"guidance_scale": 2.0, "start_step": 0.4}),  # bench/results/edit-tiny-sd3-pooled.json, "real"
)
#: The third embedded model: a 64x64 FluxPipeline (4 double- and 8 single-stream blocks, a byte T5 and a byte
#: CLIP) on textloc-tiny-sd3's autoencoder, trained on the same signs, no download.
TEXTLOC_TINY_FLUX = EmbeddedModel(
    name="textloc-tiny-flux",
    # No guidance embedding: true classifier-free guidance, a second pass on the empty caption it
    # was trained on (10% of captions dropped). 77 T5 tokens as trained (FluxPipeline's default
    # is 512), and 64x64 (its default is 512 pixels whatever the model).
    settings=MappingProxyType({"num_inference_steps": 25, "true_cfg_scale": 5.0, "negative_prompt": "",
                               "max_sequence_length": 77, "height": 64, "width": 64}),
    folder=Path(__file__).parent / "tiny" / "weights_flux",
    text_layers=tuple(f"transformer_blocks.{block}.attn" for block in (1, 0)),
    start_step=0.4,  # bench/results/edit-tiny-flux.json
    image_edit=MappingProxyType({"guidance_scale": 2.0, "start_step": 0.4}),  # bench/results/edit-tiny-flux.json, "real"
)
#: The embedded models, in the order listings show them.
EMBEDDED_MODELS: tuple[EmbeddedModel, ...] = (TEXTLOC_TINY, TEXTLOC_TINY_SD3, TEXTLOC_TINY_FLUX)
#: The model every command uses when none is named.
DEFAULT_MODEL = TEXTLOC_TINY.name


def model_names() -> list[str]:
    """The names :func:`named_models` knows, found without building them (for the command line's help)."""
    from textloc.architectures import tiny_pipelines

    return [*(model.name for model in EMBEDDED_MODELS), *(_RANDOM_PREFIX + arch for arch in tiny_pipelines())]


@functools.cache
def named_models() -> Mapping[str, NamedModel]:
    """Every named model by name: the embedded ones, then one tiny random pipeline per architecture."""
    # Imported here: listing the architectures imports every pipeline class (and their warnings).
    from textloc.testing import ARCHITECTURES

    models = [*EMBEDDED_MODELS, *(_random_model(arch) for arch in ARCHITECTURES)]
    return MappingProxyType({model.name: model for model in models})


def named_model(name: str) -> NamedModel:
    """The named model ``name``; :class:`UnknownModelError` (a ``ValueError``) lists the known names."""
    # An embedded model is found without building the random ones (which imports diffusers).
    embedded = next((model for model in EMBEDDED_MODELS if model.name == name), None)
    if embedded is not None:
        return embedded
    models = named_models()
    if name in models:
        return models[name]
    close = difflib.get_close_matches(name, models, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}: the named models are {', '.join(models)}; anything else is a "
        f"diffusers hub id (owner/name) or a local folder.{hint}"
    )


def embedded_model_of(pipe: Any) -> EmbeddedModel | None:
    """The embedded model ``pipe`` was loaded from, by its folder; ``None`` for any other pipeline."""
    loaded_from = getattr(pipe, "name_or_path", None)
    if not loaded_from:
        return None
    return next((model for model in EMBEDDED_MODELS if Path(loaded_from).resolve() == model.folder.resolve()), None)


def find_named_model(name: str) -> NamedModel | None:
    """The named model ``name``, or ``None`` when ``name`` is for diffusers to load.

    A hub id has an owner (``owner/name``) and a folder exists; any other name can only mean a
    named model, so one that is not (a typo) raises :class:`UnknownModelError` here rather than
    a hub lookup's error.
    """
    models = named_models()
    if name in models:
        return models[name]
    if "/" in name or Path(name).expanduser().is_dir():
        return None
    return named_model(name)
