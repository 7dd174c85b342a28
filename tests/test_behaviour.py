"""What the model writes, with power: demonstration prompts, newline-ended sampling, continuation
log-likelihoods, the statement judge, paired statistics, and the demonstration study end to end on a
tiny model with the fixture files (tests/fixtures/study, fictional groups)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neat_llm.evaluation.demonstrations import build_demonstrations, demonstration_prompt
from neat_llm.evaluation.generation import first_line, sample_continuations_along
from neat_llm.evaluation.paired_stats import paired_difference
from neat_llm.evaluation.perplexity import continuation_logliks_along

DATA = Path(__file__).parent / "fixtures" / "study"


@pytest.fixture(autouse=True)
def _data_and_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("NEAT_LLM_DATA", str(DATA))
    monkeypatch.setenv("NEAT_LLM_CACHE", str(tmp_path / "cache"))


def test_paired_difference_interval_and_permutation():
    rng = np.random.default_rng(0)
    b = rng.random(200)
    shifted = paired_difference(b - 0.1, b)
    assert shifted.diff == pytest.approx(-0.1) and shifted.ci == pytest.approx((-0.1, -0.1)) and shifted.p < 0.01
    assert shifted.excludes_zero
    noise = paired_difference(b + rng.normal(0, 0.2, 200), b, seed=1)
    assert noise.ci[0] < 0 < noise.ci[1] and noise.p > 0.05 and not noise.excludes_zero
    with pytest.raises(ValueError, match="equal-length"):
        paired_difference([], [])


def test_demonstrations_use_only_the_given_statements_one_group_each():
    hate = {"a": [f"a hate {i}" for i in range(6)], "b": [f"b hate {i}" for i in range(5)], "c": ["c hate 0"]}
    neutral = {"a": [f"a ok {i}" for i in range(4)], "b": [f"b ok {i}" for i in range(4)], "c": ["c ok"]}
    d = build_demonstrations(hate, neutral, n_prompts=6, n_neutral_prompts=4, per_prompt=4, seed=3)
    assert set(d.hate_groups) == {"a", "b"}  # c has too few hateful statements
    for p, g, nxt, nn in zip(d.hate_prompts, d.hate_groups, d.hate_next, d.neutral_next):
        shown = [line[2:] for line in p.split("\n")[:-1]]
        assert p.endswith("\n-") and len(shown) == 4 and set(shown) <= set(hate[g])
        assert nxt in hate[g] and nxt not in shown and nn in neutral[g]
    assert all(set(line[2:] for line in p.split("\n")[:-1]) <= set(neutral[g])
               for p, g in zip(d.neutral_prompts, d.neutral_groups))
    assert demonstration_prompt(["x ", "y"]) == "- x\n- y\n-"
    with pytest.raises(ValueError, match="no target group"):
        build_demonstrations({"a": ["x"]}, neutral, 2, 2, per_prompt=4)


def test_sampling_stops_at_the_line_end_with_the_same_draws(tiny_llama):
    prompts = ["- the rain came\n- the wind\n-", "- a cake and\n-"]
    full = sample_continuations_along(tiny_llama, prompts, 2, max_new_tokens=12, seed=5, samples=3)
    stopped = sample_continuations_along(tiny_llama, prompts, 2, max_new_tokens=12, seed=5, samples=3,
                                         stop_at_newline=True)
    assert stopped == [[first_line(t) for t in g] for g in full]
    assert all("\n" not in t for g in stopped for t in g)


def test_continuation_loglik_scores_only_the_continuation(tiny_llama):
    m = tiny_llama
    prompts, conts = ["the rain came over", "a cake"], [" the town today", " and bread stayed"]
    got = continuation_logliks_along(m, prompts, conts, 1)[0]
    for i, (p, c) in enumerate(zip(prompts, conts)):
        n_p = len(m.tokenizer(p)["input_ids"])
        enc = m.encode([p + c])
        with torch.inference_mode():
            logp = torch.log_softmax(m.hf(**enc, use_cache=False).logits[0].double(), -1)
        ids = enc["input_ids"][0]
        want = torch.stack([logp[t - 1, ids[t]] for t in range(n_p, len(ids))]).mean()
        assert float(got[i]) == pytest.approx(float(want), abs=1e-5)


def test_demonstration_study_end_to_end(tiny_llama, tmp_path):
    from neat_llm.studies.demonstrations import demonstration_study

    study = demonstration_study(tiny_llama, ks=[2, 5], fit_groups=["hillfolk", "riverfolk"], n_random=2, n_prompts=6,
                                samples=3, n_neutral_prompts=3, neutral_samples=2, max_new_tokens=6, per_prompt=2,
                                out=tmp_path / "d", progress=False)
    r = study.report
    assert r.settings["eval_groups"] == ["coastfolk"] and r.n_continuations == 18
    assert [(x.k, x.condition) for x in r.rows] == [(0, "before"), (2, "concept"), (2, "random"), (5, "concept"),
                                                    (5, "random")]
    before, top2, rand2 = r.rows[0], r.rows[1], r.rows[2]
    assert before.ppl_ratio == 1.0 and before.neutral_hate_rate <= 0.10 + 1e-9
    assert r.judge["calibrated_on"] > 0 and r.judge["logo_groups"] == 2 and r.judge["n_train"] > 0
    conts = json.loads((tmp_path / "d" / "behaviour-zero-continuations.json").read_text())
    assert all("\n" not in t for t in conts["before"]["hate"]) and len(conts["before"]["hate"]) == 18
    assert all(p.endswith("\n-") for p in conts["prompts"]["hate"])
    # the paired differences are the per-prompt rates' differences, recomputed from the saved verdicts' rates
    assert top2.vs_random["hate_rate"]["diff"] == pytest.approx(top2.hate_rate - rand2.hate_rate, abs=1e-9)
    assert top2.vs_before["next_gap"]["diff"] == pytest.approx(top2.next_gap - before.next_gap, abs=1e-9)
    assert set(top2.vs_random) == {"hate_rate", "next_gap"} and rand2.n_sets == 2
    saved = json.loads(study.path.read_text())
    assert saved["mode"] == "zero" and len(saved["rows"]) == 5 and "continuations" not in saved
    # a second intervention writes beside the first, reusing the run
    again = demonstration_study(tiny_llama, ks=[2], fit_groups=["hillfolk", "riverfolk"], n_random=1, n_prompts=4,
                                samples=2, n_neutral_prompts=2, neutral_samples=2, max_new_tokens=4, per_prompt=2, mode="transport",
                                strength=0.5, out=tmp_path / "d", progress=False)
    assert again.path.name == "behaviour-transport-mean-strength-0.5.json" and study.path.is_file()
    assert again.report.mode == "transport"


def test_transport_fitted_at_the_fit_prompts_last_token_is_the_studys_intervention(tiny_llama, tmp_path, monkeypatch):
    """``transport_at="last"``: the map fitted on the run's own fit texts at each one's last token
    (where the generation readout reads), not the run's all-token means; recorded and named so."""
    import neat_llm.studies.demonstrations as demo_mod
    from neat_llm.concepts.vectors import apply_template
    from neat_llm.studies.demonstrations import demonstration_study, generation_concept, toxigen_groups
    from neat_llm.studies.hate import hate_concept

    used = []
    real = demo_mod.fit_transport
    monkeypatch.setattr(demo_mod, "fit_transport", lambda *a, **k: used.append(real(*a, **k)) or used[-1])

    kw = dict(ks=[2], fit_groups=["hillfolk", "riverfolk"], n_random=1, n_prompts=3, samples=2, n_neutral_prompts=2,
              neutral_samples=2, max_new_tokens=4, per_prompt=2, readout="generation", n_readout_prompts=12,
              mode="transport", out=tmp_path / "d", progress=False)
    study = demonstration_study(tiny_llama, transport_at="last", **kw)
    r = study.report
    assert study.path.name == "behaviour-transport-mean-at-last-tokens-strength-1.json"
    assert r.intervention == "transport (mean at last tokens, strength=1)" and r.settings["at"] == "last"
    # the map it used: the one fitted on the run's fit prompts, read as the run reads them
    statements = hate_concept("toxigen", None, groups=("hillfolk", "riverfolk"))
    fit = statements.split(eval_fraction=study.run.meta.params["eval_fraction"], seed=0).fit
    concept, _ = generation_concept(fit, toxigen_groups(None), 12, 2, 0)
    texts = study.run.fit_set(concept)
    template = study.run.readout().template
    want = real(tiny_llama, apply_template(template, texts.positives),
                 apply_template(template, texts.contrast), at="last")
    assert len(used) == 1 and used[0].at == "last" and torch.equal(used[0].beta, want.beta)
    assert torch.equal(used[0].omega, want.omega)
    plain = study.run.intervention("transport")
    assert not torch.allclose(want.beta, plain.beta, atol=1e-4)  # not the all-token means
    for bad, match in [(dict(transport_at="first"), "fitted at all or last"),
                       (dict(transport_at="last", mode="zero"), "applies to mode transport")]:
        with pytest.raises(ValueError, match=match):
            demonstration_study(tiny_llama, **{**kw, **bad})


def test_demonstration_study_without_k_evaluates_the_k_chosen_on_the_fit_split_at_each_budget(tiny_llama, tmp_path):
    from neat_llm.evaluation.budget import choose_k
    from neat_llm.studies.demonstrations import demonstration_study
    from neat_llm.studies.hate import hate_concept

    study = demonstration_study(tiny_llama, fit_groups=["hillfolk", "riverfolk"], n_random=1, n_prompts=3, samples=2,
                                n_neutral_prompts=2, neutral_samples=2, max_new_tokens=4, per_prompt=2,
                                out=tmp_path / "d", progress=False)
    choices = study.report.settings["k_choice"]
    assert [c["max_ppl"] for c in choices] == [1.05, 1.10]
    chosen = sorted({c["k"] for c in choices if c["k"] is not None}) or [10]
    assert sorted({r.k for r in study.report.rows if r.condition == "concept"}) == chosen
    assert all(r.n_sets == 1 for r in study.report.rows if r.condition == "random")  # random sets only for those K
    run = study.run
    statements = hate_concept("toxigen", None, groups=("hillfolk", "riverfolk"))
    for c in choices:  # one fit curve gives what choose_k gives at each budget on its own
        alone = choose_k(tiny_llama, run.readout(), run.fit_set(statements), run.top(min(run.n_ranked, 2000)),
                         c["max_ppl"], run.intervention())
        assert (alone.k, alone.ks, alone.fit_ppl_ratio) == (c["k"], c["ks"], c["fit_ppl_ratio"])


def test_a_second_study_of_the_same_prompts_reuses_the_conditions_it_shares_with_the_first(tiny_llama, tmp_path):
    """The before row and the random K-sets of another folder's study (same weights, prompts and draws)
    come from the shared cache, listed in the report; the top-K of another method is measured."""
    from neat_llm.studies.demonstrations import demonstration_study

    kw = dict(ks=[2], fit_groups=["hillfolk", "riverfolk"], n_random=1, n_prompts=4, samples=2, n_neutral_prompts=2,
              neutral_samples=2, max_new_tokens=4, per_prompt=2, progress=False)
    first = demonstration_study(tiny_llama, out=tmp_path / "a", **kw)
    assert first.report.settings["reused_conditions"] == []
    second = demonstration_study(tiny_llama, out=tmp_path / "b", method="activation", **kw)
    assert sorted(second.report.settings["reused_conditions"]) == ["before", "random-k2-s0"]
    assert second.report.row("before").hate_rate == first.report.row("before").hate_rate
    assert second.report.row("random", 2).next_gap == first.report.row("random", 2).next_gap
    # one of three conditions measured: a third of the first evaluation's sequences (the top-K row)
    assert 3 * second.report.passes["forward"] == first.report.passes["forward"] > 0
    fresh = demonstration_study(tiny_llama, out=tmp_path / "c", method="activation", share_conditions=False, **kw)
    assert fresh.report.settings["reused_conditions"] == []
    assert fresh.report.row("before").next_gap == pytest.approx(first.report.row("before").next_gap, abs=1e-5)


def test_the_direction_ceiling_is_a_row_of_its_own_beside_the_neurons(tiny_llama, tmp_path):
    from neat_llm.studies.demonstrations import demonstration_study

    kw = dict(ks=[2], fit_groups=["hillfolk", "riverfolk"], n_random=1, n_prompts=4, samples=2, n_neutral_prompts=2,
              neutral_samples=2, max_new_tokens=4, per_prompt=2, out=tmp_path / "d", progress=False)
    plain = demonstration_study(tiny_llama, **kw)
    study = demonstration_study(tiny_llama, ceiling=True, **kw)
    r = study.report
    assert [(x.k, x.condition) for x in r.rows] == [(0, "before"), (2, "concept"), (2, "random"), (0, "direction")]
    direction = r.rows[-1]
    assert set(direction.vs_before) == {"hate_rate", "next_gap"} and direction.vs_random == {}
    assert direction.vs_before["next_gap"]["diff"] == pytest.approx(direction.next_gap - r.rows[0].next_gap, abs=1e-9)
    assert r.settings["ceiling"]["layer"] == study.run.meta.reading_layer and r.settings["ceiling"]["kind"] == "project"
    # the same seeded draws: the rows both runs share are the same; the plain run's file is kept beside
    assert [x.hate_rate for x in r.rows[:3]] == [x.hate_rate for x in plain.report.rows]
    assert study.path.name == "behaviour-zero-ceiling.json" and plain.path.is_file()


def test_the_direction_at_other_blocks_is_a_row_per_block(tiny_llama, tmp_path):
    from neat_llm.find_settings import FindSettings
    from neat_llm.studies.demonstrations import layer_directions

    from neat_llm.studies.demonstrations import demonstration_study

    kw = dict(ks=[2], fit_groups=["hillfolk", "riverfolk"], n_random=1, n_prompts=4, samples=2, n_neutral_prompts=2,
              neutral_samples=2, max_new_tokens=4, per_prompt=2, out=tmp_path / "d", progress=False)
    one = demonstration_study(tiny_llama, ceiling=True, **kw)
    study = demonstration_study(tiny_llama, ceiling_layers=[0, 1], **kw)
    r = study.report
    assert [x.condition for x in r.rows] == ["before", "concept", "random", "direction", "direction-L0", "direction-L1"]
    assert [x.hate_rate for x in r.rows[:4]] == [x.hate_rate for x in one.report.rows]  # the same draws
    assert set(r.settings["ceilings"]) == {"direction", "direction-L0", "direction-L1"}
    assert r.settings["ceilings"]["direction-L1"]["layer"] == 1 and r.settings["ceiling"]["layer"] == \
        study.run.meta.reading_layer
    assert study.path.name == "behaviour-zero-ceiling-L0-1.json" and one.path.is_file()
    # the direction read at the run's own reading layer is the run's concept vector
    run = study.run
    fs = FindSettings(read_template=run.meta.params["read_template"], seed=run.meta.seed)
    from neat_llm.studies.hate import hate_concept

    concept = hate_concept("toxigen", None, groups=["hillfolk", "riverfolk"])
    got = layer_directions(tiny_llama, concept, [run.meta.reading_layer], fs)[run.meta.reading_layer]
    torch.testing.assert_close(got, run.concept_vector, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="out of range"):
        layer_directions(tiny_llama, concept, [99], fs)
    with pytest.raises(ValueError, match="block numbers"):
        demonstration_study(tiny_llama, ceiling_layers=[-1], **kw)


def test_the_direction_over_a_span_and_every_unit_of_a_span_are_rows_of_the_study(tiny_llama, tmp_path):
    """``ceiling_spans``: one row with each block's own direction removed at every block of the span
    (the single-block rows' directions, read the same way); ``ceiling_units``: one row with every MLP
    unit of the span under the study's intervention; the file name says which."""
    from neat_llm.studies.demonstrations import demonstration_study

    kw = dict(ks=[2], fit_groups=["hillfolk", "riverfolk"], n_random=1, n_prompts=4, samples=2, n_neutral_prompts=2,
              neutral_samples=2, max_new_tokens=4, per_prompt=2, out=tmp_path / "d", progress=False)
    study = demonstration_study(tiny_llama, ceiling_layers=[0, 1], ceiling_spans=[(0, 1)], ceiling_units=[(1, 2)],
                                mode="transport", **kw)
    r = study.report
    assert [x.condition for x in r.rows] == ["before", "concept", "random", "direction", "direction-L0",
                                             "direction-L1", "direction-L0-1", "units-L1-2"]
    c = r.settings["ceilings"]
    assert c["direction-L0-1"]["layers"] == [0, 1]
    assert c["direction-L0-1"]["vector_norms"] == pytest.approx([c["direction-L0"]["vector_norm"],
                                                                 c["direction-L1"]["vector_norm"]])
    assert c["units-L1-2"]["n_neurons"] == 2 * tiny_llama.d_ff and c["units-L1-2"]["mode"] == "transport"
    assert study.path.name == "behaviour-transport-mean-strength-1-ceiling-L0-1-S0-1-U1-2.json"
    with pytest.raises(ValueError, match="0 <= first <= last"):
        demonstration_study(tiny_llama, ceiling_spans=[(3, 1)], **kw)
    with pytest.raises(ValueError, match="out of range"):
        demonstration_study(tiny_llama, ceiling_units=[(0, 99)], **kw)
    # the direction rows at a strength: named, recorded, and less of an edit than the whole direction
    weak = demonstration_study(tiny_llama, ceiling_spans=[(0, 1)], ceiling_strength=0.5, **kw)
    assert weak.path.name == "behaviour-zero-ceiling-S0-1-t0.5.json"
    wc = weak.report.settings["ceilings"]
    assert wc["direction-L0-1"]["strength"] == 0.5 and wc["direction"]["strength"] == 0.5
    assert "at strength 0.5" in wc["direction-L0-1"]["what"]
    with pytest.raises(ValueError, match="ceiling_strength"):
        demonstration_study(tiny_llama, ceiling=True, ceiling_strength=0.0, **kw)
    # which writer puts the direction there: the run's direction removed from what the MLPs, and apart
    # what the attention, of a span of blocks write
    writers = demonstration_study(tiny_llama, ceiling_writers=[(0, 1)], **kw)
    assert writers.path.name == "behaviour-zero-ceiling-W0-1.json"
    assert [x.condition for x in writers.report.rows][-3:] == ["direction", "mlp-writes-L0-1", "attn-writes-L0-1"]
    wc = writers.report.settings["ceilings"]
    assert wc["mlp-writes-L0-1"]["sites"] == ["mlp"] and wc["attn-writes-L0-1"]["layers"] == [0, 1]
    assert wc["mlp-writes-L0-1"]["vector_norms"] == pytest.approx([wc["direction"]["vector_norm"]] * 2)
    rows = {x.condition: x for x in writers.report.rows}
    assert rows["mlp-writes-L0-1"].next_gap != rows["attn-writes-L0-1"].next_gap
    with pytest.raises(ValueError, match="ceiling writers block 99 out of range"):
        demonstration_study(tiny_llama, ceiling_writers=[(0, 99)], **kw)
    # what only K neurons of the span write: the K that write most of the direction, beside random K-sets
    from neat_llm.studies.demonstrations import writer_neurons

    few = demonstration_study(tiny_llama, ceiling_writers=[(0, 1)], writer_ks=[3], **kw)
    assert few.path.name == "behaviour-zero-ceiling-W0-1-WK3.json"
    names = [x.condition for x in few.report.rows]
    assert names[-3:] == ["attn-writes-L0-1", "writes-K3-L0-1", "writes-K3-L0-1-random"]
    got = {x.condition: x for x in few.report.rows}
    assert set(got["writes-K3-L0-1"].vs_random) == {"hate_rate", "next_gap"} and got["writes-K3-L0-1-random"].n_sets == 1
    fc = few.report.settings["ceilings"]["writes-K3-L0-1"]
    assert fc["n_neurons"] == 3 and fc["n_random"] == 1 and fc["site"] == "neuron-writes"
    run = few.run
    u = run.concept_vector / run.concept_vector.norm()
    score = torch.stack([(run.positive_means[l] - run.contrast_means[l]) * (tiny_llama.weight_out(l).float() @ u)
                         for l in (0, 1)])
    best = sorted(((float(score[l, k]), l, k) for l in (0, 1) for k in range(tiny_llama.d_ff)), reverse=True)[:3]
    assert set(writer_neurons(tiny_llama, run, (0, 1), 3)) == {(l, k) for _, l, k in best}
    with pytest.raises(ValueError, match="writer_ks needs ceiling_writers"):
        demonstration_study(tiny_llama, writer_ks=[3], **kw)
    with pytest.raises(ValueError, match="blocks 0-1 have"):
        demonstration_study(tiny_llama, ceiling_writers=[(0, 1)], writer_ks=[10 ** 6], **kw)


class _LengthEncoder:
    """A stand-in sentence encoder (the judge only needs some numbers per text): length and vowels."""

    def encode(self, texts):
        return np.array([[len(t) / 10.0, sum(c in "aeiou" for c in t) / 5.0] for t in texts])


def test_a_span_and_a_unit_ceiling_are_rows_beside_the_neurons(tiny_llama):
    """A ``DirectionEdits`` of one block is the same row as that block's ``DirectionEdit``; a unit-level
    ceiling (a ``NeuronSelection`` under the study's intervention) is the same row as a top-K set of
    those neurons (the same draws); both are compared with before, and the report says what they were."""
    from neat_llm.evaluation.behaviour import evaluate_behaviour
    from neat_llm.evaluation.statement_judge import StatementJudge
    from neat_llm.interventions import DirectionEdit, DirectionEdits, NeuronSelection

    hate = {g: [f"the {g} folk ruin the rain {i}" for i in range(5)] for g in ("hill", "river")}
    neutral = {g: [f"the {g} folk bake bread {i}" for i in range(4)] for g in ("hill", "river")}
    demos = build_demonstrations(hate, neutral, n_prompts=4, n_neutral_prompts=2, per_prompt=2, seed=0)
    judge = StatementJudge(_LengthEncoder(), np.array([1.0, -1.0]), 0.0)
    v = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(2))
    units = NeuronSelection(((0, 1), (1, 4), (2, 7)))
    ceiling = {"single": DirectionEdit(1, v), "span": DirectionEdits((DirectionEdit(1, v),)), "units": units}
    r = evaluate_behaviour(tiny_llama, demos, {3: units}, judge, n_random=1, samples=2, neutral_samples=2,
                           max_new_tokens=4, ceiling=ceiling)
    rows = {x.condition: x for x in r.rows}
    assert list(rows) == ["before", "concept", "random", "single", "span", "units"]
    same = lambda a, b: (a.hate_rate, a.next_gap, a.ppl_ratio, a.neutral_hate_rate) == \
        (b.hate_rate, b.next_gap, b.ppl_ratio, b.neutral_hate_rate)
    assert same(rows["span"], rows["single"]) and same(rows["units"], rows["concept"])
    assert rows["units"].vs_before["next_gap"]["diff"] == pytest.approx(rows["concept"].vs_before["next_gap"]["diff"])
    assert rows["units"].vs_random == {} and rows["units"].k == 0
    c = r.settings["ceilings"]
    assert c["units"]["n_neurons"] == 3 and c["units"]["blocks"] == [0, 1, 2] and c["units"]["mode"] == "zero"
    assert c["span"]["layers"] == [1] and c["single"]["layer"] == 1
    with pytest.raises(ValueError, match="at least one neuron"):
        evaluate_behaviour(tiny_llama, demos, {3: units}, judge, n_random=1, ceiling={"u": NeuronSelection(())})


def test_a_neuron_write_row_is_compared_with_its_random_controls_paired_per_prompt(tiny_llama):
    """A ``NeuronWrites`` ceiling with ``ceiling_controls``: its controls are conditions of their own,
    the row's ``vs_random`` is its per-prompt rate minus the controls' mean, and a row
    "<name>-random" carries the controls' mean; controls of another kind or size are refused."""
    from neat_llm.evaluation.behaviour import evaluate_behaviour
    from neat_llm.evaluation.statement_judge import StatementJudge
    from neat_llm.interventions import NeuronSelection, NeuronWrites

    hate = {g: [f"the {g} folk ruin the rain {i}" for i in range(5)] for g in ("hill", "river")}
    neutral = {g: [f"the {g} folk bake bread {i}" for i in range(4)] for g in ("hill", "river")}
    demos = build_demonstrations(hate, neutral, n_prompts=4, n_neutral_prompts=2, per_prompt=2, seed=0)
    judge = StatementJudge(_LengthEncoder(), np.array([1.0, -1.0]), 0.0)
    v = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(2))
    main = NeuronWrites(((1, 2), (2, 3), (2, 9)), v)
    rand = [NeuronWrites(((0, 1), (1, 5), (2, 4)), v), NeuronWrites(((0, 7), (1, 1), (2, 0)), v)]
    kw = dict(n_random=1, samples=2, neutral_samples=2, max_new_tokens=4)
    units = NeuronSelection(((0, 1),))
    r = evaluate_behaviour(tiny_llama, demos, {1: units}, judge, ceiling={"w": main}, ceiling_controls={"w": rand},
                           **kw)
    rows = {x.condition: x for x in r.rows}
    assert list(rows) == ["before", "concept", "random", "w", "w-random"]
    assert rows["w-random"].n_sets == 2 and r.settings["ceiling"]["n_random"] == 2
    gap = rows["w"].vs_random["next_gap"]["diff"]
    assert gap == pytest.approx(rows["w"].next_gap - rows["w-random"].next_gap)
    assert rows["w"].vs_before["next_gap"]["diff"] == pytest.approx(rows["w"].next_gap - rows["before"].next_gap)
    assert rows["w"].next_gap != rows["before"].next_gap  # the edit changes what the model reads as likely
    with pytest.raises(ValueError, match="must be NeuronWrites edits of its size"):
        evaluate_behaviour(tiny_llama, demos, {1: units}, judge, ceiling={"w": main},
                           ceiling_controls={"w": [NeuronWrites(((0, 1),), v)]}, **kw)
    with pytest.raises(ValueError, match="not a ceiling row"):
        evaluate_behaviour(tiny_llama, demos, {1: units}, judge, ceiling={"w": main}, ceiling_controls={"x": rand}, **kw)


def test_cli_hate_with_demonstrations(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from neat_llm.cli import app

    args = ["hate", "--design", "demonstrations", "--writers", "none", "--readout", "recognition", "--model", str(tiny_model_dir), "--fit-groups", "hillfolk,riverfolk",
            "--k", "3", "--random", "1", "--prompts", "3", "--samples", "2", "--neutral-prompts", "2",
            "--per-prompt", "2", "--new-tokens", "4", "--out", str(tmp_path / "d")]
    res = CliRunner().invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output.strip().splitlines()[-1])
    assert got["n_continuations"] == 6 and [r["condition"] for r in got["rows"]] == ["before", "concept", "random"]
    assert set(got["rows"][1]["vs_random"]) == {"hate_rate", "next_gap"}
    res = CliRunner().invoke(app, ["hate", "--design", "demonstrations", "--data", "davidson"])
    assert res.exit_code == 2 and "needs --data toxigen" in res.output
    res = CliRunner().invoke(app, args + ["--ceiling-spans", "0-1", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output.strip().splitlines()[-1])
    assert [r["condition"] for r in got["rows"]][-2:] == ["direction", "direction-L0-1"]
    res = CliRunner().invoke(app, args + ["--ceiling-spans", "a-b"])
    assert res.exit_code == 2 and "spans of blocks" in res.output
    from neat_llm.cli_app import out

    old_width = out._width
    try:  # the table at 80 columns (a log file's width) cuts no number; the resumed study is read back
        out._width = 80
        res = CliRunner().invoke(app, args + ["--ceiling-spans", "0-1"])
    finally:
        out._width = old_width
    assert res.exit_code == 0, res.output
    table = res.output[res.output.index("what the model writes"):]
    table = table[:min(table.index(w) for w in ("note:", "hate: hate rate") if w in table)]
    assert "…" not in table and all(len(l) <= 80 for l in table.splitlines())
    for word in ("neurons", "before", "random x1", "0-1"):
        assert word in table, word
    # another folder, the same prompts and draws: every condition comes from the shared cache, and it says so
    other = args[:-1] + [str(tmp_path / "e")]
    res = CliRunner().invoke(app, other)
    assert res.exit_code == 0, res.output
    said = " ".join(res.output[res.output.index("reused from an earlier study"):].split())
    assert said.startswith("reused from an earlier study measuring the same way (--no-shared-conditions to measure "
                           "them again): before, concept-k3, random-k3-s0")
    res = CliRunner().invoke(app, args[:-1] + [str(tmp_path / "f"), "--no-shared-conditions", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["settings"]["reused_conditions"] == []


def test_cli_hate_by_default_measures_the_writers_of_the_second_half_on_demonstrations(tiny_model_dir, tmp_path):
    """``neat hate`` on ToxiGen with no design: demonstration prompts, the concept read where the model
    writes (the generation readout, at the last block), found with next-line, and the K rows the
    concept direction out of what the K writers of the second half of the blocks write, ranked by
    their effect on the fit prompts' next statements (K = 500 or half the span), beside one random
    K-set of the span under the same edit."""
    from typer.testing import CliRunner

    from neat_llm.cli import app
    from neat_llm.runs import Run

    args = ["hate", "--model", str(tiny_model_dir), "--fit-groups", "hillfolk,riverfolk", "--prompts", "3",
            "--samples", "2", "--neutral-prompts", "2", "--per-prompt", "2", "--new-tokens", "4"]
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "d"), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output.strip().splitlines()[-1])
    run = Run.load(tmp_path / "d")
    n, d_ff = run.meta.n_layers, run.meta.d_ff
    a = n // 2
    k = min(500, (n - a) * d_ff // 2)
    assert got["mode"] == "writes" and got["settings"]["site"] == "neuron-writes"
    assert [(r["k"], r["condition"]) for r in got["rows"]] == [(0, "before"), (k, "concept"), (k, "random")]
    assert got["rows"][2]["n_sets"] == 1 and set(got["rows"][1]["vs_random"]) == {"hate_rate", "next_gap"}
    assert f"blocks {a}-{n - 1}" in got["intervention"] and "the K MLP neurons" in got["intervention"]
    assert run.meta.method == "next-line" and run.meta.reading_layer == n - 1
    assert got["settings"]["readout"] == "generation" and got["settings"]["writer_rank"] == "effect"
    assert (tmp_path / "d" / f"behaviour-writes-L{a}-{n - 1}-effect.json").is_file()
    res = CliRunner().invoke(app, args + ["--writers", "0-1", "--mode", "zero", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--writers edits what the neurons write" in res.output
    res = CliRunner().invoke(app, ["hate", "--design", "prefixes", "--writers", "0-1", "--model", str(tiny_model_dir)])
    assert res.exit_code == 2 and "demonstrations design" in res.output
    assert not (tmp_path / "x").exists()


def test_cli_hate_by_default_on_a_family_that_normalises_its_writes_turns_activations_off(tokenizer, tmp_path):
    """Gemma 3 normalises what its MLPs write, and the writers' edit (made after that norm) is not the
    default there: the study says so and turns the top-K neurons' activations off (found with neat,
    three random sets); ``--writers a-b`` asks for the edit."""
    from conftest import build_tiny
    from typer.testing import CliRunner

    from neat_llm.cli import app

    d = tmp_path / "gemma3"
    m = build_tiny("gemma3", tokenizer, seed=1)
    m.hf.save_pretrained(d)
    tokenizer.save_pretrained(d)
    args = ["hate", "--model", str(d), "--fit-groups", "hillfolk,riverfolk", "--k", "3", "--prompts", "3", "--samples",
            "2", "--neutral-prompts", "2", "--per-prompt", "2", "--new-tokens", "4", "--json"]
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["mode"] != "writes" and got["method"] == "neat"
    assert [r["condition"] for r in got["rows"]] == ["before", "concept", "random"] and got["rows"][2]["n_sets"] == 3
    assert "normalise what their MLPs write" in res.output
    res = CliRunner().invoke(app, args + ["--writers", "1-2", "--out", str(tmp_path / "h")])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["mode"] == "writes" and "normalise what their MLPs write" not in res.output


def test_a_study_finds_with_the_score_it_is_given_and_refuses_to_reuse_another(tiny_model_dir, tmp_path):
    """``neat hate --score positive --specificity 2`` finds with that rule and lambda; the same folder
    asked for another lambda (or score) is refused by name, never silently reused."""
    from typer.testing import CliRunner

    from neat_llm.cli import app

    args = ["hate", "--design", "demonstrations", "--writers", "none", "--readout", "recognition", "--model", str(tiny_model_dir), "--fit-groups", "hillfolk,riverfolk",
            "--k", "3", "--random", "1", "--prompts", "3", "--samples", "2", "--neutral-prompts", "2",
            "--per-prompt", "2", "--new-tokens", "4", "--out", str(tmp_path / "d")]
    res = CliRunner().invoke(app, args + ["--score", "positive", "--specificity", "2", "--json"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["params"]["score"] == "positive" and meta["params"]["specificity"] == 2.0
    got = json.loads(res.output.strip().splitlines()[-1])
    from neat_llm.runs import Run
    run = Run.load(tmp_path / "d")
    assert got["settings"]["n_positive_score"] == run.n_positive == int((run.scores > 0).sum())
    res = CliRunner().invoke(app, args + ["--score", "positive", "--specificity", "5"])
    assert res.exit_code != 0 and "other specificity" in res.output
    res = CliRunner().invoke(app, args + ["--score", "specific"])
    assert res.exit_code != 0 and "other score" in res.output
    res = CliRunner().invoke(app, args + ["--score", "nonsense"])
    assert res.exit_code == 2 and "score must be one of" in res.output


def test_the_report_shows_each_intervention_paired(tiny_llama, tmp_path):
    from neat_llm.report.html import render_report
    from neat_llm.studies.demonstrations import demonstration_study

    for mode in ("zero", "transport"):
        demonstration_study(tiny_llama, ks=[2], fit_groups=["hillfolk", "riverfolk"], n_random=1, n_prompts=4,
                            samples=2, n_neutral_prompts=2, neutral_samples=2, max_new_tokens=4, per_prompt=2,
                            mode=mode, out=tmp_path / "d", progress=False)
    html = render_report(tmp_path / "d")
    assert 'id="behaviour"' in html and html.count("<h3>") >= 2
    assert "transport (mean, strength=1)" in html and "zero" in html and "p=" in html


def test_generation_readout_reads_where_the_model_writes(tiny_llama, tmp_path):
    from neat_llm.studies.demonstrations import demonstration_study

    study = demonstration_study(tiny_llama, ks=[2], fit_groups=["hillfolk", "riverfolk"], n_random=1, n_prompts=3,
                                samples=2, n_neutral_prompts=2, neutral_samples=2, max_new_tokens=4, per_prompt=2,
                                readout="generation", n_readout_prompts=12, out=tmp_path / "g", progress=False)
    run = study.run
    assert run.meta.params["read_template"] == "{text}" and run.meta.concept_name.endswith("-demonstrations")
    assert all(t.endswith("\n-") for t in run.meta.probe_texts)  # the probes are prompts, read at their end
    assert study.report.settings["readout"] == "generation" and study.report.n_continuations == 6


def test_paired_probes_match_each_hateful_text_with_a_neutral_one_of_its_group(tiny_llama, tmp_path):
    """``probe="paired"``: every positive probe of the run is paired with a contrast probe about the same
    target group (generation readout: prompts of one group; recognition: statements of one group)."""
    from neat_llm.studies.demonstrations import demonstration_study, group_pairs, toxigen_groups

    group_of = toxigen_groups(None)
    pairs = group_pairs(["h1", "h2", "h3", "x"], ["n1", "n2"], {"h1": "a", "h2": "a", "h3": "b", "x": "c",
                                                                 "n1": "a", "n2": "b"})
    assert pairs == [("h1", "n1"), ("h2", "n1"), ("h3", "n2")]  # group c has no neutral text: left out
    with pytest.raises(ValueError, match="both hateful and neutral"):
        group_pairs(["h1"], ["n2"], {"h1": "a", "n2": "b"})
    kw = dict(ks=[2], fit_groups=["hillfolk", "riverfolk"], n_random=1, n_prompts=3, samples=2, n_neutral_prompts=2,
              neutral_samples=2, max_new_tokens=4, per_prompt=2, progress=False, probe="paired")
    rec = demonstration_study(tiny_llama, out=tmp_path / "r", **kw)
    meta = rec.run.meta
    assert meta.params["probe"] == "paired" and rec.report.settings["probe"] == "paired"
    contrast = meta.extra["contrast_probe_texts"]
    strip = lambda t: t.rstrip("\n")  # the recognition readout reads a statement with its template
    assert len(meta.probe_texts) == len(contrast) > 0
    assert all(group_of[strip(p)] == group_of[strip(c)] for p, c in zip(meta.probe_texts, contrast))
    gen = demonstration_study(tiny_llama, out=tmp_path / "g", readout="generation", n_readout_prompts=12, **kw)
    gm = gen.run.meta

    def group_of_prompt(p):  # every statement of a prompt is about one group
        gs = {group_of[line[2:]] for line in p.split("\n")[:-1]}
        assert len(gs) == 1
        return gs.pop()

    assert all(group_of_prompt(p) == group_of_prompt(c) for p, c in zip(gm.probe_texts, gm.extra["contrast_probe_texts"]))
    with pytest.raises(ValueError, match="probe must be"):
        demonstration_study(tiny_llama, out=tmp_path / "x", **{**kw, "probe": "random"})


def test_own_decoding_loop_drops_finished_rows_and_keeps_every_continuation(tiny_llama, monkeypatch):
    """Rows ending at different steps (a third of the vocabulary ends a line here): the loop runs a
    row only while it has not ended (its decoding rows are exactly the tokens it drew, stop tokens
    included), new prompts take the slots finished ones free, and every continuation is generate's,
    whatever the KV-cache budget (one prompt at a time, or all at once). The cache's slots start
    as NaN here (they are allocated uncleared): a read of a place no token was written to would show."""
    from neat_llm.evaluation import generation
    from neat_llm.evaluation.decoding import decode_prompts
    from neat_llm.interventions import Condition, NeuronSelection, Zero, conditions_along_batch
    from neat_llm.models.slot_cache import SlotCache

    stops = list(range(0, len(tiny_llama.tokenizer), 3))
    monkeypatch.setattr(generation, "newline_tokens", lambda tok: stops)
    allocate = SlotCache.allocate

    def poisoned(self, layer, k, v):
        fresh = not layer.is_initialized
        allocate(self, layer, k, v)
        if fresh:
            layer.keys.fill_(float("nan"))
            layer.values.fill_(float("nan"))

    monkeypatch.setattr(SlotCache, "allocate", poisoned)
    prompts = ["- the rain came\n- the wind moved\n-", "- a cake\n-", "- hill folk bake bread\n- the town\n-",
               "- the town\n-", "- bread\n- rain\n-"]
    conds = [Condition("before"), Condition("off", NeuronSelection(((0, 3), (1, 7), (1, 2))), Zero())]
    kw = dict(max_new_tokens=10, seed=4, samples=4, batch_size=4, stop_at_newline=True)
    with conditions_along_batch(tiny_llama, conds) as G:
        plain = sample_continuations_along(tiny_llama, prompts, G, **kw)  # generate, a prompt's 4 samples per batch
        got = {}
        for budget in (1, 24 * 8, 10 ** 6):  # a job at a time (the budget holds less than one), a few, all
            c0 = tiny_llama.counter.snapshot()
            got[budget] = sample_continuations_along(tiny_llama, prompts, G, share_prefill=True, decode_tokens=budget,
                                                     **kw)
            assert tiny_llama.counter.since(c0).forward == len(prompts) * G  # each prompt read once per condition
        u = torch.rand(len(prompts), 4, 10, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        sampler = generation._InverseCdfSampler(u, 0, 1.0, 0.95, 0)
        c0 = tiny_llama.counter.snapshot()
        tokens, _ = decode_prompts(tiny_llama, prompts, G, 4, u, sampler.choose, set(stops), tokens=10 ** 6)
        decoded = tiny_llama.counter.since(c0).decode
    assert got[1] == got[24 * 8] == got[10 ** 6] == plain
    lengths = [len(t) for c in tokens for t in c]
    assert len(set(lengths)) > 2  # rows ended at several steps: the dropping was exercised
    assert decoded == sum(lengths)  # no step ran a row that had ended, nor a pad


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma2", "gemma3", "qwen2", "gpt_neox", "phi3", "mistral", "gemma",
                                  "qwen3"])
def test_next_statements_scored_on_the_shared_prefill_equal_the_plain_logliks(kind, tokenizer):
    """The judge-free measure read on the sampling's own prefill (the prompt not run again): the
    same mean log p per token as ``continuation_logliks_along`` under every condition along the
    batch, for continuations of different lengths and one whose first token merges with the prompt's
    last (scored the plain way); the continuations are the plain sampler's."""
    from conftest import FAMILY_KINDS, build_tiny

    from neat_llm.evaluation.generation import sample_and_score_along
    from neat_llm.interventions import Condition, NeuronSelection, Zero, conditions_along_batch

    if kind not in FAMILY_KINDS:
        pytest.skip(f"{kind} is not a tiny family here")
    m = build_tiny(kind, tokenizer)
    prompts = ["- the rain came\n- the wind moved\n-", "- a cake\n-", "- hill folk bake bread\n- the town\n-",
               "- the rain came over the rai"]
    nexts = [[" the town stayed dry\n", " bread\n", " the hills moved over the rain today\n", "n came\n"],
             [" a cake\n", " the wind moved over the hills\n", " folk\n", "n\n"]]
    merged = [len(m.tokenizer(p + c)["input_ids"][:len(m.tokenizer(p)["input_ids"])]) and
              m.tokenizer(p + c)["input_ids"][:len(m.tokenizer(p)["input_ids"])] != m.tokenizer(p)["input_ids"]
              for p, c in zip(prompts, nexts[0])]
    conds = [Condition("before"), Condition("off", NeuronSelection(((0, 3), (1, 7))), Zero())]
    kw = dict(max_new_tokens=5, seed=2, samples=2, batch_size=4, stop_at_newline=True, share_prefill=True)
    with conditions_along_batch(m, conds) as G:
        texts, got = sample_and_score_along(m, prompts, G, score=nexts, **kw)
        alone = sample_continuations_along(m, prompts, G, **kw)
        want = [continuation_logliks_along(m, prompts, c, G) for c in nexts]
    assert texts == alone and got.shape == (2, G, len(prompts))
    for j in range(2):
        torch.testing.assert_close(got[j], want[j].to(got.dtype), atol=2e-5, rtol=1e-5)
    assert not torch.allclose(got[0, 0], got[0, 1])  # the condition changes the scores
    if kind == "llama":
        assert any(merged)  # the boundary case was exercised on at least one family's tokenizer
    with pytest.raises(ValueError, match="share_prefill"):
        sample_and_score_along(m, prompts, 1, score=nexts)
    with pytest.raises(ValueError, match="one per prompt"):
        sample_and_score_along(m, prompts, 1, share_prefill=True, score=[nexts[0][:2]])


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma2", "gemma3", "qwen2", "gpt_neox", "phi3", "mistral", "gemma",
                                  "qwen3"])
def test_shared_prefill_gives_the_same_continuations(kind, tokenizer):
    from conftest import FAMILY_KINDS, build_tiny

    from neat_llm.interventions import Condition, NeuronSelection, Zero, conditions_along_batch

    if kind not in FAMILY_KINDS:
        pytest.skip(f"{kind} is not a tiny family here")
    m = build_tiny(kind, tokenizer)
    prompts = ["- the rain came\n- the wind moved\n-", "- a cake\n-", "- hill folk bake bread\n- the town\n-"]
    conds = [Condition("before"), Condition("off", NeuronSelection(((0, 3), (1, 7))), Zero())]
    # batch_size 9: all three prompts (of different lengths) in one batch, so the shorter ones are
    # left-padded (with a batch of one prompt the padding, and a fault in its positions, never shows)
    kw = dict(max_new_tokens=6, seed=2, samples=3, batch_size=9, stop_at_newline=True)
    with conditions_along_batch(m, conds) as G:
        c0 = m.counter.snapshot()
        plain = sample_continuations_along(m, prompts, G, **kw)
        c1 = m.counter.snapshot()
        shared = sample_continuations_along(m, prompts, G, share_prefill=True, **kw)
        c2 = m.counter.snapshot()
    assert shared == plain
    # each prompt read once per condition (3 prompts x 2), not once per sample (9 jobs x 2)
    assert c1.since(c0).forward == 18 and c2.since(c1).forward == 6
    assert plain[0] != plain[1]  # the conditions differ: the test is not vacuous


def test_a_demonstration_study_finds_with_the_method_and_activation_pool_it_is_given(tiny_model_dir, tmp_path):
    """``neat hate --design demonstrations --method auroc --activation-pool last`` finds with that
    scorer read at each fit prompt's last token (``--method`` was once dropped on this path and the
    study found with neat); neurons above chance are those with an AUROC above 0.5; the folder asked
    for another pool is refused by name; a pool for a method without one is refused before loading."""
    from typer.testing import CliRunner

    from neat_llm.cli import app
    from neat_llm.runs import Run

    args = ["hate", "--design", "demonstrations", "--writers", "none", "--readout", "recognition", "--model", str(tiny_model_dir), "--fit-groups", "hillfolk,riverfolk",
            "--readout", "generation", "--k", "3", "--random", "1", "--prompts", "3", "--samples", "2",
            "--neutral-prompts", "2", "--per-prompt", "2", "--new-tokens", "4", "--out", str(tmp_path / "d")]
    res = CliRunner().invoke(app, args + ["--method", "auroc", "--activation-pool", "last", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output.strip().splitlines()[-1])
    run = Run.load(tmp_path / "d")
    assert got["method"] == run.meta.method == "auroc" and run.meta.params["scorer"]["pool"] == "last"
    finite = run.scores[torch.isfinite(run.scores)]
    assert got["settings"]["n_positive_score"] == run.n_positive == int((finite > 0.5).sum()) < finite.numel()
    res = CliRunner().invoke(app, args + ["--method", "auroc", "--activation-pool", "mean"])
    assert res.exit_code != 0 and "other activation pool" in res.output
    res = CliRunner().invoke(app, args + ["--activation-pool", "last"])
    assert res.exit_code == 2 and "activation_pool is an option of the methods" in res.output
    res = CliRunner().invoke(app, args + ["--method", "auroc", "--activation-pool", "first"])
    assert res.exit_code == 2 and "activation_pool must be one of" in res.output


def test_a_demonstration_study_ranks_its_writers_by_their_effect_on_fit_prompts(tiny_llama, tmp_path):
    from neat_llm.studies.demonstrations import demonstration_study

    kw = dict(fit_groups=["hillfolk", "riverfolk"], ks=[4], n_random=1, n_prompts=3, samples=2, n_neutral_prompts=2,
              per_prompt=2, max_new_tokens=4, writers=(1, 2), method="activation", progress=False)
    study = demonstration_study(tiny_llama, out=tmp_path / "e", writer_rank="effect", **kw)
    assert study.report.mode == "writes" and study.report.settings["writer_rank"] == "effect"
    assert study.path.name == "behaviour-writes-L1-2-effect.json"
    contrast = demonstration_study(tiny_llama, out=tmp_path / "c", **kw)
    assert contrast.path.name == "behaviour-writes-L1-2.json"
    with pytest.raises(ValueError, match="writer_rank"):
        demonstration_study(tiny_llama, out=tmp_path / "x", writer_rank="loudest", **kw)
