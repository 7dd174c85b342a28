"""The NEAT sweep sharded over a Ray cluster (``pip install 'neat-llm[ray]'``).

The driver (the process that runs ``find_concept_neurons``) computes everything before the sweep
itself: the concept vector, the reading layer, the probe batch X*. The neurons are then split into
shards = (block, contiguous range of the block's selected neurons): one shard per block when there
are enough blocks to keep every worker busy, otherwise several per block. Ray does the scheduling,
retrying and restarting:

- one actor per worker (``_ShardWorker``) loads the model once in its constructor and scores a shard
  with the same ``NeatScorer`` code path as a single process, restricted to the shard's neurons;
- ``ray.util.ActorPool.map_unordered`` hands the shards to idle actors and yields results as they
  finish; ``max_restarts`` / ``max_task_retries`` make Ray restart a killed actor and re-run its
  lost shard;
- the driver alone writes results: each finished shard goes to ``RUN/.partial/shards/`` (one file
  per shard, atomic rename), and a block whose shards are all done becomes the same per-block file
  a single-process sweep writes. A shard is written once, by the driver, so nothing is counted
  twice; a restarted driver reads the stored plan and skips finished shards and blocks.

The shards are the scorer's own work units (``Scorer.work_units``): this module knows nothing of
how a scorer batches. Identical to a single process: the NEAT sweep batches C = tokens_per_batch // T
replicas of a probe of T tokens, and float results depend (by ~1e-5) on the batch composition and
the thread count. Its work units therefore fall on the single-process batch grid (multiples of C for
every probe, ``NeatScorer.batch_unit``), so
each worker runs exactly the batches a single process would; with the same per-process thread
count and device the scores are bit for bit the same (tested on a tiny model). On SmolLM2 a Ray
worker's scores differed from an in-process 1-thread sweep by up to 3.8e-5 (scores up to 49;
benchmarks/bench_ray.py), probably because Ray starts its workers with OMP_NUM_THREADS=1 and
the BLAS library then takes other code paths than after ``torch.set_num_threads(1)`` in a
running process. Pass counts: every shard rebuilds the probe cache (b forwards through blocks 0..l*, cheap next to the shard), so
``forward`` is b per shard while ``partial_forward`` equals the single-process count.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from .models.loaded import LoadedModel, PassCounter
from .progress import progress_bar
from .runs import PartialSweep, RunError, atomic_write, write_text
from .scoring import SCORERS, ScoringTask
from .scoring.base import NeuronScores, Scorer, WorkUnit
from .sweeps import SweepExecutor, shardable

INSTALL_HINT = "pip install 'neat-llm[ray]'  (or: pip install 'ray>=2.40')"


class RayUnavailableError(ValueError):
    """Ray is not installed; the message says what to install."""


def require_ray():
    """Import and return ``ray``, or raise ``RayUnavailableError`` saying what to install."""
    try:
        import ray
    except ImportError as err:
        raise RayUnavailableError(f"--ray needs the optional Ray extra, which is not installed: {INSTALL_HINT}") from err
    return ray


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model: the arguments of ``load_model``. ``device_map="auto"`` spreads
    one model over the GPUs a worker was given (``gpus_per_worker``)."""

    name: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    device_map: str | dict | None = None
    trust_remote_code: bool = False

    @classmethod
    def of(cls, model: LoadedModel) -> "ModelSpec":
        """Reload ``model`` the way it is identified: its model id, dtype and device."""
        from .models.loading import DEFAULT_MODEL

        dtype = str(model.dtype).removeprefix("torch.")
        return cls(None if model.model_id == DEFAULT_MODEL else model.model_id, device=str(model.device), dtype=dtype)

    def load(self) -> LoadedModel:
        from .models.loading import load_model

        kw = {"device_map": self.device_map} if self.device_map is not None else {}
        return load_model(self.name, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code, **kw)


Shard = WorkUnit  # a shard is one of the scorer's work units (``Scorer.work_units``)


@dataclass
class ShardResult:
    """scores [len(shard.neurons)] in the shard's neuron order; passes the worker spent on it."""

    shard: Shard
    scores: torch.Tensor
    passes: dict
    seconds: float
    host: str
    pid: int


@dataclass
class _SweepSpec:
    """Everything a worker needs besides the model (shipped once through the object store): the
    scorer itself (its options are its constructor's) and the task without its callbacks."""

    scorer: Scorer
    task: ScoringTask


class _ShardWorker:
    """A Ray actor: loads the model once, then scores shards."""

    def __init__(self, spec: ModelSpec, threads: int | None, weights_hash: str | None):
        if threads:
            torch.set_num_threads(threads)
        try:
            import transformers

            transformers.utils.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
        except Exception:  # noqa: BLE001  quieter logs only
            pass
        self.model = spec.load()
        if weights_hash is not None and self.model.weights_hash != weights_hash:
            raise RunError(f"the worker on {socket.gethostname()} loaded {spec.name or 'the default model'} with other "
                           "weights than the driver's model; give every node the same model files")

    def pid(self) -> int:
        return os.getpid()

    def score(self, sweep: _SweepSpec, shard: Shard) -> ShardResult:
        res = sweep.scorer.score(self.model, sweep.scorer.unit_task(sweep.task, shard))
        scores = res.scores[shard.layer, list(shard.neurons)].clone()
        return ShardResult(shard, scores, res.passes.as_dict(), res.seconds, socket.gethostname(), os.getpid())


class ShardStore:
    """``RUN/.partial/shards/``: the shard plan (``plan.json``) and one file per finished shard.
    Only the driver writes here; every write is an atomic rename."""

    def __init__(self, partial: PartialSweep):
        self.partial = partial
        self.dir = partial.dir / "shards"

    def plan(self, blocks: dict[int, list[int]], make: Callable[[], list[Shard]]) -> list[Shard]:
        """The shards of ``blocks`` ({block: selected neurons} still to finish): the stored plan of an
        interrupted sweep (kept whatever ``workers`` is now, so its finished shards count), else
        ``make()``, stored. A stored plan that does not cover ``blocks`` exactly is replaced."""
        f = self.dir / "plan.json"
        if f.is_file():
            try:
                raw = json.loads(f.read_text())
                stored = [Shard(s["id"], s["layer"], s["start"], s["stop"], tuple(s["neurons"])) for s in raw["shards"]]
            except (ValueError, KeyError, TypeError):
                stored = []
            kept = [s for s in stored if s.layer in blocks]  # blocks finished since then drop out
            covered: dict[int, list[int]] = {}
            for s in sorted(kept, key=lambda s: (s.layer, s.start)):
                covered.setdefault(s.layer, []).extend(s.neurons)
            if covered == {l: list(ks) for l, ks in blocks.items() if ks}:
                return kept
            shutil.rmtree(self.dir, ignore_errors=True)
        shards = make()
        write_text(f, json.dumps({"shards": [asdict(s) for s in shards]}))
        return shards

    def _path(self, shard: Shard) -> Path:
        return self.dir / f"shard_{shard.id:06d}_L{shard.layer:03d}_{shard.start}-{shard.stop}.safetensors"

    def finished(self, shards: list[Shard]) -> dict[int, tuple[torch.Tensor, dict]]:
        """{shard id: (scores, passes)} of the shards already written (a damaged file is recomputed)."""
        from safetensors import safe_open

        out = {}
        for s in shards:
            p = self._path(s)
            if p.is_file():
                try:
                    t = load_file(str(p))
                    if t["neurons"].tolist() == list(s.neurons):
                        with safe_open(str(p), "pt") as f:
                            passes = json.loads((f.metadata() or {}).get("passes", "{}"))
                        out[s.id] = (t["scores"], passes)
                        continue
                except Exception:  # noqa: BLE001
                    pass
                p.unlink(missing_ok=True)
        return out

    def write(self, r: ShardResult) -> None:
        t = {"neurons": torch.tensor(r.shard.neurons, dtype=torch.long), "scores": r.scores.contiguous()}
        meta = {"host": r.host, "pid": str(r.pid), "passes": json.dumps(r.passes)}
        atomic_write(self._path(r.shard), lambda p: save_file(t, str(p), metadata=meta))

    def drop(self, shards: list[Shard]) -> None:
        for s in shards:
            self._path(s).unlink(missing_ok=True)


@dataclass
class RaySweep(SweepExecutor):
    """Run the scoring stage of ``find_concept_neurons`` on a Ray cluster.

    address: None starts a local Ray cluster on this machine (``workers * cpus_per_worker`` CPUs)
        and stops it afterwards; ``"auto"`` joins the cluster this machine belongs to (``ray start``);
        ``"HOST:6379"`` / ``"ray://HOST:10001"`` a remote one. If Ray is already initialised in this
        process, that cluster is used as is.
    workers: actors, each holding one copy of the model.
    model: how workers load the model (default ``ModelSpec.of(driver model)``); every worker checks
        that its weights hash equals the driver's.
    cpus_per_worker / gpus_per_worker: Ray resources per actor; torch threads = ``threads_per_worker``
        (default ``max(1, int(cpus_per_worker))``).
    shards_per_worker: blocks are cut into pieces until there are about this many shards per worker.
    shard_size: neurons per shard inside a block (rounded up to the batch grid); overrides the above.
    max_restarts: how often Ray restarts a dead actor and retries its shard.
    on_shard: called on the driver after each shard is written (``ShardResult``, shards done, total).
    """

    address: str | None = None
    workers: int = 2
    model: ModelSpec | None = None
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    threads_per_worker: int | None = None
    shards_per_worker: int = 4
    shard_size: int | None = None
    max_restarts: int = 3
    on_shard: Callable[[ShardResult, int, int], None] | None = None
    worker_pids: list[int] = field(default_factory=list, init=False)
    _actors: list = field(default_factory=list, init=False, repr=False)  # kept across the sweeps of one run
    _started_here: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.shard_size is not None and self.shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {self.shard_size}")

    def check(self, scorer: str | Scorer) -> None:
        """Fail before any work: Ray missing, or a scorer whose work units cannot run apart."""
        require_ray()
        if not shardable(scorer):
            name = scorer if isinstance(scorer, str) else scorer.name
            able = [n for n, c in SCORERS.items() if c.shardable]
            raise ValueError(f"--ray shards the per-neuron NEAT sweep (--method {', '.join(able)}); "
                             f"{name!r} runs in one process")

    def _run(self, model: LoadedModel, scorer: Scorer, task: ScoringTask, partial: PartialSweep, progress: bool,
             what: str) -> tuple[NeuronScores, dict]:
        """Score ``task`` on the cluster; returns the scores (as ``scorer.score`` would) and a summary
        for the run's metadata (workers, shards, resumed shards, hosts)."""
        t0 = time.perf_counter()
        d_ff = model.d_ff
        scores = torch.full((model.n_layers, d_ff), float("nan"))
        blocks = scorer.pending(model, task, scores)  # fills what needs no pass (resumed blocks, ...)
        store = ShardStore(partial)
        unit = scorer.batch_unit(model, task)
        shards = store.plan(blocks, lambda: scorer.work_units(model, task, blocks, self.workers * self.shards_per_worker,
                                                              self.shard_size))
        by_block: dict[int, list[Shard]] = {}
        for s in shards:
            by_block.setdefault(s.layer, []).append(s)
        for l in blocks:
            if l not in by_block:  # a block with no neurons selected
                scores[l] = torch.full((d_ff,), float("nan"))
        rows = {l: torch.full((d_ff,), float("nan")) for l in by_block}
        block_passes = {l: PassCounter() for l in by_block}  # every shard's cost, this process's or not
        left = {l: {s.id for s in ss} for l, ss in by_block.items()}
        finished = store.finished(shards)
        for s in shards:
            if s.id in finished:
                rows[s.layer][list(s.neurons)] = finished[s.id][0]
                block_passes[s.layer] = block_passes[s.layer].plus(PassCounter.from_dict(finished[s.id][1]))
                left[s.layer].discard(s.id)
        passes = PassCounter()
        summary = {"backend": "ray", "address": self.address or "local", "workers": self.workers,
                   "shards": len(shards), "shards_resumed": len(finished), "shards_written": 0, "batch_unit": unit,
                   "hosts": {}}

        def block_finished(l: int) -> None:
            scores[l] = rows[l]
            partial.save(l, rows[l].clone(), block_passes[l].as_dict())  # the file a single process writes
            store.drop(by_block[l])

        for l in list(left):
            if not left[l]:
                block_finished(l)
        todo = [s for s in shards if s.id not in finished]
        if todo:
            self._score_shards(model, scorer, task, todo, store, rows, left, block_finished, passes, block_passes,
                               summary, len(shards), len(finished), progress)
        summary["seconds"] = time.perf_counter() - t0
        return NeuronScores(scores=scores, method=scorer.name, passes=passes, seconds=summary["seconds"],
                            params=scorer.params()), summary

    def _score_shards(self, model, scorer, task, todo, store, rows, left, block_finished, passes, block_passes,
                      summary, n_total, n_resumed, progress) -> None:
        ray = require_ray()
        from ray.util import ActorPool

        t_start = time.perf_counter()
        try:
            actors = self._workers(model, min(self.workers, len(todo)))
            sweep_spec = ray.put(_SweepSpec(scorer, replace(task, done={}, on_layer_done=None, on_progress=None)))
            n_actors = len(actors)
            summary["seconds_startup"] = time.perf_counter() - t_start  # cluster start and model loads
            pool = ActorPool(actors)
            done = n_resumed
            label = f"{scorer.name} sweep on Ray, {n_actors} workers: shards" + (f" ({n_resumed} resumed)" if n_resumed else "")
            with progress_bar(label, n_total, progress) as advance:
                advance(n_resumed)
                for r in pool.map_unordered(lambda a, s: a.score.remote(sweep_spec, s), todo):
                    store.write(r)  # first on disk, then counted: a crash in between only recomputes the shard
                    rows[r.shard.layer][list(r.shard.neurons)] = r.scores
                    shard_passes = PassCounter.from_dict(r.passes)
                    passes.add_all(shard_passes)
                    block_passes[r.shard.layer] = block_passes[r.shard.layer].plus(shard_passes)
                    summary["shards_written"] += 1
                    summary["hosts"][r.host] = summary["hosts"].get(r.host, 0) + 1
                    left[r.shard.layer].discard(r.shard.id)
                    if not left[r.shard.layer]:
                        block_finished(r.shard.layer)
                    done += 1
                    advance(1)
                    if self.on_shard:
                        self.on_shard(r, done, n_total)
        except ray.exceptions.RayActorError as err:
            self.close()
            raise RuntimeError(f"a Ray worker died more than {self.max_restarts} times ({err}); the finished shards "
                               "are kept: run the same command again to resume") from err
        except BaseException:
            self.close()
            raise

    def _workers(self, model: LoadedModel, n: int) -> list:
        """The actors, each holding the model: started (and the cluster joined or started) on the
        first sweep, reused by the next sweeps of the run until ``close``."""
        ray = require_ray()
        if self._actors:
            return self._actors
        self._started_here = not ray.is_initialized()
        if self._started_here:
            kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            if self.address is None:
                kw["num_cpus"] = max(1, math.ceil(self.workers * self.cpus_per_worker))
            else:
                kw["address"] = self.address
            ray.init(**kw)
        spec = ModelSpec.of(model) if self.model is None else self.model
        threads = self.threads_per_worker or max(1, int(self.cpus_per_worker))
        Worker = ray.remote(_ShardWorker).options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                                                  max_restarts=self.max_restarts, max_task_retries=self.max_restarts)
        self._actors = [Worker.remote(spec, threads, model.weights_hash) for _ in range(n)]
        try:  # wait for every model load here, so a bad model or path fails with its own message
            self.worker_pids = ray.get([a.pid.remote() for a in self._actors])
        except ray.exceptions.RayActorError as err:
            self.close()
            raise RunError(f"a Ray worker could not load the model {spec}: {err}") from None
        return self._actors

    def close(self) -> None:
        """Stop the actors (and the local cluster if this object started it)."""
        if not self._actors and not self._started_here:
            return
        ray = require_ray()
        for a in self._actors:
            ray.kill(a)
        self._actors = []
        if self._started_here:
            ray.shutdown()
            self._started_here = False
