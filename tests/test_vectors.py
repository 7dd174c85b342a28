"""Concept vectors, reading layer, and the text pass (pooling, padding invariance, neuron statistics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import build_tiny, concept_texts
from neat_llm.concepts.representations import text_pass
from neat_llm.concepts.vectors import ConceptReadout, choose_reading_layer, concept_vectors, layer_aurocs
from neat_llm.hooks import capture_inputs


def _synthetic(n=40, L=3, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, L, d, generator=g)
    y = torch.arange(n) % 3 == 0  # unbalanced on purpose
    return h, y


# --- concept vectors --------------------------------------------------------------------------------
def test_diff_means_by_hand():
    h, y = _synthetic()
    c = concept_vectors(h, y, "diff-means")
    assert c.shape == (3, 8)
    for l in range(3):
        pos = torch.stack([h[i, l] for i in range(len(y)) if y[i]])
        neg = torch.stack([h[i, l] for i in range(len(y)) if not y[i]])
        diff = pos.sum(0) / len(pos) - neg.sum(0) / len(neg)
        torch.testing.assert_close(c[l], diff / diff.norm(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(3))


def test_diff_means_accepts_int_labels():
    h, y = _synthetic()
    torch.testing.assert_close(concept_vectors(h, y.long()), concept_vectors(h, y))


def test_centroid_by_hand():
    h, y = _synthetic(seed=1)
    c = concept_vectors(h, y, "centroid")
    for l in range(3):
        mean = h[y.nonzero().flatten(), l].sum(0) / int(y.sum())
        torch.testing.assert_close(c[l], mean / mean.norm(), atol=1e-6, rtol=1e-5)


def test_cav_separates_separable_data():
    g = torch.Generator().manual_seed(3)
    n, L, d = 60, 2, 10
    h = torch.randn(n, L, d, generator=g)
    y = torch.arange(n) % 2 == 0
    w = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    h[:, 1] += torch.where(y, 3.0, -3.0)[:, None] * w  # layer 1 separable along w with a margin
    h[:, 1] += 5.0  # an offset the intercept must absorb
    c = concept_vectors(h, y, "cav")
    assert c.shape == (L, d)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(L))
    s = (h[:, 1] @ c[1]).numpy()
    assert roc_auc_score(y.numpy(), s) == 1.0
    assert float(c[1] @ w) > 0.7  # it found the planted direction
    # deterministic for a seed
    torch.testing.assert_close(concept_vectors(h, y, "cav", seed=0), c)


def test_unknown_method():
    h, y = _synthetic()
    with pytest.raises(ValueError, match="unknown concept-vector method"):
        concept_vectors(h, y, "pca")


# --- reading layer ----------------------------------------------------------------------------------
def test_choose_reading_layer():
    assert choose_reading_layer(np.array([0.5, 0.9, 0.7])) == 1
    assert choose_reading_layer(np.array([0.9, 0.5, 0.9, 0.6])) == 2  # tie goes to the later layer
    assert choose_reading_layer(np.array([1.0, 1.0, 1.0])) == 2
    assert choose_reading_layer(np.array([0.8, 0.8 - 1e-12, 0.3])) == 1  # within tolerance: a tie
    assert choose_reading_layer(np.array([0.8, 0.79, 0.3])) == 0


@pytest.mark.parametrize("signal_layer", [0, 2])
@pytest.mark.parametrize("method", ["diff-means", "cav"])
def test_layer_aurocs_finds_the_signal_layer(signal_layer, method):
    g = torch.Generator().manual_seed(5)
    n, L, d = 50, 4, 6
    h = torch.randn(n, L, d, generator=g)
    y = torch.arange(n) % 2 == 1
    h[:, signal_layer, 0] += torch.where(y, 2.5, -2.5)
    aucs = layer_aurocs(h, y, method=method, folds=5, seed=0)
    assert aucs.shape == (L,)
    assert aucs[signal_layer] > 0.95
    assert all(aucs[l] < 0.8 for l in range(L) if l != signal_layer)
    assert choose_reading_layer(aucs) == signal_layer


def test_readout_score():
    v = torch.tensor([1.0, 0.0, -1.0])
    r = ConceptReadout(layer=1, vector=v)
    h = torch.tensor([[2.0, 5.0, 1.0], [0.0, 0.0, 3.0]])
    torch.testing.assert_close(r.score(h), torch.tensor([1.0, -3.0]))


# --- text pass --------------------------------------------------------------------------------------
def _texts():
    pos, neg = concept_texts(5)
    # very different lengths so the batches hold real padding
    return pos + neg + ["rain", "the storm and the thunder and the hail came over the town near the river today"]


@pytest.fixture(scope="module")
def tiny_gpt2(tokenizer):
    return build_tiny("gpt2", tokenizer)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_padding_never_changes_residuals(kind, request):
    model = request.getfixturevalue("tiny_llama" if kind == "llama" else "tiny_gpt2")
    texts = _texts()
    lens = [len(model.tokenizer(t)["input_ids"]) for t in texts]
    assert max(lens) - min(lens) > 10
    for pool in ("last", "mean"):
        batched = text_pass(model, texts, pool=pool, batch_size=8)
        alone = text_pass(model, texts, pool=pool, batch_size=1)
        assert batched.residuals.shape == (len(texts), model.n_layers, model.d_model)
        torch.testing.assert_close(batched.residuals, alone.residuals, atol=1e-5, rtol=0)
        assert batched.lengths.tolist() == lens
        assert batched.residuals.abs().max() > 0.1


def test_pooling_is_last_and_mean_of_block_outputs(tiny_llama):
    from neat_llm.hooks import capture_outputs

    texts = _texts()[:3]
    last = text_pass(tiny_llama, texts, pool="last", batch_size=3)
    mean = text_pass(tiny_llama, texts, pool="mean", batch_size=3)
    for i, t in enumerate(texts):
        enc = tiny_llama.encode([t])
        with torch.inference_mode(), capture_outputs(dict(enumerate(tiny_llama.blocks))) as res:
            tiny_llama.hf(**enc, use_cache=False)
        h = torch.stack([res[l][0][0] for l in range(tiny_llama.n_layers)])  # [L, T, d]
        torch.testing.assert_close(last.residuals[i], h[:, -1], atol=1e-5, rtol=0)
        torch.testing.assert_close(mean.residuals[i], h.mean(1), atol=1e-5, rtol=0)


def test_bad_pool(tiny_llama):
    with pytest.raises(ValueError, match="pool"):
        text_pass(tiny_llama, ["rain"], pool="max")


def _direct_site_inputs(model, texts):
    """Site activations of each text run alone (no padding): list over texts of [L, T, d_ff]."""
    out = []
    for t in texts:
        enc = model.encode([t])
        with torch.inference_mode(), capture_inputs(dict(enumerate(model.sites))) as acts:
            model.hf(**enc, use_cache=False)
        out.append(torch.stack([acts[l][0][0] for l in range(model.n_layers)]).float())
    return out


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_neuron_stats_match_direct_capture(kind, request):
    model = request.getfixturevalue("tiny_llama" if kind == "llama" else "tiny_gpt2")
    _, neg = concept_texts(6)
    texts = neg + ["cake", "the bread and the cheese and the honey and the rice stayed near the river by the hills"]
    k = 4
    stats = text_pass(model, texts, batch_size=5, neuron_stats=True, top_k=k)
    direct = _direct_site_inputs(model, texts)
    all_tokens = torch.cat(direct, dim=1)  # [L, total tokens, d_ff]
    assert stats.n_tokens == all_tokens.shape[1] == int(stats.lengths.sum())
    # contrast means as run_find computes them: neuron_sum / n_tokens
    means = (stats.neuron_sum / stats.n_tokens).float()
    torch.testing.assert_close(means, all_tokens.double().mean(1).float(), atol=1e-5, rtol=1e-5)
    # top values: the true per-neuron maxima over real (non-padding) tokens
    true_top = all_tokens.topk(k, dim=1).values.permute(0, 2, 1)  # [L, d_ff, k]
    torch.testing.assert_close(stats.top_values, true_top, atol=1e-5, rtol=1e-5)
    # and each (text, position) points at a real token holding that value
    L, d_ff = model.n_layers, model.d_ff
    for l in range(L):
        for j in range(0, d_ff, 7):
            for v, ti, p in zip(stats.top_values[l, j], stats.top_text[l, j], stats.top_pos[l, j]):
                assert 0 <= p < direct[ti].shape[1], "top position is a padding token"
                assert abs(direct[ti][l, p, j].item() - v.item()) < 1e-5


def test_neuron_stats_ignore_padding_that_would_win(tiny_gpt2):
    """Padding activations exist and sometimes exceed every real token; they must never be counted."""
    texts = ["rain", "the storm and the thunder and the hail came over the town near the river today"]
    enc = tiny_gpt2.encode(texts)
    mask = enc["attention_mask"].bool()
    assert not mask.all(), "the batch must contain padding"
    with torch.inference_mode(), capture_inputs(dict(enumerate(tiny_gpt2.sites))) as acts:
        tiny_gpt2.hf(**enc, use_cache=False)
    direct = torch.cat(_direct_site_inputs(tiny_gpt2, texts), dim=1)
    with_padding = torch.stack([acts[l][0].flatten(0, 1).max(0).values for l in range(tiny_gpt2.n_layers)])
    assert (with_padding > direct.max(1).values + 1e-4).any(), "padding never wins: the test would prove nothing"
    stats = text_pass(tiny_gpt2, texts, batch_size=2, neuron_stats=True, top_k=1)
    torch.testing.assert_close(stats.top_values[..., 0], direct.max(1).values, atol=1e-5, rtol=1e-5)
    assert stats.n_tokens == int(mask.sum())
