"""Screen-then-verify: rank every neuron with attribution patching (first order, m forward + m
backward passes), then score only the top R candidates exactly with the NEAT sweep.

Scores of the R verified neurons are exact NEAT scores; every other neuron is NaN (not verified).
Cost: m forward + m backward + R * b partial passes."""

from __future__ import annotations

import torch

from ..models.loaded import LoadedModel
from .attribution import gradient_x_activation
from .base import Scorer, ScoringTask
from .neat import NeatScorer


class ScreenVerifyScorer(Scorer):
    name = "screen-verify"

    def __init__(self, candidates: int = 500, tokens_per_batch: int = 4096):
        self.candidates = candidates
        self.tokens_per_batch = tokens_per_batch

    def params(self) -> dict:
        return {"candidates": self.candidates, "tokens_per_batch": self.tokens_per_batch}

    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor) -> None:
        pos, _ = task.fit_texts(self.name)
        top = task.readout.layer
        screen = torch.full((model.n_layers, model.d_ff), float("nan"))
        est = gradient_x_activation(model, pos, top, task.readout.vector)
        for l in task.layers:
            idx = task.neurons_of(l, model.d_ff)
            screen[l, idx] = est[l, idx] if l <= top else 0.0
        flat = screen.flatten()
        ok = torch.nonzero(torch.isfinite(flat)).flatten()
        chosen = ok[torch.argsort(flat[ok], descending=True, stable=True)[:self.candidates]]
        neurons: dict[int, list[int]] = {}
        for i in chosen.tolist():
            neurons.setdefault(i // model.d_ff, []).append(i % model.d_ff)
        verify = ScoringTask(**{**task.__dict__, "layers": sorted(neurons), "neurons": neurons, "done": {},
                                "on_layer_done": None})
        NeatScorer(self.tokens_per_batch)._score(model, verify, scores)
