"""Each probe text's own effect, kept by the sweep: the run's score comes back from them exactly,
the fast path's per-probe effects are the plain reference's, and the bootstrap over probes gives
every neuron an interval (width 0 where all probes agree) and a share of resamples in the top K."""

from __future__ import annotations

import pytest
import torch

import neat_llm as nl
from neat_llm.scoring import NeatScorer, ProbeSet, ReferenceScorer, ScoringTask
from neat_llm.scoring.effects import ProbeEffects, bootstrap


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaN where NaN."""
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


@pytest.mark.parametrize("score, lam", [("specific", None), ("contrastive", 0.0), ("positive", 0.0), ("positive", 5.0)])
def test_the_stored_per_probe_effects_give_the_runs_score_exactly(tiny_llama, concept_set, tmp_path, score, lam):
    kw = {} if lam is None else {"specificity": lam}
    run = nl.find_concept_neurons(tiny_llama, concept_set, out=tmp_path / "r", progress=False, score=score, **kw)
    back = nl.Run.load(tmp_path / "r")
    pe = back.probe_effects
    assert pe is not None and pe.rule == score
    b = run.meta.params["probe_size"]
    assert pe.positive.shape == (2 * b if score == "contrastive" else b, tiny_llama.n_layers, tiny_llama.d_ff)
    assert _same(pe.score(), back.scores)  # the sweep's own sum, in its order: exactly the stored score
    if score == "positive" and lam == 0.0:  # the plain mean of the per-probe effects
        acc = torch.zeros_like(pe.positive[0])
        for e in pe.positive:
            acc += (1.0 / b) * e
        assert _same(acc, back.scores)


def test_per_probe_effects_of_the_fast_path_are_the_references(tiny_llama, concept_set, tmp_path):
    readout = nl.find_concept_neurons(tiny_llama, concept_set, progress=False, reading_layer=2,
                                      out=tmp_path / "r").readout()
    texts = readout.apply(concept_set.positives[:3])
    task = ScoringTask(readout=readout, probes=ProbeSet(texts, [1 / 3] * 3), layers=[0, 1, 2])
    fast = NeatScorer().score(tiny_llama, task)
    assert fast.per_probe is not None and fast.per_probe.shape == (3, tiny_llama.n_layers, tiny_llama.d_ff)
    for p, t in enumerate(texts):
        one = ReferenceScorer().score(tiny_llama, ScoringTask(readout=readout, probes=ProbeSet([t], [1.0]),
                                                             layers=[0, 1, 2]))
        torch.testing.assert_close(fast.per_probe[p, :3], one.scores[:3], atol=1e-5, rtol=1e-4)


def test_the_bootstrap_of_agreeing_probes_has_width_zero_and_keeps_the_ranking():
    g = torch.Generator().manual_seed(0)
    one = torch.randn(1, 2, 50, generator=g)
    same = ProbeEffects(one.repeat(6, 1, 1), (1 / 6,) * 6, "positive")
    st = bootstrap(same, k=5, n=50)
    torch.testing.assert_close(st.lo, st.hi, atol=0, rtol=0)
    torch.testing.assert_close(st.lo, same.score(), atol=1e-6, rtol=0)
    top = torch.topk(same.score().flatten(), 5).indices
    assert torch.all(st.in_top.flatten()[top] == 1.0) and st.in_top.sum() == 5  # the same top 5 every time


def test_the_bootstrap_tells_a_solid_neuron_from_a_lucky_one():
    """Neuron 0 helps on every probe; neuron 1 on one probe only, by a lot (nearly the same mean,
    just below): the bootstrap keeps 0 in the top 1 far more often (when probe 0 is drawn at most
    once: 74% of resamples), and gives 1 the wider interval."""
    e = torch.zeros(8, 1, 4)
    e[:, 0, 0] = 1.0
    e[0, 0, 1] = 7.9
    pe = ProbeEffects(e, (1 / 8,) * 8, "positive")
    assert pe.score()[0, 0] == 1.0 and pe.score()[0, 1] == pytest.approx(0.9875)
    st = bootstrap(pe, k=1, n=400, seed=1)
    assert st.hi[0, 0] - st.lo[0, 0] == 0 and st.hi[0, 1] - st.lo[0, 1] > 2
    assert st.in_top[0, 0] > 0.5 > st.in_top[0, 1] and float(st.in_top.sum()) == pytest.approx(1.0)


def test_top_csv_and_the_rows_carry_the_interval_and_the_stability(tiny_llama, concept_set, tmp_path):
    import pandas as pd

    nl.find_concept_neurons(tiny_llama, concept_set, out=tmp_path / "r", progress=False, top_k=20)
    top = pd.read_csv(tmp_path / "r" / "top.csv")
    assert {"score_lo", "score_hi", "stability"} <= set(top.columns)
    assert ((top.score_lo <= top.score + 1e-6) & (top.score <= top.score_hi + 1e-6)).mean() > 0.9
    assert top.stability.between(0, 1).all() and top.stability.iloc[0] > 0
    rows = nl.Run.load(tmp_path / "r").rows(5)
    assert all(0 <= r.stability <= 1 and r.score_lo <= r.score_hi for r in rows)


def test_the_bootstrap_refuses_nonsense():
    pe = ProbeEffects(torch.zeros(2, 1, 3), (0.5, 0.5), "positive")
    with pytest.raises(ValueError, match="at least 2 resamples"):
        bootstrap(pe, k=1, n=1)
    with pytest.raises(ValueError, match="k must be"):
        bootstrap(pe, k=0)
    with pytest.raises(ValueError, match="specific rule"):
        ProbeEffects(torch.zeros(2, 1, 3), (0.5, 0.5), "specific")
