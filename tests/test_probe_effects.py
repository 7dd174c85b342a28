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


@pytest.fixture(scope="module")
def stable_run(tiny_llama, tmp_path_factory):
    from conftest import concept_texts

    pos, neg = concept_texts(24)
    return nl.find_concept_neurons(tiny_llama, nl.ConceptSet.from_texts(pos, neg, name="weather"),
                                   out=tmp_path_factory.mktemp("s") / "run", progress=False)


def test_min_stability_keeps_exactly_the_top_k_neurons_that_stay(stable_run):
    k = 30
    share = stable_run.stability(k).in_top
    top = stable_run.top(k).neurons
    for x in (0.5, 0.8, 1.0):
        kept = stable_run.top(k, min_stability=x)
        assert list(kept.neurons) == [nk for nk in top if share[nk] >= x]  # in rank order, none else
        assert kept.scores == tuple(float(stable_run.scores[nk]) for nk in kept.neurons)
    assert 0 < len(stable_run.top(k, 1.0)) <= len(stable_run.top(k, 0.5)) < k  # the tiny run has lucky neurons too
    rows = stable_run.rows(k, 0.8)
    ranks = {nk: i + 1 for i, nk in enumerate(top)}
    assert [r.rank for r in rows] == [ranks[(r.layer, r.neuron)] for r in rows]  # the rank among the k, kept
    assert all(r.stability >= 0.8 and r.stability == float(share[r.layer, r.neuron]) for r in rows)


def test_min_stability_refuses_nonsense_and_runs_without_per_probe_effects(stable_run, tiny_llama, concept_set, tmp_path):
    for bad in (0, 0.0, -0.1, 1.5, True, "0.8"):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
            stable_run.top(10, bad)
    act = nl.find_concept_neurons(tiny_llama, concept_set, method="activation", out=tmp_path / "a", progress=False)
    assert act.top(10).neurons and act.probe_effects is None
    with pytest.raises(ValueError, match="no per-probe effects"):
        act.top(10, 0.8)


def test_show_and_export_keep_the_neurons_that_stay(stable_run, tmp_path):
    import json

    from typer.testing import CliRunner

    from neat_llm.cli import app
    from neat_llm.interventions import InterventionSpec

    want = stable_run.top(30, 0.8).neurons
    res = CliRunner().invoke(app, ["show", str(stable_run.run_dir), "--k", "30", "--min-stability", "0.8", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["min_stability"] == 0.8 and [(r["layer"], r["neuron"]) for r in got["top"]] == list(want)
    table = CliRunner().invoke(app, ["show", str(stable_run.run_dir), "--k", "30", "--min-stability", "0.8"])
    assert f"{len(want)} of the top 30 stay" in table.output.replace("\n", " ")
    spec_file = tmp_path / "spec.json"
    res = CliRunner().invoke(app, ["export", str(stable_run.run_dir), "--k", "30", "--min-stability", "0.8",
                                   "--out", str(spec_file), "--json"])
    assert res.exit_code == 0, res.output
    spec = InterventionSpec.load(spec_file)
    assert [(n.layer, n.index) for n in spec.neurons] == list(want)
    assert spec.provenance["min_stability"] == 0.8 and spec.provenance["kept"] == len(want)
    bad = CliRunner().invoke(app, ["show", str(stable_run.run_dir), "--min-stability", "2"])
    assert bad.exit_code != 0 and "--min-stability" in bad.output and "(0, 1]" in bad.output


def test_find_refuses_min_stability_for_a_method_without_per_probe_effects_before_loading(tmp_path):
    from typer.testing import CliRunner

    from neat_llm.cli import app

    res = CliRunner().invoke(app, ["find", "--method", "activation", "--min-stability", "0.8",
                                   "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "r")])
    assert res.exit_code != 0 and "only --method neat" in res.output
    assert not (tmp_path / "r").exists()
