"""Position-restricted NEAT (a neuron turned off at the read position only): the KV-cache replay
and the all-position fallback give the same numbers as the plain reference (one full forward with
one hook at the last token per neuron), on tiny models of every adapter family."""

import warnings

import pytest
import torch

from conftest import FAMILY_KINDS, build_tiny, close_scores as _close, concept_texts
from neat_llm.concepts.vectors import ConceptReadout
from neat_llm.interventions import Mean
from neat_llm.scoring import NeatScorer, ProbeSet, ReferenceScorer, ScoringTask
from neat_llm.scoring.neat import ProbeCache
from neat_llm.scoring.positions import ReadPositionCache


def _task(m, layer=2, seed=1, **kw):
    pos, neg = concept_texts(4)
    torch.manual_seed(seed)
    readout = ConceptReadout(layer=layer, vector=torch.nn.functional.normalize(torch.randn(m.d_model), dim=0))
    # two lengths, both longer than the tiny Gemma 2/3 sliding window of 4 tokens
    probes = ProbeSet([pos[0], pos[1] + " and more"], [0.5, 0.5])
    return ScoringTask(readout, probes, layers=[0, 1, 2], **kw)


@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_read_position_kv_replay_equals_reference(kind, tokenizer):
    m = build_tiny(kind, tokenizer)
    task = _task(m)
    for text in task.probes.texts:  # the KV-cache path itself is used, not the fallback
        pc = ProbeCache(m, text, 2, task.readout.vector)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert ReadPositionCache(m, text, 2, task.readout.vector, pc.block_out[2], pc.s_clean).kv
    fast = NeatScorer(tokens_per_batch=20, positions="read").score(m, task)  # 20 one-token replicas per chunk
    ref = ReferenceScorer(positions="read").score(m, task)
    _close(fast.scores, ref.scores)
    assert fast.params["positions"] == "read"
    # a different quantity from the all-position score (else the option would be pointless)
    every = ReferenceScorer().score(m, task)
    assert (every.scores[:2] - ref.scores[:2]).abs().max() > 1e-3
    # one clean forward per probe text plus the split clean run; one partial pass per neuron and probe
    assert fast.passes.forward == 2 * 2
    assert fast.passes.partial_forward == 2 * 3 * m.d_ff


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2"])
def test_read_position_fallback_equals_reference(kind, tokenizer):
    """Without the KV path every position is re-run with the edit at the last token only."""
    m = build_tiny(kind, tokenizer)
    means = torch.randn(m.n_layers, m.d_ff) * 0.1
    task = _task(m, layer=1, seed=3, intervention=Mean(means))
    fb = NeatScorer(tokens_per_batch=40, positions="read", kv_cache=False).score(m, task)
    kv = NeatScorer(positions="read").score(m, task)
    ref = ReferenceScorer(positions="read").score(m, task)
    _close(fb.scores, ref.scores)
    _close(kv.scores, ref.scores)
    assert torch.all(kv.scores[2] == 0)


def test_one_token_probe_falls_back(tiny_llama):
    readout = ConceptReadout(layer=1, vector=torch.ones(tiny_llama.d_model) / tiny_llama.d_model ** 0.5)
    assert len(tiny_llama.tokenizer("the")["input_ids"]) == 1
    task = ScoringTask(readout, ProbeSet(["the"], [1.0]), layers=[0, 1])
    fast = NeatScorer(positions="read").score(tiny_llama, task)
    _close(fast.scores, ReferenceScorer(positions="read").score(tiny_llama, task).scores)
    # with one token, "read" and "all" are the same ablation
    _close(fast.scores, NeatScorer().score(tiny_llama, task).scores)


def test_bad_positions_option():
    with pytest.raises(ValueError, match="positions must be 'all' or 'read'"):
        NeatScorer(positions="first")
    with pytest.raises(ValueError, match="positions must be 'all' or 'read'"):
        ReferenceScorer(positions="last")
