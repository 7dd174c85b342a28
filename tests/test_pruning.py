"""An exact top K for less than two sweeps (``scoring/pruning.py``, ``find --exact-top``): the
contrast probes are swept only where a neuron can still reach the top K, and the top K and its
order are those of two full sweeps."""

from __future__ import annotations

import pytest
import torch

import neat_llm as nl
from conftest import build_tiny, concept_texts
from neat_llm.find_settings import FindSettings
from neat_llm.scoring.effects import combine
from neat_llm.scoring.pruning import prove_top_k, pruned_score, upper_bound


def _synthetic(seed: int = 0, shape=(4, 200)):
    g = torch.Generator().manual_seed(seed)
    positive = torch.randn(shape, generator=g).abs()
    contrast = torch.randn(shape, generator=g) * 0.5
    cost = torch.rand(shape, generator=g) * 0.01
    return positive, contrast, cost


@pytest.mark.parametrize("lam", [0.0, 10.0])
@pytest.mark.parametrize("k", [1, 10, 60])
def test_the_proven_top_k_is_the_full_one_for_less(lam, k):
    positive, contrast, cost = _synthetic()
    calls = []

    def sweep(neurons, r):
        calls.append(sum(len(v) for v in neurons.values()))
        out = torch.full_like(contrast, float("nan"))
        for l, ks in neurons.items():
            out[l, ks] = contrast[l, ks]
        return out, None

    got, pp, proof = prove_top_k(positive, k, sweep, lam, cost if lam else None, 2.0 if lam else 1.0)
    full = combine(positive, contrast, lam, cost if lam else None, 2.0 if lam else 1.0)[1].flatten()
    _, mine = pruned_score(positive, got, lam, cost if lam else None, 2.0 if lam else 1.0)
    assert torch.equal(torch.topk(mine.flatten(), k).indices, torch.topk(full, k).indices)
    assert sum(calls) == int(proof.swept.sum()) == sum(proof.rounds) < positive.numel()  # fewer than a full sweep
    assert calls[0] == 2 * k and pp is None
    swept = proof.swept
    assert torch.equal(mine[swept], combine(positive, contrast, lam, cost if lam else None,
                                            2.0 if lam else 1.0)[1][swept])  # exact where swept
    assert torch.all(mine[~swept] >= full.view_as(mine)[~swept])  # an upper bound elsewhere
    assert torch.all(mine[~swept] < torch.topk(full, k).values[-1])  # and below the K-th: never in the top K


def test_ties_at_the_edge_are_swept_and_nan_is_never_a_candidate():
    positive = torch.tensor([[3.0, 2.0, 2.0, 2.0, float("nan"), 1.0]])
    contrast = torch.zeros_like(positive)

    def sweep(neurons, r):
        out = torch.full_like(contrast, float("nan"))
        for l, ks in neurons.items():
            out[l, ks] = contrast[l, ks]
        return out, None

    got, _, proof = prove_top_k(positive, 1, sweep)  # first round: the 2 best bounds; then the tied 2.0s can not beat 3
    assert proof.rounds == [2] and not bool(proof.swept[0, 4])
    got, _, proof = prove_top_k(positive, 2, sweep)  # the K-th is 2.0: every neuron tied at 2.0 is swept
    assert bool(proof.swept[0, 1:4].all()) and not bool(proof.swept[0, 5])
    assert torch.equal(upper_bound(positive).nan_to_num(-1.0), positive.nan_to_num(-1.0))  # lambda = 0: the bound is ΔS_P


@pytest.mark.parametrize("kind,positions", [("llama", "read"), ("gemma3", "read"), ("gpt2", "read"), ("qwen2", "read"),
                                            ("llama", "all"), ("gemma3", "all")])
def test_find_with_exact_top_gives_the_two_sweep_top_k(tokenizer, kind, positions, tmp_path):
    model = build_tiny(kind, tokenizer)
    pos, neg = concept_texts(24)
    cs = nl.ConceptSet.from_texts(pos, neg, name="w")
    # replay: batches of 8 one-token replicas, a block is several; every position: batches of 64 replicas (whole
    # multiples of ROW_BLOCK, where a neuron's effect depends on its batch's size alone), one per tiny block
    small = dict(progress=False, top_k=20, tokens_per_batch=8 if positions == "read" else 64 * 32, positions=positions)  # batches of 8 replicas: a block is several batches
    full = nl.find_concept_neurons(model, cs, out=tmp_path / "full", **small)
    pruned = nl.find_concept_neurons(model, cs, out=tmp_path / "pruned", exact_top=20, **small)
    assert full.top(20).neurons == pruned.top(20).neurons  # the same top K, the same order
    assert pruned.top(20).scores == full.top(20).scores  # bit for bit: each neuron ran in a batch of its whole-sweep size
    got, want = nl.Run.load(tmp_path / "pruned").scores, full.scores
    same, ok = got == want, torch.isfinite(want)
    info = nl.Run.load(tmp_path / "pruned").meta.extra["exact_top"]
    assert int(same.sum()) >= info["contrast_swept"]  # every swept neuron's score is the full sweep's, bit for bit
    assert bool((got[ok & ~same] > want[ok & ~same]).all())  # the others hold their upper bound
    info = nl.Run.load(tmp_path / "pruned").meta.extra["exact_top"]
    assert info["k"] == 20 and info["contrast_swept"] < info["of"] == 3 * model.d_ff
    assert sum(info["rounds"]) == info["contrast_swept"]
    back = nl.Run.load(tmp_path / "pruned")
    assert torch.equal(back.probe_effects.score(), back.scores)  # the stored effects give the stored scores
    assert bool((back.scores[torch.isfinite(back.scores)] >= full.scores[torch.isfinite(full.scores)] - 1e-6).all())
    with pytest.raises(ValueError, match="proved only its top 20"):
        back.top(21)
    fewer = full.meta.passes["scoring"]["partial_forward"] - pruned.meta.passes["scoring"]["partial_forward"]
    assert fewer > 0 if positions == "read" else fewer >= 0  # a tiny block is one padded batch of 64 replicas


def test_exact_top_settings_are_checked():
    with pytest.raises(ValueError, match="exact_top >= top_k"):
        FindSettings(exact_top=50)
    with pytest.raises(ValueError, match="whole number"):
        FindSettings(exact_top=0, top_k=1)
    with pytest.raises(ValueError, match="not with exact_top"):
        FindSettings(exact_top=100, max_ppl=1.05)
    with pytest.raises(ValueError, match="has none"):
        FindSettings(exact_top=100, score="positive").check_for("neat")


def test_a_part_of_a_block_runs_in_the_batch_sizes_the_whole_sweep_gives_it():
    from neat_llm.scoring.neat import batches

    whole = list(range(10))
    assert batches(whole, whole, 4) == [([0, 1, 2, 3], 4), ([4, 5, 6, 7], 4), ([8, 9], 2)]  # the sweep's own batches
    assert batches([195, 3], list(range(200)), 64) == [([1], 64), ([0], 64)]  # the last batch of 8: padded to 64
    got = batches([9, 1, 6, 2, 3, 7], whole, 4)  # positions in idx: neurons 1, 6, 2, 3, then 7 ran in batches of 4
    assert got == [([1, 2, 3, 4], 4), ([5], 4), ([0], 2)]  # 9 ran in the last batch of 2: padded to 2
    with pytest.raises(ValueError, match="not among the whole sweep"):
        batches([11], whole, 4)
