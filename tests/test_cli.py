"""The `neat` command line on a tiny model saved to a folder."""

import json

import neat_llm as nl

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from conftest import concept_texts
from neat_llm.cli import app

runner = CliRunner()


def _concept_csv(tmp_path):
    pos, neg = concept_texts(16)
    p = tmp_path / "concept.csv"
    pd.DataFrame({"sentence": pos + neg, "kind": ["weather"] * len(pos) + ["food"] * len(neg)}).to_csv(p, index=False)
    return p


def _concept_args(model_dir, csv):
    return ["--model", str(model_dir), "--concept", str(csv), "--text-col", "sentence", "--label-col", "kind",
            "--positive", "weather"]


def test_find_show_generate(tiny_model_dir, tmp_path):
    csv = _concept_csv(tmp_path)
    out = tmp_path / "run"
    r = runner.invoke(app, ["find", *_concept_args(tiny_model_dir, csv), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    assert obj["run_dir"] == str(out)
    assert obj["n_neurons_scored"] == 3 * 48
    assert obj["forward_passes"] > 0 and obj["seconds"] > 0
    assert len(obj["top"]) == 100 and set(obj["top"][0]) == {"layer", "neuron", "score"}
    assert obj["top"][0]["score"] >= obj["top"][1]["score"]

    r = runner.invoke(app, ["show", str(out), "--k", "5"])
    assert r.exit_code == 0, r.output
    assert "rank" in r.stdout and str(obj["top"][0]["neuron"]) in r.stdout
    r = runner.invoke(app, ["show", str(out), "--k", "3", "--json"])
    assert [t["neuron"] for t in json.loads(r.stdout)["top"]] == [t["neuron"] for t in obj["top"][:3]]

    r = runner.invoke(app, ["generate", str(out), "the rain", "--k", "40", "--max-new-tokens", "5", "--json"])
    assert r.exit_code == 0, r.output
    g = json.loads(r.stdout)
    assert g["k"] == 40 and isinstance(g["before"], str) and isinstance(g["after"], str)
    assert g["after"] != g["before"]  # 40 of the 144 neurons off changes the greedy continuation


def test_find_proves_the_top_2000_by_default_and_sweeps_in_full_with_exact_top_0(tiny_model_dir, tmp_path):
    csv = _concept_csv(tmp_path)
    got = {}
    for name, extra in (("default", []), ("full", ["--exact-top", "0"]), ("budget", ["--max-ppl", "1.5"])):
        r = runner.invoke(app, ["find", *_concept_args(tiny_model_dir, csv), "--out", str(tmp_path / name), *extra])
        assert r.exit_code == 0, r.output
        got[name] = nl.Run.load(tmp_path / name)
    assert got["default"].meta.extra["exact_top"]["k"] == 2000  # the default: the top 2,000 proven
    assert "exact_top" not in got["full"].meta.extra and "exact_top" not in got["budget"].meta.extra  # whole rankings
    assert got["default"].top(100).neurons == got["full"].top(100).neurons
    assert got["default"].top(100).scores == got["full"].top(100).scores  # bit for bit
    r = runner.invoke(app, ["find", *_concept_args(tiny_model_dir, csv), "--out", str(tmp_path / "x"), "--exact-top", "-1"])
    assert r.exit_code != 0 and ">= 0" in r.output and not (tmp_path / "x").exists()


def test_find_with_min_stability_lists_the_neurons_that_stay(tiny_model_dir, tmp_path):
    csv = _concept_csv(tmp_path)
    out = tmp_path / "run"
    r = runner.invoke(app, ["find", *_concept_args(tiny_model_dir, csv), "--out", str(out), "--top-k", "40",
                            "--min-stability", "0.8", "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    want = nl.Run.load(out).top(40, 0.8).neurons
    assert obj["min_stability"] == 0.8 and 0 < len(want) < 40
    assert [(t["layer"], t["neuron"]) for t in obj["top"]] == list(want)
    assert len(pd.read_csv(out / "top.csv")) == 40  # the run keeps every row; the filter is how it is taken
    r = runner.invoke(app, ["find", *_concept_args(tiny_model_dir, csv), "--out", str(tmp_path / "b"),
                            "--min-stability", "0"])
    assert r.exit_code != 0 and "(0, 1]" in r.output and not (tmp_path / "b").exists()


def test_nonsense_sizes_and_layers_are_refused(tiny_model_dir, tmp_path):
    """Each used to be accepted silently (a run of 0 neurons, 'top--5', everything turned off)."""
    csv = _concept_csv(tmp_path)
    out = tmp_path / "run"
    r = runner.invoke(app, ["find", *_concept_args(tiny_model_dir, csv), "--out", str(tmp_path / "a"), "--layers", "5-2"])
    assert r.exit_code == 2 and "'5-2' is empty" in r.output and not (tmp_path / "a").exists()
    r = runner.invoke(app, ["find", *_concept_args(tiny_model_dir, csv), "--out", str(tmp_path / "b"), "--top-k", "-5"])
    assert r.exit_code == 2 and "top_k" in r.output and not (tmp_path / "b").exists()
    r = runner.invoke(app, ["find", *_concept_args(tiny_model_dir, csv), "--out", str(out), "--reading-layer", "1",
                            "--layers", "2"])
    assert r.exit_code == 2 and "past the reading layer 1" in r.output and not out.exists()
    r = runner.invoke(app, ["find", *_concept_args(tiny_model_dir, csv), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    for cmd in (["show", str(out), "--k", "-5"], ["show", str(out), "--k", "0", "--json"],
                ["generate", str(out), "the rain", "--k", "-5"], ["generate", str(out), "the rain", "--k", "999999"]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2 and "error" in r.output, (cmd, r.output)
    assert "more than the 144 neurons" in r.output
    r = runner.invoke(app, ["show", str(out), "--k", "999999", "--json"])  # more rows than exist: all of them
    assert r.exit_code == 0 and len(json.loads(r.stdout)["top"]) == 144


def test_a_data_folder_given_as_data_points_to_data_path(tiny_model_dir, tmp_path):
    """--data ../shared/data (a folder where --data-path was meant) used to end in an unrelated
    error ("--design demonstrations ... needs --data toxigen", or a file read of a folder)."""
    for cmd in (["hate", "--design", "demonstrations"], ["hate"], ["bias"]):
        out = tmp_path / cmd[0]
        r = runner.invoke(app, [*cmd, "--model", str(tiny_model_dir), "--data", str(tmp_path), "--out", str(out)])
        assert r.exit_code != 0 and "is a folder" in r.output and f"--data-path {tmp_path}" in r.output, r.output
        assert not out.exists()


def test_find_errors_are_clear(tiny_model_dir, tmp_path):
    csv = _concept_csv(tmp_path)
    r = runner.invoke(app, ["find", "--model", str(tiny_model_dir), "--concept", str(csv), "--text-col", "nope",
                            "--label-col", "kind", "--positive", "weather", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "not found" in r.output and "sentence" in r.output
    r = runner.invoke(app, ["find", "--model", str(tiny_model_dir), "--concept", str(csv), "--text-col", "sentence",
                            "--label-col", "kind", "--positive", "hate", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "hate" in r.output and "weather" in r.output
    r = runner.invoke(app, ["find", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no such model folder" in r.output
    r = runner.invoke(app, ["find", "--model", str(tiny_model_dir), "--concept", str(csv), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--positive" in r.output
    r = runner.invoke(app, ["show", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no such run folder" in r.output
    assert not (tmp_path / "x").exists()


def test_evaluate_reloads_the_concept_and_writes_evaluation(tiny_model_dir, tmp_path):
    csv = _concept_csv(tmp_path)
    out = tmp_path / "run"
    r = runner.invoke(app, ["find", *_concept_args(tiny_model_dir, csv), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(out), "--k", "5,20", "--random", "2", "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    assert [row["k"] for row in obj["rows"]] == [5, 20]
    assert 0 <= obj["auroc_before"] <= 1 and obj["method"] == "neat"
    assert json.loads((out / "evaluation.json").read_text())["rows"][1]["k"] == 20
    r = runner.invoke(app, ["evaluate", str(out), "--k", "5,x"])
    assert r.exit_code == 2 and "--k" in r.output
    moved = tmp_path / "moved.csv"
    csv.rename(moved)
    r = runner.invoke(app, ["evaluate", str(out), "--k", "5", "--random", "1", "--concept", str(moved), "--json"])
    assert r.exit_code == 0, r.output


def test_find_with_label_readout_methods(tiny_model_dir, tmp_path):
    csv = _concept_csv(tmp_path)
    for method in ("logprob-increase", "integrated-gradients"):
        r = runner.invoke(app, ["find", "--model", str(tiny_model_dir), "--concept", str(csv), "--text-col", "sentence",
                                "--label-col", "kind", "--positive", "weather", "--method", method, "--layers", "2",
                                "--label-template", "{text} ?", "--label-yes", "x", "--label-no", "y",
                                "--out", str(tmp_path / method), "--json"])
        assert r.exit_code == 0, r.output
        obj = json.loads(r.stdout.strip().splitlines()[-1])
        assert obj["n_neurons_scored"] == 48 and obj["method"] == method
    r = runner.invoke(app, ["find", "--model", str(tiny_model_dir), "--concept", str(csv), "--text-col", "sentence",
                            "--label-col", "kind", "--positive", "weather", "--method", "logprob-increase",
                            "--label-yes", " thunderstorm-xyz", "--out", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "single-token" in r.output
    assert not (tmp_path / "bad").exists()


def test_compare_every_method_end_to_end(tiny_model_dir, tmp_path):
    """Every cheap method on the whole (tiny) model, the slow ones on a subset as an agreement check."""
    csv = _concept_csv(tmp_path)
    out = tmp_path / "cmp"
    methods = "neat,neat-cluster,screen-verify,attribution-patching,logprob-increase,activation,auroc,aura,random"
    args = ["compare", "--model", str(tiny_model_dir), "--concept", str(csv), "--text-col", "sentence",
            "--label-col", "kind", "--positive", "weather", "--methods", methods,
            "--agreement-methods", "exhaustive,integrated-gradients", "--agreement-subset", "60", "--probe-size", "2",
            "--k", "5,20", "--random", "2", "--label-template", "{text} ?", "--label-yes", "x", "--label-no", "y",
            "--out", str(out), "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    table = obj["table"]
    assert [row["method"] for row in table[:-1]] == methods.split(",")
    assert table[-1]["method"].startswith("random K-sets")
    by = {row["method"]: row for row in table}
    model = nl.load_model(str(tiny_model_dir))
    full = [m for m in methods.split(",") if m not in ("neat-cluster", "screen-verify")]
    assert all(by[m]["neurons scored"] == model.n_neurons for m in full)  # the whole model
    # these two look at every neuron but score exactly only the best clusters / screened candidates
    assert 0 < by["neat-cluster"]["neurons scored"] < model.n_neurons and by["screen-verify"]["neurons scored"] > 0
    assert by["aura"]["turned off by"] == "dampen (per-neuron alpha)" and by["neat"]["turned off by"] == "zero"
    assert by["random"]["forward passes"] == 0 and by["random"]["backward passes"] == 0  # scoring stage only
    assert by["attribution-patching"]["backward passes"] > 0
    assert "removal within ppl 1.05" in by["neat"] and "K within ppl 1.1" in by["neat"]
    agree = {a["method"]: a for a in obj["agreement"]}
    agree_order = [a["method"] for a in obj["agreement"]]
    assert set(agree) == set(methods.split(",")) | {"exhaustive", "integrated-gradients"}
    assert agree["exhaustive"]["spearman"] == 1.0 and agree["neat"]["n_common"] == 60
    assert agree["exhaustive"]["forward_passes"] > 0 and agree["neat"]["forward_passes"] is None
    for f in ("compare.csv", "compare.md", "compare.json", "dose_response.png"):
        assert (out / f).stat().st_size > 0
    from neat_llm.compare import Comparison

    typed = Comparison.from_dict(json.loads((out / "compare.json").read_text()))  # compare.json, typed again
    assert [r.method for r in typed.rows] == methods.split(",") and typed.rows[0].removal.rows[0].k == 5
    assert typed.table()["method"].tolist() == [t["method"] for t in table]
    assert typed.markdown() == (out / "compare.md").read_text()  # the same page from the file as from the run
    assert sorted(typed.random_sets) == [5, 20] and typed.agreement[0].method == agree_order[0]
    md = (out / "compare.md").read_text()
    assert "| neat |" in md and "Agreement check on a seeded subset of 60 neurons" in md and "ppl <= 1.05" in md
    before = {p.name: p.stat().st_mtime for p in (out / "runs").iterdir()}
    r = runner.invoke(app, args)  # a rerun reuses the finished runs
    assert r.exit_code == 0, r.output
    assert {p.name: p.stat().st_mtime for p in (out / "runs").iterdir()} == before
    r = runner.invoke(app, args[:-1] + ["--methods", "neat,magic"])
    assert r.exit_code == 2 and "magic" in r.output
    r = runner.invoke(app, args[:-1] + ["--methods", "neat,exhaustive"])
    assert r.exit_code == 2 and "agreement" in r.output


def test_find_position_restricted(tiny_model_dir, tmp_path):
    """--positions read gives the read-position scorer's scores (not the all-position ones) and is
    recorded in the run; it is refused for other methods."""
    import neat_llm as nl
    from neat_llm.scoring import NeatScorer, ProbeSet, ScoringTask

    csv = _concept_csv(tmp_path)
    r = runner.invoke(app, ["find", *_concept_args(tiny_model_dir, csv), "--positions", "read", "--out",
                            str(tmp_path / "read"), "--json"])
    assert r.exit_code == 0, r.output
    run = nl.Run.load(tmp_path / "read")
    assert run.meta.params["scorer"]["positions"] == "read"
    model = nl.load_model(tiny_model_dir)


    b = len(run.meta.probe_texts)
    task = ScoringTask(run.readout(), ProbeSet(run.meta.probe_texts, [1.0 / b] * b), layers=list(range(model.n_layers)))
    direct = NeatScorer(positions="read").score(model, task).scores
    assert torch.allclose(run.effect_positive, direct, atol=1e-5)  # the positive probes' sweep
    assert not torch.allclose(run.effect_positive, NeatScorer().score(model, task).scores, atol=1e-4)
    r = runner.invoke(app, ["find", *_concept_args(tiny_model_dir, csv), "--method", "activation", "--positions",
                            "read", "--out", str(tmp_path / "x")])  # exhaustive, neat-cluster, screen-verify take it
    assert r.exit_code != 0 and "--positions read is an option of --method neat" in r.output


def test_ctrl_c_says_how_to_resume(tiny_model_dir, tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(nl, "find_concept_neurons", interrupted)
    out = tmp_path / "run"
    r = runner.invoke(app, ["find", *_concept_args(tiny_model_dir, _concept_csv(tmp_path)), "--out", str(out)])
    assert r.exit_code == 130 and "rerun the same command to resume" in r.output and str(out) in r.output


def test_model_names_that_are_neither_folder_nor_reachable_hub_id(tmp_path, monkeypatch):
    import time
    import urllib.request

    (tmp_path / "weights-only").mkdir()
    r = runner.invoke(app, ["find", "--model", str(tmp_path / "weights-only")])
    assert r.exit_code == 2 and "without config.json" in r.output and "model_type" not in r.output

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    t0 = time.time()
    with pytest.raises(nl.ModelLoadError, match="not in the Hugging Face cache") as e:
        nl.load_model("some-org/some-model")
    assert time.time() - t0 < 10 and "cannot be reached" in str(e.value)
