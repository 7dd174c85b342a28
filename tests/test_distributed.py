"""The sweep sharded over a local Ray cluster (2 workers) against the single-process sweep, on a
tiny Llama saved to a folder: identical scores, a killed worker loses and double-counts nothing,
an interrupted driver resumes without redoing finished shards. One Ray cluster for the module."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys

import pytest
import torch
from typer.testing import CliRunner

import neat_llm as nl
from neat_llm.distributed import RaySweep, RayUnavailableError, require_ray

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (pip install 'neat-llm[ray]'); "
                                                   "the sharded-sweep tests need it")
SETTINGS = dict(reading_layer=2, tokens_per_batch=40, progress=False)  # 40 tokens: several batches per block


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray cluster for this module, stopped at its end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return nl.load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def single(model, tmp_path_factory):
    """The single-process runs the sharded ones must reproduce, by settings."""
    from conftest import concept_texts

    pos, neg = concept_texts(24)
    cs = nl.ConceptSet.from_texts(pos, neg, name="weather")
    out = {}
    for key, kw in {"plain": {}, "contrastive-mean": dict(probe_size=2, contrastive=True, ablation="mean")}.items():
        out[key] = (cs, kw, nl.find_concept_neurons(model, cs, out=tmp_path_factory.mktemp("single") / key,
                                                    **SETTINGS, **kw))
    return out


def _same(a, b) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # bit for bit


@needs_ray
@pytest.mark.parametrize("key", ["plain", "contrastive-mean"])
def test_two_workers_give_the_single_process_result(ray_cluster, model, single, key, tmp_path):
    cs, kw, ref = single[key]
    pids = set()
    sweep = RaySweep(workers=2, on_shard=lambda r, done, total: pids.add(r.pid))
    run = nl.find_concept_neurons(model, cs, out=tmp_path / "ray", distributed=sweep, **SETTINGS, **kw)
    _same(run.scores, ref.scores)
    assert run.top_table[["layer", "neuron", "score"]].equals(ref.top_table[["layer", "neuron", "score"]])
    info = run.meta.extra["distributed"]
    # the default score sweeps the positive and the contrast probes; the contrastive one, one mixed set
    sides = info if "shards" not in info else {"positive": info}
    assert len(sides) == (1 if kw.get("contrastive") else 2)
    for info in sides.values():
        assert info["shards"] > 3 and info["shards_written"] == info["shards"]  # blocks were cut
    assert len(pids) == 2 and set(sweep.worker_pids) == pids  # both workers took shards, of both sweeps
    sharded, plain = run.meta.passes["scoring"], ref.meta.passes["scoring"]
    assert sharded["partial_forward"] == plain["partial_forward"]  # every neuron replayed exactly once
    assert sharded["block_forward"] == plain["block_forward"]
    per_side = plain["forward"] // len(sides)  # the probe caches of one side
    assert sharded["forward"] == sum(i["shards"] for i in sides.values()) * per_side  # once per shard
    assert not (tmp_path / "ray" / ".partial").exists()


@needs_ray
def test_a_killed_worker_loses_nothing_and_counts_nothing_twice(ray_cluster, model, single, tmp_path):
    cs, kw, ref = single["plain"]
    seen, killed = [], []

    def kill_the_other_worker(r, done, total):
        seen.append(r.pid)
        if not killed:  # the pool keeps both workers busy: the other one is mid-shard now
            other = next(p for p in sweep.worker_pids if p != r.pid)
            os.kill(other, signal.SIGKILL)
            killed.append(other)

    sweep = RaySweep(workers=2, on_shard=kill_the_other_worker, shard_size=8)
    run = nl.find_concept_neurons(model, cs, out=tmp_path / "ray", distributed=sweep, **SETTINGS, **kw)
    assert set(seen) - set(sweep.worker_pids), "no shard came from the restarted worker"
    _same(run.scores, ref.scores)
    info = run.meta.extra["distributed"]
    sides = info if "shards" not in info else {"positive": info}
    assert sum(i["shards_written"] for i in sides.values()) == sum(i["shards"] for i in sides.values()) == len(seen)
    assert run.meta.passes["scoring"]["partial_forward"] == ref.meta.passes["scoring"]["partial_forward"]


@needs_ray
def test_an_interrupted_driver_resumes_without_redoing_shards(ray_cluster, model, single, tmp_path):
    cs, kw, ref = single["plain"]

    def stop_after_three(r, done, total):
        if done == 3:
            raise KeyboardInterrupt

    out = tmp_path / "ray"
    with pytest.raises(KeyboardInterrupt):
        nl.find_concept_neurons(model, cs, out=out, distributed=RaySweep(workers=2, shard_size=8,
                                                                          on_shard=stop_after_three),
                                **SETTINGS, **kw)
    # the default score sweeps the positive probes first: the cut fell in that sweep
    plan = json.loads((out / ".partial" / "positive" / "shards" / "plan.json").read_text())["shards"]
    assert not (out / "meta.json").exists()
    # resumed with another worker count: the stored plan is kept, so its finished shards count
    run = nl.find_concept_neurons(model, cs, out=out, distributed=RaySweep(workers=1, shard_size=16),
                                  **SETTINGS, **kw)
    info = run.meta.extra["distributed"]["positive"]
    per_block = {l: sum(s["layer"] == l for s in plan) for l in range(3)}
    resumed_in_blocks = sum(per_block[l] for l in run.meta.extra["resumed_layers"]["positive"])
    assert info["shards_written"] == len(plan) - 3
    assert info["shards_resumed"] + resumed_in_blocks == 3
    _same(run.scores, ref.scores)


@needs_ray
def test_a_worker_that_cannot_load_the_model_fails_clearly(ray_cluster, model, single, tmp_path):
    from neat_llm.distributed import ModelSpec
    from neat_llm.runs import RunError

    cs, kw, _ = single["plain"]
    with pytest.raises(RunError, match="could not load the model"):
        nl.find_concept_neurons(model, cs, out=tmp_path / "x", distributed=RaySweep(
            workers=1, model=ModelSpec(str(tmp_path / "no-such-model"))), **SETTINGS, **kw)


def test_without_ray_the_flag_says_what_to_install(tiny_model_dir, tmp_path, monkeypatch):
    import pandas as pd

    from conftest import concept_texts
    from neat_llm.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if it were not installed
    with pytest.raises(RayUnavailableError, match=r"pip install 'neat-llm\[ray\]'"):
        require_ray()
    pos, neg = concept_texts(16)
    csv = tmp_path / "c.csv"
    pd.DataFrame({"text": pos + neg, "label": ["w"] * len(pos) + ["f"] * len(neg)}).to_csv(csv, index=False)
    r = CliRunner().invoke(app, ["find", "--model", str(tiny_model_dir), "--concept", str(csv), "--positive", "w",
                                 "--out", str(tmp_path / "run"), "--ray"])
    assert r.exit_code == 2, r.output
    assert "pip install 'neat-llm[ray]'" in " ".join(r.output.split())
    assert not (tmp_path / "run").exists()  # nothing started


def test_only_the_neat_sweep_is_sharded(tiny_llama, concept_set, tmp_path):
    if not HAS_RAY:
        pytest.skip("ray is not installed (pip install 'neat-llm[ray]')")
    with pytest.raises(ValueError, match="--ray shards the per-neuron NEAT sweep"):
        nl.find_concept_neurons(tiny_llama, concept_set, method="activation", out=tmp_path / "x", progress=False,
                                distributed=RaySweep())

