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
- :mod:`.choices`, :mod:`.plan`: what a patch chooses (CFG branch, keys/values, step window,
  the default start step; importable without torch), :class:`RowPatch` and step windows;
- :mod:`.cache`: :class:`TextCache`;
- :mod:`.run_state`: which step and branch a denoiser call is;
- :mod:`.layer_hooks`, :mod:`.recorder`, :mod:`.replays`: the hooks on a layer, recording, gradients;
- :mod:`.install`: the one context that installs and removes them;
- :mod:`.recording`, :mod:`.patching`: the public calls; :mod:`.text_swap`: the plan edit and guard share;
- :mod:`.input_moments`, :mod:`.text_inputs`: what the text K/V projections read (the LoRA anchor's and the closed-form edit's matrices);
- :mod:`.capture`: a pipeline's denoiser inputs; :mod:`.probabilities`: explicit attention probabilities.

Each public name is imported from its module when first used (:mod:`textloc.lazy`).
"""

from __future__ import annotations

from textloc.lazy import lazy_namespace

#: Each public name and the module it comes from (imported when first used: :mod:`textloc.lazy`).
_EXPORTS: dict[str, str] = {
    "denoiser": "textloc.architectures",
    **dict.fromkeys(("ATTENTION_TEXT_KINDS", "KINDS", "STEP_INDEPENDENT_KINDS", "TEXT_KINDS", "Kind"), "textloc.architectures.spec"),
    **dict.fromkeys(("Branch", "BranchChoice", "KV", "KV_CHOICES", "StepWindow", "DEFAULT_START_STEP"), "textloc.engine.choices"),
    **dict.fromkeys(("TextCache", "TextKV"), "textloc.engine.cache"),
    **dict.fromkeys(("DenoiserInputs", "conditional_settings", "denoiser_inputs"), "textloc.engine.capture"),
    **dict.fromkeys(("patch", "patch_rows", "run_with_patches"), "textloc.engine.patching"),
    **dict.fromkeys(("RowPatch", "check_step_window", "validate_patch", "window_steps"), "textloc.engine.plan"),
    **dict.fromkeys(
        ("AttentionCall", "edit_attention_probabilities", "has_attention_probabilities"),
        "textloc.engine.probabilities",
    ),
    **dict.fromkeys(("record", "record_text", "run_with_cache"), "textloc.engine.recording"),
    **dict.fromkeys(("PairMoments", "paired_text_input_moments", "text_input_moments"), "textloc.engine.text_inputs"),
    "LayerReplay": "textloc.engine.run_state",
    **dict.fromkeys(("TextSwap", "plan_text_swap"), "textloc.engine.text_swap"),
    **dict.fromkeys(
        ("AttentionLayer", "LayerSelector", "attention_layers", "denoiser_parameter_count", "select_layers"),
        "textloc.engine.units",
    ),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_namespace(__name__, _EXPORTS)
