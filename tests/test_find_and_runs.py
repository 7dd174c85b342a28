"""The whole pipeline on a tiny model: run folder contents, reload, resume after an interruption,
and the guards that keep a folder from holding half a run or two runs."""

import json

import pytest
import torch

import neat_llm as nl

from neat_llm.runs import PartialSweep, RunError


def test_find_writes_a_complete_run(tiny_llama, concept_set, tmp_path):
    run = nl.find_concept_neurons(tiny_llama, concept_set, out=tmp_path / "run", progress=False, top_k=20, seed=3)
    d = tmp_path / "run"
    assert {p.name for p in d.iterdir()} == {"scores.safetensors", "top.csv", "meta.json", "examples.json",
                                           "probe_effects.safetensors"}
    meta = json.loads((d / "meta.json").read_text())
    L, d_ff = tiny_llama.n_layers, tiny_llama.d_ff
    assert meta["n_neurons_scored"] == L * d_ff  # every neuron, those after the reading layer included
    assert meta["weights_hash"] == tiny_llama.weights_hash and meta["concept_hash"] == concept_set.hash
    assert meta["n_fit"]["positive"] + meta["n_eval"]["positive"] == concept_set.n_positive
    assert meta["passes"]["concept"]["forward"] == len(concept_set)  # fit and eval texts, once each
    b = meta["params"]["probe_size"]
    lstar = meta["reading_layer"]
    assert meta["params"]["score"] == "specific"  # the default: positive and contrast probes, b each
    assert meta["passes"]["scoring"]["partial_forward"] == 2 * b * (lstar + 1) * d_ff
    assert meta["seconds"]["total"] > 0 and "torch" in meta["versions"]
    loaded = nl.Run.load(d)
    assert torch.equal(loaded.scores, run.scores)
    assert torch.all(loaded.effect[lstar + 1:] == 0)  # blocks after the reading layer cannot move S
    assert torch.all(loaded.scores[lstar + 1:] <= 0)  # ... so only their fluency cost is left
    top = loaded.top(5)
    assert len(top) == 5 and top.means is not None
    ranked = sorted(((float(loaded.scores[l, k]), l, k) for l in range(L) for k in range(d_ff)), reverse=True)
    assert [s for s, _, _ in ranked[:5]] == pytest.approx(list(top.scores))
    assert list(loaded.top_table["layer"][:5]) == [l for l, _ in top.neurons]
    assert loaded.top_table["top_tokens"].notna().all()


def test_layers_option_scores_only_those_blocks(tiny_llama, concept_set, tmp_path):
    run = nl.find_concept_neurons(tiny_llama, concept_set, layers="0,2", reading_layer=1, out=tmp_path / "r",
                                  progress=False)
    assert torch.isnan(run.scores[1]).all()
    assert torch.isfinite(run.scores[0]).all() and torch.all(run.effect[2] == 0)
    assert run.meta.n_neurons_scored == 2 * tiny_llama.d_ff
    assert run.meta.reading_layer == 1 and run.meta.params["reading_layer_chosen"] is False


def test_interrupted_sweep_resumes_without_redoing_blocks(tiny_llama, concept_set, tmp_path, monkeypatch):
    full = nl.find_concept_neurons(tiny_llama, concept_set, reading_layer=2, out=tmp_path / "full", progress=False)
    saved = []
    original = PartialSweep.save

    def save_then_die(self, layer, row, passes=None, per_probe=None):
        original(self, layer, row, passes, per_probe)
        saved.append(layer)
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(PartialSweep, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        nl.find_concept_neurons(tiny_llama, concept_set, reading_layer=2, out=tmp_path / "cut", progress=False)
    assert not (tmp_path / "cut" / "meta.json").exists()  # not mistaken for a finished run
    with pytest.raises(RunError, match="not a finished run"):
        nl.Run.load(tmp_path / "cut")
    monkeypatch.setattr(PartialSweep, "save", original)
    resumed = nl.find_concept_neurons(tiny_llama, concept_set, reading_layer=2, out=tmp_path / "cut", progress=False)
    assert resumed.meta.extra["resumed_layers"]["positive"] == saved  # the positive probes' sweep was cut
    # meta.json counts the work of both processes: every replica once (the cut process's two blocks
    # and this one's), and the probe caches twice (each process built them)
    got, once = resumed.meta.passes["scoring"], full.meta.passes["scoring"]
    assert got["partial_forward"] == once["partial_forward"] and got["block_forward"] == once["block_forward"]
    assert got["forward"] > once["forward"]
    assert torch.equal(resumed.scores, full.scores)
    pe, pf = resumed.probe_effects, full.probe_effects  # each probe's effects come back from the store too
    assert pe is not None and torch.equal(pe.positive.nan_to_num(7.0), pf.positive.nan_to_num(7.0))
    assert torch.equal(pe.contrast.nan_to_num(7.0), pf.contrast.nan_to_num(7.0))
    assert not (tmp_path / "cut" / ".partial").exists()


def test_partial_folder_of_another_run_is_refused(tiny_llama, concept_set, tmp_path):
    PartialSweep(tmp_path / "r", {"model": "x", "seed": 0})
    with pytest.raises(RunError, match="other settings"):
        nl.find_concept_neurons(tiny_llama, concept_set, out=tmp_path / "r", progress=False)


def test_finished_run_is_not_overwritten(tiny_llama, concept_set, tmp_path):
    nl.find_concept_neurons(tiny_llama, concept_set, out=tmp_path / "r", progress=False)
    with pytest.raises(RunError, match="already holds"):
        nl.find_concept_neurons(tiny_llama, concept_set, out=tmp_path / "r", progress=False)


def test_contrastive_and_mean_ablation_options(tiny_llama, concept_set, tmp_path):
    run = nl.find_concept_neurons(tiny_llama, concept_set, probe_size=2, contrastive=True, ablation="mean",
                                  out=tmp_path / "r", progress=False)
    assert len(run.meta.probe_texts) == 4
    assert run.meta.params["contrastive"] and run.meta.params["ablation"] == "mean"
    positives = set(run.readout().apply(concept_set.positives))  # the probes are read with the template
    assert [t in positives for t in run.meta.probe_texts] == [True, True, False, False]


def test_bad_arguments(tiny_llama, concept_set, tmp_path):
    with pytest.raises(ValueError, match="probe_size"):
        nl.find_concept_neurons(tiny_llama, concept_set, probe_size=0, out=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        nl.find_concept_neurons(tiny_llama, concept_set, layers="0-9", out=tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        nl.find_concept_neurons(tiny_llama, concept_set, method="magic", out=tmp_path / "c", progress=False)
    assert not any(p.exists() for p in (tmp_path / "a", tmp_path / "b", tmp_path / "c"))


def test_run_load_errors(tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        nl.Run.load(tmp_path / "missing")


@pytest.mark.parametrize("method", ["neat-cluster", "exhaustive", "screen-verify", "attribution-patching", "activation", "auroc",
                                    "random"])
def test_every_method_runs_through_the_pipeline(tiny_llama, concept_set, tmp_path, method):
    run = nl.find_concept_neurons(tiny_llama, concept_set, method=method, out=tmp_path / method, progress=False,
                                  top_k=10)
    assert run.meta.method == method and len(run.top_table) == 10
    reloaded = nl.Run.load(tmp_path / method)
    assert torch.equal(torch.isnan(reloaded.scores), torch.isnan(run.scores))
    p = run.meta.passes["scoring"]
    n_pos, n_neg = run.meta.n_fit["positive"], run.meta.n_fit["contrast"]
    lstar, d_ff, b = run.meta.reading_layer, tiny_llama.d_ff, run.meta.params["probe_size"]
    expected = {
        "exhaustive": {"partial_forward": n_pos * (lstar + 1) * d_ff, "backward": 0},
        # profiles + the cluster stage's probe caches (1 forward each) + the kept neurons' read-position
        # caches on the positive and on the contrast probes (2 forwards each: the text, then its read token)
        "neat-cluster": {"forward": n_pos + n_neg + b + 2 * b + 2 * b, "backward": 0},
        # the candidates, on the positive and on the contrast probes
        "screen-verify": {"partial_forward": 2 * b * min(500, (lstar + 1) * d_ff), "backward": n_pos},
        "attribution-patching": {"forward": n_pos, "backward": n_pos, "partial_forward": 0},
        "activation": {"forward": n_pos + n_neg, "backward": 0},
        "auroc": {"forward": n_pos + n_neg, "backward": 0},
        "random": {"forward": 0, "partial_forward": 0, "backward": 0},
    }[method]
    assert {k: p[k] for k in expected} == expected


def test_scorer_options_do_not_overwrite_the_readout_settings(tiny_llama, concept_set, tmp_path):
    # the activation scorer pools over all tokens; the concept readout still reads the last token
    run = nl.find_concept_neurons(tiny_llama, concept_set, method="activation", out=tmp_path / "r", progress=False)
    assert run.meta.params["pool"] == "last" and run.meta.params["scorer"] == {"pool": "mean"}


def test_repeated_texts_warn_and_probes_are_distinct(tiny_llama, tmp_path):
    from conftest import concept_texts

    pos, neg = concept_texts(8)
    cs = nl.ConceptSet.from_texts(pos + pos[:3], neg, name="with-repeats")
    with pytest.warns(UserWarning, match="repeats 3"):
        run = nl.find_concept_neurons(tiny_llama, cs, probe_size=4, out=tmp_path / "r", progress=False)
    assert len(set(run.meta.probe_texts)) == len(run.meta.probe_texts) == 4


def test_layer_ranges_top_k_and_the_reading_layer_are_checked(tiny_llama, concept_set, tmp_path):
    from neat_llm.find import parse_layers

    with pytest.raises(ValueError, match="'5-2' is empty"):
        parse_layers("5-2", 30)
    assert parse_layers("2-2,0", 3) == [0, 2]
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="top_k"):
            nl.find_concept_neurons(tiny_llama, concept_set, top_k=bad, out=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="past the reading layer 1"):  # every block asked for scores exactly 0
        nl.find_concept_neurons(tiny_llama, concept_set, reading_layer=1, layers=[2, 3], out=tmp_path / "b",
                                progress=False)
    with pytest.warns(UserWarning, match=r"blocks \[2\] lie past the reading layer 1"):
        run = nl.find_concept_neurons(tiny_llama, concept_set, reading_layer=1, layers="0-2", out=tmp_path / "c",
                                      progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    n = run.meta.n_neurons_scored
    for k in (-5, n + 1, 2.5):
        with pytest.raises(ValueError, match="k"):
            run.top(k)
    assert len(run.top(n).neurons) == n and len(run.top(0).neurons) == 0  # K = 0: nothing turned off


def test_run_files_follow_the_umask(tiny_llama, concept_set, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        nl.find_concept_neurons(tiny_llama, concept_set, reading_layer=1, out=tmp_path / "r", progress=False)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "r").iterdir() if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes
