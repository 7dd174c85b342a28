"""The condition engine: conditions measured along the batch equal the plain one-at-a-time reference
(``turn_off`` and the one-condition measures), for every family, every measure and every study."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FAMILY_KINDS, build_tiny, concept_texts
from neat_llm import ConceptSet, NeuronSelection, turn_off
from neat_llm.concepts.datasets import MinimalPairs
from neat_llm.concepts.label_readout import LabelReadout
from neat_llm.concepts.representations import repeat_rows
from neat_llm.concepts.vectors import ConceptReadout
from neat_llm.evaluation.bias import evaluate_bias, pair_preferences, pair_preferences_along
from neat_llm.evaluation.checkpoints import ConditionStore
from neat_llm.evaluation.conditions import BEFORE, random_selections, run_conditions, study_conditions
from neat_llm.evaluation.generation import _InverseCdfSampler, sample_continuations, sample_continuations_along
from neat_llm.evaluation.hate import HateData, evaluate_hate
from neat_llm.evaluation.perplexity import (mean_token_loglik, mean_token_logliks_along, perplexities_along,
                                            perplexity)
from neat_llm.evaluation.removal import concept_scores, concept_scores_along, evaluate_removal
from neat_llm.interventions import Condition, Dampen, Mean, Transport, Zero, conditions_along_batch

TEXTS = ["the rain came over the town today", "a cake and bread stayed", "the wind moved over the hills"]


def _conditions(model) -> list[Condition]:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(model.n_layers, model.d_ff, generator=g)
    a = NeuronSelection(((0, 3), (1, 7), (2, 5)))
    b = NeuronSelection(((2, 5), (2, 6), (0, 1), (1, 0)), alphas=(0.5, 0.0, 0.9, 0.25))
    return [Condition(BEFORE), Condition("zero", a), Condition("mean", a, Mean(means)),
            Condition("dampen-own", b, Dampen()), Condition("dampen-half", a, Dampen(0.5))]


def _every_type(model) -> list[Condition]:
    """``_conditions`` and a transported selection: one condition of every intervention type."""
    g = torch.Generator().manual_seed(5)
    b = NeuronSelection(((2, 5), (2, 6), (0, 1), (1, 0)))
    return _conditions(model) + [Condition("transport", b, Transport(
        1 + 0.5 * torch.randn(model.n_layers, model.d_ff, generator=g),
        torch.randn(model.n_layers, model.d_ff, generator=g), 0.7, "linear"))]


def _plain(model, cond: Condition):
    """The plain reference: nothing, or ``turn_off`` with the condition's neurons and intervention."""
    if not len(cond.selection):
        from contextlib import nullcontext
        return nullcontext()
    return turn_off(model, cond.selection, cond.intervention)


@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_conditions_along_the_batch_equal_turn_off_every_family(kind, tokenizer):
    model = build_tiny(kind, tokenizer)
    conds = _every_type(model)
    enc = model.encode(TEXTS)
    with torch.inference_mode():
        with conditions_along_batch(model, conds) as G:
            batched = model.hf(**repeat_rows(enc, G), use_cache=False).logits.reshape(G, len(TEXTS), *enc["input_ids"].shape[1:], -1)
        for c, cond in enumerate(conds):
            with _plain(model, cond):
                want = model.hf(**enc, use_cache=False).logits
            torch.testing.assert_close(batched[c], want, atol=1e-5, rtol=1e-4)
    # the conditions differ from each other (the test is not vacuous)
    assert not torch.allclose(batched[0], batched[1]) and not torch.allclose(batched[1], batched[2])
    for s in model.sites:
        assert not s._forward_pre_hooks


def test_conditions_along_the_batch_refuse_a_batch_that_does_not_split(tiny_llama):
    with conditions_along_batch(tiny_llama, _conditions(tiny_llama)[:2]), pytest.raises(RuntimeError, match="2 condition"):
        tiny_llama.hf(**tiny_llama.encode(TEXTS), use_cache=False)
    assert not any(s._forward_pre_hooks for s in tiny_llama.sites)  # removed on the exception too
    with pytest.raises(ValueError, match="no conditions"):
        with conditions_along_batch(tiny_llama, []):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with conditions_along_batch(tiny_llama, [Condition("bad", NeuronSelection(((0, tiny_llama.d_ff),)))]):
            pass
    with pytest.raises(ValueError, match="dampening needs a factor"):
        Condition("d", NeuronSelection(((0, 1),)), Dampen())


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_rows_under_puts_each_row_under_its_own_condition(kind, tokenizer):
    """Rows in any order and any number per condition (a decoding step whose rows started and ended
    at different times): every kind of edit (neurons of every intervention type, a residual
    direction, what chosen neurons write) gives each row what its condition's equal block gives."""
    from neat_llm.interventions import DirectionEdit, NeuronWrites, rows_under

    model = build_tiny(kind, tokenizer)
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(2))
    conds = _every_type(model) + [Condition("direction", residual=DirectionEdit(1, v)),
                                  Condition("writes", writes=NeuronWrites(((0, 2), (1, 5)), v))]
    enc = model.encode(TEXTS)
    B = len(TEXTS)
    with torch.inference_mode(), conditions_along_batch(model, conds) as G:
        blocks = model.hf(**repeat_rows(enc, G), use_cache=False).logits
        # rows (condition, text) in a shuffled order, condition 1 twice, condition 3 left out
        picks = [(5, 0), (1, 2), (0, 1), (7, 2), (1, 2), (6, 0), (2, 1), (4, 0), (7, 1)]
        ids = torch.stack([enc["input_ids"][t] for _, t in picks])
        mask = torch.stack([enc["attention_mask"][t] for _, t in picks])
        with rows_under(model, torch.tensor([c for c, _ in picks])):
            rows = model.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits
        with pytest.raises(RuntimeError, match="rows_under names 2 rows"), rows_under(model, torch.tensor([0, 1])):
            model.hf(input_ids=ids, attention_mask=mask, use_cache=False)
    for r, (c, t) in enumerate(picks):
        torch.testing.assert_close(rows[r], blocks[c * B + t], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(rows[0], rows[2], atol=1e-3)  # the conditions differ
    assert all(not s._forward_pre_hooks and not s._forward_hooks for s in model.sites)


# --- every measure along the batch equals the measure under turn_off ----------------------------
def test_each_measure_along_the_batch_equals_one_condition_at_a_time(tiny_llama):
    model, conds = tiny_llama, _every_type(tiny_llama)
    pos, neg = concept_texts(6)
    ev = ConceptSet.from_texts(pos, neg, name="weather")
    readout = ConceptReadout(2, torch.randn(model.d_model, generator=torch.Generator().manual_seed(1)), pool="last")
    label = LabelReadout(template="{text} is it", concept="x", positive_word=" today", negative_word=" and")
    pairs = MinimalPairs(name="p", more=("hill folk are lazy", "river folk steal"),
                         less=("coast folk are lazy", "town folk steal"), bias_type=("a", "a"))
    with conditions_along_batch(model, conds) as G:
        scores = concept_scores_along(model, readout, ev, G, batch_size=4)
        ppl = perplexities_along(model, TEXTS, G, batch_size=2)
        ll = mean_token_logliks_along(model, TEXTS, G)
        lab = label.scores_along(model, TEXTS, G)
        prefs = pair_preferences_along(model, pairs, G)
        conts = sample_continuations_along(model, TEXTS, G, max_new_tokens=5, seed=3, batch_size=2, samples=2)
    for c, cond in enumerate(conds):
        with _plain(model, cond):
            s = concept_scores(model, readout, ev)
            torch.testing.assert_close(scores[c].pos, s.pos, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(scores[c].neg, s.neg, atol=1e-5, rtol=1e-4)
            assert ppl[c] == pytest.approx(perplexity(model, TEXTS), rel=1e-5)
            torch.testing.assert_close(ll[c], mean_token_loglik(model, TEXTS), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lab[c], label.scores(model, TEXTS), atol=1e-4, rtol=1e-4)
            np.testing.assert_array_equal(prefs[c], pair_preferences(model, pairs))
            assert conts[c] == sample_continuations(model, TEXTS, max_new_tokens=5, seed=3, batch_size=3, samples=2)
    assert len({tuple(c) for c in conts}) > 1  # the interventions change what is sampled


# --- sampling -----------------------------------------------------------------------------------
def test_sampling_does_not_depend_on_the_batch_and_draws_each_sample_apart(tiny_llama):
    one = sample_continuations(tiny_llama, TEXTS, max_new_tokens=6, seed=5, batch_size=1, samples=3)
    many = sample_continuations(tiny_llama, TEXTS, max_new_tokens=6, seed=5, batch_size=9, samples=3)
    assert one == many and len(one) == 9
    assert len(set(one[:3])) > 1  # three samples of the first prompt are not copies


def test_inverse_cdf_sampler_draws_from_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    n = 20000
    u = torch.rand(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler = _InverseCdfSampler(u, prompt_len=4, temperature=0.7, top_p=0.95, top_k=0)
    out = sampler(torch.zeros(n, 4, dtype=torch.long), logits.expand(n, -1))
    assert torch.isfinite(out).sum(1).eq(1).all()  # exactly one token left open per row
    counts = torch.bincount(out.argmax(1), minlength=5).double() / n
    p = torch.softmax(logits[0] / 0.7, 0).double()
    keep = (p.cumsum(0) - p) < 0.95  # the smallest head reaching 0.95
    want = torch.where(keep, p, 0) / p[keep].sum()
    assert keep.tolist() == [True, True, True, False, False]
    torch.testing.assert_close(counts, want, atol=0.015, rtol=0)
    top1 = _InverseCdfSampler(u[:100], 4, 1.0, 1.0, top_k=1)(torch.zeros(100, 4, dtype=torch.long), logits.expand(100, -1))
    assert top1.argmax(1).eq(0).all()
    sorted_ = _InverseCdfSampler(u, 4, 0.7, 0.95, 0)
    sorted_.BY_THRESHOLD = False  # every row takes the full sort of the vocabulary
    assert torch.equal(sorted_(torch.zeros(n, 4, dtype=torch.long), logits.expand(n, -1)).argmax(1), out.argmax(1))
    free = _InverseCdfSampler(u, 4, 1.0, 1.0, 0)(torch.zeros(n, 4, dtype=torch.long), logits.expand(n, -1))
    free_counts = torch.bincount(free.argmax(1), minlength=5).double() / n
    torch.testing.assert_close(free_counts, torch.softmax(logits[0], 0).double(), atol=0.015, rtol=0)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95, 0.999])
def test_inverse_cdf_sampler_picks_the_full_sorts_token_from_the_tokens_above_a_threshold(top_p):
    """The nucleus found among the tokens of the largest binary exponents, against the full sort of
    the vocabulary, on peaked, flat, tied and one-hot rows of a 3,000-token vocabulary."""
    g = torch.Generator().manual_seed(1)
    peaked = torch.randn(40, 3000, generator=g) * 4
    flat = torch.randn(40, 3000, generator=g) * 0.05  # nucleus of most of the vocabulary
    tied = (torch.randn(40, 3000, generator=g) * 3).round()  # many equal logits, ties across bins' edges
    one_hot = torch.full((4, 3000), -1e4).scatter_(1, torch.tensor([[0], [7], [2999], [1500]]), 10.0)
    logits = torch.cat([peaked, flat, tied, one_hot])
    u = torch.rand(len(logits), 1, generator=g, dtype=torch.float64)
    threshold = _InverseCdfSampler(u, 0, 0.9, top_p, 0)
    sort_only = _InverseCdfSampler(u, 0, 0.9, top_p, 0)
    sort_only.BY_THRESHOLD = False
    picked, inside = threshold._by_threshold(torch.softmax(logits / 0.9, -1), u[:, 0])
    assert inside.float().mean() > 0.9  # the threshold path decides nearly every row itself
    assert torch.equal(threshold.choose(logits, u[:, 0]), sort_only.choose(logits, u[:, 0]))
    assert torch.equal(picked[inside], sort_only.choose(logits, u[:, 0])[inside])


def test_inverse_cdf_sampler_reuses_its_buffers_without_carrying_anything_over():
    """One sampler over chunks of several sizes and two vocabularies (its [rows, vocabulary]
    buffers kept from call to call, grown or remade when the shape changes): every call's tokens
    are a fresh sampler's."""
    g = torch.Generator().manual_seed(3)
    sampler = _InverseCdfSampler(None, 0, 1.0, 0.95, 0)
    for rows, vocab in ((150, 3000), (7, 3000), (70, 3000), (20, 500), (130, 3000)):
        logits = torch.randn(rows, vocab, generator=g) * 3
        u = torch.rand(rows, generator=g, dtype=torch.float64)
        fresh = _InverseCdfSampler(None, 0, 1.0, 0.95, 0)
        assert torch.equal(sampler.choose(logits, u), fresh.choose(logits, u)), (rows, vocab)


# --- the engine ---------------------------------------------------------------------------------
class _Count:
    """A measure that records how many conditions each call measured (the row count of its batch)."""

    def __init__(self):
        self.calls = []

    def measure(self, model, replicas):
        self.calls.append(replicas)
        return [perplexity_ for perplexity_ in perplexities_along(model, TEXTS[:1], replicas)]

    def to_json(self, r):
        return {"ppl": r}

    def from_json(self, d):
        return d["ppl"]


def test_run_conditions_groups_resumes_and_checks(tiny_llama, tmp_path):
    conds = _conditions(tiny_llama)
    m = _Count()
    got = run_conditions(tiny_llama, conds, m, per_batch=2)
    assert m.calls == [2, 2, 1] and list(got) == [c.name for c in conds]
    store = ConditionStore(tmp_path / "s", {"a": 1})
    store.put("zero", {"ppl": got["zero"]})
    seen = []
    m2 = _Count()
    again = run_conditions(tiny_llama, conds, m2, store=store, per_batch=8, on_condition=seen.append)
    assert m2.calls == [4] and sorted(seen) == sorted(c.name for c in conds)
    assert again == pytest.approx(got, rel=1e-6) and store.n_done() == len(conds)
    with pytest.raises(ValueError, match="names repeat"):
        run_conditions(tiny_llama, [Condition("x"), Condition("x")], m)
    with pytest.raises(ValueError, match="per_batch"):
        run_conditions(tiny_llama, conds, m, per_batch=0)


def test_a_condition_s_content_key_is_what_it_does_to_the_model_not_its_name(tiny_llama):
    from neat_llm.interventions import DirectionEdit, DirectionEdits

    m, d = tiny_llama, tiny_llama.d_model
    a = NeuronSelection(((0, 3), (1, 7), (2, 5)))
    a_shuffled = NeuronSelection(((2, 5), (0, 3), (1, 7)))
    key = Condition("concept-k3", a).content_key(m)
    assert Condition("random-k3-s0", a_shuffled).content_key(m) == key  # the same neurons, named and ordered otherwise
    assert Condition("x", NeuronSelection(((0, 3), (1, 7), (2, 6)))).content_key(m) != key  # one neuron differs
    assert Condition("x", a, Dampen(0.5)).content_key(m) != key  # the same neurons turned off otherwise
    assert Condition("x", a, Dampen(0.5)).content_key(m) != Condition("x", a, Dampen(0.25)).content_key(m)
    means = torch.zeros(m.n_layers, m.d_ff)
    assert Condition("x", a, Mean(means)).content_key(m) == key  # mean 0 is zero ablation: the same edit
    means[2, 5] = 1.0
    assert Condition("x", a, Mean(means)).content_key(m) != key
    before = Condition(BEFORE).content_key(m)
    assert Condition("before-again").content_key(m) == before and before != key
    v = torch.ones(d)
    one = Condition("direction", residual=DirectionEdit(1, v)).content_key(m)
    assert one != before and one == Condition("d", residual=DirectionEdits((DirectionEdit(1, v),))).content_key(m)
    assert one != Condition("d", residual=DirectionEdit(1, v, strength=0.7)).content_key(m)
    assert one != Condition("d", residual=DirectionEdit(2, v)).content_key(m)
    assert one != Condition("d", residual=DirectionEdit(1, v, kind="subtract")).content_key(m)
    mlp = Condition("d", residual=DirectionEdit(1, v, site="mlp")).content_key(m)
    assert len({one, mlp, Condition("d", residual=DirectionEdit(1, v, site="attn")).content_key(m)}) == 3
    w = v.clone()
    w[0] = 2.0
    assert one != Condition("d", residual=DirectionEdit(1, w)).content_key(m)


def test_a_study_takes_conditions_another_study_measured_the_same_way_and_only_those(tiny_llama, tmp_path):
    from neat_llm.evaluation.checkpoints import SharedConditions

    conds = _conditions(tiny_llama)
    first = ConditionStore(tmp_path / "study-1", {"run": "a"}, SharedConditions({"data": 1}, tmp_path / "cache"))
    m1 = _Count()
    got = run_conditions(tiny_llama, conds, m1, store=first, per_batch=8)
    assert m1.calls == [len(conds)] and first.reused == []
    # another study (another folder, another run): the same conditions under other names, and one new one
    renamed = [Condition(f"other-{c.name}", c.selection, c.intervention) for c in conds]
    new = Condition("zero-other", NeuronSelection(((0, 4),)))
    second = ConditionStore(tmp_path / "study-2", {"run": "b"}, SharedConditions({"data": 1}, tmp_path / "cache"))
    m2 = _Count()
    again = run_conditions(tiny_llama, renamed + [new], m2, store=second, per_batch=8)
    assert m2.calls == [1]  # only the new condition is measured
    assert sorted(second.reused) == sorted(c.name for c in renamed)
    assert [again[c.name] for c in renamed] == [got[c.name] for c in conds]  # the earlier study's numbers, as kept
    assert second.get("other-zero") == {"ppl": got["zero"]}  # copied into the study's own folder (resume)
    # measured another way (other data): nothing is shared
    third = ConditionStore(tmp_path / "study-3", {"run": "b"}, SharedConditions({"data": 2}, tmp_path / "cache"))
    m3 = _Count()
    run_conditions(tiny_llama, conds, m3, store=third, per_batch=8)
    assert m3.calls == [len(conds)] and third.reused == []
    # without a shared cache, a store keeps to its own folder
    alone = ConditionStore(tmp_path / "study-4", {"run": "b"})
    m4 = _Count()
    run_conditions(tiny_llama, conds, m4, store=alone, per_batch=8)
    assert m4.calls == [len(conds)] and alone.reused == []


def test_a_shared_condition_measured_by_an_older_revision_or_unreadable_is_measured_again(tiny_llama, tmp_path,
                                                                                         monkeypatch):
    from neat_llm.evaluation import checkpoints
    from neat_llm.evaluation.checkpoints import SharedConditions

    conds = _conditions(tiny_llama)[:2]
    run_conditions(tiny_llama, conds, _Count(), store=ConditionStore(tmp_path / "s1", {},
                                                                     SharedConditions({}, tmp_path / "c")))
    cache = SharedConditions({}, tmp_path / "c")
    (cache.folder / f"{conds[1].content_key(tiny_llama)}.json").write_text("{half a fi")
    m = _Count()
    store = ConditionStore(tmp_path / "s2", {}, SharedConditions({}, tmp_path / "c"))
    run_conditions(tiny_llama, conds, m, store=store)
    assert m.calls == [1] and store.reused == [conds[0].name]  # the unreadable one measured again
    monkeypatch.setattr(checkpoints, "MEASUREMENT_REVISION", checkpoints.MEASUREMENT_REVISION + 1)
    m = _Count()
    run_conditions(tiny_llama, conds, m, store=ConditionStore(tmp_path / "s3", {}, SharedConditions({}, tmp_path / "c")))
    assert m.calls == [2]  # measured otherwise since: nothing reused
    with pytest.raises(ValueError, match="hex digest"):
        cache.get("../escape")


def test_conditions_measured_by_an_older_revision_of_the_code_are_not_reused(tmp_path, monkeypatch):
    from neat_llm.evaluation import checkpoints

    store = ConditionStore(tmp_path / "s", {"a": 1})
    store.put("before", {"rate": 0.4})
    assert ConditionStore(tmp_path / "s", {"a": 1}).get("before") == {"rate": 0.4}  # same settings, same code: kept
    monkeypatch.setattr(checkpoints, "MEASUREMENT_REVISION", checkpoints.MEASUREMENT_REVISION + 1)
    again = ConditionStore(tmp_path / "s", {"a": 1})
    assert again.get("before") is None and again.n_done() == 0  # measured otherwise: started over


def test_study_conditions_match_the_random_control_rules(tiny_llama):
    means = torch.ones(tiny_llama.n_layers, tiny_llama.d_ff)
    top = NeuronSelection(((0, 1), (1, 2)), means=means, alphas=(0.2, 0.4))
    zero = study_conditions(tiny_llama, {2: top}, Zero(), n_random=3, seed=4)
    t, rand = zero[2]
    assert t.name == "concept-k2" and [r.name for r in rand] == ["random-k2-s0", "random-k2-s1", "random-k2-s2"]
    assert [r.selection.neurons for r in rand] == [s.neurons for s in random_selections(tiny_llama, 2, 3, 4)]
    own = study_conditions(tiny_llama, {2: top}, Dampen(), n_random=1)[2][1][0]
    assert own.selection.alphas == (0.2, 0.4)  # the top set lends its factors in rank order
    mean = study_conditions(tiny_llama, {2: top}, Mean(means), n_random=1)[2][1][0]
    assert mean.intervention.mode == "mean" and mean.intervention.means is means
    none = study_conditions(tiny_llama, {2: top}, Zero(), n_random=1, random_ks=[])[2][1]
    assert none == []
    with pytest.raises(ValueError, match="n_random"):
        study_conditions(tiny_llama, {2: top}, Zero(), n_random=0)
    with pytest.raises(ValueError, match="distinct neurons"):
        study_conditions(tiny_llama, {3: top}, Zero(), n_random=1)


class _Judge:
    """A stand-in judge: a continuation is hateful when it says "rain" (the studies only need rates)."""

    name = "stub"

    def quality_dict(self):
        return {"davidson": {"n_test": 1, "accuracy": 1.0, "f1_hate": 1.0}}

    def predict(self, texts):
        return ["hate" if "rain" in t else "neither" for t in texts]

    def rates(self, texts):
        hate = float(np.mean(["rain" in t for t in texts]))
        return {"hate_rate": hate, "toxic_rate": hate}


# --- the studies: batched equals one condition per batch ---------------------------------------
def test_studies_give_the_same_report_with_and_without_batched_conditions(tiny_llama):
    model = tiny_llama
    pos, neg = concept_texts(8)
    ev = ConceptSet.from_texts(pos, neg, name="weather")
    readout = ConceptReadout(2, torch.randn(model.d_model, generator=torch.Generator().manual_seed(2)))
    s = concept_scores(model, readout, ev)
    if s.gap < 0:
        readout = ConceptReadout(2, -readout.vector)
    sels = {2: NeuronSelection(((0, 1), (2, 9))), 5: NeuronSelection(((0, 1), (2, 9), (1, 4), (1, 5), (0, 30)))}
    one = evaluate_removal(model, readout, ev, sels, n_random=3, per_batch=1)
    many = evaluate_removal(model, readout, ev, sels, n_random=3, per_batch=8)
    for a, b in zip(one.rows, many.rows):
        assert a.gap_removal == pytest.approx(b.gap_removal, abs=1e-5)
        assert a.random_gap_removal_mean == pytest.approx(b.random_gap_removal_mean, abs=1e-5)
        assert a.ppl_ratio == pytest.approx(b.ppl_ratio, rel=1e-6)
    assert one.passes["forward"] == many.passes["forward"]  # the same sequences, fewer batches

    pairs = MinimalPairs(name="p", more=tuple(pos[:5]), less=tuple(neg[:5]), bias_type=("a",) * 5)
    b1 = evaluate_bias(model, pairs, sels, n_random=2, per_batch=1, min_pairs=2, n_boot=50)
    b8 = evaluate_bias(model, pairs, sels, n_random=2, per_batch=8, min_pairs=2, n_boot=50)
    assert [(r.before, r.after, r.random) for r in b1.rows] == [(r.before, r.after, r.random) for r in b8.rows]

    label = LabelReadout(template="{text} is it", concept="x", positive_word=" today", negative_word=" and")
    data = HateData(tuple(pos[:4]), tuple(neg[:4]), tuple(t.rsplit(" ", 2)[0] for t in pos[:3]), samples=2)
    judge = _Judge()
    h1 = evaluate_hate(model, data, sels, judge, n_random=2, per_batch=1, max_new_tokens=4, readout=label)
    h8 = evaluate_hate(model, data, sels, judge, n_random=2, per_batch=8, max_new_tokens=4, readout=label)
    assert h1.continuations == h8.continuations and h1.n_continuations == 6
    assert all(len(c) == 6 for c in h1.continuations.values())
    for a, b in zip(h1.rows, h8.rows):
        assert (a.k, a.condition, a.hate_rate, a.hate_rate_ci) == (b.k, b.condition, b.hate_rate, b.hate_rate_ci)
        assert a.hate_rate_ci[0] <= a.hate_rate <= a.hate_rate_ci[1]
        assert a.gap == pytest.approx(b.gap, abs=1e-5) and a.ppl_ratio == pytest.approx(b.ppl_ratio, rel=1e-6)


def _logits_along_batch(model, conds, enc):
    """The logits of ``enc`` under each condition, one block of rows each: [G, B, T, vocab]."""
    with conditions_along_batch(model, conds) as G:
        return model.hf(**repeat_rows(enc, G), use_cache=False).logits.reshape(
            G, len(TEXTS), *enc["input_ids"].shape[1:], -1)


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2"])
def test_a_direction_condition_along_the_batch_equals_remove_direction(kind, tokenizer):
    """The residual stream edited along a direction at one block's output: its block of rows equals
    the plain one-condition ``remove_direction``; the other conditions' blocks are untouched; after
    the edit the block's output has no component along the direction."""
    from neat_llm.hooks import capture_outputs
    from neat_llm.interventions import DirectionEdit, remove_direction

    model = build_tiny(kind, tokenizer)
    d = model.hf.config.hidden_size
    v = torch.randn(d, generator=torch.Generator().manual_seed(0))
    conds = [Condition("before"), Condition("direction", residual=DirectionEdit(1, v, "project")),
             Condition("shift", residual=DirectionEdit(0, v, "subtract")), _conditions(model)[1]]
    enc = model.encode(TEXTS)
    with torch.inference_mode():
        with conditions_along_batch(model, conds) as G:
            batched = model.hf(**repeat_rows(enc, G), use_cache=False).logits.reshape(G, len(TEXTS), *enc["input_ids"].shape[1:], -1)
        plain = model.hf(**enc, use_cache=False).logits
        torch.testing.assert_close(batched[0], plain, atol=1e-5, rtol=1e-4)
        for c in (1, 2):
            with remove_direction(model, conds[c].residual):
                want = model.hf(**enc, use_cache=False).logits
            torch.testing.assert_close(batched[c], want, atol=1e-5, rtol=1e-4)
            assert not torch.allclose(want, plain, atol=1e-3)  # the edit does something
        with _plain(model, conds[3]):
            torch.testing.assert_close(batched[3], model.hf(**enc, use_cache=False).logits, atol=1e-5, rtol=1e-4)
        with remove_direction(model, conds[1].residual), capture_outputs({1: model.blocks[1]}) as out:
            model.hf(**enc, use_cache=False)
        u = v / v.norm()
        assert (out[1][0].float() @ u).abs().max() < 1e-4
    assert all(not b._forward_hooks for b in model.blocks)


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2"])
def test_directions_at_several_blocks_along_the_batch_equal_the_nested_single_edits(kind, tokenizer):
    """``DirectionEdits`` (each block's own direction removed at several blocks, one condition): its
    block of rows equals the single-block ``remove_direction`` contexts nested by hand and the plain
    ``remove_direction`` of the whole edit; every edited block's output has no component along its
    own direction; the other conditions' rows are untouched."""
    from contextlib import ExitStack

    from neat_llm.hooks import capture_outputs
    from neat_llm.interventions import DirectionEdit, DirectionEdits, remove_direction

    model = build_tiny(kind, tokenizer)
    d = model.hf.config.hidden_size
    g = torch.Generator().manual_seed(3)
    parts = [DirectionEdit(l, torch.randn(d, generator=g), "project") for l in (2, 0, 1)]
    multi = DirectionEdits(tuple(parts))
    assert multi.layers == (0, 1, 2) and "blocks 0-2" in multi.describe()
    conds = [Condition("before"), Condition("span", residual=multi), _conditions(model)[1]]
    enc = model.encode(TEXTS)
    with torch.inference_mode():
        batched = _logits_along_batch(model, conds, enc)
        plain = model.hf(**enc, use_cache=False).logits
        with ExitStack() as stack:
            for e in parts:
                stack.enter_context(remove_direction(model, e))
            nested = model.hf(**enc, use_cache=False).logits
        with remove_direction(model, multi), capture_outputs({l: model.blocks[l] for l in multi.layers}) as out:
            whole = model.hf(**enc, use_cache=False).logits
        torch.testing.assert_close(batched[0], plain, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched[1], nested, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(whole, nested, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(nested, plain, atol=1e-3)
        for e in parts:
            assert (out[e.layer][0].float() @ (e.vector / e.vector.norm())).abs().max() < 1e-4
        with _plain(model, conds[2]):
            torch.testing.assert_close(batched[2], model.hf(**enc, use_cache=False).logits, atol=1e-5, rtol=1e-4)
    assert all(not b._forward_hooks for b in model.blocks)


def test_directions_at_several_blocks_refuse_nonsense():
    from neat_llm.interventions import DirectionEdit, DirectionEdits

    with pytest.raises(ValueError, match="at least one"):
        DirectionEdits(())
    with pytest.raises(ValueError, match="each block.s site once"):
        DirectionEdits((DirectionEdit(1, torch.ones(4)), DirectionEdit(1, -torch.ones(4))))
    with pytest.raises(ValueError, match="one kind"):
        DirectionEdits((DirectionEdit(0, torch.ones(4)), DirectionEdit(1, torch.ones(4), "subtract")))
    with pytest.raises(ValueError, match="one strength"):
        DirectionEdits((DirectionEdit(0, torch.ones(4)), DirectionEdit(1, torch.ones(4), strength=0.5)))


def test_a_direction_edit_at_a_strength_shrinks_the_component_by_that_share():
    """strength t: h - t (h . u) u (the component along u kept at 1 - t), h - t v for subtract; the
    condition along the batch uses the same ``apply`` as the plain edit (tested above)."""
    from neat_llm.interventions import DirectionEdit, DirectionEdits

    g = torch.Generator().manual_seed(1)
    h, v = torch.randn(3, 5, 8, generator=g), torch.randn(8, generator=g)
    u = v / v.norm()
    half = DirectionEdit(0, v, "project", 0.25)
    torch.testing.assert_close(half.apply(h) @ u, 0.75 * (h @ u))
    perp = lambda x: x - (x @ u)[..., None] * u  # noqa: E731 - the part orthogonal to u is left as it is
    torch.testing.assert_close(perp(half.apply(h)), perp(h))
    torch.testing.assert_close(DirectionEdit(0, v, "subtract", 0.5).apply(h), h - 0.5 * v)
    torch.testing.assert_close(DirectionEdit(0, v).apply(h), DirectionEdit(0, v, "project", 1.0).apply(h))
    assert "at strength 0.25" in half.describe() and half.settings()["strength"] == 0.25
    assert "strength" not in DirectionEdit(0, v).describe()
    span = DirectionEdits((half, DirectionEdit(1, v, "project", 0.25)))
    assert span.strength == 0.25 and "at strength 0.25" in span.describe() and span.settings()["strength"] == 0.25
    flipped = DirectionEdit(0, v, "project", 2.0)  # a reflection: the component reversed, the rest kept
    torch.testing.assert_close(flipped.apply(h) @ u, -(h @ u))
    torch.testing.assert_close(perp(flipped.apply(h)), perp(h))
    for bad in (0.0, 2.5, True):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 2\]"):
            DirectionEdit(0, v, "project", bad)


def test_a_direction_edit_refuses_nonsense(tiny_llama):
    from neat_llm.interventions import DirectionEdit, remove_direction

    with pytest.raises(ValueError, match="non-zero"):
        DirectionEdit(0, torch.zeros(8))
    with pytest.raises(ValueError, match="one of project, subtract"):
        DirectionEdit(0, torch.ones(8), "rotate")
    with pytest.raises(ValueError, match="out of range"), remove_direction(tiny_llama, DirectionEdit(99, torch.ones(8))):
        pass


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_direction_removed_from_what_the_mlp_and_attention_write(kind, tokenizer):
    """``site="mlp"`` / ``"attn"``: the direction removed from what a block's MLP or attention adds to
    the residual stream. Along the batch it equals the plain ``remove_direction``; with both writers
    of block 1 edited, block 1 adds nothing along the direction (its output's component equals its
    input's, to float error); either writer alone changes the logits and differs from the other."""
    from neat_llm.hooks import capture_outputs
    from neat_llm.interventions import DirectionEdit, DirectionEdits, remove_direction

    model = build_tiny(kind, tokenizer)
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(5))
    u = v / v.norm()
    mlp, attn = DirectionEdit(1, v, site="mlp"), DirectionEdit(1, v, site="attn")
    both = DirectionEdits((mlp, attn))
    assert both.sites == ("mlp", "attn") and both.layers == (1,)
    assert "what the MLP of block 1 writes and what the attention of block 1 writes" in both.describe()
    assert "what the MLP of block 1 writes" in mlp.describe() and mlp.settings()["site"] == "mlp"
    conds = [Condition("before"), Condition("mlp", residual=mlp), Condition("attn", residual=attn),
             Condition("both", residual=both)]
    enc = model.encode(TEXTS)
    with torch.inference_mode():
        batched = _logits_along_batch(model, conds, enc)
        plain = model.hf(**enc, use_cache=False).logits
        torch.testing.assert_close(batched[0], plain, atol=1e-5, rtol=1e-4)
        for c in (1, 2, 3):
            with remove_direction(model, conds[c].residual):
                want = model.hf(**enc, use_cache=False).logits
            torch.testing.assert_close(batched[c], want, atol=1e-5, rtol=1e-4)
            assert not torch.allclose(want, plain, atol=1e-3)
        assert not torch.allclose(batched[1], batched[2], atol=1e-3)
        with remove_direction(model, both), capture_outputs({0: model.blocks[0], 1: model.blocks[1]}) as out:
            model.hf(**enc, use_cache=False)
        added = (out[1][0].float() - out[0][0].float()) @ u
        assert added.abs().max() < 1e-4
    assert all(not b._forward_hooks for b in model.blocks) and all(not s._forward_hooks for s in model.sites)


def test_a_writer_edit_is_refused_where_the_family_normalises_it(tokenizer):
    """Gemma 2/3 normalise what the MLP and attention write before adding it: no module's output is
    the write, so a writer edit is refused by name (the block's output can still be edited)."""
    from neat_llm.interventions import DirectionEdit, remove_direction
    from neat_llm.models import UnsupportedModelError

    model = build_tiny("gemma3", tokenizer)
    v = torch.ones(model.d_model)
    for site in ("mlp", "attn"):
        with pytest.raises(UnsupportedModelError, match=f"normalise the {site} output"):
            with remove_direction(model, DirectionEdit(0, v, site=site)):
                pass
    with pytest.raises(ValueError, match="site is one of block, mlp, attn"):
        DirectionEdit(0, v, site="resid")
    with pytest.raises(ValueError, match="out of range"):
        model.writer("mlp", model.n_layers)
    with pytest.raises(ValueError, match="each block's site once"):
        from neat_llm.interventions import DirectionEdits
        DirectionEdits((DirectionEdit(0, v, site="mlp"), DirectionEdit(0, 2 * v, site="mlp")))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_what_chosen_neurons_write_loses_the_direction(kind, tokenizer):
    """``NeuronWrites``: along the batch it equals the plain ``project_writes``; that equals editing
    the chosen rows of the down projection, w_k <- (I - t u u^T) w_k; every neuron of a block equals
    the direction removed from what the block's MLP writes (less a bias: none in the tiny llama);
    and neurons that are not chosen write as before (a different set gives different logits)."""
    from neat_llm.interventions import DirectionEdit, NeuronWrites, project_writes, remove_direction

    model = build_tiny(kind, tokenizer)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(model.d_model, generator=g)
    u = v / v.norm()
    some = NeuronWrites(((1, 3), (0, 5), (1, 0), (2, 7)), v, strength=0.8)
    other = NeuronWrites(((1, 4), (0, 6)), v)
    conds = [Condition("before"), Condition("some", writes=some), Condition("other", writes=other),
             Condition("zero-and-some", NeuronSelection(((0, 1),)), writes=some)]
    enc = model.encode(TEXTS)
    with torch.inference_mode():
        batched = _logits_along_batch(model, conds, enc)
        plain = model.hf(**enc, use_cache=False).logits
        torch.testing.assert_close(batched[0], plain, atol=1e-5, rtol=1e-4)
        with project_writes(model, some):
            want = model.hf(**enc, use_cache=False).logits
        torch.testing.assert_close(batched[1], want, atol=1e-5, rtol=1e-4)
        with turn_off(model, NeuronSelection(((0, 1),))), project_writes(model, some):
            torch.testing.assert_close(batched[3], model.hf(**enc, use_cache=False).logits, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(want, plain, atol=1e-3) and not torch.allclose(batched[1], batched[2], atol=1e-3)
        # the weight edit it stands for
        saved = [model.weight_out(l).clone() for l in range(model.n_layers)]
        try:
            for l, ks in some.by_layer().items():
                w = model.weight_out(l)  # a view of the down projection's weight
                w[ks] = w[ks] - 0.8 * (w[ks] @ u)[:, None] * u
            torch.testing.assert_close(model.hf(**enc, use_cache=False).logits, want, atol=1e-5, rtol=1e-4)
        finally:
            for l in range(model.n_layers):
                model.weight_out(l).copy_(saved[l])
        torch.testing.assert_close(model.hf(**enc, use_cache=False).logits, plain)
        if kind == "llama":  # no MLP bias: all of block 1's neurons are what block 1's MLP writes
            every = NeuronWrites(tuple((1, k) for k in range(model.d_ff)), v)
            with project_writes(model, every):
                got = model.hf(**enc, use_cache=False).logits
            with remove_direction(model, DirectionEdit(1, v, site="mlp")):
                torch.testing.assert_close(got, model.hf(**enc, use_cache=False).logits, atol=1e-5, rtol=1e-4)
    assert all(not s._forward_hooks for s in model.sites)
    assert "4 MLP neurons of blocks 0-2" in some.describe() and "strength 0.8" in some.describe()
    assert some.settings()["blocks"] == [0, 1, 2] and len(some) == 4


@pytest.mark.parametrize("kind", ["gemma3", "gemma2"])
def test_where_the_mlp_output_is_normalised_the_neurons_part_along_u_leaves_what_enters_the_stream(kind, tokenizer):
    """Gemma 2/3 add y = s * h / rms(h) to the residual stream (h: the down projection's output). The
    edit takes exactly the chosen neurons' part along u out of y, after the norm:
    y -> y - t (y_K . u) u with y_K = s * h_K / rms(h), h kept; everything else they write stays.
    Along the batch it equals the plain hooks; no weight edit computes it, so the bake refuses."""
    from neat_llm.hooks import capture_inputs, capture_outputs
    from neat_llm.interventions import NeuronWrites, project_writes
    from neat_llm.models import UnsupportedModelError
    from neat_llm.models.adapters import get_module

    model = build_tiny(kind, tokenizer)
    with torch.no_grad():  # a norm scale far from 1, so s * u and u differ
        for b in model.blocks:
            get_module(b, model.family.mlp_out_norm).weight.uniform_(-0.5, 1.5, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    v = torch.randn(model.d_model, generator=g)
    u = v / v.norm()
    l, ks, t = 1, [0, 3, 7, 11], 0.8
    edit = NeuronWrites(tuple((l, k) for k in ks), v, strength=t)
    norm = get_module(model.blocks[l], model.family.mlp_out_norm)
    s = norm.weight.detach().float() + model.family.norm_offset
    enc = model.encode(TEXTS)

    def run():
        with capture_inputs({l: model.sites[l]}) as a, capture_outputs({l: model.sites[l], "y": norm}) as o:
            logits = model.hf(**enc, use_cache=False).logits
        return a[l][0], o[l][0], o["y"][0], logits

    with torch.inference_mode():
        a, h, y, before = run()
        with project_writes(model, edit):
            a2, h2, y2, after = run()
        torch.testing.assert_close(a2, a)  # before the norm nothing moved
        torch.testing.assert_close(h2, h)
        h_k = a[..., ks].float() @ model.weight_out(l)[ks].float()  # what the chosen neurons write, pre-norm
        y_k = s * h_k / (h.float().pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
        want = y.float() - t * (y_k @ u)[..., None] * u
        torch.testing.assert_close(y2.float(), want, atol=1e-5, rtol=1e-4)
        assert (after - before).abs().max() > 1e-4
        batched = _logits_along_batch(model, [Condition("before"), Condition("w", writes=edit),
                                              Condition("zero", NeuronSelection(((0, 1),)), writes=edit)], enc)
        torch.testing.assert_close(batched[0], before, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched[1], after, atol=1e-5, rtol=1e-4)
        with turn_off(model, NeuronSelection(((0, 1),))), project_writes(model, edit):
            torch.testing.assert_close(batched[2], model.hf(**enc, use_cache=False).logits, atol=1e-5, rtol=1e-4)
    with pytest.raises(UnsupportedModelError, match="no weight edit computes"):
        edit.bake(model, model.hf)
    assert all(not n._forward_hooks for n in [get_module(b, model.family.mlp_out_norm) for b in model.blocks])


def test_a_neuron_write_edit_checks_its_input_and_has_its_own_content_key(tiny_llama, tokenizer):
    from neat_llm.interventions import NeuronWrites, project_writes
    from neat_llm.models import UnsupportedModelError

    m = tiny_llama
    v = torch.ones(m.d_model)
    with pytest.raises(ValueError, match="at least one neuron"):
        NeuronWrites((), v)
    with pytest.raises(ValueError, match="each neuron once"):
        NeuronWrites(((0, 1), (0, 1)), v)
    with pytest.raises(ValueError, match="non-zero vector"):
        NeuronWrites(((0, 1),), torch.zeros(m.d_model))
    with pytest.raises(ValueError, match=r"strength must be in \(0, 2\]"):
        NeuronWrites(((0, 1),), v, strength=2.5)
    with pytest.raises(ValueError, match="out of range"):
        with project_writes(m, NeuronWrites(((0, m.d_ff),), v)):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with project_writes(m, NeuronWrites(((m.n_layers, 0),), v)):
            pass
    a = NeuronWrites(((0, 1), (1, 2)), v)
    key = Condition("w", writes=a).content_key(m)
    assert key == Condition("renamed", writes=NeuronWrites(((1, 2), (0, 1)), v)).content_key(m)
    assert key != Condition(BEFORE).content_key(m)
    assert key != Condition("w", writes=NeuronWrites(((0, 1), (1, 3)), v)).content_key(m)
    assert key != Condition("w", writes=NeuronWrites(((0, 1), (1, 2)), v, strength=0.5)).content_key(m)
    assert key != Condition("w", writes=NeuronWrites(((0, 1), (1, 2)), 2 * v + 1)).content_key(m)
