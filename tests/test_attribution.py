"""Attribution patching's gradient against finite differences of the same distance.

A patch of strength ``a`` gives a layer the text K/V ``own + a * (source - own)``; the screen
(:mod:`textloc.localization.attribution`) scores a layer by ``-dm/da`` at ``a = 0``, where ``m`` is
the squared distance between the source row's prediction and the target row's. Here that
derivative, as autograd gives it through a tensor strength, is compared with a central difference
of ``m`` for which the test blends the two prompts' recorded K/V itself and the engine only copies
them in. The reference never goes through the engine's blend, so a blend that runs the wrong way
or misses a row, a branch or a step fails here, and so does a screen with the wrong sign or size.

The pipelines run in float64, where a difference with step ``H = 1e-5`` is off the derivative by
``H**2 * m''' / 6`` plus rounding, ``~1e-16 * m / H``: at most 3e-7 of it here (SDXL's last layer
at strength 1, where the derivative is smallest), and the test allows 1e-5. The screen squares its
distance in float32, so its scores match to float32 precision. The joint architecture is SD3:
FLUX's rotary embedding computes in float32 even in a float64 model, which leaves its differences
accurate to only ~1e-4.

The key-exact screen linearizes m in a layer's attention output only: its score is checked against
a central difference of m along the straight line from the layer's unpatched output to its
output in a run where it alone is patched, read and replaced by plain torch hooks: the reference
never goes through the engine's replays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable

import pytest
import torch

from textloc.engine import RowPatch, TextCache, denoiser, record, run_with_patches, select_layers
from textloc.localization import PromptPair, localize
from textloc.testing import tiny_call_kwargs, tiny_pipeline

PAIR = PromptPair.from_template('A sign that says "{}".', "HELLO", "WORLD")
H = 1e-5


@functools.lru_cache(maxsize=None)
def pipeline64(arch: str):
    return tiny_pipeline(arch).to(torch.float64)


def settings(pipe) -> dict:
    kwargs = tiny_call_kwargs(pipe)
    del kwargs["output_type"]  # the runs here stop after the first step, before any decoding
    return kwargs


def distances(pipe, patches: list[RowPatch | list[RowPatch] | None], strengths: list[torch.Tensor] = ()) -> tuple[list[float], list[float]]:
    """One batch from one noise: row 0 generates the target prompt, row ``i`` the source prompt
    under ``patches[i - 1]`` (a patch, several, or ``None``: unpatched). Returns each patched row's ``m``, the squared
    distance of its prediction to row 0's on the conditional branch at step 0, and ``dm/ds`` for
    each of ``strengths``: each sits in one row's patch and rows do not mix, so the gradient of
    the rows' sum is each row's own."""
    found = {}

    def on_output(call, prediction: torch.Tensor) -> None:
        if call.step == 0 and "cond" in call.branch_rows:
            target, *patched = call.branch_rows["cond"]
            values = (prediction[patched] - prediction[target].detach()).flatten(1).pow(2).sum(1)
            found["m"] = values.tolist()
            if strengths:
                found["dm"] = [gradient.item() for gradient in torch.autograd.grad(values.sum(), list(strengths))]

    rows = [(row, [patch] if isinstance(patch, RowPatch) else patch or []) for row, patch in enumerate(patches, start=1)]
    plans = [dataclasses.replace(patch, row=row) for row, row_patches in rows for patch in row_patches]
    run_with_patches(
        pipe, [PAIR.target] + [PAIR.source] * len(patches), plans, on_output=on_output,
        grad_steps=[0] if strengths else [], stop_at_step=1, **settings(pipe),
    )
    return found["m"], found.get("dm", [])


@functools.lru_cache(maxsize=None)
def recorded(arch: str, layer: str) -> tuple[TextCache, TextCache]:
    """The text K/V of ``layer`` for the pair's source and target prompts, recorded from the
    noise the batched runs start from (joint layers' K/V depend on it)."""
    pipe = pipeline64(arch)
    return tuple(
        record(pipe, layers=[layer], prompt=prompt, generator=torch.Generator("cpu").manual_seed(0), **settings(pipe))
        for prompt in (PAIR.source, PAIR.target)
    )


def blended(arch: str, layer: str, strength: float) -> RowPatch:
    """A patch that replaces ``layer``'s text K/V with ``source + strength * (target - source)``,
    blended here from the recorded K/V: the engine only copies them in, at its default strength."""
    source, target = recorded(arch, layer)
    blend = target.to()  # a copy whose entries are replaced below, not edited in place
    for key, entry in blend.entries.items():
        own = source.entries[key]
        if entry.key is not None:  # the pooled vector has its value alone
            entry.key = own.key + strength * (entry.key - own.key)
        entry.value = own.value + strength * (entry.value - own.value)
    return RowPatch((layer,), source=blend)


@pytest.mark.parametrize("arch", ["sdxl", "deepfloyd-if", "sd3"])  # cross, added_kv, joint
def test_the_strength_gradient_is_the_derivative_of_the_blended_patch(arch):
    pipe = pipeline64(arch)
    layers = select_layers(pipe, "all")
    # The first layer where its patch starts (strength 0), the last unit (the pooled vector, where
    # the family has one) where it is complete (1).
    cases = [(layers[0].name, 0.0), (layers[-1].name, 1.0)]
    strengths = [torch.tensor(value, dtype=torch.float64, requires_grad=True) for _, value in cases]
    engine = [RowPatch((layer,), source=0, strength=strength) for (layer, _), strength in zip(cases, strengths)]
    by_hand = {step: [blended(arch, layer, value + step) for layer, value in cases] for step in (0.0, H, -H)}
    m, derivatives = distances(pipe, [*engine, *by_hand[0.0], *by_hand[H], *by_hand[-H], None], strengths)
    n = len(cases)
    engine_m, hand_m, plus, minus, unpatched = m[:n], m[n : 2 * n], m[2 * n : 3 * n], m[3 * n : 4 * n], m[-1]
    # The prompts' predictions differ and the patches move them: else every number here would be 0
    # (float64 noise: < 1e-24) and every comparison would hold, as when a branch is mislabelled.
    assert unpatched > 1e-9 and min(abs(derivative) for derivative in derivatives) > 1e-9
    # The engine's blend reaches the K/V blended by hand: no patch at 0, the target's at 1.
    assert engine_m == pytest.approx(hand_m, rel=1e-9)
    assert engine_m[0] == pytest.approx(unpatched, rel=1e-9)
    assert derivatives == pytest.approx([(p - q) / (2 * H) for p, q in zip(plus, minus)], rel=1e-5)


class ReadsNothing:
    """The screen needs no OCR; the selection that follows it reads every image as blank."""

    def read(self, images):
        return [""] * len(images)


@pytest.mark.parametrize("arch", ["sdxl", "sd3"])
def test_the_screen_scores_each_layer_by_how_much_its_patch_shrinks_the_distance(arch):
    pipe = pipeline64(arch)
    result = localize(
        pipe, [PAIR], method="attribution", screen="gradient", grad_steps=(0.0,), held_out=0.0, ocr=ReadsNothing(), progress=False,
        **settings(pipe),
    )
    names = [layer.name for layer in result.layers]
    m, _ = distances(pipe, [blended(arch, name, step) for step in (H, -H) for name in names])
    plus, minus = m[: len(names)], m[len(names) :]
    shrinks = [(q - p) / (2 * H) for p, q in zip(plus, minus)]  # -dm/da at a = 0
    largest = max(map(abs, shrinks))
    assert largest > 1e-9  # as above: no vacuous agreement of zeros
    # To float32 precision: the screen squares the distance and sums its scores in float32.
    assert [layer.attribution for layer in result.layers] == pytest.approx(shrinks, rel=1e-4, abs=1e-6 * largest)


@pytest.mark.parametrize("arch", ["sdxl", "deepfloyd-if", "sd3"])  # cross, added_kv, joint
def test_the_integrated_screen_averages_the_gradient_along_the_path_where_every_layer_is_patched(arch):
    # At each point a of the path every layer is patched with strength a; a layer's score is -dm/da
    # of its own strength there, averaged over the points: here against central differences of
    # rows in which every layer is patched at a and the one layer at a +- H. The rows blend through
    # the engine (a float strength): in a joint model a patched layer changes the text stream that
    # later layers' own K/V come from, so K/V blended by hand from unpatched recordings would be
    # another patch. The blend itself is checked against the hand-made one above.
    pipe = pipeline64(arch)
    points = (0.25, 0.75)
    result = localize(
        pipe, [PAIR], method="attribution", screen="integrated", screen_points=2, grad_steps=(0.0,), held_out=0.0,
        ocr=ReadsNothing(), progress=False, **settings(pipe),
    )
    names = [layer.name for layer in result.layers]
    rows = [
        [RowPatch((other,), source=0, strength=a + (step if other == name else 0.0)) for other in names]
        for a in points for name in names for step in (H, -H)
    ]
    m, _ = distances(pipe, rows)
    shrinks = [(q - p) / (2 * H) for p, q in zip(m[0::2], m[1::2])]  # -dm/da, per point and layer
    expected = [sum(shrinks[j * len(names) + i] for j in range(len(points))) / len(points) for i in range(len(names))]
    largest = max(map(abs, expected))
    assert largest > 1e-9
    assert [layer.attribution for layer in result.layers] == pytest.approx(expected, rel=1e-4, abs=1e-6 * largest)
    # Along the path the layers' effects interact: the average differs from the gradient at no patch.
    at_zero, _ = distances(pipe, [blended(arch, name, step) for step in (H, -H) for name in names])
    first_order = [(q - p) / (2 * H) for p, q in zip(at_zero[: len(names)], at_zero[len(names) :])]
    assert max(abs(a - b) for a, b in zip(expected, first_order)) > 1e-3 * largest


@contextlib.contextmanager
def forward_hooks(hooks: dict[torch.nn.Module, Callable]):
    """Plain torch forward hooks, none of the engine's: a hook's return value replaces the module's output."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def as_tuple(output) -> tuple[torch.Tensor, ...]:
    return output if isinstance(output, tuple) else (output,)


def attention_outputs(pipe, names: list[str]) -> dict[str, list[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """Per layer, per call of it at step 0 (FLUX's true CFG calls the denoiser once per branch) and
    per tensor of its output: ``(O, ΔO)`` on the source's batch entries, ``O`` unpatched and ``ΔO``
    what patching the layer alone with the target's text K/V changes. One batch: row 0 the target,
    row 1 the source, row 2 + k the source with layer k patched."""
    n = 2 + len(names)
    modules = {dict(denoiser(pipe).named_modules())[name]: name for name in names}
    calls = {name: [] for name in names}

    def keep(module, args, output) -> None:
        calls[modules[module]].append(as_tuple(output))

    with forward_hooks(dict.fromkeys(modules, keep)):
        distances(pipe, [None, *[RowPatch((name,), source=0) for name in names]])
    # Under CFG prompt row r of n is the batch entries r::n, its unconditional and its conditional one.
    return {
        name: [[(tensor[1::n], tensor[2 + k :: n] - tensor[1::n]) for tensor in output] for output in calls[name]]
        for k, name in enumerate(names)
    }


# FLUX's float32 rotary embedding rounds m (~0.04) by ~1e-10, which puts a 1e-5 step's difference
# off by ~1e-5, several percent of its smaller scores; along t, m is so nearly quadratic that a step
# of 0.1 keeps the central difference within 2e-6 of the derivative, rounding included (measured).
@pytest.mark.parametrize("arch, step", [("sdxl", H), ("deepfloyd-if", H), ("sd3", H), ("flux", 0.1)])  # cross, added_kv, joint, joint + single
def test_the_key_exact_screen_differentiates_along_the_exactly_patched_attention_output(arch, step):
    # A layer's key-exact score is -dm/dt at t = 0 where the layer outputs O + t * ΔO: ΔO from full
    # runs (the layer unpatched, and patched alone) read by plain forward hooks, the derivative by
    # central differences of runs in which such a hook puts O + t * ΔO in the layer's place.
    pipe = pipeline64(arch)
    # The attention layers: the pooled vector's output is linear in t, as the gradient screen's (tested above).
    result = localize(
        pipe, [PAIR], "attention", method="attribution", screen="key-exact", grad_steps=(0.0,), held_out=0.0, ocr=ReadsNothing(),
        progress=False, **settings(pipe),
    )
    names = [layer.name for layer in result.layers]
    changes = attention_outputs(pipe, names)
    n = 1 + 2 * len(names)  # row 0 the target, rows 1 + 2k and 2 + 2k the source with layer k at t = +step and -step
    modules = {dict(denoiser(pipe).named_modules())[name]: k for k, name in enumerate(names)}
    seen = dict.fromkeys(modules, 0)

    def shifted(module, args, output):
        k, call = modules[module], seen[module]
        seen[module] += 1
        moved = tuple(tensor.clone() for tensor in as_tuple(output))
        for tensor, (own, change) in zip(moved, changes[names[k]][call]):
            for row, t in ((1 + 2 * k, step), (2 + 2 * k, -step)):
                tensor[row::n] = own + t * change
        return moved if isinstance(output, tuple) else moved[0]

    with forward_hooks(dict.fromkeys(modules, shifted)):
        m, _ = distances(pipe, [None] * (2 * len(names)))
    expected = [-(plus - minus) / (2 * step) for plus, minus in zip(m[0::2], m[1::2])]
    largest = max(map(abs, expected))
    assert largest > 1e-9  # the patches change the outputs, and the changes move the prediction
    assert [layer.attribution for layer in result.layers] == pytest.approx(expected, rel=1e-5, abs=1e-9 * largest)


def test_a_layer_is_replayed_once_and_only_at_gradient_steps():
    pipe = pipeline64("sdxl")
    name = select_layers(pipe, "all")[0].name
    replay = RowPatch((name,), source=1, row=0)
    for extra, message in (({}, "without grad_steps"), ({"grad_steps": [0], "on_output": print, "replays": [replay, replay]}, "more than once")):
        with pytest.raises(ValueError, match=message):
            run_with_patches(pipe, [PAIR.source, PAIR.target], [], **{"replays": [replay], **extra}, **settings(pipe))
