"""Evaluation: perplexity / log-likelihood by hand, concept-removal numbers by hand, random K-sets, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from neat_llm import ConceptSet, ConceptSetError, NeuronSelection, turn_off
from neat_llm.concepts.representations import text_pass
from neat_llm.concepts.vectors import ConceptReadout, concept_vectors
from neat_llm.evaluation import (NEUTRAL_TEXTS, evaluate_removal, mean_token_loglik, perplexity, random_selections, text_logliks)

TEXTS = ["the rain came over the town today", "a cake", "hello world, this is a tiny tokenizer for tests",
         "snow fell near the river"]
K3 = NeuronSelection(((0, 3), (1, 17), (2, 40)))


@pytest.fixture
def model(tiny_llama):
    yield tiny_llama
    for s in tiny_llama.sites:  # every test must leave the shared model clean
        assert not s._forward_pre_hooks and not s._forward_hooks


@pytest.fixture
def setup(model, concept_set):
    """(readout at the last block fit on the fit part, eval part)."""
    split = concept_set.split(eval_fraction=0.3, seed=0)
    h = text_pass(model, list(split.fit.texts)).residuals  # [m, L, d]
    y = torch.tensor(split.fit.labels)
    layer = model.n_layers - 1
    readout = ConceptReadout(layer, concept_vectors(h, y)[layer])
    return readout, split.eval


def _ll_by_hand(model, text: str) -> tuple[float, int]:
    with torch.inference_mode():
        ids = model.encode([text])["input_ids"][0]
        logits = model.hf(input_ids=ids[None]).logits[0].double()  # [T, V]
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids))), len(ids) - 1


def _s_by_hand(model, readout, texts):
    out = []
    for t in texts:  # one text at a time: no padding at all
        out.append(float(readout.score(text_pass(model, [t], batch_size=1).residuals[0, readout.layer])))
    return np.array(out)


# --- perplexity ---------------------------------------------------------------------------------
def test_loglik_and_perplexity_match_logits_by_hand(model):
    by_hand = [_ll_by_hand(model, t) for t in TEXTS]
    for t, (s, n) in zip(TEXTS, by_hand):
        assert float(mean_token_loglik(model, [t])[0]) == pytest.approx(s / n, rel=1e-5)
        assert perplexity(model, [t]) == pytest.approx(math.exp(-s / n), rel=1e-5)
    total, n_tok = sum(s for s, _ in by_hand), sum(n for _, n in by_hand)
    assert perplexity(model, TEXTS) == pytest.approx(math.exp(-total / n_tok), rel=1e-5)
    sums, counts = text_logliks(model, TEXTS)
    assert counts.tolist() == [n for _, n in by_hand]
    assert sums.tolist() == pytest.approx([s for s, _ in by_hand], rel=1e-5)


def test_padding_does_not_change_results(model):
    assert not model.encode(TEXTS)["attention_mask"].bool().all()  # the batch is padded
    batched = mean_token_loglik(model, TEXTS, batch_size=16)
    singles = torch.cat([mean_token_loglik(model, [t], batch_size=1) for t in TEXTS])
    assert torch.allclose(batched, singles, rtol=1e-5, atol=1e-6)
    assert perplexity(model, TEXTS, batch_size=16) == pytest.approx(perplexity(model, TEXTS, batch_size=1), rel=1e-5)
    assert perplexity(model, TEXTS, batch_size=3) == pytest.approx(perplexity(model, TEXTS, batch_size=1), rel=1e-5)


def test_perplexity_reflects_turn_off_and_neutral_texts(model):
    assert len(NEUTRAL_TEXTS) == 30 and len(set(NEUTRAL_TEXTS)) == 30
    before = perplexity(model, NEUTRAL_TEXTS)
    with turn_off(model, K3):
        during = perplexity(model, NEUTRAL_TEXTS)
    assert during != before and perplexity(model, NEUTRAL_TEXTS) == before


def test_single_token_text_has_nothing_to_predict(model):
    one = model.tokenizer.decode(model.encode(["rain"])["input_ids"][0, :1])
    assert model.encode([one])["input_ids"].shape[1] == 1
    with pytest.raises(ValueError, match="single token"):
        mean_token_loglik(model, [TEXTS[0], one])
    with pytest.raises(ValueError, match="no token to predict"):
        perplexity(model, [one])
    with pytest.raises(ValueError, match="no texts"):
        perplexity(model, [])


# --- removal ------------------------------------------------------------------------------------
def test_removal_numbers_match_direct_computation(model, setup):
    readout, ev = setup
    rep = evaluate_removal(model, readout, ev, {3: K3}, n_random=2, seed=0)
    sp, sn = _s_by_hand(model, readout, ev.positives), _s_by_hand(model, readout, ev.contrast)
    with turn_off(model, K3):
        sp_off, sn_off = _s_by_hand(model, readout, ev.positives), _s_by_hand(model, readout, ev.contrast)
        ppl_off = perplexity(model, NEUTRAL_TEXTS, batch_size=1)
    ppl = perplexity(model, NEUTRAL_TEXTS, batch_size=1)
    y = np.r_[np.ones(len(sp)), np.zeros(len(sn))]
    gap = sp.mean() - sn.mean()
    assert gap > 0
    assert rep.gap_before == pytest.approx(gap, rel=1e-4)
    assert rep.auroc_before == pytest.approx(roc_auc_score(y, np.r_[sp, sn]))
    assert rep.ppl_before == pytest.approx(ppl, rel=1e-5)
    r = rep.row(3)
    assert r.gap_removal == pytest.approx(1 - (sp_off.mean() - sn_off.mean()) / gap, abs=1e-4)
    assert r.positive_shift == pytest.approx((sp.mean() - sp_off.mean()) / gap, abs=1e-4)
    assert r.auroc_after == pytest.approx(roc_auc_score(y, np.r_[sp_off, sn_off]))
    assert r.specificity == pytest.approx(sn_off.mean() - sn.mean(), abs=1e-4)
    assert r.ppl_ratio == pytest.approx(ppl_off / ppl, rel=1e-5)
    assert r.top.gap_removal == r.gap_removal and len(r.random) == 2
    assert r.gap_removal != 0 and r.ppl_ratio != 1  # the three neurons did something
    # random summary = mean / sample std of the random sets' own numbers
    g = [e.gap_removal for e in r.random]
    assert r.random_gap_removal_mean == pytest.approx(np.mean(g))
    assert r.random_gap_removal_std == pytest.approx(np.std(g, ddof=1))
    assert r.random_ppl_ratio_mean == pytest.approx(np.mean([e.ppl_ratio for e in r.random]))


def test_report_counts_passes_and_is_json(model, setup):
    readout, ev = setup
    n_ks, n_random = 2, 2
    rep = evaluate_removal(model, readout, ev, {3: K3, 1: NeuronSelection(((1, 2),))}, n_random=n_random)
    assert [r.k for r in rep.rows] == [1, 3]
    n_sets = 1 + n_ks * (1 + n_random)  # the before-pass once, then every top and random set
    assert rep.passes["forward"] == n_sets * len(NEUTRAL_TEXTS)  # perplexity: the whole model
    assert rep.passes["partial_forward"] == n_sets * len(ev)  # S: through the reading layer only
    assert rep.seconds > 0
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["rows"][1]["k"] == 3 and d["n_eval"] == {"positive": ev.n_positive, "contrast": ev.n_contrast}
    assert len(d["rows"][0]["random"]) == n_random


def test_empty_selection_changes_nothing(model, setup):
    readout, ev = setup
    rep = evaluate_removal(model, readout, ev, {0: NeuronSelection(())}, n_random=2)
    r = rep.row(0)
    # measured with other conditions along the batch: equal up to float rounding of the batch shape
    assert r.gap_removal == pytest.approx(0, abs=1e-6) and r.positive_shift == pytest.approx(0, abs=1e-6)
    assert r.specificity == pytest.approx(0, abs=1e-6)
    assert r.ppl_ratio == pytest.approx(1, abs=1e-9) and r.auroc_after == rep.auroc_before
    assert r.random_gap_removal_mean == pytest.approx(0, abs=1e-6) and r.random_gap_removal_std == pytest.approx(0, abs=1e-6)
    assert r.random_ppl_ratio_mean == pytest.approx(1, abs=1e-9)


def test_random_sets_are_seeded_and_differ_from_the_top_set(model, setup):
    readout, ev = setup
    a = random_selections(model, 5, 3, seed=0)
    assert [s.neurons for s in a] == [s.neurons for s in random_selections(model, 5, 3, seed=0)]
    assert [s.neurons for s in a] != [s.neurons for s in random_selections(model, 5, 3, seed=1)]
    assert all(len(set(s.neurons)) == 5 for s in a) and len({s.neurons for s in a}) == 3
    pooled = random_selections(model, 10, 4, seed=0, layers_pool=[1])
    assert all(l == 1 for s in pooled for l, _ in s.neurons)

    r1 = evaluate_removal(model, readout, ev, {3: K3}, n_random=2, seed=7).row(3)
    r2 = evaluate_removal(model, readout, ev, {3: K3}, n_random=2, seed=7).row(3)
    r3 = evaluate_removal(model, readout, ev, {3: K3}, n_random=2, seed=8).row(3)
    assert r1.random == r2.random and r1.random_gap_removal_mean == r2.random_gap_removal_mean
    assert r1.random_gap_removal_mean != r3.random_gap_removal_mean
    assert r1.random_gap_removal_mean != r1.gap_removal and r1.random[0] != r1.top


def test_mean_ablation(model, setup):
    readout, ev = setup
    means = torch.randn(model.n_layers, model.d_ff, generator=torch.Generator().manual_seed(0))
    sel = NeuronSelection(K3.neurons, means=means)
    rz = evaluate_removal(model, readout, ev, {3: sel}, n_random=1, mode="zero").row(3)
    rm = evaluate_removal(model, readout, ev, {3: sel}, n_random=1, mode="mean").row(3)
    assert rm.gap_removal != rz.gap_removal
    with pytest.raises(ValueError, match="mean ablation needs"):
        evaluate_removal(model, readout, ev, {3: K3}, mode="mean")


def test_bad_arguments(model, setup):
    readout, ev = setup
    n = model.n_neurons
    big = NeuronSelection(tuple((l, k) for l in range(model.n_layers) for k in range(model.d_ff)))
    with pytest.raises(ValueError, match=f"K={n + 1} is larger than the {n} neurons"):
        evaluate_removal(model, readout, ev, {n + 1: big})
    with pytest.raises(ValueError, match=f"K=50 is larger than the {model.d_ff} neurons of the model in blocks"):
        evaluate_removal(model, readout, ev, {50: NeuronSelection(big.neurons[:50])}, layers_pool=[1])
    with pytest.raises(ValueError, match="larger than"):
        random_selections(model, n + 1, 1)
    with pytest.raises(ValueError, match="has 3 distinct neurons, not 5"):
        evaluate_removal(model, readout, ev, {5: K3})
    with pytest.raises(ValueError, match="mode must be"):
        evaluate_removal(model, readout, ev, {3: K3}, mode="half")
    with pytest.raises(ValueError, match="n_random must be at least 1"):
        evaluate_removal(model, readout, ev, {3: K3}, n_random=0)
    with pytest.raises(ValueError, match="out of range"):
        evaluate_removal(model, readout, ev, {3: K3}, layers_pool=[model.n_layers])
    with pytest.raises(ValueError, match="selection_by_k is empty"):
        evaluate_removal(model, readout, ev, {})
    flipped = ConceptReadout(readout.layer, -readout.vector)
    with pytest.raises(ValueError, match="does not separate the eval set"):
        evaluate_removal(model, flipped, ev, {3: K3})


def test_one_sided_eval_set_is_rejected(model, setup, concept_set):
    readout, _ = setup
    with pytest.raises(ConceptSetError, match="one-sided: no contrast examples"):
        ConceptSet.from_texts(concept_set.positives, [], name="weather")
    one_sided = object.__new__(ConceptSet)  # bypassing ConceptSet's own check
    for name, v in dict(texts=tuple(concept_set.positives[:4]), labels=(True,) * 4, name="weather",
                        positive_label="positive").items():
        object.__setattr__(one_sided, name, v)
    with pytest.raises(ValueError, match="eval set 'weather' has no contrast examples"):
        evaluate_removal(model, readout, one_sided, {3: K3})


def test_helpers_from_a_finished_run(model, concept_set, tmp_path):
    from neat_llm import find_concept_neurons

    run = find_concept_neurons(model, concept_set, method="neat", out=tmp_path / "run", progress=False, top_k=10)
    ev = run.eval_set(concept_set)
    assert ev == concept_set.split(eval_fraction=0.3, seed=0).eval
    readout = run.readout()
    assert readout.layer == run.meta.reading_layer and torch.equal(readout.vector, run.concept_vector)
    sels = run.selections([0, 3])
    assert sels[3].neurons == run.top(3).neurons and sels[3].means is not None and len(sels[0]) == 0
    with pytest.raises(ValueError, match="more than the"):
        run.selections([model.n_neurons + 1])
    other = ConceptSet.from_texts(concept_set.positives[:-1], concept_set.contrast, name="weather")
    with pytest.raises(ValueError, match="is not the data of run"):
        run.eval_set(other)


def test_evaluation_json_reads_back_typed(tiny_llama, concept_set, tmp_path):
    import neat_llm as nl

    run = nl.find_concept_neurons(tiny_llama, concept_set, out=tmp_path / "r", progress=False)
    rep = evaluate_removal(tiny_llama, run.readout(), run.eval_set(concept_set), run.selections([2, 5]), n_random=2)
    (tmp_path / "r" / "evaluation.json").write_text(json.dumps({"run_dir": "x", "method": "neat", **rep.to_dict()}))
    got = nl.Run.load(tmp_path / "r").evaluation()
    assert got.to_dict() == json.loads(json.dumps(rep.to_dict()))
    assert got.row(5).random[1] == rep.row(5).random[1] and got.at_budget(1.05) == rep.at_budget(1.05)
