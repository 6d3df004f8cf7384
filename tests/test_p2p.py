"""Prompt-to-Prompt word swap and the engine's attention-probability hook, on tiny random pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import OTHER, PROMPT, _pipeline, generate
from textloc.engine import attention_layers, edit_attention_probabilities, has_attention_probabilities
from textloc.edit.p2p import prompt_to_prompt, token_mapping
from textloc.pipeline_calls import images_of
from textloc.seeding import generator
from textloc.testing import tiny_call_kwargs, tiny_pipeline

P2P_ARCHS = ("sd15", "sdxl", "deepfloyd-if", "pixart-alpha")
EVERY_STEP = (0.0, 1.0)
NO_STEP = (0.0, 0.4)  # floor(0.4 * 2) = 0: covers no step of the tiny pipelines' 2-step runs
# Batching and the explicit softmax change the order of floating-point reductions a little; a
# replaced attention map moves these images by far more.
TOLERANCE = 1e-4


def p2p(pipe, new_prompt, cross, self, seed=0):
    images = prompt_to_prompt(
        pipe, PROMPT, new_prompt, cross_replace_steps=cross, self_replace_steps=self, generator=generator(seed), **tiny_call_kwargs(pipe)
    )
    return tuple(torch.as_tensor(np.asarray(image)) for image in images)


def direct(pipe, prompt, seed=0):
    return torch.as_tensor(images_of(pipe(prompt=prompt, generator=generator(seed), **tiny_call_kwargs(pipe)))[0])


def probability_layers(pipe):
    return [layer for layer in attention_layers(pipe) if has_attention_probabilities(layer)]


@pytest.mark.parametrize("windows", [(None, None), (NO_STEP, NO_STEP)], ids=["switched-off", "covering-no-step"])
@pytest.mark.parametrize("p2p_arch", P2P_ARCHS)
def test_without_replacement_the_rows_are_the_two_prompts_generated_directly(p2p_arch, windows):
    pipe = _pipeline(p2p_arch)
    source, edited = p2p(pipe, OTHER, *windows)
    torch.testing.assert_close(source, direct(pipe, PROMPT), atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(edited, direct(pipe, OTHER), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("p2p_arch", P2P_ARCHS)
def test_swapping_a_prompt_for_itself_edits_nothing(p2p_arch):
    # Both windows cover every step: every map is replaced, through the identity token mapping.
    source, edited = p2p(_pipeline(p2p_arch), PROMPT, EVERY_STEP, EVERY_STEP)
    assert torch.equal(edited, source)


@pytest.mark.parametrize("p2p_arch", P2P_ARCHS)
def test_replacing_cross_attention_pulls_the_edit_toward_the_source(p2p_arch):
    # Random weights give near-uniform attention that hardly depends on the prompt, so its maps
    # carry almost nothing; sharpened text keys make them prompt-dependent, as in trained models.
    pipe = tiny_pipeline(p2p_arch)
    with torch.no_grad():
        for layer in attention_layers(pipe, ("cross", "added_kv")):
            layer.text_kv_projections[0].weight.mul_(10.0)
    source, edited = p2p(pipe, OTHER, EVERY_STEP, None)  # HELLO -> WORLD: equal token counts
    swapped = direct(pipe, OTHER)
    assert torch.mean((edited - source) ** 2) < 0.9 * torch.mean((swapped - source) ** 2)


@pytest.mark.parametrize("p2p_arch", P2P_ARCHS)
def test_the_hook_reproduces_the_pipeline_and_restores_it_even_after_an_error(p2p_arch):
    pipe = _pipeline(p2p_arch)
    layers = probability_layers(pipe)
    processors = [layer.module.processor for layer in layers]
    plain = generate(pipe)
    calls = []

    def unchanged(call, probabilities):
        calls.append(call)
        return probabilities

    with edit_attention_probabilities(pipe, layers, unchanged):
        explicit = generate(pipe)
    assert {call.step for call in calls} == {0, 1} and {call.layer.name for call in calls} == {layer.name for layer in layers}
    torch.testing.assert_close(explicit, plain, atol=TOLERANCE, rtol=0)  # explicit softmax == fused kernel
    assert all(layer.module.processor is original for layer, original in zip(layers, processors))
    assert torch.equal(generate(pipe), plain)

    def failing(call, probabilities):
        raise RuntimeError("edit failed")

    with pytest.raises(RuntimeError, match="edit failed"), edit_attention_probabilities(pipe, layers, failing):
        generate(pipe)
    assert all(layer.module.processor is original for layer, original in zip(layers, processors))
    p2p(pipe, OTHER, EVERY_STEP, EVERY_STEP)
    assert all(layer.module.processor is original for layer, original in zip(layers, processors))
    assert torch.equal(generate(pipe), plain)


def test_padded_text_gets_no_attention():
    # PixArt pads the prompt to max_sequence_length and masks the padding out.
    pipe = _pipeline("pixart-alpha")
    prompt_tokens = len(pipe.tokenizer(PROMPT.lower()).input_ids)
    maps = []

    def keep(call, probabilities):
        if call.layer.kind == "cross":
            maps.append(probabilities[call.branch_rows["cond"]].clone())
        return probabilities

    with edit_attention_probabilities(pipe, attention_layers(pipe, "cross"), keep):
        generate(pipe)
    for probabilities in maps:
        assert probabilities.shape[-1] > prompt_tokens
        assert probabilities[..., prompt_tokens:].max() < 1e-6
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(probabilities.shape[:-1]))


def test_token_mapping_aligns_unchanged_tokens_and_spreads_the_swapped_word():
    source = [0, 10, 11, 20, 21, 30, 1]  # BOS, "a", "sign", two tokens of the old word, ".", EOS
    target = [0, 10, 11, 40, 41, 42, 30, 1]  # the new word takes three tokens
    mapping = token_mapping(source, target, length=10)
    for source_position, target_position in [(0, 0), (1, 1), (2, 2), (5, 6), (6, 7), (7, 8), (8, 9)]:
        assert torch.equal(mapping[:, target_position], torch.eye(10)[source_position]), (source_position, target_position)
    span = mapping[3:5, 3:6]  # old word (rows) to new word (columns)
    torch.testing.assert_close(span, torch.tensor([[2, 1, 0], [0, 1, 2]]) / 3)  # each old token spread by overlap
    assert mapping[:, 3:6].sum() == 2  # the old word's probability, all of it, lands on the new word
    assert torch.equal(token_mapping(source, [0, 10, 11, 50, 51, 30, 1], 10), torch.eye(10))  # equal counts: 1:1
    with pytest.raises(ValueError, match="word swap"):
        token_mapping(source, [0, 10, 11, 20, 21, 22, 30, 1], 10)  # only adds a token


@pytest.mark.parametrize("joint_arch", ["sd3", "flux", "qwenimage21"])
def test_joint_attention_models_are_refused(joint_arch):
    pipe = _pipeline(joint_arch)
    with pytest.raises(ValueError, match="Prompt-to-Prompt does not apply.*patching"):
        prompt_to_prompt(pipe, PROMPT, OTHER, **tiny_call_kwargs(pipe))
    joint = attention_layers(pipe, ("joint", "single", "prefix"))
    processors = [layer.module.processor for layer in joint]
    with pytest.raises(ValueError, match="Prompt-to-Prompt does not apply.*patching"), edit_attention_probabilities(pipe, joint, lambda call, p: p):
        pass
    assert all(layer.module.processor is original for layer, original in zip(joint, processors))
