"""How a scorer's sweep runs, apart from what it computes: an executor takes a scorer, its task and
the run folder's store of finished blocks (``runs.PartialSweep``) and returns the scores.

Both executors resume from the finished blocks and save each block as it finishes, with the passes
it cost, so the passes of a run spread over several processes add up:

- ``LocalSweep`` (the default) runs ``scorer.score`` in this process;
- ``distributed.RaySweep`` runs the scorer's work units (``Scorer.work_units``) on a Ray cluster.

``find_concept_neurons`` calls ``executor.sweep(...)`` and never asks which one it has."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .models.loaded import LoadedModel
from .progress import progress_bar
from .runs import PartialSweep
from .scoring import SCORERS, NeuronScores, Scorer, ScoringTask


class BlockPasses:
    """Saves each finished block of a sweep with the passes it cost in this process, so the passes of
    a run resumed over several processes add up (``total``)."""

    def __init__(self, model: LoadedModel, partial: PartialSweep):
        self.model, self.partial = model, partial
        self.last = model.counter.snapshot()

    def save(self, layer: int, row: torch.Tensor, per_probe: torch.Tensor | None = None) -> None:
        now = self.model.counter.snapshot()
        self.partial.save(layer, row, now.since(self.last).as_dict(), per_probe)
        self.last = now

    def total(self, this_process) -> dict[str, int]:
        """Every stored block's passes (this process's and earlier ones') plus what this process
        spent after its last finished block; a scorer that stores no blocks: its own passes."""
        stored = self.partial.stored_passes()
        if stored is None:
            return this_process.as_dict()
        rest = self.model.counter.since(self.last).as_dict()
        return {k: stored.get(k, 0) + rest[k] for k in rest}


@dataclass
class SweepOutcome:
    """scores: what the scorer gives; passes: the sweep's whole cost (earlier processes' included);
    resumed: blocks read back from the store; summary: the executor's own account (Ray: workers,
    shards, hosts) or None."""

    scores: NeuronScores
    passes: dict[str, int]
    resumed: list[int]
    summary: dict | None = None


class SweepExecutor:
    """Runs sweeps; subclasses implement ``_run``."""

    def check(self, scorer: str | Scorer) -> None:
        """Fail before any work when this executor cannot run ``scorer`` (a name or an instance)."""

    def sweep(self, model: LoadedModel, scorer: Scorer, task: ScoringTask, partial: PartialSweep,
              progress: bool = True, what: str = "sweep") -> SweepOutcome:
        """Score ``task`` with ``scorer``, resuming the blocks ``partial`` holds and saving the new ones."""
        self.check(scorer)
        done = partial.done()
        tracker = BlockPasses(model, partial)
        task = replace(task, done=done, done_per_probe=partial.done_per_probe(), on_layer_done=tracker.save)
        scores, summary = self._run(model, scorer, task, partial, progress, what)
        return SweepOutcome(scores, tracker.total(scores.passes), sorted(done), summary)

    def _run(self, model: LoadedModel, scorer: Scorer, task: ScoringTask, partial: PartialSweep, progress: bool,
             what: str) -> tuple[NeuronScores, dict | None]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor holds (workers); it may be used again afterwards."""


class LocalSweep(SweepExecutor):
    """The sweep in this process, with a progress bar."""

    def _run(self, model, scorer, task, partial, progress, what):
        n_total = task.n_selected(model.n_layers, model.d_ff)
        label = f"{what} ({len(task.done)} blocks resumed)" if task.done else what
        with progress_bar(label, n_total, progress) as advance:
            return scorer.score(model, replace(task, on_progress=advance)), None


def shardable(scorer: str | Scorer) -> bool:
    """Whether ``scorer`` (a method name or an instance) may run as work units in other processes."""
    if isinstance(scorer, Scorer):
        return scorer.shardable
    return scorer in SCORERS and SCORERS[scorer].shardable
