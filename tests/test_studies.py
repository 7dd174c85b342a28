"""`neat hate` and `neat bias` on a tiny model with small fixture files written for the tests
(tests/fixtures/study, fictional groups), and their parts checked against direct computations."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import neat_llm as nl
from neat_llm.concepts.sources import load_concept_source
from conftest import concept_texts
from neat_llm.cli import app
from neat_llm.concepts.conceptset import ConceptSetError
from neat_llm.concepts.datasets import load_pairs
from neat_llm.concepts.label_readout import LabelReadout
from neat_llm.evaluation.bias import StereotypeScore, evaluate_bias, pair_preferences, sentence_logliks
from neat_llm.evaluation.checkpoints import ConditionStore
from neat_llm.evaluation.generation import prompt_prefixes, sample_continuations
from neat_llm.evaluation.hate_classifier import load_hate_classifier, train_hate_classifier
from neat_llm.evaluation.perplexity import text_logliks
from neat_llm.interventions import NeuronSelection
from neat_llm.studies import bias_study, hate_study

DATA = Path(__file__).parent / "fixtures" / "study"
# the tiny test tokenizer has no single-token " Yes" / " No"
READOUT = LabelReadout(template="{text} is it hateful", concept="hate", positive_word=" today", negative_word=" and")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _data_and_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("NEAT_LLM_DATA", str(DATA))
    monkeypatch.setenv("NEAT_LLM_CACHE", str(tmp_path / "cache"))


# --- the judge --------------------------------------------------------------------------------
def test_hate_classifier_quality_and_cache(tmp_path, monkeypatch):
    clf = train_hate_classifier(DATA / "davidson" / "labeled_data.csv")
    q = clf.quality
    assert q.n_train + q.n_test == 48 and q.n_test == 10
    # the quality is what the classifier's verdicts on the held-out part give, counted here by hand
    from neat_llm.evaluation.hate_classifier import CLASSES, davidson_split

    _, _, xte, yte = davidson_split(DATA / "davidson" / "labeled_data.csv")
    pred, truth = np.array(clf.predict(list(xte))), np.array([CLASSES[int(c)] for c in yte])
    assert q.accuracy == pytest.approx(float((pred == truth).mean()))
    tp = int(((pred == "hate") & (truth == "hate")).sum())
    n_pred, n_true = int((pred == "hate").sum()), int((truth == "hate").sum())
    assert q.f1_hate == pytest.approx(2 * tp / (n_pred + n_true) if n_pred + n_true else 0.0)
    p = clf.hate_probability(["keep the hill folk out", "the hill folk bake bread"])
    assert p.shape == (2,) and p[0] > p[1]
    assert clf.predict(["no river folk can stay here"]) == ["hate"]
    assert clf.rates(["keep the coast folk out", "coast folk grow rice"])["hate_rate"] == 0.5

    cached = load_hate_classifier(None, tmp_path / "c")
    monkeypatch.setattr("neat_llm.evaluation.hate_classifier.train_hate_classifier",
                        lambda path: (_ for _ in ()).throw(AssertionError("retrained despite the cache")))
    again = load_hate_classifier(None, tmp_path / "c")
    assert again.quality == cached.quality and len(list((tmp_path / "c").glob("*.npz"))) == 1
    probe = ["keep the hill folk out", "the hill folk bake bread", "no river folk can stay here", "rain again"]
    np.testing.assert_allclose(again.pipeline.predict_proba(probe), clf.pipeline.predict_proba(probe), rtol=1e-12)
    assert again.predict(probe) == clf.predict(probe)


def test_hate_classifier_cache_is_never_unpickled(tmp_path, monkeypatch):
    """A cache file someone replaced with a pickle is not executed: it is refused and retrained."""
    import pickle

    load_hate_classifier(None, tmp_path / "c")
    (file,) = (tmp_path / "c").glob("*.npz")

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('the cache was unpickled')",))

    file.write_bytes(pickle.dumps(Boom()))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("pickle.load called")))
    clf = load_hate_classifier(None, tmp_path / "c")  # retrained, file rewritten
    assert clf.quality.n_test == 10 and file.read_bytes()[:2] == b"PK"
    assert not [p for p in (tmp_path / "c").iterdir() if p.suffix == ".tmp"]


def test_hate_classifier_refuses_a_file_without_its_columns(tmp_path):
    bad = tmp_path / "labeled_data.csv"
    bad.write_text("text,label\na,b\n")
    with pytest.raises(ConceptSetError, match="'tweet'"):
        train_hate_classifier(bad)


# --- prompts and sampling -----------------------------------------------------------------------
def test_prompt_prefixes():
    assert prompt_prefixes(["one two three four five six", "too short here"]) == ["one two three"]
    assert prompt_prefixes(["a b c d e f g h i j k l m n o p q r s t u v"], max_words=10) == ["a b c d e f g h i j"]


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny_llama):
    prompts = ["the rain came", "a cake and", "the wind moved over"]
    state = torch.random.get_rng_state()
    a = sample_continuations(tiny_llama, prompts, max_new_tokens=4, seed=3, batch_size=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = sample_continuations(tiny_llama, prompts, max_new_tokens=4, seed=3, batch_size=2)
    c = sample_continuations(tiny_llama, prompts, max_new_tokens=4, seed=4, batch_size=2)
    assert a == b and len(a) == 3 and a != c
    assert tiny_llama.tokenizer.padding_side == "right"


# --- bias parts ---------------------------------------------------------------------------------
def test_sentence_logliks_score_the_first_token(tiny_llama):
    texts = ["the rain came", "hill folk are lazy"]
    got = sentence_logliks(tiny_llama, texts)
    eos = tiny_llama.tokenizer.eos_token
    want, counts = text_logliks(tiny_llama, [eos + t for t in texts])
    assert torch.allclose(got, want)
    plain = [len(tiny_llama.tokenizer(t)["input_ids"]) for t in texts]
    assert counts.tolist() == plain  # every token of the sentence is predicted


def test_pair_preferences_and_scores(tiny_llama):
    pairs = load_pairs("crows-pairs")
    prefs = pair_preferences(tiny_llama, pairs)
    ll = sentence_logliks(tiny_llama, list(pairs.more) + list(pairs.less)).numpy()
    assert np.array_equal(prefs, (ll[:12] > ll[12:]).astype(float))
    s = StereotypeScore.of(np.array([1, 1, 1, 0.0]), n_boot=2000)
    assert s.score == 75 and s.n == 4 and 0 <= s.lo <= 75 <= s.hi <= 100
    assert StereotypeScore.of(np.ones(5)) == StereotypeScore(100, 100, 100, 5)


def test_pairs_split_keeps_whole_pairs_and_types():
    pairs = load_pairs("indibias", lang="hi")
    fit, ev = pairs.split(0.3, seed=1)
    assert len(fit) + len(ev) == len(pairs) and len(ev) == 4
    assert set(zip(fit.more, fit.less, fit.bias_type)) | set(zip(ev.more, ev.less, ev.bias_type)) == \
        set(zip(pairs.more, pairs.less, pairs.bias_type))
    assert sorted(set(ev.bias_type)) == ["caste", "religion"]  # stratified
    assert pairs.split(0.3, seed=1) == (fit, ev)


def test_own_pairs_file_and_bad_columns(tmp_path):
    import pandas as pd

    f = tmp_path / "mine.csv"
    pd.DataFrame({"a": ["x is bad", "y is bad"], "b": ["z is bad", "w is bad"]}).to_csv(f, index=False)
    pairs = load_pairs(str(f), more="a", less="b", bias_type=None)
    assert pairs.more == ("x is bad", "y is bad") and pairs.types() == ["all"]
    with pytest.raises(ConceptSetError, match="column"):
        load_pairs(str(f), more="sent_more", less="b", bias_type=None)
    with pytest.raises(ConceptSetError, match="English only"):
        load_pairs("crows-pairs", lang="hi")


def test_evaluate_bias_matches_a_direct_computation(tiny_llama):
    from neat_llm import turn_off

    pairs = load_pairs("crows-pairs")
    sel = NeuronSelection(((0, 1), (1, 2), (2, 3)))
    rep = evaluate_bias(tiny_llama, pairs, {3: sel}, n_random=2, seed=0, min_pairs=2, n_boot=200)
    assert [r.bias_type for r in rep.rows] == ["all", "race-color", "socioeconomic"]
    all_row = rep.rows[0]
    assert all_row.before.score == pytest.approx(100 * pair_preferences(tiny_llama, pairs).mean())
    with turn_off(tiny_llama, sel):
        after = pair_preferences(tiny_llama, pairs)
    assert all_row.after.score == pytest.approx(100 * after.mean())
    assert all_row.n == 12 and all_row.n_random == 2 and all_row.ppl_ratio > 0


# --- resuming -----------------------------------------------------------------------------------
def test_condition_store_resumes_and_drops_other_settings(tmp_path):
    s = ConditionStore(tmp_path / "p", {"a": 1})
    s.put("before", {"x": 1})
    assert ConditionStore(tmp_path / "p", {"a": 1}).get("before") == {"x": 1}
    assert ConditionStore(tmp_path / "p", {"a": 2}).get("before") is None


def test_bias_evaluation_resumes_after_an_interruption(tiny_llama, tmp_path, monkeypatch):
    import neat_llm.evaluation.bias as bias_mod

    pairs = load_pairs("crows-pairs")
    sels = {2: NeuronSelection(((0, 1), (1, 2))), 3: NeuronSelection(((0, 1), (1, 2), (2, 3)))}
    full = evaluate_bias(tiny_llama, pairs, sels, n_random=2, min_pairs=2)

    class Stop(Exception):
        pass

    seen = []

    def stop_after_three(name):
        seen.append(name)
        if len(seen) == 3:
            raise Stop

    store = ConditionStore(tmp_path / "p", {"x": 1})
    with pytest.raises(Stop):
        evaluate_bias(tiny_llama, pairs, sels, n_random=2, min_pairs=2, store=store, on_condition=stop_after_three)
    assert store.n_done() == 3
    measured = []
    real = bias_mod.BiasMeasure.measure
    monkeypatch.setattr(bias_mod.BiasMeasure, "measure", lambda self, m, g: measured.append(g) or real(self, m, g))
    again = evaluate_bias(tiny_llama, pairs, sels, n_random=2, min_pairs=2, store=store)
    assert sum(measured) == 1 + 2 * (1 + 2) - 3  # only the unfinished conditions ran
    assert [r.after for r in again.rows] == [r.after for r in full.rows]
    assert [r.random for r in again.rows] == [r.random for r in full.rows]


# --- the studies end to end ---------------------------------------------------------------------
def test_hate_study_across_groups(tiny_llama, tmp_path):
    study = hate_study(tiny_llama, ks=[2, 5], fit_groups=["hillfolk", "riverfolk"], out=tmp_path / "h", n_random=2,
                       n_prompts=6, max_new_tokens=4, readout=READOUT, progress=False)
    r = study.report
    assert r.settings.eval_groups == ["coastfolk"]
    assert r.n_eval == {"hate": 6, "neutral": 6} and r.n_prompts == 6  # every coast-folk sentence, none seen in fit
    assert [(x.k, x.condition) for x in r.rows] == [(0, "before"), (2, "concept"), (2, "random"), (5, "concept"),
                                                    (5, "random")]
    before = r.rows[0]
    assert before.ppl_ratio == 1.0 and before.gap == pytest.approx(before.loglik_hate - before.loglik_neutral)
    assert all(0 <= x.hate_rate <= x.toxic_rate <= 1 and 0 <= x.readout_accuracy <= 1 for x in r.rows)
    assert r.rows[2].n_sets == 2 and set(r.rows[2].std) >= {"gap", "hate_rate"}
    saved = json.loads(study.path.read_text())
    assert len(saved["results"]) == 5 and "continuations" not in saved
    conts = json.loads((tmp_path / "h" / "hate_continuations.json").read_text())
    assert len(conts["prompts"]) == 6 and len(conts["random-k5-s1"]) == 6 * 5 == r.n_continuations  # 5 samples each
    assert conts["samples_per_prompt"] == 5
    # the rates are the judge's verdicts on the saved continuations, inside their intervals
    from neat_llm.evaluation.hate_classifier import load_hate_classifier

    tfidf = load_hate_classifier(None)
    assert r.judge == "minilm" and set(r.judges) == {"minilm", "tfidf"}
    assert set(r.judges["minilm"]) == set(r.judges["tfidf"]) == {"davidson", "toxigen"}
    assert before.second_hate_rate == pytest.approx(tfidf.rates(conts["before"])["hate_rate"])  # the second opinion
    n_all = sum(len(v) for k, v in conts.items() if k not in ("prompts", "samples_per_prompt"))
    assert r.agreement["n"] == n_all and 0 <= r.agreement["agreement"] <= 1
    lo, hi = before.hate_rate_ci
    assert lo <= before.hate_rate <= hi
    assert not (tmp_path / "h" / ".hate-partial").exists()
    with pytest.raises(ConceptSetError, match="both"):
        hate_study(tiny_llama, fit_groups=["hillfolk"], eval_groups=["hillfolk"], out=tmp_path / "x",
                   readout=READOUT, progress=False)


def test_hate_study_reuses_its_finished_run(tiny_llama, tmp_path, monkeypatch):
    import neat_llm.studies.common as common

    kw = dict(ks=[2], out=tmp_path / "h", n_random=1, n_prompts=3, max_new_tokens=3, readout=READOUT, progress=False)
    first = hate_study(tiny_llama, **kw)
    monkeypatch.setattr(common, "find_concept_neurons", lambda *a, **k: pytest.fail("searched the neurons again"))
    second = hate_study(tiny_llama, **kw)
    assert second.report.rows[1].gap == first.report.rows[1].gap
    with pytest.raises(ValueError, match="other"):
        hate_study(tiny_llama, **{**kw, "method": "activation"})


def test_bias_study_indibias_hindi(tiny_llama, tmp_path):
    study = bias_study(tiny_llama, data="indibias", lang="hi", ks=[3], out=tmp_path / "b", n_random=2, min_pairs=2,
                       progress=False)
    r = study.report
    assert r.lang == "hi" and r.n_eval_pairs == len(study.eval) == 4
    assert {x.bias_type for x in r.rows} == {"all", "caste", "religion"}
    assert len(study.fit) == 8 and study.run.meta.concept_name == "indibias-hi-stereo"
    from neat_llm import Run

    reloaded = load_concept_source(Run.load(tmp_path / "b").meta.extra["concept_source"])
    assert reloaded.hash == study.run.meta.concept_hash  # `neat evaluate` can reload the fit pairs


def test_a_second_bias_study_of_the_same_items_reuses_its_before_row_and_random_sets(tiny_llama, tmp_path):
    kw = dict(data="indibias", lang="en", ks=[2], n_random=2, min_pairs=2, progress=False)
    first = bias_study(tiny_llama, out=tmp_path / "a", **kw)
    assert first.report.settings.reused_conditions is None
    second = bias_study(tiny_llama, out=tmp_path / "b", method="activation", **kw)
    assert sorted(second.report.settings.reused_conditions) == ["before", "random-k2-s0", "random-k2-s1"]
    a, b = ([r for r in rep.rows if (r.bias_type, r.k) == ("all", 2)][0] for rep in (first.report, second.report))
    assert (b.before.score, b.random.score, b.random_ppl_ratio) == (a.before.score, a.random.score, a.random_ppl_ratio)
    fresh = bias_study(tiny_llama, out=tmp_path / "c", method="activation", share_conditions=False, **kw)
    assert fresh.report.settings.reused_conditions is None


def test_a_study_finds_with_its_top_k_proven_the_same_neurons_as_two_full_sweeps(tiny_llama, tmp_path):
    study = bias_study(tiny_llama, data="indibias", lang="en", ks=[2, 30], out=tmp_path / "b", n_random=1,
                       min_pairs=2, progress=False, top_k=20)
    proof = study.run.meta.extra["exact_top"]
    assert proof["k"] == 30 and proof["contrast_swept"] < proof["of"] == 144
    concept = load_concept_source(study.run.meta.extra["concept_source"])
    assert concept.hash == study.run.meta.concept_hash
    full = nl.find_concept_neurons(tiny_llama, concept, out=tmp_path / "full", progress=False, reading_layer=study.run.meta.reading_layer,
                                   seed=study.run.meta.seed)
    assert full.top(30).neurons == study.run.top(30).neurons
    with pytest.raises(ValueError, match="proved only its top 30"):
        study.run.top(31)


def test_paired_accuracy_against_a_direct_computation(tiny_llama):
    """pair_differences = h(more) - h(less) per layer; the CV accuracy of the fold-wise diff-means
    direction equals a hand-written loop; paired_accuracy counts positive projections."""
    from sklearn.model_selection import KFold

    from neat_llm.concepts.paired import pair_differences, paired_accuracy, paired_cv_accuracy
    from neat_llm.concepts.representations import text_pass

    pos, neg = concept_texts(6)
    d = pair_differences(tiny_llama, pos, neg)
    direct = text_pass(tiny_llama, pos).residuals - text_pass(tiny_llama, neg).residuals
    torch.testing.assert_close(d, direct, atol=1e-5, rtol=1e-5)
    cv = paired_cv_accuracy(d, folds=3, seed=1)
    for layer in range(tiny_llama.n_layers):
        hits = 0
        for train, test in KFold(3, shuffle=True, random_state=1).split(range(6)):
            c = d[train, layer].mean(0)
            hits += sum(float(d[i, layer] @ c) > 0 for i in test)
        assert cv[layer] == pytest.approx(hits / 6)
    c = torch.nn.functional.normalize(d[:, 1].mean(0), dim=0)
    assert paired_accuracy(d[:, 1], c) == pytest.approx(float(((d[:, 1] @ c) > 0).float().mean()))
    assert paired_accuracy(d[:, 1], -c) == pytest.approx(float(((d[:, 1] @ c) < 0).float().mean()))
    with pytest.raises(ValueError, match="equally many"):
        pair_differences(tiny_llama, pos, neg[:-1])


def test_bias_study_reads_at_the_paired_layer(tiny_llama, tmp_path):
    """layer_rule="paired": the reading layer is the best (latest on ties) CV paired accuracy on
    the fit pairs; "auroc" keeps find's layer; both report the held-out paired accuracy."""
    from neat_llm.concepts.paired import pair_differences, paired_cv_accuracy
    from neat_llm.concepts.vectors import DEFAULT_READ_TEMPLATE, choose_reading_layer

    study = bias_study(tiny_llama, data="indibias", lang="en", ks=[2], out=tmp_path / "p", n_random=1, min_pairs=2,
                       progress=False)
    st = study.report.settings
    cv = paired_cv_accuracy(pair_differences(tiny_llama, study.fit.more, study.fit.less,
                                             template=DEFAULT_READ_TEMPLATE))  # read as find reads the concept
    assert st.layer_rule == "paired" and st.reading_layer == choose_reading_layer(cv)
    assert st.paired_cv_accuracy_by_layer == pytest.approx(list(cv))
    assert 0 <= st.eval_paired_accuracy <= 1
    by_type = st.eval_paired_accuracy_by_type
    assert sum(v["n"] for v in by_type.values()) == len(study.eval)
    # the overall share is the n-weighted mean of the per-type shares
    assert st.eval_paired_accuracy == pytest.approx(sum(v["n"] * v["accuracy"] for v in by_type.values())
                                                       / len(study.eval))
    auroc = bias_study(tiny_llama, data="indibias", lang="en", ks=[2], out=tmp_path / "a", n_random=1, min_pairs=2,
                       progress=False, layer_rule="auroc")
    assert auroc.report.settings.paired_cv_accuracy is None and auroc.report.settings.layer_rule == "auroc"
    with pytest.raises(ValueError, match="layer_rule"):
        bias_study(tiny_llama, data="indibias", ks=[2], out=tmp_path / "x", layer_rule="best")


# --- the commands -------------------------------------------------------------------------------
def test_cli_hate_and_bias(tiny_model_dir, tmp_path):
    r = runner.invoke(app, ["hate", "--design", "prefixes", "--model", str(tiny_model_dir), "--k", "2,3", "--random", "1", "--prompts", "4",
                            "--new-tokens", "3", "--label-yes", " today", "--label-no", " and", "--eval-groups",
                            "coastfolk", "--out", str(tmp_path / "h"), "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    assert obj["settings"]["fit_groups"] == ["hillfolk", "riverfolk"] and len(obj["results"]) == 5
    assert 0 <= obj["classifier"]["f1_hate"] <= 1

    r = runner.invoke(app, ["bias", "--model", str(tiny_model_dir), "--data", "crows-pairs", "--k", "2",
                            "--random", "1", "--min-pairs", "2", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "stereotype score" in r.stdout and "bias.json" in r.stdout and "paired accuracy" in r.stdout
    saved = json.loads((tmp_path / "b" / "bias.json").read_text())
    assert [x["bias_type"] for x in saved["results"]] == ["all", "race-color", "socioeconomic"]
    assert saved["results"][0]["n"] == 4 and set(saved["results"][0]["before"]) == {"score", "lo", "hi", "n"}

    r = runner.invoke(app, ["bias", "--model", str(tiny_model_dir), "--data", "indibias", "--bias-type", "gender",
                            "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "no pairs of bias type" in r.output
    r = runner.invoke(app, ["hate", "--design", "prefixes", "--model", str(tiny_model_dir), "--eval-groups", "martians",
                            "--label-yes", " today", "--label-no", " and", "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "unknown ToxiGen group" in r.output
    r = runner.invoke(app, ["hate", "--design", "prefixes", "--model", str(tiny_model_dir), "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "single-token" in r.output  # " Yes" is several tokens for the tiny tokenizer
    assert not (tmp_path / "y").exists()  # refused before anything was written


def test_studies_dampen_aura_neurons_by_their_own_factors(tiny_llama, tmp_path):
    """An AurA run is dampened by default (its random K-sets by the same factors); a plain run can be
    dampened with one alpha; dampening without any factor is refused before any pass."""
    from neat_llm.evaluation.bias import evaluate_bias
    from neat_llm.evaluation.conditions import random_selections

    study = bias_study(tiny_llama, data="crows-pairs", method="aura", ks=[3], out=tmp_path / "a", n_random=1,
                       min_pairs=2, progress=False)
    assert study.report.mode == "dampen"
    sel = study.run.top(3)
    assert sel.alphas is not None and all(0 <= a <= 1 for a in sel.alphas)
    # the random condition is the random 3-set dampened by the top set's factors: recompute it directly
    from neat_llm.evaluation.bias import pair_preferences

    rand = random_selections(tiny_llama, 3, 1, 0)[0].with_alphas(sel.alphas)
    with nl.turn_off(tiny_llama, rand, mode="dampen"):
        prefs = pair_preferences(tiny_llama, study.eval)
    row = study.report.rows[0]
    assert row.random.score == pytest.approx(100 * float(prefs.mean()), abs=1e-6)
    plain = bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "p", n_random=1, min_pairs=2,
                       progress=False, mode="dampen", alpha=0.5)
    assert plain.report.mode == "dampen"
    with pytest.raises(ValueError, match="dampen"):
        evaluate_bias(tiny_llama, study.eval, {3: plain.run.top(3)}, mode="dampen")


def test_paired_probe_scores_the_effect_on_the_within_pair_difference(tiny_llama, tmp_path):
    """With probe_pairs, the probe batch is the b fit pairs with the largest S(more) - S(less), and the
    contrastive score (specificity 0, every position) of a neuron is the mean over those pairs of
    [S(more) - S(more | off)] - [S(less) - S(less | off)], recomputed here with turn_off."""
    from neat_llm.concepts.vectors import apply_template
    from neat_llm.evaluation.removal import concept_scores_along

    pairs = load_pairs("crows-pairs")
    concept = pairs.as_concept_set().dedupe()
    run = nl.find_concept_neurons(tiny_llama, concept, probe_pairs=list(zip(pairs.more, pairs.less)), probe_size=3,
                                  score="contrastive", specificity=0, positions="all", out=tmp_path / "p",
                                  progress=False)
    readout = run.readout()
    assert run.meta.params["probe"] == "paired" and len(run.meta.extra["contrast_probe_texts"]) == 3
    more = run.meta.probe_texts[:3]
    less = run.meta.extra["contrast_probe_texts"]
    template = readout.template
    pair_of = dict(zip(apply_template(template, pairs.more), apply_template(template, pairs.less)))
    assert [pair_of[m] for m in more] == less  # each positive probe with its own counterpart
    # the chosen pairs lean the most towards the stereotype among the fit pairs
    fit = concept.split(eval_fraction=0.3, seed=0).fit
    usable = [(a, c) for a, c in zip(pairs.more, pairs.less) if a in fit.positives and c in fit.contrast]
    ev = nl.ConceptSet.from_texts([a for a, _ in usable], [c for _, c in usable], name="u")
    s = concept_scores_along(tiny_llama, readout, ev, 1)[0]
    diffs = sorted((s.pos - s.neg).tolist(), reverse=True)
    chosen = nl.ConceptSet.from_texts(more, less, name="c")
    import dataclasses

    plain = dataclasses.replace(readout, template="{text}")  # the probes are stored as the model read them
    got = concept_scores_along(tiny_llama, plain, chosen, 1)[0]
    assert sorted((got.pos - got.neg).tolist(), reverse=True) == pytest.approx(diffs[:3], abs=1e-4)
    for l, k in [(0, 1), (1, 7), (readout.layer, 3)]:
        with nl.turn_off(tiny_llama, [(l, k)]):
            off = concept_scores_along(tiny_llama, plain, chosen, 1)[0]
        want = float((got.pos - off.pos).mean() - (got.neg - off.neg).mean())
        assert float(run.scores[l, k]) == pytest.approx(want, abs=1e-4)


def test_bias_study_with_the_paired_probe(tiny_llama, tmp_path):
    study = bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "b", n_random=1, min_pairs=2,
                       probe="paired", progress=False)
    assert study.report.settings.probe == "paired" and study.report.settings.score == "contrastive"
    assert study.run.meta.params["probe"] == "paired"
    with pytest.raises(Exception, match="probe"):  # the folder holds a paired-probe run: not reused for another
        bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "b", n_random=1, min_pairs=2,
                   progress=False)
    with pytest.raises(ValueError, match="probe must be"):
        bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "c", probe="pairs", progress=False)


def test_hate_study_with_davidson_prompts_reports_each_source(tiny_llama, tmp_path):
    from neat_llm.studies.hate import davidson_hate_prompts

    extra = davidson_hate_prompts(None, 3, seed=0)
    assert len(extra) == 3 and all(len(p.split()) >= 3 for p in extra)
    # prefixes of hate-class tweets of the judges' test part (the 20% no judge trains on)
    from neat_llm.evaluation.hate_classifier import davidson_split

    _, _, xte, yte = davidson_split(DATA / "davidson" / "labeled_data.csv")
    test_hate = [t for t, y in zip(xte, yte) if y == 0]
    assert all(any(t.startswith(p) for t in test_hate) for p in extra)
    study = hate_study(tiny_llama, ks=[2], out=tmp_path / "h", n_random=1, n_prompts=4, samples=2,
                       davidson_prompts=3, max_new_tokens=3, readout=READOUT, progress=False)
    r = study.report
    assert r.n_prompts == 7 and r.n_continuations == 14
    for row in r.rows:
        src = row.by_source
        assert set(src) == {"held-out hateful", "davidson"}
        assert src["davidson"]["n_prompts"] == 3 and src["held-out hateful"]["n_prompts"] == 4
        pooled = (4 * src["held-out hateful"]["hate_rate"] + 3 * src["davidson"]["hate_rate"]) / 7
        assert row.hate_rate == pytest.approx(pooled)
    with pytest.raises(ConceptSetError, match="usable hate tweets"):
        davidson_hate_prompts(None, 50)


def test_study_reports_read_back_typed_from_the_run_folder(tiny_llama, tmp_path):
    """hate.json and bias.json read back through the run (run.hate_report(), run.bias_report()) give
    the reports that were written, field for field; a folder without them gives None."""
    h = hate_study(tiny_llama, ks=[2], out=tmp_path / "h", n_random=1, n_prompts=3, samples=2, max_new_tokens=3,
                   readout=READOUT, progress=False)
    got = nl.Run.load(tmp_path / "h").hate_report()
    assert json.dumps(got.to_dict(), sort_keys=True) == json.dumps(h.report.to_dict(), sort_keys=True)
    assert got.continuations == h.report.continuations and got.rows[0].hate_rate_ci == h.report.rows[0].hate_rate_ci
    assert got.settings == h.report.settings and got.settings.readout == READOUT  # typed again, not a dict
    b = bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "b", n_random=1, min_pairs=2, progress=False)
    run = nl.Run.load(tmp_path / "b")
    assert json.dumps(run.bias_report().to_dict(), sort_keys=True) == json.dumps(b.report.to_dict(), sort_keys=True)
    again = run.bias_report()
    assert again.rows == b.report.rows and again.settings == b.report.settings
    assert isinstance(again.rows[0].before, StereotypeScore) and again.settings.probe == "prototypical"
    assert run.hate_report() is None and run.evaluation() is None


def test_study_settings_are_checked_when_made_before_anything_loads(tiny_llama, tmp_path):
    from neat_llm.studies import BiasStudySettings, HateStudySettings

    for bad, match in [(dict(judge="gpt"), "judge must be 'minilm' or 'tfidf'"),
                       (dict(n_prompts=0), "n_prompts must be a whole number >= 1"),
                       (dict(ks=[0, 10]), "--k needs positive sizes"),
                       (dict(mode="half"), "mode must be one of zero, mean, dampen"),
                       (dict(mode="zero", alpha=0.3), "alpha is a dampening factor"),
                       (dict(mode="dampen", alpha=1.5), r"alpha must be in \[0, 1\]")]:
        with pytest.raises(ValueError, match=match):
            HateStudySettings(**bad)
    for bad, match in [(dict(probe="pairs"), "probe must be 'prototypical' or 'paired'"),
                       (dict(layer_rule="best"), "layer_rule must be 'paired' or 'auroc'"),
                       (dict(eval_fraction=0.0), "eval_fraction must lie between 0 and 1")]:
        with pytest.raises(ValueError, match=match):
            BiasStudySettings(**bad)
    s = HateStudySettings.of(HateStudySettings(n_prompts=3, seed=2), n_prompts=4, fit_groups=["a", "b"])
    assert (s.n_prompts, s.seed, s.fit_groups, s.ks) == (4, 2, ("a", "b"), (10, 50, 100, 500, 2000))
    with pytest.raises(TypeError, match="unknown find setting.*n_promts"):  # neither a study nor a find setting
        hate_study(tiny_llama, out=tmp_path / "x", n_promts=4, progress=False)
    assert not (tmp_path / "x").exists()
    r = runner.invoke(app, ["hate", "--model", "/no/such/model", "--samples", "0", "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "samples must be a whole number >= 1" in r.output  # before the model is looked up


def test_max_fit_pairs_caps_everything_read_from_the_fit_pairs(tiny_llama, tmp_path, monkeypatch):
    import neat_llm.studies.bias as bias_mod

    seen = []
    real = bias_mod.pair_differences
    monkeypatch.setattr(bias_mod, "pair_differences", lambda m, more, less, **kw: seen.append(len(more)) or
                        real(m, more, less, **kw))
    study = bias_study(tiny_llama, data="indibias", lang="en", ks=[2], out=tmp_path / "c", n_random=1, min_pairs=2,
                       max_fit_pairs=6, progress=False)
    assert len(study.fit) == 6 and study.report.settings.n_fit_pairs == 6
    assert seen[0] == 6  # the paired layer rule read the capped pairs, not all of them


def test_cross_fitted_bias_study_evaluates_every_item_once_by_neurons_found_without_it(tiny_llama, tmp_path):
    from neat_llm.studies.bias import fold_indices

    items = load_pairs("crows-pairs")
    study = bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "cf", n_random=1, min_pairs=2,
                       folds=3, progress=False)
    folds = fold_indices(items.bias_type, 3, 0, items.name)
    assert sorted(i for f in folds for i in f) == list(range(len(items)))  # a partition
    assert len(study.folds) == 3 and study.report.n_eval_pairs == len(items)
    for f, part in zip(folds, study.folds):
        held = {items.more[i] for i in f}
        assert list(part.eval.more) == [items.more[i] for i in f]
        assert not held & set(part.fit.more)  # found without the items it evaluates
        assert part.run.run_dir == tmp_path / "cf" / f"fold-{folds.index(f)}"
    row = next(r for r in study.report.rows if r.bias_type == "all")
    assert row.n == len(items)
    # before does not depend on the neurons: the pooled score is the whole set's
    whole = pair_preferences(tiny_llama, items.subset([i for f in folds for i in f]))
    assert row.before.score == pytest.approx(100 * float(whole.mean()), abs=1e-6)
    pooled_after = np.concatenate([np.asarray(p.report.items.prefs[p.report.items.conditions[3][0]])
                                   for p in study.folds])
    assert row.after.score == pytest.approx(100 * float(pooled_after.mean()), abs=1e-9)
    assert row.vs_random is not None and row.vs_random["n"] == len(items)
    ratio = np.mean([p.report.items.ppl["concept-k3"] / p.report.items.ppl["before"] for p in study.folds])
    assert row.ppl_ratio == pytest.approx(ratio)
    saved = json.loads((tmp_path / "cf" / "bias.json").read_text())
    assert saved["settings"]["folds"] == 3 and len(saved["items"]["bias_type"]) == len(items)


def test_a_cross_fitted_study_reuses_finished_folds_and_refuses_other_folds(tiny_llama, tmp_path, monkeypatch):
    import neat_llm.studies.bias as bias_mod

    first = bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "cf", n_random=1, min_pairs=2, folds=2,
                       progress=False)
    calls = []
    real = bias_mod._one_split
    monkeypatch.setattr(bias_mod, "_one_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "cf", n_random=1, min_pairs=2, folds=2,
                       progress=False)
    assert calls == [] and [r.after.score for r in again.report.rows] == [r.after.score for r in first.report.rows]
    with pytest.raises(nl.RunError, match="cross-fitted study"):
        nl.Run.load(tmp_path / "cf")
    damped = bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "cf", n_random=1, min_pairs=2, folds=2,
                        progress=False, mode="dampen", alpha=0.5)
    assert len(calls) == 2 and damped.report.mode == "dampen"  # another intervention: every fold measured again
    with pytest.raises(ValueError, match="other folds"):
        bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "cf", n_random=1, min_pairs=2, folds=3,
                   progress=False)
    with pytest.raises(ValueError, match="folds must be"):
        bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "x", folds=1, progress=False)
    with pytest.raises(ValueError, match="max_eval_pairs"):
        bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "y", folds=2, max_eval_pairs=5,
                   progress=False)


def test_bias_study_with_writers_edits_what_the_span_writes_beside_random_sets_of_it(tiny_llama, tmp_path):
    from neat_llm.interventions import project_writes, random_writes

    study = bias_study(tiny_llama, data="crows-pairs", ks=[3, 6], out=tmp_path / "w", n_random=2, min_pairs=2,
                       method="activation", writers=(0, 1), progress=False)
    rep, items = study.report, study.report.items
    assert rep.mode == "writes" and rep.edits_writes and rep.settings.intervention["mode"] == "writes"
    assert rep.settings.intervention["strength"] == 1.0
    assert items.conditions == {k: (f"writes-K{k}-L0-1", [f"writes-K{k}-L0-1-random-{i}" for i in range(2)])
                                for k in (3, 6)}
    pairs = study.eval
    for k in (3, 6):
        edit = study.run.writers(tiny_llama, (0, 1), k)
        assert {l for l, _ in edit.neurons} <= {0, 1} and len(edit) == k
        with project_writes(tiny_llama, edit):
            direct = pair_preferences(tiny_llama, pairs)
        np.testing.assert_allclose(items.prefs[f"writes-K{k}-L0-1"], direct)
        control = random_writes(edit, (0, 1), tiny_llama.d_ff, 2, 0)[1]
        assert control.neurons != edit.neurons and {l for l, _ in control.neurons} <= {0, 1}
        with project_writes(tiny_llama, control):
            direct = pair_preferences(tiny_llama, pairs)
        np.testing.assert_allclose(items.prefs[f"writes-K{k}-L0-1-random-1"], direct)
    row = next(r for r in rep.rows if r.bias_type == "all" and r.k == 3)
    assert row.after.score == pytest.approx(100 * np.mean(items.prefs["writes-K3-L0-1"]))
    assert row.vs_random is not None and row.n_random == 2
    saved = json.loads((tmp_path / "w" / "bias.json").read_text())
    assert saved["mode"] == "writes"


def test_bias_study_ceilings_edit_the_direction_itself_against_before(tiny_llama, tmp_path):
    """``ceiling``: the run's direction out of the residual at the reading layer, out of what every
    MLP writes and out of what the writers' span writes, at the writes strength (2: reversed); each
    row equals the edit measured directly, against before paired over items; kept through bias.json
    and pooled over cross-fitted folds."""
    from neat_llm.evaluation.bias import BiasReport
    from neat_llm.interventions import DirectionEdit, remove_direction
    from neat_llm.studies.common import span_writes

    kw = dict(data="crows-pairs", ks=[3], n_random=1, min_pairs=2, method="activation", writers=(0, 1),
              writes_strength=2.0, ceiling=True, progress=False)
    study = bias_study(tiny_llama, out=tmp_path / "c", **kw)
    rep, run = study.report, study.run
    r, last = run.meta.reading_layer, tiny_llama.n_layers - 1
    names = [f"direction-L{r}", f"mlp-writes-L0-{last}", "mlp-writes-L0-1"]
    assert rep.items.ceilings == names and sorted({c.ceiling for c in rep.ceilings}) == sorted(names)
    edits = {names[0]: DirectionEdit(r, run.concept_vector, "project", 2.0),
             names[1]: span_writes(run.concept_vector, (0, last), "mlp", 2.0)[1],
             names[2]: span_writes(run.concept_vector, (0, 1), "mlp", 2.0)[1]}
    for name, edit in edits.items():
        with remove_direction(tiny_llama, edit):
            np.testing.assert_allclose(rep.items.prefs[name], pair_preferences(tiny_llama, study.eval))
        row = next(c for c in rep.ceilings if c.ceiling == name and c.bias_type == "all")
        assert row.after.score == pytest.approx(100 * np.mean(rep.items.prefs[name]))
        assert row.vs_before["diff"] == pytest.approx(row.after.score - row.before.score, abs=1e-9)
    assert rep.items.ppl[names[1]] != pytest.approx(rep.items.ppl["before"])  # the edit changes the model
    again = BiasReport.from_dict(json.loads((tmp_path / "c" / "bias.json").read_text()))
    assert again.ceilings == rep.ceilings
    folds = bias_study(tiny_llama, out=tmp_path / "f", folds=2, **kw)
    assert folds.report.items.ceilings == names and len(folds.report.items.bias_type) == len(folds.eval)
    assert {c.ceiling for c in folds.report.ceilings} == set(names)
    with pytest.raises(ValueError, match=r"writes_strength must be in \(0, 2\]"):
        bias_study(tiny_llama, out=tmp_path / "bad", **{**kw, "writes_strength": 2.5})


def test_cli_bias_ceiling_prints_the_ceilings(tiny_model_dir, tmp_path):
    r = runner.invoke(app, ["bias", "--model", str(tiny_model_dir), "--data", "crows-pairs", "--k", "2",
                            "--random", "1", "--min-pairs", "2", "--method", "activation", "--ceiling",
                            "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "ceilings: the concept direction" in r.stdout and "direction-L" in r.stdout and "mlp-writes-L0-" in r.stdout
    saved = json.loads((tmp_path / "b" / "bias.json").read_text())
    assert [c["ceiling"] for c in saved["ceilings"] if c["bias_type"] == "all"][0].startswith("direction-L")


def test_bias_study_with_writers_refuses_bad_settings_before_anything_is_found(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="drop mode"):
        bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "a", writers=(0, 1), mode="zero",
                   progress=False)
    with pytest.raises(ValueError, match="writes_strength"):
        bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "b", writers=(0, 1), writes_strength=0,
                   progress=False)
    with pytest.raises(ValueError, match="the model has blocks"):
        bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "c", writers=(0, 99), progress=False)
    assert not (tmp_path / "c").exists()  # refused before the find wrote anything
    with pytest.raises(ValueError, match="writers"):
        bias_study(tiny_llama, data="crows-pairs", ks=[3], out=tmp_path / "d", writers=(2, 1), progress=False)


def test_cli_bias_with_writers(tiny_model_dir, tmp_path):
    r = runner.invoke(app, ["bias", "--model", str(tiny_model_dir), "--data", "crows-pairs", "--k", "2",
                            "--random", "1", "--min-pairs", "2", "--method", "activation", "--writers", "0-1",
                            "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "K writers of blocks 0-1" in r.stdout
    saved = json.loads((tmp_path / "b" / "bias.json").read_text())
    assert saved["mode"] == "writes" and saved["items"]["conditions"]["2"][0] == "writes-K2-L0-1"
    r = runner.invoke(app, ["bias", "--model", str(tiny_model_dir), "--data", "crows-pairs", "--writers", "0-1,2-3",
                            "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "one span" in r.output
    r = runner.invoke(app, ["bias", "--model", str(tiny_model_dir), "--data", "crows-pairs", "--writers", "0-1",
                            "--mode", "zero", "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "drop --mode" in r.output


def test_a_cross_fitted_writers_study_reuses_its_folds_and_measures_another_strength_again(tiny_llama, tmp_path,
                                                                                         monkeypatch):
    import neat_llm.studies.bias as bias_mod

    kw = dict(data="crows-pairs", ks=[3], out=tmp_path / "cf", n_random=1, min_pairs=2, folds=2, method="activation",
              writers=(0, 1), progress=False)
    first = bias_study(tiny_llama, **kw)
    assert first.report.mode == "writes" and first.report.items.conditions == {3: ("writes-K3-L0-1",
                                                                                     ["writes-K3-L0-1-random-0"])}
    calls = []
    real = bias_mod._one_split
    monkeypatch.setattr(bias_mod, "_one_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = bias_study(tiny_llama, **kw)
    assert calls == [] and [r.after.score for r in again.report.rows] == [r.after.score for r in first.report.rows]
    half = bias_study(tiny_llama, **{**kw, "writes_strength": 0.5})
    assert len(calls) == 2 and half.report.settings.intervention["strength"] == 0.5
