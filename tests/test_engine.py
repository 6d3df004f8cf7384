"""The engine's promises, checked on a tiny random pipeline of every architecture."""

from __future__ import annotations

import inspect

import pytest
import torch
from PIL import Image

import textloc as tl
from conftest import ONE_IMAGE_UNDER_CFG, ONE_TEXT_LENGTH, OTHER, PADS_TO_LONGEST, PROMPT, THIRD, _pipeline, generate, held_prior_tokens, seeded, skip_one_prompt
from textloc.architectures import FAMILIES, family_of
from textloc.architectures.spec import ATTENTION_TEXT_KINDS, STEP_INDEPENDENT_KINDS, TEXT_KINDS
from textloc.engine.run_state import prediction_of
from textloc.engine import (
    RowPatch,
    TextCache,
    TextKV,
    attention_layers,
    denoiser,
    denoiser_inputs,
    record,
    run_with_patches,
    select_layers,
)
from textloc.pipeline_calls import images_of

EXPECTED_KINDS = {
    "sd15": {"cross"},
    "sdxl": {"cross", "pooled"},
    "sd3": {"joint", "pooled"},
    "flux": {"joint", "single", "pooled"},
    "flux2": {"joint", "single"},
    "flux2-klein": {"joint", "single"},
    "chroma": {"joint", "single"},
    "lumina2": {"refiner", "single"},
    "cosmos2": {"cross"},
    "qwenimage": {"joint"},
    "cogview4": {"single"},
    "hunyuan-image": {"joint", "single"},
    "hidream": {"joint", "single", "pooled"},
    "z-image": {"refiner", "single"},
    "ovis-image": {"joint", "single"},
    "longcat-image": {"joint", "single"},
    "hunyuandit": {"cross", "pooled"},
    "kandinsky5": {"joint", "pooled"},
    "qwenimage21": {"prefix"},
    "glm-image": {"single"},
    "ernie-image": {"single"},
    "nucleusmoe-image": {"added_kv"},
    "ideogram4": {"single"},
    "krea2": {"refiner", "single"},
    "auraflow": {"joint", "single"},
    "cogview3plus": {"single"},
    "lumina-next": {"cross", "pooled"},
    "kandinsky3": {"cross", "pooled"},
    "bria": {"joint", "single"},
    "bria-fibo": {"joint", "single"},
    "prx": {"added_kv"},
    "dreamlite": {"cross"},
    "deepfloyd-if": {"added_kv", "pooled"},
    "pixart-alpha": {"cross"},
    "pixart-sigma": {"cross"},
    "sana": {"cross"},
}
# Batching changes the order of floating-point reductions a little; a wrong patch moves the
# images of these tiny models by 1e-3 or more.
BATCH_TOLERANCE = 1e-4


def text_layers(pipe):
    """The attention layers that read the text (the pooled unit has tests of its own)."""
    return attention_layers(pipe, kind=ATTENTION_TEXT_KINDS)


def cache_of(pipe, prompt, layers="all", **overrides):
    return record(pipe, layers, prompt, **seeded(pipe, **overrides))


def test_discovery_finds_the_right_kinds(arch, pipe):
    layers = attention_layers(pipe, kind=TEXT_KINDS)
    assert {layer.kind for layer in layers} == EXPECTED_KINDS[arch]
    assert [layer.index for layer in layers] == list(range(len(layers)))
    # The pooled unit, where there is one, comes after the attention layers: their indices stay.
    assert [layer.kind == "pooled" for layer in layers] == [False] * len(text_layers(pipe)) + [True] * ("pooled" in EXPECTED_KINDS[arch])
    assert all(layer.num_text_kv_params > 0 for layer in layers)
    everything = attention_layers(pipe)
    assert all(layer.index is None for layer in everything if layer.kind == "self")


def test_discovery_follows_forward_order(pipe):
    called = []
    handles = [
        layer.module.register_forward_pre_hook(lambda module, args, name=layer.name: called.append(name))
        for layer in text_layers(pipe)
    ]
    try:
        generate(pipe)
    finally:
        for handle in handles:
            handle.remove()
    names = [layer.name for layer in text_layers(pipe)]
    assert called[: len(names)] == names


def test_patching_with_own_prompt_is_bit_identical(arch, pipe):
    plain = generate(pipe)
    with tl.patch(pipe, "all", cache_of(pipe, PROMPT)):
        assert torch.equal(generate(pipe), plain)
    if EXPECTED_KINDS[arch] <= set(STEP_INDEPENDENT_KINDS):  # injection straight from a prompt
        with tl.patch(pipe, "all", PROMPT, **tiny_kwargs(pipe)):
            assert torch.equal(generate(pipe), plain)


def test_patching_one_layer_changes_the_image_and_only_that_layer(arch, pipe):
    layers = text_layers(pipe)
    target = layers[len(layers) // 2]
    plain = generate(pipe)
    with tl.patch(pipe, target.name, cache_of(pipe, OTHER)):
        patched = generate(pipe)
        inside = cache_of(pipe, PROMPT)  # what every layer saw during a patched run
    assert not torch.allclose(patched, plain, atol=1e-5)
    unpatched = cache_of(pipe, PROMPT)
    changed = {(name, step) for (name, step, branch), entry in unpatched.entries.items() if not torch.equal(entry.value, inside.entries[name, step, branch].value)}
    if EXPECTED_KINDS[arch] - {"pooled"} <= {"cross", "added_kv"}:
        # Text reaches these layers straight from the encoder: the others' inputs are untouched.
        assert {name for name, _ in changed} == {target.name}
    else:
        # Joint layers pass the text stream on: in the first step (or the one entry of a
        # step-independent layer, such as a text prefix) the layers before the patched one see
        # exactly what they saw unpatched (later steps see a different image).
        first_step = {name for name, step in changed if step in (0, None)}
        earlier = {layer.name for layer in layers if layer.index < target.index}
        assert target.name in first_step and not first_step & earlier


def test_shared_sequence_patches_exactly_the_text_tokens(arch, pipe):
    shared = [layer for layer in text_layers(pipe) if layer.route.text_at != "all"]
    if not shared:
        pytest.skip(f"{arch} has no attention where text and image share one sequence")
    layer = shared[-1]
    cache = cache_of(pipe, PROMPT, [layer.name])
    marker = 1234.0
    for entry in cache.entries.values():
        entry.key.fill_(marker)
    key_projection = layer.text_kv_projections[0]
    columns = layer.route.key.columns(layer.module) or slice(None)
    seen, calls = [], []
    handles = [
        key_projection.register_forward_hook(lambda module, args, output: seen.append(output.detach().clone())),
        tl.engine.denoiser(pipe).register_forward_pre_hook(lambda module, args, kwargs: calls.append((args, kwargs)), with_kwargs=True),
    ]
    try:
        with tl.patch(pipe, layer.name, cache, branch="both"):
            generate(pipe)
    finally:
        for handle in handles:
            handle.remove()
    output = seen[0]
    marked = (output[..., columns] == marker).all(-1)  # (batch, tokens): where the text keys went
    text_len = cache.entries[next(iter(cache.entries))].key.shape[1]
    expected = torch.zeros_like(marked)
    if layer.route.text_at == "first":  # from its start: after the left padding where a row has one (Ideogram 4)
        start = family_of(pipe).text_offset(*calls[0])
        expected[:, start : start + text_len] = True
    else:
        expected[:, -text_len:] = True
    assert torch.equal(marked, expected)
    # Nothing outside the key's columns (a fused projection's Q, V, MLP input) took the marker.
    outside = torch.ones(output.shape[-1], dtype=torch.bool)
    outside[columns] = False
    assert not (output[..., outside] == marker).any()


def test_step_window_leaves_earlier_steps_identical(pipe):
    outputs: dict[str, list[torch.Tensor]] = {}

    def run(key, context=None):
        calls = outputs.setdefault(key, [])
        handle = tl.engine.denoiser(pipe).register_forward_hook(lambda m, a, k, out: calls.append(prediction_of(out).clone()), with_kwargs=True)
        try:
            if context is None:
                return generate(pipe)
            with context:
                return generate(pipe)
        finally:
            handle.remove()

    other = cache_of(pipe, OTHER)
    plain = run("plain")
    late = run("late", tl.patch(pipe, "all", other, patch_steps=(0.5, None)))
    assert torch.equal(outputs["late"][0], outputs["plain"][0])  # step 0 of 2: before the window
    assert not torch.equal(late, plain)
    early = run("early", tl.patch(pipe, "all", other, patch_steps=(0, 1)))
    assert not torch.equal(outputs["early"][0], outputs["plain"][0])
    assert not torch.equal(early, late)


def test_exit_restores_the_pipeline_even_after_an_exception(pipe):
    plain = generate(pipe)
    processors = {layer.name: layer.module.processor for layer in attention_layers(pipe) if layer.kind != "pooled"}
    forwards = {name: module.forward for name, module in tl.engine.denoiser(pipe).named_modules()}
    with pytest.raises(RuntimeError, match="boom"):
        with tl.patch(pipe, "all", cache_of(pipe, OTHER)):
            raise RuntimeError("boom")
    assert torch.equal(generate(pipe), plain)
    assert {layer.name: layer.module.processor for layer in attention_layers(pipe) if layer.kind != "pooled"} == processors
    after = {name: module.forward for name, module in tl.engine.denoiser(pipe).named_modules()}
    assert all(after[name] == forward for name, forward in forwards.items())


def test_batched_plan_equals_separate_patched_runs(arch, pipe):
    if arch in ONE_IMAGE_UNDER_CFG:
        pytest.skip("runs one image a call under CFG: a guided batch is refused (test_prx_runs_one_image_a_call_under_cfg)")
    skip_one_prompt(arch)
    layers = text_layers(pipe)
    first, last = layers[0].name, layers[-1].name
    prompts = [PROMPT, PROMPT, OTHER, THIRD]
    plan = [RowPatch((first,), source=2, row=0), RowPatch((last,), source=3, row=1)]
    if arch in ONE_TEXT_LENGTH:
        with pytest.raises(ValueError, match="one token length"):
            run_with_patches(pipe, prompts, plan, **tiny_kwargs(pipe))
        return
    if arch in PADS_TO_LONGEST:  # alone, the prompt's text is shorter than THIRD's: no room for it
        with pytest.raises(ValueError, match="batch the prompt with one as long as the source"), tl.patch(pipe, last, cache_of(pipe, THIRD)):
            generate(pipe)
        return
    batched = torch.as_tensor(images_of(run_with_patches(pipe, prompts, plan, **tiny_kwargs(pipe))))
    for row, (layer, source) in enumerate([(first, OTHER), (last, THIRD)]):
        with tl.patch(pipe, layer, cache_of(pipe, source)):
            separate = generate(pipe)[0]
        torch.testing.assert_close(batched[row], separate, atol=BATCH_TOLERANCE, rtol=0)
    torch.testing.assert_close(batched[2], generate(pipe, OTHER)[0], atol=BATCH_TOLERANCE, rtol=0)


@pytest.mark.parametrize("masked_arch", ["qwenimage", "pixart-alpha", "sana"])
def test_a_row_patched_from_a_longer_prompt_of_its_batch_takes_that_prompts_text_mask(masked_arch):
    # Their text reaches the image only through these layers: a row that reads another row's text
    # K/V at every layer, and that row's text mask, is that row's image.
    pipe = _pipeline(masked_arch)
    names = tuple(layer.name for layer in text_layers(pipe))
    kwargs = {**tiny_kwargs(pipe), **({"negative_prompt": [" ", " "]} if masked_arch == "qwenimage" else {})}
    images = torch.as_tensor(images_of(run_with_patches(pipe, [PROMPT, THIRD], [RowPatch(names, source=1, row=0)], **kwargs)))
    torch.testing.assert_close(images[0], images[1], atol=BATCH_TOLERANCE, rtol=0)


def test_a_kandinsky3_prompt_patched_at_every_unit_from_a_shorter_one_is_that_prompts_image():
    # Its blocks hand every attention the text mask by position: read by name, the mask travels with
    # a source of another length (the pooled vector whole); a longer source does not fit the prompt's cut text.
    pipe = _pipeline("kandinsky3")
    shorter = 'A sign that says "HI".'
    with tl.patch(pipe, "all", cache_of(pipe, shorter)):
        patched = generate(pipe)
    torch.testing.assert_close(patched, generate(pipe, shorter), atol=BATCH_TOLERANCE, rtol=0)
    with pytest.raises(ValueError, match="needs 29 text tokens but this run keeps 27"), tl.patch(pipe, "all", cache_of(pipe, THIRD)):
        generate(pipe)


def test_a_bria_fibo_prompt_patched_at_every_unit_from_a_shorter_one_is_that_prompts_image():
    # Its blocks take a key mask over [text, image] only where some text is padded: one prompt, unguided,
    # runs with none, and the engine makes one, in SDPA's (batch, 1, 1, keys) layout, for a shorter source.
    pipe = _pipeline("bria-fibo")
    shorter = 'A sign that says "HI".'
    for guidance in (1.0, 4.0):
        with tl.patch(pipe, "all", cache_of(pipe, shorter, guidance_scale=guidance)):
            patched = generate(pipe, guidance_scale=guidance)
        torch.testing.assert_close(patched, generate(pipe, shorter, guidance_scale=guidance), atol=BATCH_TOLERANCE, rtol=0)


def test_prx_runs_one_image_a_call_under_cfg_and_batches_unguided():
    # PRXPipeline hands its transformer one timestep per CFG half (t.view(1).repeat(2)): a guided batch
    # is refused in one line; unguided, a row that reads every text unit of another row is that row.
    pipe = _pipeline("prx")
    plan = [RowPatch(tuple(layer.name for layer in text_layers(pipe)), source=1, row=0)]
    with pytest.raises(ValueError, match="one image a call, not 2"):
        run_with_patches(pipe, [PROMPT, OTHER], plan, **tiny_kwargs(pipe))
    images = torch.as_tensor(images_of(run_with_patches(pipe, [PROMPT, OTHER], plan, **{**tiny_kwargs(pipe), "guidance_scale": 1.0})))
    torch.testing.assert_close(images[0], images[1], atol=BATCH_TOLERANCE, rtol=0)


def test_source_row_picks_that_prompt_of_a_cache(arch, pipe):
    if arch in ONE_IMAGE_UNDER_CFG:
        pytest.skip("runs one image a call under CFG: a guided batch is refused (test_prx_runs_one_image_a_call_under_cfg)")
    skip_one_prompt(arch)
    names = tuple(layer.name for layer in text_layers(pipe))
    if arch in ONE_TEXT_LENGTH:
        with pytest.raises(ValueError, match="one token length"):
            cache_of(pipe, [OTHER, THIRD])
        return
    if arch in PADS_TO_LONGEST:
        pytest.skip("OTHER and THIRD are recorded padded to THIRD's length, longer than the prompt's text (see the batched test)")
    both = cache_of(pipe, [OTHER, THIRD])
    second = TextCache(
        both.fingerprint, both.prompts[1:], both.num_steps, both.layers,
        {key: TextKV(None if e.key is None else e.key[1:], e.value[1:], None if e.mask is None else e.mask[1:]) for key, e in both.entries.items()},
        both.num_positions,
    )
    with tl.patch(pipe, names, second):
        expected = generate(pipe)
    for source_row in (1, 0):
        with tl.patch_rows(pipe, [RowPatch(names, source=both, source_row=source_row, row=0)]):
            images = generate(pipe)
        assert torch.equal(images, expected) == (source_row == 1)


def tiny_kwargs(pipe):
    kwargs = seeded(pipe)
    del kwargs["generator"]  # run_with_patches seeds every row itself
    return kwargs


def test_head_subset_patches_only_those_heads(pipe):
    layer = text_layers(pipe)[-1]
    other = cache_of(pipe, OTHER)
    with tl.patch(pipe, layer.name, other):
        every_head = generate(pipe)
    with tl.patch(pipe, layer.name, other, heads=range(layer.num_heads)):
        assert torch.equal(generate(pipe), every_head)
    with tl.patch(pipe, layer.name, other, heads=[0]):
        one_head = generate(pipe)
    assert not torch.equal(one_head, every_head)
    assert not torch.equal(one_head, generate(pipe))


def test_kv_choice_patches_keys_only_values_only_or_both(pipe):
    other = cache_of(pipe, OTHER, "attention")  # the pooled vector has no keys or values
    images = {"none": generate(pipe)}
    with tl.patch(pipe, "attention", other):
        today = generate(pipe)
    for kv in ("k", "v", "both"):
        with tl.patch(pipe, "attention", other, kv=kv):
            images[kv] = generate(pipe)
    assert torch.equal(images["both"], today)
    distinct = list(images.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(distinct) for b in distinct[i + 1 :])
    # Keys from one patch and values from another make up the whole patch.
    halves = [RowPatch(tuple(other.layers), other, kv=kv) for kv in ("k", "v")]
    with tl.patch_rows(pipe, halves):
        assert torch.equal(generate(pipe), today)


def test_kv_choice_writes_only_its_projection(pipe):
    # What the patched layer computes, read back by a recording inside the patch: its keys must be
    # the source's and its values the prompt's own (or the other way round), at every layer kind.
    layers = {layer.kind: layer for layer in text_layers(pipe)}.values()
    for layer in layers:
        own, other = cache_of(pipe, PROMPT, layer.name), cache_of(pipe, OTHER, layer.name)
        first = next(key for key in own.entries if key[1] in (None, 0) and key[2] == "cond")
        for kv, (key_from, value_from) in {"k": (other, own), "v": (own, other), "both": (other, other)}.items():
            with tl.patch(pipe, layer.name, other, kv=kv):
                inside = cache_of(pipe, PROMPT, layer.name).entries[first]
            assert torch.equal(inside.key, key_from.entries[first].key), (layer.kind, kv)
            assert torch.equal(inside.value, value_from.entries[first].value), (layer.kind, kv)


@pytest.mark.parametrize("masked_arch", ["pixart-alpha", "sana"])
def test_half_patch_from_a_differently_masked_source_is_refused(masked_arch):
    # These models pad their text and mask the padding; THIRD is longer than PROMPT, so its mask differs.
    pipe = _pipeline(masked_arch)
    longer = cache_of(pipe, THIRD)
    with tl.patch(pipe, "all", longer):
        generate(pipe)  # the whole K/V and its mask travel together
    for kwargs, part in [({"kv": "k"}, "the keys only"), ({"kv": "v"}, "the values only"), ({"heads": [0]}, "a subset of heads")]:
        with pytest.raises(ValueError, match=f"patching {part} would mix two masks"):
            with tl.patch(pipe, "all", longer, **kwargs):
                generate(pipe)
    with tl.patch(pipe, "all", cache_of(pipe, OTHER), kv="k"):  # same length, same mask: allowed
        generate(pipe)


def test_branch_choice_patches_that_half_only(arch, pipe):
    if type(pipe).__name__ == "Flux2Pipeline":
        pytest.skip("FLUX.2 dev is guidance-distilled: it runs no unconditional branch")
    if arch == "ideogram4":
        pytest.skip("Ideogram 4 runs its unconditional branch on a second model, which reads no text")
    if arch == "qwenimage21":
        pytest.skip("Qwen-Image 2.1 runs no unconditional branch at its default guidance (its true CFG: a test below)")
    # A different negative prompt makes the source's uncond half differ from the run's; where the
    # pipeline fixes its negative prompt (FLUX.2 Klein, GLM-Image), other noise does, through the image.
    takes_negative = "negative_prompt" in inspect.signature(pipe.__call__).parameters and arch not in PADS_TO_LONGEST
    if arch in ONE_TEXT_LENGTH and takes_negative and arch != "kandinsky3":  # which cuts it to the prompt's length
        # Its negative prompt's text length is its own ("blurry text": 12 tokens on Lumina 2, 8 on
        # Kandinsky 5; "" one): another one is refused.
        with pytest.raises(ValueError, match=r"The source has (12|8) text tokens and this run 1"):
            with tl.patch(pipe, "all", cache_of(pipe, OTHER, negative_prompt="blurry text"), branch="uncond"):
                generate(pipe)
        return
    negative = "x" if arch == "nucleusmoe-image" else "blurry text"  # its "" and "x" pad to 72 tokens, "blurry text" to 80
    other = cache_of(pipe, OTHER, **({"negative_prompt": negative} if takes_negative else {"generator": tl.generator(5)}))
    images = {"none": generate(pipe)}
    for branch in ("cond", "uncond", "both"):
        with tl.patch(pipe, "all", other, branch=branch):
            images[branch] = generate(pipe)
    distinct = [images[name] for name in ("none", "cond", "uncond", "both")]
    assert all(not torch.equal(a, b) for i, a in enumerate(distinct) for b in distinct[i + 1 :])


def test_a_record_of_prompt_only_layers_holds_every_branch_of_the_run(arch, pipe):
    static = [layer.name for layer in text_layers(pipe) if layer.kind in STEP_INDEPENDENT_KINDS]
    if not static:
        pytest.skip(f"{arch} has no layer whose text K/V depend on the prompt alone")
    if arch == "qwenimage21":
        pytest.skip("Qwen-Image 2.1 runs no unconditional branch at its default guidance (its true CFG: a test below)")
    # record() stops once nothing more can be added: not after a first, conditional, pass of two.
    cache = cache_of(pipe, PROMPT, static)
    assert {(name, branch) for name, _, branch in cache.entries} == {(name, branch) for name in static for branch in ("cond", "uncond")}


def test_cache_stores_step_independent_layers_once(arch, pipe):
    cache = cache_of(pipe, PROMPT)
    for layer in text_layers(pipe):
        steps = {step for (name, step, branch) in cache.entries if name == layer.name}
        assert steps == ({None} if layer.kind in STEP_INDEPENDENT_KINDS else {0, 1})
    assert cache.nbytes > 0


def test_a_row_that_reads_every_text_unit_of_another_row_is_that_row(arch, pipe):
    skip_one_prompt(arch)
    # Every way the prompt reaches the image is a unit: the text K/V of every attention layer, and
    # the pooled vector where the family has one (without it, SD3, FLUX, SDXL, IF and HiDream rows
    # keep their own pooled text and stay apart); GLM-Image's autoregressive stage is held fixed.
    if arch in ONE_IMAGE_UNDER_CFG:
        pytest.skip("runs one image a call under CFG: a guided batch is refused (test_prx_runs_one_image_a_call_under_cfg)")
    names = tuple(layer.name for layer in select_layers(pipe, "all"))
    plan = [RowPatch(names, source=1, row=0, branch="both")]
    images = torch.as_tensor(images_of(run_with_patches(pipe, [PROMPT, OTHER], plan, **tiny_kwargs(pipe), **held_prior_tokens(pipe))))
    torch.testing.assert_close(images[0], images[1], atol=BATCH_TOLERANCE, rtol=0)


def test_qwenimage21_true_cfg_patches_each_branch_and_reads_the_text_once_per_branch():
    # Qwen-Image 2.1 is sampled without guidance by default; with true CFG it runs a conditional then
    # an unconditional pass in cache_contexts, each with its own text, whose prefix K/V are the
    # prompt's alone: recorded once per branch, a prompt injected straight into either.
    pipe = _pipeline("qwenimage21")
    cfg = {"true_cfg_scale": 4.0, "negative_prompt": " "}
    names = [layer.name for layer in text_layers(pipe)]
    plain = generate(pipe, **cfg)
    own = cache_of(pipe, PROMPT, **cfg)
    assert set(own.entries) == {(name, None, branch) for name in names for branch in ("cond", "uncond")}
    with tl.patch(pipe, "all", own, branch="both"):
        assert torch.equal(generate(pipe, **cfg), plain)
    with tl.patch(pipe, "all", PROMPT, branch="both", **tiny_kwargs(pipe), **cfg):
        assert torch.equal(generate(pipe, **cfg), plain)
    # Another prompt, and another negative prompt of the same token length: each branch patched alone.
    other = cache_of(pipe, OTHER, true_cfg_scale=4.0, negative_prompt="x")
    images = {"none": plain}
    for branch in ("cond", "uncond", "both"):
        with tl.patch(pipe, "all", other, branch=branch):
            images[branch] = generate(pipe, **cfg)
    distinct = list(images.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(distinct) for b in distinct[i + 1 :])
    # Its pipeline encodes one negative prompt for the whole batch: a batch of prompts takes one each.
    batch = {**tiny_kwargs(pipe), "true_cfg_scale": 4.0, "negative_prompt": [" ", " "]}
    rows = torch.as_tensor(images_of(run_with_patches(pipe, [PROMPT, OTHER], [RowPatch(tuple(names), source=1, row=0, branch="both")], **batch)))
    torch.testing.assert_close(rows[0], rows[1], atol=BATCH_TOLERANCE, rtol=0)


def test_qwenimage21_refuses_the_pipelines_step_0_kv_cache():
    # With use_kv_cache=True (the pipeline's default; textloc passes False) the text K/V are computed
    # at step 0 only: later calls hold no text, so a record or patch there would read image tokens.
    pipe = _pipeline("qwenimage21")
    with pytest.raises(ValueError, match="use_kv_cache=False"):
        with tl.patch(pipe, "all", cache_of(pipe, OTHER)):
            generate(pipe, use_kv_cache=True)
    with pytest.raises(ValueError, match="use_kv_cache=False"):
        tl.run_with_cache(pipe, "all", PROMPT, **seeded(pipe, use_kv_cache=True))
    # Without a cache, every step computes the same text K/V again: the cached run's image, to rounding.
    torch.testing.assert_close(generate(pipe), generate(pipe, use_kv_cache=True), atol=1e-5, rtol=0)


def assert_every_unit_reads_prompts_of_other_lengths(pipe, names, long: str, shorter: tuple[str, ...], branch: str) -> None:
    """A row that reads every text unit of a longer prompt of its batch is that prompt's image; a run
    of the long prompt patched from a cache of each shorter one is that one's image (its text, and its
    mask); a source longer than the run's text does not fit: refused, never cut."""
    rows = torch.as_tensor(images_of(run_with_patches(pipe, [PROMPT, long], [RowPatch(names, source=1, row=0, branch=branch)], **tiny_kwargs(pipe))))
    torch.testing.assert_close(rows[0], rows[1], atol=BATCH_TOLERANCE, rtol=0)
    for source in shorter:
        with tl.patch(pipe, "all", cache_of(pipe, source), branch=branch):
            torch.testing.assert_close(generate(pipe, long), generate(pipe, source), atol=BATCH_TOLERANCE, rtol=0)
    with pytest.raises(ValueError, match="batch the prompt with one as long as the source"):
        with tl.patch(pipe, "all", cache_of(pipe, long)):
            generate(pipe)


def test_nucleusmoe_image_patches_the_text_part_of_its_image_and_text_mask():
    # Its text reaches the image only through its added-K/V layers, its keys [image, text] under one
    # attention_mask (None where no token is padding; each call pads to its longest prompt, a multiple
    # of 8). A row patched at every layer from another prompt, with that prompt's text mask, is that
    # prompt's image, whatever the two are padded to.
    pipe = _pipeline("nucleusmoe-image")
    names = tuple(layer.name for layer in text_layers(pipe))
    long, even = 'A sign that says "HELLO" on a long wooden board.', 'A sign that says "HIS".'  # 111 tokens (padded to 112), 88
    odd = 'A sign that says "HI".'  # 87 tokens: padded to 88 alone (masked), where "HIS" has no mask at all
    # From a cache of a shorter prompt (other padding, and a shorter call): its text, and its mask.
    assert_every_unit_reads_prompts_of_other_lengths(pipe, names, long, (odd, even), branch="both")


def test_lumina_next_patches_its_cross_attention_with_the_sources_text_mask():
    # Its prompt reaches the image through its cross-attention (keys masked by encoder_mask, a call
    # padding its prompts to the longest, rounded up to a multiple of 8) and its pooled caption
    # vector. A row that reads every unit of a longer prompt of its batch is that prompt's image; so
    # is a run of a long prompt patched from a cache of a shorter one (its text, and its mask).
    pipe = _pipeline("lumina-next")
    names = tuple(layer.name for layer in select_layers(pipe, "all"))
    long = 'A sign that says "HELLO" on a long board.'  # 42 tokens with <bos>: padded to 48; PROMPT to 32
    assert_every_unit_reads_prompts_of_other_lengths(pipe, names, long, (PROMPT,), branch="both")


def test_auraflow_text_is_its_register_tokens_and_the_prompt_in_both_kinds_of_block():
    # The transformer prepends 8 learned register tokens to the prompt, which attend to it from the
    # first block on: the single blocks' text is the joint blocks' text stream, registers included.
    pipe = _pipeline("auraflow")
    cache = cache_of(pipe, PROMPT)
    kinds = {layer.name: layer.kind for layer in text_layers(pipe)}
    lengths = {(kinds[name], entry.key.shape[1]) for (name, _, _), entry in cache.entries.items()}
    text = 8 + tiny_kwargs(pipe)["max_sequence_length"]  # every prompt is padded to it
    assert lengths == {("joint", text), ("single", text)}


POOLED_ARCHS = [arch for arch, kinds in EXPECTED_KINDS.items() if "pooled" in kinds]


@pytest.mark.parametrize("pooled_arch", POOLED_ARCHS)
def test_the_pooled_vector_is_a_unit_recorded_and_patched_like_a_layer(pooled_arch):
    pipe = _pipeline(pooled_arch)
    (unit,) = select_layers(pipe, "pooled")
    assert unit.kind == "pooled" and unit in select_layers(pipe, "all")
    assert unit.num_text_kv_params == sum(p.numel() for p in unit.module.parameters())
    plain = generate(pipe)
    own = cache_of(pipe, PROMPT, "pooled")
    # The vector depends on the prompt alone: one entry per branch, from the first pass.
    assert {(name, step) for name, step, _ in own.entries} == {(unit.name, None)}
    assert {branch for _, _, branch in own.entries} == {"cond", "uncond"}
    with tl.patch(pipe, "pooled", own):
        assert torch.equal(generate(pipe), plain)
    other = cache_of(pipe, OTHER, "pooled")
    with tl.patch(pipe, unit.name, other):
        patched = generate(pipe)
    assert not torch.allclose(patched, plain, atol=1e-5)
    with tl.patch(pipe, "pooled", OTHER, **tiny_kwargs(pipe)):  # injected from a prompt, encoded once
        assert torch.equal(generate(pipe), patched)
    # The prompt is encoded on a small image: at another size the unit is still the prompt's own
    # (SDXL's reader also takes the size conditioning, which must stay the run's).
    larger = {"height": 64, "width": 64}
    plain_larger = generate(pipe, **larger)
    with tl.patch(pipe, "pooled", PROMPT, **tiny_kwargs(pipe)):
        assert torch.equal(generate(pipe, **larger), plain_larger)
    # In a batch of mixed rows, each row is its separate run.
    plan = [RowPatch((unit.name,), source=2, row=0), RowPatch((unit.name,), source=own, row=1)]
    batched = torch.as_tensor(images_of(run_with_patches(pipe, [PROMPT, OTHER, OTHER, PROMPT], plan, **tiny_kwargs(pipe))))
    torch.testing.assert_close(batched[0], patched[0], atol=BATCH_TOLERANCE, rtol=0)
    with tl.patch(pipe, "pooled", own):
        torch.testing.assert_close(batched[1], generate(pipe, OTHER)[0], atol=BATCH_TOLERANCE, rtol=0)
    torch.testing.assert_close(batched[3], plain[0], atol=BATCH_TOLERANCE, rtol=0)


def test_the_pooled_vector_takes_no_heads_or_half_patch_and_a_model_without_one_says_so():
    pipe = _pipeline("sd3")
    cache = cache_of(pipe, OTHER, "all")
    for partial in ({"heads": [0]}, {"kv": "k"}, {"kv": "v"}):
        with pytest.raises(ValueError, match="pooled text vector, one vector per row with no heads"):
            with tl.patch(pipe, "all", cache, **partial):
                pass
    with pytest.raises(ValueError, match="has no pooled text vector"):
        select_layers(_pipeline("sd15"), "pooled")


PUBLISHED = [(family, published) for family in FAMILIES for published in family.published]


@pytest.mark.parametrize(("family", "published"), PUBLISHED, ids=[published.model for _, published in PUBLISHED])
def test_every_published_denoiser_has_at_real_size_the_text_units_of_its_tiny_pipelines(family, published):
    # Built on the meta device from the published config: the spec's rules find the same kinds of
    # text units as on the family's tiny pipelines, under the real model's module names.
    model = published.build_on_meta()
    units = attention_layers(model, kind=TEXT_KINDS)
    assert {unit.kind for unit in units} == set().union(*(EXPECTED_KINDS[arch] for arch in family.tiny))
    assert all(unit.num_text_kv_params > 0 for unit in units)


# ----------------------------------------------------------------------------------------------
# Bad input


def test_unknown_layer_names_the_closest_real_ones(pipe):
    real = text_layers(pipe)[0].name
    with pytest.raises(ValueError, match="Closest real layers") as error:
        select_layers(pipe, real + "x")
    assert real in str(error.value)
    with pytest.raises(ValueError, match="No text-conditioned layer matches"):
        select_layers(pipe, "nothing.*.attn9")
    with pytest.raises(ValueError, match="out of range"):
        select_layers(pipe, 999)
    with pytest.raises(ValueError, match="Empty layer selection"):
        select_layers(pipe, [])


def test_block_name_selects_the_text_layers_inside_it(arch, pipe):
    layers = text_layers(pipe)
    block = layers[-1].name.rsplit(".", 1)[0]  # the module that holds the last text layer
    inside = [layer.name for layer in layers if layer.name.startswith(block + ".")]
    assert [layer.name for layer in select_layers(pipe, block)] == inside
    assert len(select_layers(pipe, block.split(".")[0])) >= len(inside)
    with pytest.raises(ValueError, match="Unknown layer"):
        select_layers(pipe, block[:-1])  # a name cut short is not a block


def test_self_layer_cannot_be_patched():
    pipe = _pipeline("sdxl")
    self_layer = next(layer for layer in attention_layers(pipe) if layer.kind == "self")
    with pytest.raises(ValueError, match="self-attention"):
        with tl.patch(pipe, self_layer.name, PROMPT):
            pass


def test_cache_follows_the_weights_not_the_folder(tmp_path):
    from textloc.testing import tiny_pipeline

    sd15 = _pipeline("sd15")
    cache = cache_of(sd15, OTHER)
    with tl.patch(sd15, "all", cache):
        patched = generate(sd15)
    # The same weights saved and loaded from another folder: the cache still applies.
    sd15.save_pretrained(tmp_path / "copy")
    copy = type(sd15).from_pretrained(tmp_path / "copy")
    copy.set_progress_bar_config(disable=True)
    with tl.patch(copy, "all", cache):
        assert torch.equal(generate(copy), patched)
    # Same config and layer names, other weights (as after fine-tuning): refused.
    retrained = tiny_pipeline("sd15", seed=1)
    with pytest.raises(ValueError, match="recorded on other weights"):
        with tl.patch(retrained, "all", cache):
            pass


def test_cache_from_another_architecture_or_step_count_is_refused():
    sd15, sdxl = _pipeline("sd15"), _pipeline("sdxl")
    with pytest.raises(ValueError, match="recorded on other weights"):
        with tl.patch(sdxl, "all", cache_of(sd15, OTHER)):
            generate(sdxl)
    with pytest.raises(ValueError, match="not recorded at .*; record those layers too"):
        with tl.patch(sdxl, "all", cache_of(sdxl, OTHER, layers=0)):
            generate(sdxl)
    sd3 = _pipeline("sd3")
    three_steps = cache_of(sd3, OTHER, num_inference_steps=3)
    with pytest.raises(ValueError, match="recorded over 3 steps .* but the run has 2"):
        with tl.patch(sd3, "all", three_steps):
            generate(sd3)


def test_second_order_schedulers_count_their_steps_not_their_calls():
    from diffusers import HeunDiscreteScheduler

    pipe = _pipeline("sd15")
    stock = pipe.scheduler
    pipe.scheduler = HeunDiscreteScheduler.from_config(stock.config)
    try:
        assert cache_of(pipe, OTHER, num_inference_steps=3).num_steps == 3  # 5 timesteps, 3 steps
    finally:
        pipe.scheduler = stock


def test_prompt_source_on_joint_layers_asks_for_a_cache():
    with pytest.raises(ValueError, match="tl.record"):
        with tl.patch(_pipeline("flux"), "all", OTHER):
            pass


def test_unsupported_pipeline_is_a_clear_error():
    class NotAPipeline:
        pass

    with pytest.raises(ValueError, match="Unsupported pipeline class NotAPipeline"):
        attention_layers(NotAPipeline())


def test_bad_heads_steps_branch_and_kv_are_refused():
    pipe = _pipeline("sdxl")
    layer = text_layers(pipe)[0]
    for kwargs, message in [
        ({"heads": [layer.num_heads]}, "do not exist"),
        ({"patch_steps": (0.5, 1.5)}, r"lies in \[0, 1\]"),
        ({"branch": "neg"}, "branch must be"),
        ({"kv": "key"}, "kv must be 'k' .* or 'both', not 'key'"),
        ({"patch_steps": "3:"}, r"write e.g. \(3, None\) for '3:'"),
    ]:
        with pytest.raises(ValueError, match=message):
            with tl.patch(pipe, layer.name, PROMPT, **kwargs):
                pass


def test_arguments_of_the_wrong_type_are_told_their_right_form():
    pipe = _pipeline("sdxl")
    name = text_layers(pipe)[0].name
    with pytest.raises(TypeError, match=r"heads is a list of head indices, e.g. \[1\]"):
        with tl.patch(pipe, name, PROMPT, heads=1):
            pass
    calls = [
        (lambda: run_with_patches(pipe, [PROMPT, OTHER], [RowPatch(name, source=1, row=0)]), r"write \('.*attn2',\)"),
        (lambda: run_with_patches(pipe, [PROMPT, OTHER], RowPatch((name,), source=1, row=0)), r"write \[RowPatch"),
        (lambda: tl.run_with_cache(pipe, name, PROMPT, generator=0), r"torch.Generator \(e.g. tl.generator\(0\)\)"),
        (lambda: run_with_patches(pipe, [PROMPT], [], generator=3), r"tl.generator\(3\)"),
    ]
    for call, message in calls:
        with pytest.raises(TypeError, match=message):
            call()


def test_strength_blends_and_carries_gradients(arch, pipe):
    if arch in ONE_IMAGE_UNDER_CFG:
        pytest.skip("runs one image a call under CFG: a guided batch is refused (test_prx_runs_one_image_a_call_under_cfg)")
    skip_one_prompt(arch)
    layer = text_layers(pipe)[-1].name
    prompts = [PROMPT, OTHER]

    def row0(strength, **extra):
        plan = [RowPatch((layer,), source=1, row=0, strength=strength)]
        return torch.as_tensor(images_of(run_with_patches(pipe, prompts, plan, **tiny_kwargs(pipe), **extra))[0])

    plain = torch.as_tensor(images_of(run_with_patches(pipe, prompts, [], **tiny_kwargs(pipe)))[0])
    torch.testing.assert_close(row0(0.0), plain, atol=BATCH_TOLERANCE, rtol=0)
    # A tensor strength of 1 goes through the blend; it must land where a plain replacement does.
    torch.testing.assert_close(row0(torch.tensor(1.0)), row0(1.0), atol=BATCH_TOLERANCE, rtol=0)
    assert not torch.allclose(row0(0.5), row0(1.0), atol=1e-5)

    alpha = torch.zeros((), requires_grad=True)
    gradients = []

    def on_output(call, prediction):
        if prediction.requires_grad and "cond" in call.branch_rows:
            patched, source = (prediction[i] for i in call.branch_rows["cond"])
            gradients.append(torch.autograd.grad(((patched - source.detach()) ** 2).sum(), alpha)[0])

    plan = [RowPatch((layer,), source=1, row=0, strength=alpha)]
    assert run_with_patches(pipe, prompts, plan, on_output=on_output, grad_steps=[0], stop_at_step=1, **tiny_kwargs(pipe)) is None
    assert len(gradients) == 1 and gradients[0] != 0
    assert all(not p.requires_grad or p.grad is None for p in tl.engine.denoiser(pipe).parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("half_arch", ["sdxl", "flux", "deepfloyd-if"])
def test_half_precision_patching(half_arch, dtype):
    from textloc.testing import tiny_pipeline

    pipe = tiny_pipeline(half_arch).to(dtype=dtype)
    plain = generate(pipe)
    own = cache_of(pipe, PROMPT)
    assert {entry.value.dtype for entry in own.entries.values()} == {dtype}
    with tl.patch(pipe, "all", own):
        assert torch.equal(generate(pipe), plain)
    with tl.patch(pipe, "all", cache_of(pipe, OTHER)):
        assert not torch.equal(generate(pipe), plain)


def without_guidance(pipe) -> dict:
    kwargs = seeded(pipe, guidance_scale=family_of(pipe).training.unguided_scale)  # Z-Image guides at any scale > 0
    if "guidance_scale" not in inspect.signature(pipe.__call__).parameters:
        del kwargs["guidance_scale"]  # HunyuanImage: its guiders' passes, the conditional one first
    kwargs.pop("true_cfg_scale", None)
    kwargs.pop("negative_prompt", None)
    return kwargs


# Their specs refuse: EDM preconditioning, prior tokens, or (DreamLite) a reference image's latents beside the sample.
DENOISER_INPUTS_REFUSED = ("cosmos2", "glm-image", "dreamlite")


def test_denoiser_inputs_replay_the_pipelines_own_call_at_any_sample_and_timestep(arch, pipe):
    if arch in DENOISER_INPUTS_REFUSED:
        with pytest.raises(ValueError, match=f"denoiser_inputs does not support the {arch} family yet"):
            denoiser_inputs(pipe, [PROMPT, OTHER], **without_guidance(pipe))
        return
    inputs = denoiser_inputs(pipe, [PROMPT, OTHER], **without_guidance(pipe))
    model = denoiser(pipe)
    batch = inputs.training.batch or (lambda rows: rows)  # Z-Image takes and returns lists of rows
    # Ideogram 4: its sample argument holds the text's zeros ahead of the latents it samples.
    start = inputs.training.sample_start(inputs.kwargs) if inputs.training.sample_start else 0
    with torch.no_grad():
        own = batch(model(*inputs.args, **inputs.kwargs)[0])[:, start:]
        sample = inputs.kwargs.get("hidden_states", inputs.kwargs.get("sample", inputs.args[0] if inputs.args else None))
        sample = batch(sample)[:, start:]
        if inputs.training.prediction is not None:  # Qwen-Image 2.1 predicts its text tokens too
            own = inputs.training.prediction(own, sample)
        first = pipe.scheduler.timesteps[0].expand(2)
        replayed = inputs(model, sample, first)
        moved = inputs(model, torch.randn_like(sample), first)
        later = inputs(model, sample, pipe.scheduler.timesteps[-1].expand(2))
    torch.testing.assert_close(replayed, own[:, : sample.shape[1]])
    assert not torch.allclose(moved, replayed), "the sample was not substituted"
    assert not torch.allclose(later, replayed), "the timestep was not substituted"
    # FLUX-style pipelines pass the denoiser t / 1000; Lumina 2, Z-Image and Ideogram 4 1 - t / 1000 (0 is noise).
    name = family_of(pipe).name
    expected = 0.25 if name in ("flux", "flux2", "chroma", "qwenimage", "ovis-image", "longcat-image", "nucleusmoe-image", "krea2", "qwenimage21", "auraflow", "prx") else 0.75 if name in ("lumina2", "z-image", "ideogram4", "lumina-next") else 250.0
    assert inputs.time(torch.tensor([250.0])).item() == pytest.approx(expected)


def test_denoiser_inputs_refuse_a_guided_call(arch, pipe):
    if arch in DENOISER_INPUTS_REFUSED:
        pytest.skip("its spec refuses denoiser_inputs whatever the guidance (see the test above)")
    guidance = family_of(pipe).guidance
    if guidance.distilled or guidance.call_order is not None or arch in ("qwenimage", "qwenimage21", "cogview4", "hunyuan-image", "ovis-image", "longcat-image"):
        # FLUX, Chroma, Qwen-Image (1 and 2.1), CogView4, HunyuanImage, Ovis-Image and LongCat-Image run CFG as two calls
        # (FLUX.2 dev none), the conditional one first: that one is captured.
        guided, plain = denoiser_inputs(pipe, PROMPT, **seeded(pipe)), denoiser_inputs(pipe, PROMPT, **without_guidance(pipe))
        torch.testing.assert_close(guided.kwargs["encoder_hidden_states"], plain.kwargs["encoder_hidden_states"])
        return
    with pytest.raises(ValueError, match="classifier-free guidance"):
        denoiser_inputs(pipe, PROMPT, **seeded(pipe))


def test_the_callers_prompt_list_is_left_as_it_was():
    # Z-Image's pipeline wraps each prompt of the list it is given in its chat template, in place.
    pipe = _pipeline("z-image")
    prompts = [PROMPT, OTHER]
    cache = record(pipe, "all", prompts, **tiny_kwargs(pipe))
    assert prompts == [PROMPT, OTHER] and cache.prompts == [PROMPT, OTHER]


def test_glm_image_draws_each_prompts_prior_tokens_alone_and_refuses_image_conditioning():
    # Its autoregressive stage samples a whole batch's prior tokens in one call, so a row's depend on
    # the other rows: inside textloc each prompt's are drawn alone, as a call with that prompt alone draws them.
    pipe = _pipeline("glm-image")
    seen = []
    handle = denoiser(pipe).register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["prior_token_id"]), with_kwargs=True)
    try:
        alone = []
        for prompt in (PROMPT, OTHER, PROMPT):
            generate(pipe, prompt)
            alone.append(seen[-1])
        generate(pipe, [PROMPT, OTHER, PROMPT])
        plain = seen[-1]
        run_with_patches(pipe, [PROMPT, OTHER, PROMPT], [], **tiny_kwargs(pipe))
    finally:
        handle.remove()
    assert torch.equal(seen[-1], torch.cat(alone))
    assert not torch.equal(plain, torch.cat(alone)), "the pipeline itself draws a batch's tokens together"
    image = Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="image-conditioned generation"):
        record(pipe, "all", PROMPT, image=[image], **tiny_kwargs(pipe))
    assert "generate_prior_tokens" not in vars(pipe), "the pipeline is as it was"
