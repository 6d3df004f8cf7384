"""The one context that installs the engine's hooks on a pipeline and removes them, whatever happens.

Every engine call (record, patch, replays, capture, explicit probabilities) runs inside
:func:`hooked`: ``diffusers.hooks`` on the denoiser (step and branch) and on each chosen layer and
its text K/V projections, and method shadows on the scheduler's ``step`` and, where needed, the
pipeline's ``encode_prompt`` (its arguments read, or its result checked by the family's spec) and
on any method the family's spec draws per prompt (``Family.wraps``).
Leaving it, normally or through an exception, removes them all.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from textloc import seeding
from textloc.architectures import denoiser, family_of
from textloc.engine.cache import TextCache
from textloc.engine.input_moments import ProjectionInputHook, ProjectionInputs, text_kv_columns
from textloc.engine.layer_hooks import AttentionHook, LayerHooks, PooledInputHook, ProjectionHook
from textloc.engine.plan import RowPatch, window_steps
from textloc.engine.recorder import Recorder
from textloc.engine.replays import GradientHook
from textloc.engine.run_state import DenoiserCall, DenoiserHook, RunState, StopRun, checked, shadowed
from textloc.engine.units import AttentionLayer
from textloc.fingerprint import module_fingerprint
from textloc.pipeline_calls import call_kwargs, instance_attribute

# Where diffusers' modular pipelines log the exceptions that leave their blocks.
_MODULAR_LOGGER = "diffusers.modular_pipelines.modular_pipeline"

_HOOK_PREFIX = "textloc"


@contextlib.contextmanager
def hooked(
    pipe: Any,
    layers: Sequence[AttentionLayer],
    patches: Sequence[RowPatch] = (),
    recorder: Recorder | None = None,
    stop_at_step: int | None = None,
    grad_steps: frozenset[int] = frozenset(),
    on_output=None,
    on_call: Callable[[DenoiserCall, tuple, dict], None] | None = None,
    replays: Sequence[RowPatch] = (),
    projection_inputs: ProjectionInputs | None = None,
) -> Iterator[RunState]:
    model = denoiser(pipe)
    state = RunState(pipe, stop_at_step)
    caches = {id(p.source): p.source for p in patches if isinstance(p.source, TextCache)}
    fingerprint = module_fingerprint(model) if caches else None
    for cache in caches.values():
        if cache.fingerprint != fingerprint:
            raise ValueError(
                f"This cache was recorded on other weights ({cache.fingerprint}); this pipeline's denoiser "
                f"is {fingerprint}. Record the source on this pipeline."
            )
    for p in patches:
        missing = [name for name in p.layers if name not in p.source.layers] if isinstance(p.source, TextCache) else []
        if missing:
            raise ValueError(f"The cache was not recorded at {', '.join(missing)}; record those layers too.")

    def start_run(run: RunState) -> None:
        for cache in caches.values():
            stepped = any(position is not None for (_, position, _) in cache.entries)
            if stepped and (cache.num_steps, cache.num_positions) != (run.num_steps, run.num_positions):
                raise ValueError(
                    f"This cache was recorded over {cache.num_steps} steps ({cache.num_positions} scheduler "
                    f"timesteps) but the run has {run.num_steps} ({run.num_positions}); record the source with "
                    "the same num_inference_steps and scheduler."
                )
        run.windows = {id(p): window_steps(p.patch_steps, run.num_steps) for p in [*patches, *replays]}
        for p in [*patches, *replays]:
            if not run.windows[id(p)]:
                raise ValueError(f"patch_steps {p.patch_steps} covers no step of this {run.num_steps}-step run.")

    state.on_new_run.append(start_run)
    registered: list[tuple[torch.nn.Module, str]] = []

    def register(module: torch.nn.Module, hook: ModelHook, name: str) -> None:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
        registered.append((module, name))

    tag = f"{_HOOK_PREFIX}_{id(state)}"
    with contextlib.ExitStack() as stack:
        stack.enter_context(shadowed(pipe.scheduler, "step", state.count_scheduler_step, arguments=False))
        if not state.cfg_property:
            stack.enter_context(shadowed(pipe, "encode_prompt", state.note_encode_prompt))
        if state.family.check_text is not None:
            stack.enter_context(checked(pipe, "encode_prompt", state.family.check_text))
        for method, wrap in state.family.wraps.items():
            stack.enter_context(instance_attribute(pipe, method, wrap(pipe, getattr(pipe, method))))
        try:
            if grad_steps or on_output is not None:
                register(model, GradientHook(state, grad_steps, on_output), f"{tag}_gradient")
            # Registered last, so outermost: it must know the step before the gradient hook runs.
            register(model, DenoiserHook(state, on_call), f"{tag}_denoiser")
            patched: list[LayerHooks] = []
            state.on_new_call.append(lambda: _plan_writes(patched))
            for layer in layers:
                layer_patches = [p for p in patches if layer.name in p.layers]
                replay = next((p for p in replays if layer.name in p.layers), None)
                hooks = LayerHooks(layer, state, recorder, layer_patches, replay, grad_steps)
                if layer_patches or replay is not None:
                    patched.append(hooks)
                if layer.kind == "pooled":
                    # The module's output is the unit (or, where it reads more than the text, the
                    # text columns of its input): that hook goes on first, so that the outer
                    # attention hook's replay calls back through it.
                    reader = PooledInputHook(hooks) if state.family.pooled_columns else ProjectionHook(hooks, (("value", None),))
                    register(layer.module, reader, f"{tag}_pooled")
                    register(layer.module, AttentionHook(hooks), f"{tag}_attention")
                    continue
                key_proj, value_proj = layer.text_kv_projections
                key = ("key", layer.route.key.columns(layer.module))
                value = ("value", layer.route.value.columns(layer.module))
                register(layer.module, AttentionHook(hooks), f"{tag}_attention")
                if key_proj is value_proj:  # one fused projection: K and V are column blocks of its output
                    register(key_proj, ProjectionHook(hooks, (key, value)), f"{tag}_key_value")
                else:
                    register(key_proj, ProjectionHook(hooks, (key,)), f"{tag}_key")
                    register(value_proj, ProjectionHook(hooks, (value,)), f"{tag}_value")
                if projection_inputs is not None:  # registered after the output hooks: it reads the input they leave alone
                    for path, module in zip(text_kv_columns(layer), dict.fromkeys((key_proj, value_proj))):
                        register(module, ProjectionInputHook(hooks, path, projection_inputs), f"{tag}_input")
            yield state
        finally:
            for module, name in reversed(registered):
                module._diffusers_hook.remove_hook(name, recurse=False)



def _plan_writes(patched: Sequence[LayerHooks]) -> None:
    """Work out every patched layer's writes for the denoiser call now beginning, in one loop.

    Each layer would work out its own at its first hook, between the model's own computations,
    with the interpreter's caches cold: about ten times the cost (bench/engine_work.py). A layer
    whose writes cannot be worked out (a row outside the batch, a cache entry missing) is left to
    its own hook, which raises only if the layer runs in this call (SD3's skip-layer pass skips some).
    """
    for hooks in patched:
        try:
            hooks.writes()
        except ValueError:
            pass


def run_pipeline(pipe: Any, **kwargs: Any) -> Any:
    """Call the pipeline; ``None`` when a hook ended the run early, with offloaded models freed.

    Lists of prompts go in as copies: Z-Image's pipeline rewrites the list it is given in place
    (each prompt wrapped in its chat template), which would change the caller's prompts.
    """
    kwargs = {key: list(value) if isinstance(value, list) else value for key, value in kwargs.items()}
    if isinstance(kwargs.get("prompt"), list) and family_of(pipe).one_prompt:
        kwargs["prompt"] = _the_one_prompt(pipe, kwargs["prompt"])
    try:
        with _quiet_stops():
            return pipe(**kwargs)
    except StopRun:
        # The pipeline's own cleanup never ran: hand models back to their offload device.
        if hasattr(pipe, "maybe_free_model_hooks"):
            pipe.maybe_free_model_hooks()
        return None


def _the_one_prompt(pipe: Any, prompts: list[str]) -> str:
    """The prompt of a one-prompt batch, for a pipeline that takes one prompt per call, as a string."""
    if len(prompts) != 1:
        raise ValueError(
            f"{type(pipe).__name__} takes one prompt per call (its batch is fixed at 1), and this run batches "
            f"{len(prompts)}: textloc cannot put several prompts, or a prompt and a live source row, in one of its calls."
        )
    return prompts[0]


class _NotAStop(logging.Filter):
    """Drops a log record made while a :class:`StopRun` is being handled: a modular pipeline logs
    every exception that leaves a block, with its traceback, the engine's planned early stop too."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(sys.exc_info()[1], StopRun)


@contextlib.contextmanager
def _quiet_stops() -> Iterator[None]:
    logger, stops = logging.getLogger(_MODULAR_LOGGER), _NotAStop()
    logger.addFilter(stops)
    try:
        yield
    finally:
        logger.removeFilter(stops)


def pipeline_kwargs(pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The pipeline-call arguments, with an error naming any that the pipeline does not take."""
    # Named parameters only: SD/SDXL's **kwargs swallow a misspelt argument without a word.
    parameters = [name for name, p in inspect.signature(pipe.__call__).parameters.items() if p.kind is not p.VAR_KEYWORD]
    # A modular pipeline takes its blocks' inputs through **kwargs, and names them.
    parameters += getattr(getattr(pipe, "blocks", None), "input_names", None) or []
    for name in kwargs:
        if name not in parameters:
            close = difflib.get_close_matches(name, parameters, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "."
            raise TypeError(f"{name!r} is not an argument of {type(pipe).__name__}.__call__{hint}")
    if kwargs.get("generator") is not None:
        seeding.check_generator(kwargs["generator"])
    return call_kwargs(pipe, **kwargs)


