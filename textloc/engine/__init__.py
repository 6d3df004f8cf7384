"""The engine: every text-conditioned attention unit of a diffusers pipeline, its text K/V recorded and patched.

It never replaces an attention processor (but for explicit probabilities, :mod:`.probabilities`):
while a context is open it registers ``diffusers.hooks`` on the denoiser (step and CFG branch, from
the pipeline's own state), on each chosen attention module (its text mask) and on the layer's text
K/V projections, whose outputs are recorded or overwritten for chosen rows, heads, steps and
branches. Closing the context removes every hook: the pipeline is exactly as it was.

A patch source is another row of the same batch (a "live" source: for joint layers exactly the
paper's cached patching, with no cache to hold) or a :class:`TextCache` recorded earlier. Text K/V
of ``cross`` and ``added_kv`` layers depend on the prompt only, so a cache stores them once;
``joint`` and ``single`` layers are stored per step and branch.

One concern a module:

- :mod:`.units`: the attention layers, their kinds, the selector grammar;
- :mod:`.branches`, :mod:`.plan`: CFG branches, :class:`RowPatch` and step windows;
- :mod:`.cache`: :class:`TextCache`;
- :mod:`.run_state`: which step and branch a denoiser call is;
- :mod:`.layer_hooks`, :mod:`.recorder`, :mod:`.replays`: the hooks on a layer, recording, gradients;
- :mod:`.install`: the one context that installs and removes them;
- :mod:`.recording`, :mod:`.patching`: the public calls; :mod:`.text_swap`: the plan edit and guard share;
- :mod:`.capture`: a pipeline's denoiser inputs; :mod:`.probabilities`: explicit attention probabilities.
"""

from textloc.architectures import denoiser
from textloc.architectures.spec import KINDS, STEP_INDEPENDENT_KINDS, TEXT_KINDS, Kind
from textloc.engine.branches import Branch, BranchChoice
from textloc.engine.cache import TextCache, TextKV
from textloc.engine.capture import DenoiserInputs, denoiser_inputs
from textloc.engine.patching import patch, patch_rows, run_with_patches
from textloc.engine.plan import KV, KV_CHOICES, RowPatch, StepWindow, check_step_window, validate_patch, window_steps
from textloc.engine.probabilities import AttentionCall, edit_attention_probabilities, has_attention_probabilities
from textloc.engine.recording import record, record_text, run_with_cache
from textloc.engine.run_state import LayerReplay
from textloc.engine.text_swap import DEFAULT_START_STEP, TextSwap, plan_text_swap
from textloc.engine.units import AttentionLayer, LayerSelector, attention_layers, denoiser_parameter_count, select_layers

__all__ = [
    "DEFAULT_START_STEP", "KINDS", "KV", "KV_CHOICES", "STEP_INDEPENDENT_KINDS", "TEXT_KINDS",
    "AttentionCall", "AttentionLayer", "Branch", "BranchChoice", "DenoiserInputs", "Kind", "LayerReplay",
    "LayerSelector", "RowPatch", "StepWindow", "TextCache", "TextKV", "TextSwap",
    "attention_layers", "check_step_window", "denoiser", "denoiser_inputs", "denoiser_parameter_count",
    "edit_attention_probabilities", "has_attention_probabilities", "patch", "patch_rows", "plan_text_swap",
    "record", "record_text", "run_with_cache", "run_with_patches", "select_layers", "validate_patch", "window_steps",
]
