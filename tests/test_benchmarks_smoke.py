"""The benchmark scripts run end to end on a tiny saved Llama (in-process, --quick sizes) and write
what they promise: the columns, rows, pass counts and agreement values of a real run."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    """The script as a module, with benchmarks/ on the path as when it is run (its own imports,
    _common and bench_sweep, resolve whichever test runs first)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def quiet_transformers():
    """The scripts quiet transformers' logging and progress bars; give the other tests theirs back."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    yield
    logging.set_verbosity(level)
    if bars:
        logging.enable_progress_bar()


@pytest.mark.parametrize("name", ["bench_sweep", "bench_variants", "bench_costs", "bench_conditions", "bench_generation",
                                  "bench_prefix_attention"])
def test_scripts_import_and_help(name, capsys, quiet_transformers):
    module = _script(name)  # bench_sweep: the shared set-up it imports from _common resolves
    with pytest.raises(SystemExit) as exc:
        if name == "bench_sweep":  # it reads sys.argv itself
            import sys

            argv, sys.argv = sys.argv, ["bench_sweep.py", "--help"]
            try:
                module.main()
            finally:
                sys.argv = argv
        else:
            module.main(["--help"])
    assert exc.value.code == 0
    assert ("--quick" if name == "bench_sweep" else "--model") in capsys.readouterr().out


def test_bench_variants_smoke(tiny_model_dir, tmp_path, capsys, quiet_transformers):
    rows = _script("bench_variants").main(["--model", str(tiny_model_dir), "--candidates", "30", "--top", "10",
                                           "--out", str(tmp_path)])
    out = capsys.readouterr().out
    df = pd.read_csv(tmp_path / "variants.csv")
    assert list(df.variant) == ["all", "read", "screen-verify", "screen-verify-probes"] == [r["variant"] for r in rows]
    for col in ("seconds", "forward", "partial_forward", "block_forward", "backward", "peak_rss_mb",
                "rss_increase_mb", "n_scored", "spearman_vs_all", "top_overlap_vs_all", "max_abs_diff_vs_all"):
        assert col in df.columns, col
    a, r, sv, svp = (df.iloc[i] for i in range(4))
    assert a.n_scored == r.n_scored == 3 * 48 and sv.n_scored == svp.n_scored == 30
    assert svp.max_abs_diff_vs_all < 1e-4 and svp.backward == 1  # the screen on the one probe text
    assert a.spearman_vs_all == pytest.approx(1.0) and a.top_overlap_vs_all == 1.0 and a.max_abs_diff_vs_all == 0
    assert -1 <= r.spearman_vs_all <= 1 and 0 <= r.top_overlap_vs_all <= 1
    assert 0 <= sv.top_overlap_vs_all <= 1
    assert sv.max_abs_diff_vs_all < 1e-4, "verified scores are exact NEAT scores"
    assert a.forward == 1 and a.backward == 0 and 0 < a.partial_forward <= a.n_scored
    assert sv.backward > 0 and sv.partial_forward <= 30
    assert (df.peak_rss_mb > 0).all() and (df.seconds > 0).all()
    assert "read-position sweep:" in out and "the all-position sweep" in out and "Spearman" in out
    assert "top-10 overlap" in out and "max |verified - exact|" in out


def test_bench_costs_smoke(tiny_model_dir, tmp_path, capsys, quiet_transformers):
    bench = _script("bench_costs")
    res = bench.main(["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--scale-check"])
    out = capsys.readouterr().out
    assert (tmp_path / "costs.png").stat().st_size > 10_000
    df = pd.read_csv(tmp_path / "costs.csv")
    assert list(df.columns[:len(bench.COLUMNS)]) == bench.COLUMNS
    vs_n, vs_m, concept = (df[df.sweep == s] for s in ("n", "m", "concept"))
    for method in bench.METHODS:
        assert sorted(vs_n[vs_n.method == method].n) == [8, 16, 32], method
        assert sorted(vs_m[vs_m.method == method].m) == [2, 4], method
    ex = vs_n[vs_n.method == "exhaustive"].set_index("n")
    assert list(ex.extrapolated) == [False, False, True], "exhaustive is measured up to n = 16 only"
    assert math.isnan(ex.loc[32, "peak_rss_mb"]) and ex.loc[32, "seconds"] > 0
    assert not df[df.method != "exhaustive"].extrapolated.any()
    for _, row in pd.concat([vs_n, vs_m]).iterrows():  # the passes each method is documented to cost
        if row.method == "neat":
            assert (row.forward, row.partial_forward, row.backward) == (1, row.n, 0)
        elif row.method == "exhaustive":
            assert (row.forward, row.partial_forward, row.backward) == (row.m, row.n * row.m, 0)
        else:
            assert (row.forward, row.partial_forward, row.backward) == (row.m, 0, row.m)
    assert list(concept.forward) == [2 * m for m in concept.m]
    assert set(res["slopes"]) == {*bench.METHODS, "concept-stage"}
    assert all(math.isfinite(s["m"]) for s in res["slopes"].values())
    assert "growth exponents" in out and "x the neurons" in out
    scale = pd.read_csv(tmp_path / "scale.csv")
    assert list(scale.d_ff) == [48, 192] and list(scale.n_neurons) == [144, 576]
    assert (scale.peak_rss_mb > 0).all() and (scale.rss_increase_mb <= scale.peak_rss_mb).all()


def test_bench_conditions_smoke(tiny_model_dir, tmp_path, capsys, quiet_transformers):
    rows = _script("bench_conditions").main(["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path)])
    df = pd.read_csv(tmp_path / "conditions.csv")
    assert len(df) == len(rows) == 4
    assert sorted(zip(df.measure, df.per_batch)) == [("generation", 1), ("generation", 4), ("removal", 1), ("removal", 4)]
    assert (df.conditions == 4).all() and (df.seconds > 0).all()
    assert df[df.measure == "generation"].max_diff.max() == 0  # the same continuations, batched or not
    assert df[df.measure == "removal"].max_diff.max() < 1e-4
    assert (df[df.per_batch == 1].speedup == 1).all()
    assert "x" in capsys.readouterr().out


def test_bench_generation_smoke(tiny_model_dir, capsys, quiet_transformers):
    """Every path of bench_generation on a tiny model: its last line is the JSON it promises, and
    every earlier path's continuations and our loop's (with a budget of one prompt at a time) are
    generate's."""
    _script("bench_generation").main(["--model", str(tiny_model_dir), "--prompts", "3", "--samples", "2",
                                      "--new-tokens", "6", "--decode-tokens", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    last = json.loads(out[-1])
    assert set(last) >= {"share_of_matmul", "speedup_over_current", "speedup_over_filed", "identical", "agreement",
                         "ceiling_share", "ceiling_speedup_over_current", "ceiling_speedup_over_filed"}
    assert last["share_of_matmul"] > 0 and last["identical"] and last["agreement"] == 1.0
    assert last["ceiling_share"] > 0 and last["ceiling_speedup_over_current"] > 0
    assert any(line.startswith("(d) ceiling: its passes (") for line in out)
    for path in "bcd":
        assert any(line.startswith(f"({path}) identical to (a): True") for line in out), path


def test_bench_prefix_attention_smoke(tiny_model_dir, capsys, quiet_transformers):
    """bench_prefix_attention on a tiny model: both ways of one step's attention give the same
    numbers up to rounding (the shared prompt part is the same attention, split), and its last line
    is the JSON it promises."""
    _script("bench_prefix_attention").main(["--model", str(tiny_model_dir), "--jobs", "2", "--conditions", "2",
                                            "--samples", "3", "--prompt-tokens", "9", "--own-tokens", "4",
                                            "--reps", "2"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) >= {"family_ms", "shared_ms", "speedup", "max_abs_diff", "bit_for_bit", "kv_gb_per_s"}
    assert last["family_ms"] > 0 and last["shared_ms"] > 0 and last["max_abs_diff"] < 1e-5


def test_bench_exact_top_smoke(tiny_model_dir, capsys, monkeypatch, quiet_transformers):
    """bench_exact_top on a tiny model: the pruned find's top K is the two full sweeps', bit for bit."""
    monkeypatch.setattr(sys, "argv", ["bench_exact_top.py", "--model", str(tiny_model_dir), "--k", "20"])
    _script("bench_exact_top").main()
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["k"] == 20 and last["same_top_k"] and last["bit_for_bit"] and last["max_score_diff"] == 0.0
    assert 0 < last["contrast_share_swept"] <= 1
