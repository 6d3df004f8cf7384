"""Which step and CFG branch each denoiser call belongs to, read from the pipeline's own state.

One :class:`RunState` serves every hook of one engine context. It never guesses from batch
contents: the step comes from counting the scheduler's ``step()`` calls, the branch from what the
pipeline says (a ``cache_context``, a ``skip_layers`` argument, a modular pipeline's guider,
``do_classifier_free_guidance``, or the flag it passes to its own ``encode_prompt``); what none of
these tells is refused, as is a pipeline set up for perturbed-attention guidance, whose third,
perturbed branch no spec names.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from textloc.architectures import family_of
from textloc.architectures.spec import DenoiserSignature
from textloc.engine.choices import Branch
from textloc.engine.eager import eager
from textloc.pipeline_calls import instance_attribute


#: The predictions a modular pipeline's guider names, as branches.
GUIDER_BRANCHES: dict[str, Branch] = {"pred_cond": "cond", "pred_uncond": "uncond"}


@dataclass
class LayerReplay:
    """An attention layer's call at a gradient step, and the same call made again with a patch.

    ``output`` is what the layer returned to the denoiser (one tensor, or a joint layer's image
    and text outputs), kept in the autograd graph: ``torch.autograd.grad`` of anything computed
    from the prediction can be taken with respect to it. ``patched`` is the layer's output, without
    autograd history, when it is called again on the same inputs with its replay patch applied:
    the layer alone is patched, exactly, through its own processor.
    """

    output: tuple[torch.Tensor, ...]
    patched: tuple[torch.Tensor, ...]


@dataclass
class DenoiserCall:
    """What the denoiser call now running holds: its step, and which branch each batch row is."""

    step: int
    position: int  # index into the scheduler's timesteps: a second-order step has two
    branch_rows: dict[Branch, list[int]]  # branch -> batch indices, in row order
    text_tokens: Callable[[], int | None] = field(repr=False)  # the family's count, asked when needed
    # How many input columns of the pooled vector's reader are text (Family.pooled_columns), asked when needed.
    pooled_columns: Callable[[], int] | None = field(default=None, repr=False)
    # Every branch this step's denoiser calls run, where the pipeline tells (one batch, or passes in a
    # stated call order); None where it does not (passes in contexts: whether an unconditional one follows).
    step_branches: frozenset[Branch] | None = None
    replays: dict[str, LayerReplay] = field(default_factory=dict)  # layer name -> its replay in this call
    # Where a shared sequence's text starts, for text-first layers (Family.text_start), asked when needed.
    text_offset: Callable[[], int] | None = field(default=None, repr=False)

    @functools.cached_property
    def num_rows(self) -> int:
        """The rows of the call's batch, every branch together."""
        return sum(len(rows) for rows in self.branch_rows.values())

    @functools.cached_property
    def text_len(self) -> int | None:
        """How many text tokens the call's shared sequences hold (asked only by layers that share one:
        a family may refuse a batch whose rows hold different counts)."""
        return self.text_tokens()

    @functools.cached_property
    def text_start(self) -> int:
        """Where the text of a shared sequence with the text first starts (after left padding)."""
        return 0 if self.text_offset is None else self.text_offset()


class StopRun(Exception):
    """Raised inside the denoiser to end a generation once what was wanted is recorded."""


class RunState:
    """Step and CFG layout of each denoiser call, read from the pipeline's own state.

    - The step: the scheduler's ``step()`` calls are counted, so the n-th denoiser pass of a run is
      at scheduler position ``begin_index + n``, and position p of ``len(timesteps)`` is step
      ``p * num_inference_steps // len(timesteps)``: the step itself for first-order schedulers,
      both passes of a second-order step (Heun, KDPM2: 2n - 1 timesteps) and PLMS's warm-up pass
      (n + 1 timesteps) in their step; where the family's spec says the schedule ends at the clean
      sample's time (Sana Sprint: n + 1 timesteps, n calls), that last one is no position.
    - The branch: a ``skip_layers`` argument (SD3 skip-layer guidance); a ``cache_context`` the
      pipeline opens around a call, under a name its family's spec maps to a branch (FLUX true CFG
      runs the branches as two calls); a guidance-distilled family's calls are conditional. Else
      whether CFG is on comes from the pipeline's ``do_classifier_free_guidance`` property (SD,
      SDXL, SD3, Sana; it knows that LCM-distilled U-Nets run no CFG batch), the rule its family's
      spec reads from its state (Kandinsky 5), or the flag it passed to its own ``encode_prompt``
      (IF, PixArt), and the spec says how the branches run: one batch in its order
      (``cat([uncond, cond])`` for most), or separate passes in its call order. A pipeline that
      states none of these is refused, never guessed.
    """

    def __init__(self, pipe: Any, stop_at_step: int | None = None):
        refuse_perturbed_attention_guidance(pipe)
        self.pipe = pipe
        self.stop_at_step = stop_at_step
        self.context = StateManager(_NoState)  # diffusers' cache_context() sets its context
        self.encoded_cfg: bool | None = None  # the flag the pipeline last passed to encode_prompt
        self.scheduler_steps = 0  # scheduler.step() calls in this run
        self.schedule: torch.Tensor | None = None
        self.begin = self.num_steps = self.num_positions = 0
        self.call: DenoiserCall | None = None
        self.calls_this_step = 0  # denoiser calls since the last scheduler step: a separate-pass CFG's branch
        self.family = family_of(pipe)
        self.guidance, self.signature = self.family.guidance, self.family.signature
        self.windows: dict[int, range] = {}  # id(patch) -> the steps it covers in this run
        self.on_new_run: list[Callable[[RunState], None]] = []
        self.on_new_call: list[Callable[[], None]] = []  # once the call's step and branches are known
        # Asked once: inspecting the class on every denoiser call would cost more than the answer.
        self.cfg_property = isinstance(inspect.getattr_static(type(pipe), "do_classifier_free_guidance", None), property)
        # A modular pipeline (diffusers.modular_pipelines) runs each CFG branch as a denoiser call of
        # its own, which its guider (diffusers.guiders) prepares and counts.
        guider = getattr(pipe, "guider", None)
        self.guider = guider if hasattr(guider, "_input_predictions") else None

    def begin_call(self, sample: torch.Tensor | list[torch.Tensor], args: tuple, kwargs: dict[str, Any]) -> None:
        scheduler = self.pipe.scheduler
        schedule = scheduler.timesteps
        if schedule is not self.schedule:  # set_timesteps made a new schedule: a new generation
            self.schedule, self.scheduler_steps = schedule, 0
            self.begin = getattr(scheduler, "begin_index", None) or 0  # img2img starts part-way
            # A schedule that ends at the clean sample's time (Sana Sprint) has no denoiser call there.
            self.num_positions = len(schedule) - self.family.schedule_ends_clean
            self.num_steps = getattr(scheduler, "num_inference_steps", None) or self.num_positions
            self.call = None
            if self.family.check_run is not None:
                self.family.check_run(self.pipe)
            for callback in self.on_new_run:
                callback(self)
        position = self.begin + self.scheduler_steps
        if self.call is None or self.call.position != position:
            self.calls_this_step = 0
        if position >= self.num_positions:
            raise ValueError(
                f"The denoiser ran after the last of the scheduler's {self.num_positions} timesteps; textloc "
                "follows the steps of a pipeline call and cannot place this one."
            )
        step = position * self.num_steps // self.num_positions
        if step == self.stop_at_step:
            raise StopRun
        text_tokens = functools.partial(self.family.text_tokens, args, kwargs)
        columns = self.family.pooled_columns
        pooled_columns = None if columns is None else functools.partial(columns, args, kwargs)
        # Z-Image passes its batch as a list of per-row samples.
        branch_rows = self._branch_rows(len(sample) if isinstance(sample, (list, tuple)) else sample.shape[0], kwargs)
        text_offset = None if self.family.text_start is None else functools.partial(self.family.text_offset, args, kwargs)
        self.call = DenoiserCall(
            step, position, branch_rows, text_tokens, pooled_columns, self._step_branches(branch_rows, kwargs), text_offset=text_offset,
        )
        self.calls_this_step += 1
        for callback in self.on_new_call:
            callback()

    def _branch_rows(self, batch: int, kwargs: dict[str, Any]) -> dict[Branch, list[int]]:
        rows = list(range(batch))
        if kwargs.get("skip_layers") is not None:
            return {"skip_layer": rows}
        context = self.context._context
        guidance = self.guidance
        if context is not None and context.name in guidance.contexts:
            return {guidance.contexts[context.name]: rows}
        if self.guider is not None:
            return {self._guided_branch(): rows}
        if guidance.distilled or not self._classifier_free_guidance():
            return {"cond": rows}
        if guidance.call_order is not None:
            if self.calls_this_step >= len(guidance.call_order):
                raise ValueError(
                    f"{type(self.pipe).__name__} called its denoiser {self.calls_this_step + 1} times in one step; its "
                    f"family runs CFG as {len(guidance.call_order)} passes ({', '.join(guidance.call_order)})."
                )
            return {guidance.call_order[self.calls_this_step]: rows}
        if batch % 2:
            raise ValueError(f"{type(self.pipe).__name__} runs classifier-free guidance on an odd batch of {batch}; textloc cannot split it into branches.")
        first, second = guidance.batch_order
        return {first: rows[: batch // 2], second: rows[batch // 2 :]}

    def _step_branches(self, branch_rows: dict[Branch, list[int]], kwargs: dict[str, Any]) -> frozenset[Branch] | None:
        context = self.context._context
        if kwargs.get("skip_layers") is None and context is not None and context.name in self.guidance.contexts:
            return None
        if self.guider is not None:
            return frozenset(GUIDER_BRANCHES[name] for name in self._guider_passes())
        if self.guidance.call_order is not None and not self.guidance.distilled and self._classifier_free_guidance():
            return frozenset(self.guidance.call_order)
        return frozenset(branch_rows)

    def _guider_passes(self) -> list[str]:
        """The predictions the modular pipeline's guider asks for in this step, one denoiser call each."""
        passes = list(self.guider._input_predictions[: self.guider.num_conditions])
        other = [name for name in passes if name not in GUIDER_BRANCHES]
        if other:
            raise ValueError(
                f"{type(self.pipe).__name__}'s guider {type(self.guider).__name__} runs a {other[0]!r} pass, which is "
                "no classifier-free guidance branch textloc can patch; give it a guider that predicts only pred_cond "
                "and pred_uncond (ClassifierFreeGuidance or a variant) with pipe.update_components(guider=...)."
            )
        return passes

    def _guided_branch(self) -> Branch:
        """The branch of the denoiser call now running: the guider counts the passes it has prepared."""
        passes, prepared = self._guider_passes(), self.guider._count_prepared
        if not 1 <= prepared <= len(passes):
            raise ValueError(
                f"{type(self.pipe).__name__} called its denoiser outside its guider's passes ({prepared} prepared of "
                f"{len(passes)}); textloc reads a modular pipeline's branch from its guider."
            )
        return GUIDER_BRANCHES[passes[prepared - 1]]

    def _classifier_free_guidance(self) -> bool:
        if self.cfg_property:
            return bool(self.pipe.do_classifier_free_guidance)
        if self.guidance.enabled is not None:
            return self.guidance.enabled(self.pipe)
        if self.encoded_cfg is not None:
            return self.encoded_cfg
        raise ValueError(
            f"textloc cannot tell the classifier-free guidance layout of {type(self.pipe).__name__}: it has no "
            "do_classifier_free_guidance property, passes no such flag to encode_prompt and opens no "
            "cache_context around its denoiser calls. Patch through a pipeline that does (SD, SDXL, SD3, "
            "FLUX, IF, PixArt, Sana)."
        )

    def count_scheduler_step(self) -> None:
        self.scheduler_steps += 1

    def note_encode_prompt(self, arguments: dict[str, Any]) -> None:
        if "do_classifier_free_guidance" in arguments:
            self.encoded_cfg = bool(arguments["do_classifier_free_guidance"])


def refuse_perturbed_attention_guidance(pipe: Any) -> None:
    """Refuse, before it runs, a pipeline set up for perturbed-attention guidance (diffusers' PAG
    pipelines of SD, SDXL, Kolors, SD3, PixArt-Σ, Sana and HunyuanDiT, which any family takes by
    their denoiser).

    With PAG on, each denoiser call batches ``[uncond, cond, perturbed cond]`` (``[cond, perturbed
    cond]`` without CFG; ``pag_utils.py``), the perturbed rows' self-attention swapped for an identity
    by processors the pipeline installs for the run: no family's guidance names a third branch, so a
    two-branch split would label rows wrongly and patch the perturbed rows as whichever branch they
    fell in. Whether PAG runs is known only inside the call (``pag_scale``), after those processors
    are in, so a pipeline with PAG layers is refused here, at the engine's entry, while nothing has
    changed; with none (``set_pag_applied_layers([])``) its calls are its family's plain ones.
    """
    if getattr(pipe, "pag_applied_layers", None):
        raise ValueError(
            f"{type(pipe).__name__} is set up for perturbed-attention guidance ({pipe.pag_applied_layers}), whose "
            "perturbed rows textloc cannot tell from the CFG branches: call pipe.set_pag_applied_layers([]) to run "
            "it without PAG, or use the family's plain pipeline."
        )


class _NoState(BaseState):
    """The engine keeps no per-context state; it only reads which context the pipeline opened."""

    def reset(self) -> None:
        pass


class DenoiserHook(ModelHook):
    _is_stateful = True  # so that diffusers' cache_context() hands it the branch name

    def __init__(self, state: RunState, on_call: Callable[[DenoiserCall, tuple, dict], None] | None = None):
        super().__init__()
        self.state = state
        self.context = state.context
        self.on_call = on_call

    @eager  # the step and branch are Python state: read eagerly, outside a compiled graph
    def pre_forward(self, module, *args, **kwargs):
        sample, _ = sample_and_timestep(self.state.signature, args, kwargs)
        self.state.begin_call(sample, args, kwargs)
        if self.on_call is not None:
            self.on_call(self.state.call, args, kwargs)
        return args, kwargs

    def reset_state(self, module):
        return module


def sample_and_timestep(signature: DenoiserSignature, args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    """A denoiser call's sample and timestep, by the names its family's spec gives (U-Nets take
    them by position)."""
    sample = kwargs[signature.sample] if signature.sample in kwargs else args[0]
    timestep = kwargs[signature.timestep] if signature.timestep in kwargs else args[1]
    return sample, timestep


def prediction_of(output: Any) -> torch.Tensor:
    prediction = output[0] if isinstance(output, tuple) else output.sample
    # Z-Image's denoiser returns one prediction per row, as a list.
    return torch.stack(prediction) if isinstance(prediction, list) else prediction


@contextlib.contextmanager
def shadowed(owner: Any, method: str, before: Callable[..., None], arguments: bool = True) -> Iterator[None]:
    """Call ``before(arguments)`` (by parameter name, defaults filled in) ahead of ``owner.method``;
    with ``arguments=False``, ``before()``: binding them costs more than a scheduler step's own work.

    The wrapper is an instance attribute that shadows the class's method, so other instances are
    untouched; on exit the attribute the instance had before (none, or an outer wrapper) is back.
    """
    original = getattr(owner, method, None)
    if original is None:
        yield
        return
    signature = inspect.signature(original)

    @functools.wraps(original)  # pipelines read the signature (prepare_extra_step_kwargs)
    def wrapper(*args, **kwargs):
        if arguments:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            before(bound.arguments)
        else:
            before()
        return original(*args, **kwargs)

    with instance_attribute(owner, method, wrapper):
        yield


@contextlib.contextmanager
def checked(owner: Any, method: str, check: Callable[[Any], None]) -> Iterator[None]:
    """Call ``check(result)`` on what each call of ``owner.method`` returns, before its caller sees
    it; shadowed, and restored on exit, as :func:`shadowed` does."""
    original = getattr(owner, method, None)
    if original is None:
        yield
        return

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        check(result)
        return result

    with instance_attribute(owner, method, wrapper):
        yield
