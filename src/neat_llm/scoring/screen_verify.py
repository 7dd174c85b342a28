"""Screen-then-verify: rank every neuron with attribution patching (first order, m forward + m
backward passes), then score only the top R candidates exactly with the NEAT sweep.

Scores of the R verified neurons are exact NEAT scores; every other neuron is NaN (not verified).
Cost: m forward + m backward + R * b partial passes. With ``screen_on="probes"`` the screen is the
first-order estimate on the probe batch X* itself (b forward + b backward): the quantity NEAT
computes exactly, so its top R recover the exact sweep's top neurons more often.
Neurons after the reading layer (score exactly 0) never take a candidate slot."""

from __future__ import annotations

import torch

from ..models.loaded import LoadedModel
from .attribution import gradient_x_activation
from .base import Scorer, ScoringTask
from .neat import NeatScorer


class ScreenVerifyScorer(Scorer):
    name = "screen-verify"
    probe_based = takes_positions = scores_an_effect = takes_token_budget = True

    def __init__(self, candidates: int = 500, tokens_per_batch: int = 4096, screen_on: str = "fit",
                 positions: str = "read"):
        if screen_on not in ("fit", "probes"):
            raise ValueError(f"screen_on must be 'fit' or 'probes', got {screen_on!r}")
        # the candidates are turned off at ``positions`` when verified (NeatScorer checks the value)
        self.verifier = NeatScorer(tokens_per_batch, positions=positions)
        self.candidates = candidates
        self.tokens_per_batch = tokens_per_batch
        self.screen_on = screen_on

    @property
    def positions(self) -> str:
        """Where the neurons scored exactly are turned off (the verifier's positions)."""
        return self.verifier.positions

    def params(self) -> dict:
        return {"candidates": self.candidates, "tokens_per_batch": self.tokens_per_batch, "screen_on": self.screen_on,
                "positions": self.verifier.positions}

    def _screen(self, model: LoadedModel, task: ScoringTask) -> torch.Tensor:
        """The first-order estimate of S - S(a=0) for blocks 0..l*: [l* + 1, d_ff]. ``fit``: averaged
        over the fit positives (m fwd + m bwd; approximates the exhaustive score); ``probes``: on
        the probe batch X* with its weights (b fwd + b bwd; approximates the NEAT score itself)."""
        top = task.readout.layer
        if self.screen_on == "fit":
            pos = task.readout.apply(task.fit_texts(self.name)[0])
            return gradient_x_activation(model, pos, top, task.readout.vector, pool=task.readout.pool)
        return sum(w * gradient_x_activation(model, [t], top, task.readout.vector, pool=task.readout.pool)
                   for t, w in zip(task.probes.texts, task.probes.weights))

    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor) -> None:
        top = task.readout.layer
        screen = torch.full((model.n_layers, model.d_ff), float("nan"))
        est = self._screen(model, task)
        for l in task.layers:
            idx = task.neurons_of(l, model.d_ff)
            if l <= top:
                screen[l, idx] = est[l, idx]
            else:
                scores[l, idx] = 0.0  # exact without a pass: these neurons cannot change S
        flat = screen.flatten()
        ok = torch.nonzero(torch.isfinite(flat)).flatten()
        chosen = ok[torch.argsort(flat[ok], descending=True, stable=True)[:self.candidates]]
        neurons: dict[int, list[int]] = {}
        for i in chosen.tolist():
            neurons.setdefault(i // model.d_ff, []).append(i % model.d_ff)
        verify = ScoringTask(**{**task.__dict__, "layers": sorted(neurons), "neurons": neurons, "done": {},
                                "on_layer_done": None})
        self.verifier._score(model, verify, scores)
