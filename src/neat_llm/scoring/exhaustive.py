"""Exhaustive ablation, the O(n*m) method NEAT replaces.

score(l, k) = mean_{x in P_fit} [ S(x) - S(x | do(a_{l,k} = 0)) ]

Every fit positive is its own probe: the NEAT sweep with X* = P_fit. Cost: n * m partial passes,
so on a CPU it is run on a neuron subset (``ScoringTask.neurons``)."""

from __future__ import annotations

import torch

from ..models.loaded import LoadedModel
from .base import ProbeSet, ScoringTask
from .neat import NeatScorer


class ExhaustiveScorer(NeatScorer):
    name = "exhaustive"
    probe_based = False  # its probes are the fit positives, not a probe batch
    takes_positions = scores_an_effect = takes_token_budget = True
    shardable = False  # its probes are the fit positives, not the task's: NEAT's batch grid does not describe it
    gives_per_probe = False  # its probes are the fit texts, not a probe batch a bootstrap resamples

    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor) -> None:
        pos = task.readout.apply(task.fit_texts(self.name)[0])  # as the readout reads them
        every = ScoringTask(**{**task.__dict__, "probes": ProbeSet(pos, [1.0 / len(pos)] * len(pos))})
        super()._score(model, every, scores)
