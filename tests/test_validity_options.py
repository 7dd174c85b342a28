"""The validity options of issue 11, each against a direct computation on a tiny model: the read
template, the fluency cost and the specificity-aware score, the AurA scorer and dampening, the
effects on positive and contrast probes, and the choice of K within a fluency budget."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import neat_llm as nl
from neat_llm.concepts.representations import neuron_profiles, text_pass
from neat_llm.concepts.vectors import ConceptReadout, apply_template
from neat_llm.evaluation import concept_scores, evaluate_removal, perplexity
from neat_llm.interventions import Dampen, Mean, NeuronSelection, Zero
from neat_llm.scoring.fluency import FLUENCY_TEXTS, fluency_cost, loss_effect_first_order
from neat_llm.scoring.reference import concept_score_of
from neat_llm.scoring.simple import aura_alpha

TEXTS = ["the rain came over the town today", "a cake and bread stayed near the river",
         "the snow fell by the hills", "a honey and rice went on the coast"]


def _nll(model, texts) -> float:
    """Mean negative log-likelihood per predicted token, directly from the logits."""
    total, n = 0.0, 0
    with torch.inference_mode():
        for t in texts:
            ids = model.encode([t])["input_ids"]
            logp = torch.log_softmax(model.hf(input_ids=ids, use_cache=False).logits[0, :-1].double(), -1)
            total -= float(logp.gather(-1, ids[0, 1:, None]).sum())
            n += ids.shape[1] - 1
    return total / n


# --- the read template --------------------------------------------------------------------------
def test_template_is_applied_and_checked():
    assert apply_template("{text}\n", ["a b. ", "c"]) == ["a b.\n", "c\n"]
    assert apply_template("{text}", ["a b. "]) == ["a b. "]  # the identity leaves texts as given
    with pytest.raises(ValueError, match="exactly once"):
        ConceptReadout(0, torch.zeros(4), template="no slot")


def test_run_reads_the_concept_at_the_template_token(tiny_llama, concept_set, tmp_path):
    run = nl.find_concept_neurons(tiny_llama, concept_set, probe_size=2, read_template="{text} today",
                                  out=tmp_path / "r", progress=False, specificity=0)
    readout = run.readout()
    assert readout.template == "{text} today"
    assert all(t.endswith(" today") for t in run.meta.probe_texts)
    # the stored eval AUROC is S read on the templated eval texts, computed directly here
    ev = run.eval_set(concept_set)
    direct = [concept_score_of(tiny_llama, t + " today", readout.layer, readout.vector) for t in ev.texts]
    from sklearn.metrics import roc_auc_score

    assert run.meta.eval_auroc == pytest.approx(roc_auc_score(list(ev.labels), direct), abs=1e-6)
    got = concept_scores(tiny_llama, readout, ev)
    y = torch.tensor(ev.labels)
    np.testing.assert_allclose(torch.cat([got.pos, got.neg]).numpy(),
                               np.r_[np.array(direct)[y.numpy()], np.array(direct)[~y.numpy()]], rtol=1e-4, atol=1e-4)


# --- the fluency cost and the specificity-aware score ---------------------------------------
@pytest.mark.parametrize("mode", ["zero", "mean", "dampen"])
def test_first_order_loss_effect_matches_a_small_finite_change(tiny_llama, mode):
    """A first-order estimate is exact for an infinitesimal change: turning a neuron *partly* off
    (v = a + eps (target - a)) changes the NLL by eps x the estimate, up to O(eps^2)."""
    m = tiny_llama
    means = torch.randn(m.n_layers, m.d_ff, generator=torch.Generator().manual_seed(1)) * 0.3
    iv = {"zero": Zero(), "mean": Mean(means),
          "dampen": Dampen(0.25)}[mode]
    est = loss_effect_first_order(m, TEXTS, iv)
    base = _nll(m, TEXTS)
    eps = 1e-3
    for l, k in [(0, 3), (1, 17), (2, 40)]:
        def partly(_key, x, l=l, k=k):
            x = x.clone()
            target = {"zero": torch.zeros_like(x[..., k]), "mean": torch.full_like(x[..., k], float(means[l, k])),
                      "dampen": 0.25 * x[..., k]}[mode]
            x[..., k] = x[..., k] + eps * (target - x[..., k])
            return x

        from neat_llm.hooks import edit_inputs

        with edit_inputs({l: m.sites[l]}, partly):
            changed = _nll(m, TEXTS)
        assert (changed - base) / eps == pytest.approx(float(est[l, k]), rel=2e-2, abs=1e-5)


def test_fluency_cost_is_the_mean_absolute_effect_over_two_text_sets(tiny_llama):
    cost = fluency_cost(tiny_llama, TEXTS)
    a = loss_effect_first_order(tiny_llama, TEXTS).abs()
    b = loss_effect_first_order(tiny_llama, list(FLUENCY_TEXTS)).abs()
    torch.testing.assert_close(cost, (a + b) / 2)


def test_specificity_aware_score_is_share_of_gap_minus_lambda_cost(tiny_llama, concept_set, tmp_path):
    plain = nl.find_concept_neurons(tiny_llama, concept_set, probe_size=2, specificity=0, out=tmp_path / "a",
                                    progress=False)
    aware = nl.find_concept_neurons(tiny_llama, concept_set, probe_size=2, specificity=5.0, out=tmp_path / "b",
                                    progress=False)
    assert plain.effect is None and plain.fluency_cost is None and plain.meta.params["specificity"] == 0
    torch.testing.assert_close(aware.effect, plain.scores)  # the same sweep underneath
    split = concept_set.split(0.3, 0)
    readout = aware.readout()
    s_pos = readout.score(text_pass(tiny_llama, readout.apply(split.fit.positives)).residuals[:, readout.layer])
    s_neg = readout.score(text_pass(tiny_llama, readout.apply(split.fit.contrast)).residuals[:, readout.layer])
    gap = float(s_pos.double().mean() - s_neg.double().mean())
    assert aware.meta.params["gap_fit"] == pytest.approx(gap, rel=1e-5)
    cost = fluency_cost(tiny_llama, split.fit.contrast, Zero())
    torch.testing.assert_close(aware.fluency_cost, cost)
    torch.testing.assert_close(aware.scores, plain.scores / gap - 5.0 * cost)
    reloaded = nl.Run.load(tmp_path / "b")
    torch.testing.assert_close(reloaded.fluency_cost, cost)


def test_specificity_is_refused_for_methods_without_an_effect(tiny_llama, concept_set, tmp_path):
    with pytest.raises(ValueError, match="specificity applies"):
        nl.find_concept_neurons(tiny_llama, concept_set, method="auroc", specificity=3.0, out=tmp_path / "a",
                                progress=False)
    run = nl.find_concept_neurons(tiny_llama, concept_set, method="auroc", out=tmp_path / "b", progress=False)
    assert run.meta.params["specificity"] == 0 and run.effect is None


# --- effects on positive and contrast probes ------------------------------------------------
@pytest.mark.parametrize("score", ["positive", "specific"])
def test_top_rows_carry_their_effects_on_positive_and_contrast_probes(tiny_llama, concept_set, tmp_path, score):
    """score="positive": the top rows' effects are measured after the ranking; score="specific":
    both sides are swept in full and the score is the drop on the positives minus the size of the
    change on the contrast probes."""
    run = nl.find_concept_neurons(tiny_llama, concept_set, probe_size=2, positions="all", specificity=0, top_k=6,
                                  out=tmp_path / "r", progress=False, score=score)
    readout = run.readout()
    split = concept_set.split(0.3, 0)
    s_neg = readout.score(text_pass(tiny_llama, readout.apply(split.fit.contrast)).residuals[:, readout.layer])
    low_neg = [readout.apply(split.fit.contrast)[int(i)] for i in torch.argsort(s_neg)[:2]]
    rows = run.rows(6)
    assert len(rows) == 6
    for r in rows:
        want_p = np.mean([concept_score_of(tiny_llama, t, readout.layer, readout.vector) -
                          concept_score_of(tiny_llama, t, readout.layer, readout.vector, (r.layer, r.neuron, 0.0))
                          for t in run.meta.probe_texts])
        want_n = np.mean([concept_score_of(tiny_llama, t, readout.layer, readout.vector) -
                          concept_score_of(tiny_llama, t, readout.layer, readout.vector, (r.layer, r.neuron, 0.0))
                          for t in low_neg])
        assert r.effect_positive == pytest.approx(want_p, rel=1e-3, abs=1e-5)
        assert r.effect_contrast == pytest.approx(want_n, rel=1e-3, abs=1e-5)
        assert r.mean_contrast == pytest.approx(float(run.contrast_means[r.layer, r.neuron]))
    if score == "positive":  # outside the top rows nothing was measured
        assert int(torch.isfinite(run.effect_contrast).sum()) == 6
        torch.testing.assert_close(run.scores, run.effect_positive.where(torch.isfinite(run.effect_positive), run.scores))
    else:
        assert bool(torch.isfinite(run.effect_contrast).all())
        torch.testing.assert_close(run.scores, run.effect_positive - run.effect_contrast.abs())


@pytest.mark.parametrize("rule", ["positive", "contrastive"])
def test_positive_and_contrastive_scores_follow_from_the_specific_runs_two_sweeps(tiny_llama, concept_set, tmp_path,
                                                                                   rule):
    """The grid derives its positive-only and contrastive cells from the specific run's two sweeps
    (score_from_effects); that must give what a run with that score computes itself."""
    from neat_llm.find import score_from_effects

    specific = nl.find_concept_neurons(tiny_llama, concept_set, probe_size=2, specificity=0, out=tmp_path / "s",
                                       progress=False)
    own = nl.find_concept_neurons(tiny_llama, concept_set, probe_size=2, specificity=0, out=tmp_path / rule,
                                  progress=False, score=rule)
    torch.testing.assert_close(score_from_effects(rule, specific.effect_positive, specific.effect_contrast),
                               own.scores, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="score must be one of"):
        score_from_effects("gap", specific.effect_positive, specific.effect_contrast)


@pytest.mark.parametrize("method", ["neat-cluster", "screen-verify"])
def test_screened_methods_score_exactly_at_the_same_positions_as_neat(tiny_llama, concept_set, tmp_path, method):
    """Their exactly scored neurons get NEAT's own numbers at the read position (by default), so the
    contrast side and the per-row effects, measured there too, describe the same intervention (an
    all-position positive score beside a read-position contrast score ranked massive-activation
    neurons first)."""
    plain = nl.find_concept_neurons(tiny_llama, concept_set, probe_size=2, specificity=0, score="positive",
                                    out=tmp_path / "neat", progress=False)
    from neat_llm.find_settings import build_scorer

    scorer = build_scorer(method, **({"candidates": 40} if method == "screen-verify" else {"n_clusters": 4, "keep": 3}))
    run = nl.find_concept_neurons(tiny_llama, concept_set, scorer, probe_size=2, specificity=0,
                                  score="positive", out=tmp_path / method, progress=False)
    assert run.meta.params["scorer"]["positions"] == "read"
    ok = torch.isfinite(run.scores)
    assert 0 < int(ok.sum()) < ok.numel()
    torch.testing.assert_close(run.scores[ok], plain.scores[ok], rtol=1e-4, atol=1e-6)


# --- AurA and dampening ---------------------------------------------------------------------
def test_aura_scores_max_pooled_auroc_and_dampens_by_its_own_alpha(tiny_llama, concept_set, tmp_path):
    from sklearn.metrics import roc_auc_score

    run = nl.find_concept_neurons(tiny_llama, concept_set, method="aura", out=tmp_path / "r", progress=False)
    split = concept_set.split(0.3, 0)
    layers = list(range(tiny_llama.n_layers))
    prof = torch.cat([neuron_profiles(tiny_llama, split.fit.positives, layers, pool="max"),
                      neuron_profiles(tiny_llama, split.fit.contrast, layers, pool="max")])
    y = [1] * split.fit.n_positive + [0] * split.fit.n_contrast
    for l, k in [(0, 0), (1, 5), (2, 47)]:
        assert float(run.scores[l, k]) == pytest.approx(roc_auc_score(y, prof[:, l, k].numpy()), abs=1e-6)
    auc = run.scores
    want = torch.where(auc > 0.5, 1 - 2 * (auc - 0.5), torch.ones_like(auc))
    torch.testing.assert_close(run.alpha, want)
    torch.testing.assert_close(aura_alpha(torch.tensor([0.2, 0.5, 0.75, 1.0])), torch.tensor([1.0, 1.0, 0.5, 0.0]))
    sel = run.top(5)
    assert sel.alphas == tuple(float(want[l, k]) for l, k in sel.neurons)


def test_dampen_multiplies_each_neuron_by_its_factor(tiny_llama):
    from neat_llm.hooks import capture_inputs

    m = tiny_llama
    sel = NeuronSelection(((0, 3), (1, 4), (1, 9)), alphas=(0.5, 0.0, 0.25))
    enc = m.encode(TEXTS)
    with torch.inference_mode(), capture_inputs(dict(enumerate(m.sites))) as pre:
        with nl.turn_off(m, sel, mode="dampen"):
            with capture_inputs(dict(enumerate(m.sites))) as post:
                m.hf(**enc, use_cache=False)
    assert torch.equal(post[0][0][..., 3], 0.5 * pre[0][0][..., 3])
    assert torch.equal(post[1][0][..., 4], torch.zeros_like(post[1][0][..., 4]))
    assert torch.equal(post[1][0][..., 9], 0.25 * pre[1][0][..., 9])
    keep = [k for k in range(m.d_ff) if k not in (4, 9)]
    assert torch.equal(post[1][0][..., keep], pre[1][0][..., keep])
    with pytest.raises(ValueError, match="alpha"):
        with nl.turn_off(m, [(0, 1)], mode="dampen"):
            pass
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Dampen(1.5)


def test_dampened_random_sets_borrow_the_top_sets_factors(tiny_llama, concept_set, tmp_path):
    run = nl.find_concept_neurons(tiny_llama, concept_set, method="aura", out=tmp_path / "r", progress=False)
    ev = run.eval_set(concept_set)
    sel = run.top(10)
    report = evaluate_removal(tiny_llama, run.readout(), ev, {10: sel}, n_random=2, mode="dampen")
    from neat_llm.evaluation.conditions import random_selections

    readout = run.readout()
    before = concept_scores(tiny_llama, readout, ev)
    for got, rand in zip(report.rows[0].random, random_selections(tiny_llama, 10, 2, 0)):
        with nl.turn_off(tiny_llama, rand.with_alphas(sel.alphas), mode="dampen"):
            after = concept_scores(tiny_llama, readout, ev)
        assert got.gap_removal == pytest.approx(1 - after.gap / before.gap, rel=1e-5, abs=1e-6)


# --- the fluency budget -------------------------------------------------------------------------
def test_choose_k_picks_the_most_removal_within_the_budget(tiny_llama, concept_set, tmp_path):
    run = nl.find_concept_neurons(tiny_llama, concept_set, probe_size=2, out=tmp_path / "r", progress=False,
                                  max_ppl=1.5)
    choice = run.meta.extra["k_choice"]
    readout = run.readout()
    fit = concept_set.split(0.3, 0).fit
    ranking = run.top(int(torch.isfinite(run.scores).sum()))
    before = concept_scores(tiny_llama, readout, fit)
    ppl0 = perplexity(tiny_llama, FLUENCY_TEXTS)
    for k, removal, ratio in zip(choice["ks"], choice["fit_gap_removal"], choice["fit_ppl_ratio"]):
        with nl.turn_off(tiny_llama, ranking.neurons[:k]):
            after = concept_scores(tiny_llama, readout, fit)
            assert ratio == pytest.approx(perplexity(tiny_llama, FLUENCY_TEXTS) / ppl0, rel=1e-6)
        assert removal == pytest.approx(1 - after.gap / before.gap, rel=1e-5, abs=1e-6)
    within = [(r, k) for k, r, p in zip(choice["ks"], choice["fit_gap_removal"], choice["fit_ppl_ratio"]) if p <= 1.5]
    assert choice["k"] == (max(within)[1] if within else None)
    with pytest.raises(ValueError, match="max_ppl"):
        nl.find_concept_neurons(tiny_llama, concept_set, out=tmp_path / "x", progress=False, max_ppl=0.9)


def test_removal_at_budget_reads_the_best_k_within_it(tiny_llama, concept_set, tmp_path):
    run = nl.find_concept_neurons(tiny_llama, concept_set, probe_size=2, out=tmp_path / "r", progress=False)
    report = evaluate_removal(tiny_llama, run.readout(), run.eval_set(concept_set),
                              {k: run.top(k) for k in (2, 5, 20)}, n_random=2)
    for budget in (1.0001, 1.05, 10.0):
        res = report.at_budget(budget)
        ok = [r for r in report.rows if r.ppl_ratio <= budget]
        if not ok:
            assert res.k is None and math.isnan(res.gap_removal)
            continue
        best = max(ok, key=lambda r: r.gap_removal)
        assert res.k == best.k and res.gap_removal == best.gap_removal
        assert res.random_gap_removal_mean == best.random_gap_removal_mean
    assert [b["max_ppl"] for b in report.to_dict()["budgets"]] == [1.05, 1.10]
