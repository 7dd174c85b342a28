"""Scorers apart from execution: a scorer's work units, each run on its own as a Ray worker runs
it, give the whole sweep's scores bit for bit; ``find_concept_neurons`` takes a scorer made with
its own options and typed settings (``FindSettings``), checked before anything is loaded."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import pytest
import torch

import neat_llm as nl
from neat_llm.concepts.label_readout import LabelReadout
from neat_llm.find_settings import FindSettings, build_scorer
from neat_llm.scoring import AurocScorer, NeatScorer, ProbeSet, ScoringTask
from neat_llm.scoring.base import plan_units


@pytest.fixture
def found(tiny_llama, concept_set, tmp_path):
    return nl.find_concept_neurons(tiny_llama, concept_set, probe_size=2, specificity=0, score="positive",
                                   reading_layer=2, tokens_per_batch=40, out=tmp_path / "r", progress=False)


def test_plan_cuts_blocks_on_the_batch_grid_and_covers_each_neuron_once():
    blocks = {0: list(range(48)), 1: list(range(0, 48, 2)), 5: list(range(48))}
    units = plan_units(blocks, unit=5, target=8)
    assert len(units) > len(blocks)  # few blocks: cut inside blocks
    for l, idx in blocks.items():
        mine = sorted((s for s in units if s.layer == l), key=lambda s: s.start)
        assert [k for s in mine for k in s.neurons] == idx
        assert all(s.start % 5 == 0 for s in mine) and all(s.neurons == tuple(idx[s.start:s.stop]) for s in mine)
    assert [s.id for s in units] == list(range(len(units)))
    many = {l: list(range(48)) for l in range(20)}
    assert len(plan_units(many, unit=5, target=8)) == 20  # enough blocks: one shard per block
    assert {len(s.neurons) for s in plan_units(blocks, unit=5, target=8, size=7)} <= {10, 8, 4}



@pytest.mark.parametrize("positions", ["all", "read"])
def test_work_units_run_apart_give_the_whole_sweep_bit_for_bit(tiny_llama, found, positions):
    scorer = NeatScorer(tokens_per_batch=40, positions=positions)
    b = len(found.meta.probe_texts)
    task = ScoringTask(readout=found.readout(), probes=ProbeSet(found.meta.probe_texts, [1.0 / b] * b),
                       layers=[0, 1, 2], neurons={0: list(range(48)), 1: list(range(0, 48, 3)), 2: list(range(48))})
    whole = scorer.score(tiny_llama, task).scores

    scratch = torch.full_like(whole, float("nan"))
    blocks = scorer.pending(tiny_llama, task, scratch)
    unit = scorer.batch_unit(tiny_llama, task)
    units = scorer.work_units(tiny_llama, task, blocks, target=8)
    assert len(units) > len(blocks) > 0  # few blocks: cut inside them
    assert all(u.start % unit == 0 for u in units)  # on the sweep's own batch grid
    assert sorted(k for u in units if u.layer == 1 for k in u.neurons) == list(range(0, 48, 3))

    apart = torch.full_like(whole, float("nan"))
    for u in units:  # each unit alone, as a worker in another process runs it
        res = scorer.score(tiny_llama, scorer.unit_task(task, u))
        apart[u.layer, list(u.neurons)] = res.scores[u.layer, list(u.neurons)]
    torch.testing.assert_close(apart, whole, rtol=0, atol=0, equal_nan=True)
    assert torch.isfinite(whole[1, ::3]).all() and torch.isnan(whole[1, 1::3]).all()


def test_work_units_skip_what_needs_no_pass(tiny_llama, found):
    """Blocks after the reading layer score exactly 0 and resumed blocks are read back: no unit for either."""
    scorer = NeatScorer(tokens_per_batch=40)
    readout = replace(found.readout(), layer=1)
    done = torch.arange(48, dtype=torch.float32)
    task = ScoringTask(readout=readout, probes=ProbeSet(found.meta.probe_texts[:1], [1.0]), layers=[0, 1, 2],
                       done={0: done})
    scores = torch.full((3, 48), float("nan"))
    assert list(scorer.pending(tiny_llama, task, scores)) == [1]
    assert torch.equal(scores[0], done) and torch.equal(scores[2], torch.zeros(48))


def test_find_takes_a_scorer_made_with_its_own_options(tiny_llama, concept_set, found, tmp_path):
    run = nl.find_concept_neurons(tiny_llama, concept_set, NeatScorer(tokens_per_batch=40, positions="read"),
                                  FindSettings(probe_size=2, specificity=0, score="positive", reading_layer=2),
                                  out=tmp_path / "own", progress=False)
    assert run.meta.params["scorer"] == found.meta.params["scorer"] == {"tokens_per_batch": 40, "positions": "read"}
    torch.testing.assert_close(run.scores, found.scores, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="turns neurons off at 'all' positions"):
        nl.find_concept_neurons(tiny_llama, concept_set, NeatScorer(positions="all"), positions="read",
                                out=tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="positions is an option of"):
        nl.find_concept_neurons(tiny_llama, concept_set, AurocScorer(), positions="read", out=tmp_path / "y",
                                progress=False)
    with pytest.raises(ValueError, match="label= goes to the logprob-increase scorer's constructor"):
        nl.find_concept_neurons(tiny_llama, concept_set, build_scorer("logprob-increase"), label=LabelReadout(),
                                out=tmp_path / "z", progress=False)
    assert not any((tmp_path / d).exists() for d in ("x", "y", "z"))


def test_find_settings_are_checked_when_made():
    for bad, match in [(dict(probe_size=0), "probe_size must be a whole number >= 1"),
                       (dict(top_k=-5), "top_k must be a whole number >= 1"),
                       (dict(score="both"), "score must be one of"),
                       (dict(positions="some"), "positions must be 'all' or 'read'"),
                       (dict(specificity=-1.0), "specificity must be >= 0"),
                       (dict(max_ppl=0.9), "max_ppl is a perplexity ratio"),
                       (dict(eval_fraction=1.0), "eval_fraction must lie between 0 and 1"),
                       (dict(ablation="half"), "ablation must be 'zero' or 'mean'"),
                       (dict(contrastive=True, score="positive"), "contrastive=True is score='contrastive'"),
                       (dict(read_template="no slot"), "{text}")]:
        with pytest.raises(ValueError, match=match.replace("(", r"\(").replace("{", r"\{")):
            FindSettings(**bad)
    with pytest.raises(TypeError, match="unknown find setting.*probe_sizes.*known: .*probe_size"):
        FindSettings.of(probe_sizes=2)
    s = FindSettings.of(FindSettings(probe_size=4, seed=3), probe_size=2)
    assert (s.probe_size, s.seed) == (2, 3)  # the keywords win, the rest is kept
    assert FindSettings(layers=[0, 2]).layers == (0, 2)  # hashable, frozen


def test_build_scorer_gives_find_defaults_and_refuses_options_a_method_lacks():
    assert build_scorer("neat").params() == {"tokens_per_batch": 4096, "positions": "read"}
    assert build_scorer("exhaustive").positions == "all"  # its plain definition unless asked
    assert build_scorer("neat-cluster", FindSettings(tokens_per_batch=64), n_clusters=4).params()["n_clusters"] == 4
    assert build_scorer("integrated-gradients", concept_name="weather").label.concept == "weather"
    with pytest.raises(ValueError, match="neat-cluster: .*unexpected keyword.*candidates"):
        build_scorer("neat-cluster", candidates=3)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        build_scorer("nope")
    with pytest.raises(ValueError, match="score 'specific' needs contrast probes"):
        build_scorer("auroc", FindSettings(score="specific"))


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'neat-llm[ray]')")
def test_the_ray_executor_refuses_a_scorer_whose_units_cannot_run_apart():
    from neat_llm.distributed import RaySweep

    RaySweep().check(NeatScorer())
    RaySweep().check("neat")
    for scorer in (AurocScorer(), "exhaustive", build_scorer("exhaustive")):
        with pytest.raises(ValueError, match="runs in one process"):
            RaySweep().check(scorer)
