"""The one scorer interface: a ``ScoringTask`` in, ``NeuronScores`` [n_layers, d_ff] out,
with the passes the scorer spent counted by the model's ``PassCounter``.

A scorer says what its work is, apart from running it: ``pending`` (the blocks still to score,
after filling in what needs no pass) and ``work_units`` (those blocks cut into ``WorkUnit``s on the
scorer's own batch grid). ``sweeps.LocalSweep`` runs a whole task in this process;
``distributed.py`` runs the work units of a ``shardable`` scorer on a Ray cluster. Options are
constructor arguments of the scorer (``NeatScorer(tokens_per_batch=..., positions=...)``)."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from ..concepts.vectors import ConceptReadout
from ..interventions.types import BlockEdit, Intervention, Zero
from ..models.loaded import LoadedModel, PassCounter


@dataclass
class ProbeSet:
    """The probe batch X*: texts as the readout reads them (its template applied) and their weights in the score (+1/b for the b positives; the
    contrastive option adds the b lowest-S contrast texts with weight -1/b)."""

    texts: list[str]
    weights: list[float]

    def __post_init__(self) -> None:
        if not self.texts or len(self.texts) != len(self.weights):
            raise ValueError("a probe set needs at least one text and one weight per text")


@dataclass
class ScoringTask:
    """What to score and how.

    layers: blocks whose neurons are scored (others are NaN = not scored). Neurons in blocks after
        ``readout.layer`` cannot change S and score exactly 0.
    neurons: optional {layer: [neuron indices]} restricting the neurons scored inside a block.
    intervention: what a turned-off neuron becomes (``Zero``, ``Mean``, ``Dampen`` with one alpha,
        ``Transport``): the same types ``turn_off`` and the evaluations take.
    done: {layer: scores [d_ff]} already finished (resume); on_layer_done(layer, row, per_probe) is
        called when a block is finished, so a caller can persist it (``per_probe``: [n_probes, d_ff],
        each probe text's own effect, from scorers that give one, else None); ``done_per_probe``:
        the finished blocks' per-probe effects, where stored.
    """

    readout: ConceptReadout
    probes: ProbeSet
    layers: list[int]
    neurons: dict[int, list[int]] | None = None
    intervention: Intervention = field(default_factory=Zero)
    done: dict[int, torch.Tensor] = field(default_factory=dict)
    on_layer_done: Callable[[int, torch.Tensor, torch.Tensor | None], None] | None = None
    done_per_probe: dict[int, torch.Tensor] = field(default_factory=dict)
    on_progress: Callable[[int], None] | None = None  # called with the number of neurons just scored
    positives: list[str] | None = None  # fit positives P_fit, as given (readout.apply(...) is what S reads)
    contrast: list[str] | None = None  # fit contrast texts N_fit, as given
    seed: int = 0
    # the neurons of each block a whole sweep would turn off: a scorer that batches neurons gives each
    # neuron it scores a batch of the size the whole sweep would (padded), so a sweep over part of a
    # block gives the whole sweep's numbers bit for bit (None: the neurons scored are the whole sweep)
    batches_as: dict[int, list[int]] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.intervention, Intervention):
            raise TypeError(f"intervention must be an Intervention (Zero(), Mean(means), ...), got {self.intervention!r}")

    def neurons_of(self, layer: int, d_ff: int) -> list[int]:
        if self.neurons is None:
            return list(range(d_ff))
        return list(self.neurons.get(layer, []))

    def whole_sweep_of(self, layer: int, d_ff: int) -> list[int]:
        """The neurons of block ``layer`` a whole sweep turns off (``batches_as``, else those scored)."""
        return self.neurons_of(layer, d_ff) if self.batches_as is None else list(self.batches_as.get(layer, []))

    def edit_off(self, layer: int, d_ff: int) -> BlockEdit:
        """What turning a neuron of block ``layer`` off does to it: a -> a * scale + shift, [d_ff] each."""
        return self.intervention.block_affine(layer, d_ff)

    def fit_texts(self, scorer: str) -> tuple[list[str], list[str]]:
        if not self.positives or not self.contrast:
            raise ValueError(f"the {scorer} scorer needs the fit texts (ScoringTask.positives and .contrast)")
        return self.positives, self.contrast

    def n_selected(self, n_layers: int, d_ff: int) -> int:
        return sum(len(self.neurons_of(l, d_ff)) for l in self.layers if 0 <= l < n_layers)


@dataclass(frozen=True)
class WorkUnit:
    """A piece of a sweep that runs on its own: ``neurons`` = block ``layer``'s selected neurons
    [start:stop]. A unit whose cuts fall on the scorer's batch grid (``Scorer.batch_unit``) runs
    exactly the batches the whole sweep runs for those neurons, so its scores are the same."""

    id: int
    layer: int
    start: int
    stop: int
    neurons: tuple[int, ...]


def plan_units(blocks: dict[int, list[int]], unit: int, target: int, size: int | None = None) -> list[WorkUnit]:
    """Split {block: selected neurons} into work units, earliest (costliest) blocks first.

    One unit per block when there are at least ``target`` blocks; otherwise each block is cut into
    about ``target / n_blocks`` pieces (``size`` neurons each if given), every cut at a multiple of
    ``unit``."""
    units: list[WorkUnit] = []
    n_blocks = max(1, len(blocks))
    for layer in sorted(blocks):
        idx = blocks[layer]
        n = len(idx)
        if n == 0:
            continue
        step = size if size else math.ceil(n / max(1, math.ceil(target / n_blocks)))
        step = max(unit, math.ceil(step / unit) * unit)
        for a in range(0, n, step):
            b = min(n, a + step)
            units.append(WorkUnit(len(units), layer, a, b, tuple(idx[a:b])))
    return units


@dataclass
class NeuronScores:
    """scores: [n_layers, d_ff] (NaN = not scored); passes spent; wall seconds; parameters;
    alpha: [n_layers, d_ff] each neuron's own dampening factor, for methods that define one (AurA);
    per_probe: [n_probes, n_layers, d_ff] each probe text's own effect (unweighted; ``scores`` is
    their sum weighted by the probe weights, in probe order), from scorers that give it (NEAT), and
    None where a block of them is missing (a block resumed from a store that did not keep them)."""

    scores: torch.Tensor
    method: str
    passes: PassCounter
    seconds: float
    params: dict
    alpha: torch.Tensor | None = None
    per_probe: torch.Tensor | None = None

    @property
    def n_scored(self) -> int:
        return int(torch.isfinite(self.scores).sum())


class Scorer(ABC):
    """Scores neurons for a concept. Subclasses implement ``_score`` and document formula and cost."""

    name: str = "?"
    # what the method can do (find_settings reads these; nothing lists method names by hand)
    shardable: bool = False  # its work units may run in other processes with the same numbers (distributed.py)
    probe_based: bool = False  # it scores a probe batch (so a contrast side and the score rules apply)
    takes_positions: bool = False  # it turns neurons off exactly at a choice of positions (read / all)
    scores_an_effect: bool = False  # its score is a drop of the concept score S (the specificity penalty applies)
    takes_token_budget: bool = False  # its constructor takes tokens_per_batch
    reads_label: bool = False  # it reads the label readout, not the concept score
    chance_score: float = 0.0  # the score of a neuron that carries nothing (AUROC: 0.5)
    pools_activations: bool = False  # it scores each neuron's own activation, pooled over a text's tokens (pool=)
    gives_per_probe: bool = False  # its _score takes per_probe= and fills each probe text's own effect

    def score(self, model: LoadedModel, task: ScoringTask) -> NeuronScores:
        bad = [l for l in task.layers if not 0 <= l < model.n_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range: the model has blocks 0..{model.n_layers - 1}")
        before = model.counter.snapshot()
        t0 = time.perf_counter()
        scores = torch.full((model.n_layers, model.d_ff), float("nan"))
        per_probe = None
        if self.gives_per_probe:
            per_probe = torch.full((len(task.probes.texts), model.n_layers, model.d_ff), float("nan"))
            self._score(model, task, scores, per_probe=per_probe)
            if any(l in task.done and l not in task.done_per_probe for l in task.layers):
                per_probe = None  # a resumed block without its per-probe effects: none rather than a gap
        else:
            self._score(model, task, scores)
        return NeuronScores(scores=scores, method=self.name, passes=model.counter.since(before),
                            seconds=time.perf_counter() - t0, params=self.params(), alpha=self.dampening(scores),
                            per_probe=per_probe)

    @abstractmethod
    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor) -> None:
        """Fill ``scores`` [n_layers, d_ff] in place for the task's neurons."""

    def params(self) -> dict:
        return {}

    def pending(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor,
                per_probe: torch.Tensor | None = None) -> dict[int, list[int]]:
        """{block: selected neurons} still to score; fills ``scores`` [n_layers, d_ff] (and
        ``per_probe`` [n_probes, n_layers, d_ff], where stored) in place with what needs no pass (the
        blocks the task has done already)."""
        out = {}
        for l in sorted(task.layers):
            if l in task.done:
                scores[l] = task.done[l]
                if per_probe is not None and l in task.done_per_probe:
                    per_probe[:, l] = task.done_per_probe[l]
            else:
                out[l] = task.neurons_of(l, model.d_ff)
        return out

    def batch_unit(self, model: LoadedModel, task: ScoringTask) -> int:
        """Work units cut a block at multiples of this many neurons (the scorer's batch grid)."""
        return 1

    def work_units(self, model: LoadedModel, task: ScoringTask, blocks: dict[int, list[int]], target: int,
                   size: int | None = None) -> list[WorkUnit]:
        """``blocks`` ({block: neurons}, e.g. from ``pending``) cut into about ``target`` units on the batch grid."""
        return plan_units(blocks, self.batch_unit(model, task), target, size)

    @staticmethod
    def unit_task(task: ScoringTask, unit: WorkUnit) -> ScoringTask:
        """The task restricted to one work unit (no resume state, no callbacks: what a worker runs)."""
        return replace(task, layers=[unit.layer], neurons={unit.layer: list(unit.neurons)}, done={},
                       done_per_probe={}, on_layer_done=None, on_progress=None)

    def dampening(self, scores: torch.Tensor) -> torch.Tensor | None:
        """Each neuron's own dampening factor [n_layers, d_ff], for methods that define one."""
        return None
