"""turn_off: zero and mean ablation at the neuron sites, exact undo, nesting, generate."""

from __future__ import annotations

import pytest
import torch

from neat_llm import NeuronSelection, turn_off
from neat_llm.hooks import capture_inputs, capture_outputs

TEXTS = ["the rain came over the town today", "a cake and bread stayed"]
NEURONS = [(0, 3), (0, 17), (1, 0), (1, 47), (2, 5), (2, 6), (2, 30)]


@pytest.fixture
def model(tiny_llama):
    yield tiny_llama
    for s in tiny_llama.sites:  # every test must leave the shared model clean
        assert not s._forward_pre_hooks and not s._forward_hooks


def _logits(model, texts=TEXTS):
    with torch.inference_mode():
        return model.hf(**model.encode(texts), use_cache=False).logits.clone()


def _run_captured(model, texts=TEXTS):
    with torch.inference_mode(), capture_inputs(dict(enumerate(model.sites))) as acts:
        model.hf(**model.encode(texts), use_cache=False)
    return {l: v[0].clone() for l, v in acts.items()}


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_chosen_neurons_set_everywhere_others_untouched(model, mode):
    means = torch.randn(model.n_layers, model.d_ff, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(model.n_layers, model.d_ff, dtype=torch.bool)
    for l, k in NEURONS:
        mask[l, k] = True
    kwargs = {"means": means} if mode == "mean" else {}

    # capture registered before turn_off sees the unedited input, the inner one sees the edited input
    with capture_inputs(dict(enumerate(model.sites))) as pre:
        with turn_off(model, NEURONS, mode=mode, **kwargs) as sel:
            post = _run_captured(model)
    assert sel.neurons == tuple(NEURONS)
    enc_mask = model.encode(TEXTS)["attention_mask"]
    assert not enc_mask.bool().all()  # padding positions are covered too
    for l in range(model.n_layers):
        x_pre, x_post = pre[l][0], post[l]
        assert x_post.shape == x_pre.shape
        chosen = x_post[..., mask[l]]  # [B, T, n chosen in l]
        want = torch.zeros_like(chosen) if mode == "zero" else means[l, mask[l]].expand_as(chosen)
        assert torch.equal(chosen, want), f"layer {l}"
        assert torch.equal(x_post[..., ~mask[l]], x_pre[..., ~mask[l]]), f"other neurons of layer {l} changed"
        assert (x_pre[..., mask[l]] != want).any()  # the edit did something


def test_unablated_earlier_layer_is_untouched(model):
    base = _run_captured(model)
    with turn_off(model, [(1, 4)]):
        off = _run_captured(model)
    assert torch.equal(base[0], off[0])
    assert torch.equal(off[1][..., 4], torch.zeros_like(off[1][..., 4]))
    assert not torch.equal(base[2], off[2])  # the change propagates downstream


def test_logits_restored_after_exit_and_exception(model):
    before = _logits(model)
    with turn_off(model, NEURONS):
        during = _logits(model)
    assert not torch.equal(before, during)
    assert torch.equal(_logits(model), before)

    with pytest.raises(RuntimeError, match="boom"):
        with turn_off(model, NEURONS, mode="mean", means=torch.ones(model.n_layers, model.d_ff)):
            assert any(s._forward_pre_hooks for s in model.sites)
            raise RuntimeError("boom")
    for s in model.sites:
        assert len(s._forward_pre_hooks) == 0
    assert torch.equal(_logits(model), before)


def test_nesting_equals_union(model):
    a = NeuronSelection(((0, 1), (1, 2), (2, 3)))
    b = NeuronSelection(((1, 2), (1, 9), (2, 40)))
    with turn_off(model, a):
        with turn_off(model, b):
            nested = _logits(model)
        only_a = _logits(model)
    with turn_off(model, a + b):
        union = _logits(model)
    with turn_off(model, a):
        assert torch.equal(only_a, _logits(model))
    assert torch.equal(nested, union)
    assert not torch.equal(only_a, union)


def test_selection_add_dedups_and_keeps_order():
    means = torch.zeros(3, 48)
    a = NeuronSelection(((0, 1), (1, 2), (2, 3)), means=means, scores=(3.0, 2.0, 1.0))
    b = NeuronSelection(((1, 2), (2, 4), (0, 1), (2, 5)))
    s = a + b
    assert s.neurons == ((0, 1), (1, 2), (2, 3), (2, 4), (2, 5))
    assert len(s) == 5 and list(s) == list(s.neurons)
    assert s.means is means
    assert (b + a).means is means
    assert s.by_layer() == {0: [1], 1: [2], 2: [3, 4, 5]}
    assert (a + a).neurons == a.neurons


def test_plain_pairs_and_numpy_ints(model):
    import numpy as np

    with turn_off(model, [(np.int64(1), np.int64(3))]) as sel:
        acts = _run_captured(model)
    assert sel.neurons == ((1, 3),) and isinstance(sel.neurons[0][0], int)
    assert torch.equal(acts[1][..., 3], torch.zeros_like(acts[1][..., 3]))


def test_selection_means_used_for_mean_mode(model):
    means = torch.full((model.n_layers, model.d_ff), 0.25)
    sel = NeuronSelection(((2, 11),), means=means)
    with turn_off(model, sel, mode="mean"):
        acts = _run_captured(model)
    assert torch.all(acts[2][..., 11] == 0.25)


def _generate_with_logits(model, prompt, n=6):
    with capture_outputs({"lm": model.hf.lm_head}) as out, capture_inputs(dict(enumerate(model.sites))) as acts:
        text = model.generate(prompt, max_new_tokens=n)
    return text, [o.clone() for o in out["lm"]], acts


def test_generate_sees_neurons_off_and_is_restored(model):
    prompt = "the rain came over"
    text0, logits0, _ = _generate_with_logits(model, prompt)
    assert len(logits0) >= 2, "generation must take several (cached) steps"
    many = [(l, k) for l in range(model.n_layers) for k in range(0, model.d_ff, 2)]
    with turn_off(model, many):
        text1, logits1, acts1 = _generate_with_logits(model, prompt)
    # every call of every site, the cached single-token decode steps included, had the neurons off
    assert len(acts1[0]) == len(logits1) >= 2
    assert acts1[0][1].shape[1] == 1  # a decode step with the KV cache
    # (the captures here are registered after turn_off's hooks, so they see the edited inputs)
    for l in range(model.n_layers):
        for x in acts1[l]:
            assert torch.all(x[..., 0::2] == 0)
    assert text1 != text0 or any(not torch.equal(a, b) for a, b in zip(logits0, logits1))
    assert not torch.equal(logits0[0], logits1[0])
    text2, logits2, _ = _generate_with_logits(model, prompt)
    assert text2 == text0
    assert len(logits2) == len(logits0) and all(torch.equal(a, b) for a, b in zip(logits0, logits2))


@pytest.mark.parametrize("bad", [[(3, 0)], [(-1, 0)], [(0, 48)], [(1, -1)], [(0, 1), (2, 1000)]])
def test_out_of_range(model, bad):
    with pytest.raises(ValueError, match="out of range"):
        with turn_off(model, bad):
            pass


def test_mean_mode_needs_means(model):
    with pytest.raises(ValueError, match="mean ablation needs mean activations"):
        with turn_off(model, [(0, 1)], mode="mean"):
            pass
    with pytest.raises(ValueError, match="mode must be"):
        with turn_off(model, [(0, 1)], mode="half"):
            pass
