"""The one scorer interface: a ``ScoringTask`` in, ``NeuronScores`` [n_layers, d_ff] out,
with the passes the scorer spent counted by the model's ``PassCounter``."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..concepts.vectors import ConceptReadout
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
    ablation: ``"zero"`` sets a = 0; ``"mean"`` sets a to ``means`` [n_layers, d_ff].
    done: {layer: scores [d_ff]} already finished (resume); on_layer_done(layer, row) is called when
        a block is finished, so a caller can persist it.
    """

    readout: ConceptReadout
    probes: ProbeSet
    layers: list[int]
    neurons: dict[int, list[int]] | None = None
    ablation: str = "zero"
    means: torch.Tensor | None = None
    done: dict[int, torch.Tensor] = field(default_factory=dict)
    on_layer_done: Callable[[int, torch.Tensor], None] | None = None
    on_progress: Callable[[int], None] | None = None  # called with the number of neurons just scored
    positives: list[str] | None = None  # fit positives P_fit, as given (readout.apply(...) is what S reads)
    contrast: list[str] | None = None  # fit contrast texts N_fit, as given
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ablation not in ("zero", "mean"):
            raise ValueError(f"ablation must be 'zero' or 'mean', got {self.ablation!r}")
        if self.ablation == "mean" and self.means is None:
            raise ValueError("mean ablation needs the neurons' mean activations (means=[n_layers, d_ff])")

    def neurons_of(self, layer: int, d_ff: int) -> list[int]:
        if self.neurons is None:
            return list(range(d_ff))
        return list(self.neurons.get(layer, []))

    def value_off(self, layer: int, d_ff: int) -> torch.Tensor:
        """The value a turned-off neuron takes: [d_ff]."""
        if self.ablation == "zero":
            return torch.zeros(d_ff)
        return self.means[layer].float()

    def fit_texts(self, scorer: str) -> tuple[list[str], list[str]]:
        if not self.positives or not self.contrast:
            raise ValueError(f"the {scorer} scorer needs the fit texts (ScoringTask.positives and .contrast)")
        return self.positives, self.contrast

    def n_selected(self, n_layers: int, d_ff: int) -> int:
        return sum(len(self.neurons_of(l, d_ff)) for l in self.layers if 0 <= l < n_layers)


@dataclass
class NeuronScores:
    """scores: [n_layers, d_ff] (NaN = not scored); passes spent; wall seconds; parameters;
    alpha: [n_layers, d_ff] each neuron's own dampening factor, for methods that define one (AurA)."""

    scores: torch.Tensor
    method: str
    passes: PassCounter
    seconds: float
    params: dict
    alpha: torch.Tensor | None = None

    @property
    def n_scored(self) -> int:
        return int(torch.isfinite(self.scores).sum())


class Scorer(ABC):
    """Scores neurons for a concept. Subclasses implement ``_score`` and document formula and cost."""

    name: str = "?"

    def score(self, model: LoadedModel, task: ScoringTask) -> NeuronScores:
        bad = [l for l in task.layers if not 0 <= l < model.n_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range: the model has blocks 0..{model.n_layers - 1}")
        before = model.counter.snapshot()
        t0 = time.perf_counter()
        scores = torch.full((model.n_layers, model.d_ff), float("nan"))
        self._score(model, task, scores)
        return NeuronScores(scores=scores, method=self.name, passes=model.counter.since(before),
                            seconds=time.perf_counter() - t0, params=self.params(), alpha=self.dampening(scores))

    @abstractmethod
    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor) -> None:
        """Fill ``scores`` [n_layers, d_ff] in place for the task's neurons."""

    def params(self) -> dict:
        return {}

    def dampening(self, scores: torch.Tensor) -> torch.Tensor | None:
        """Each neuron's own dampening factor [n_layers, d_ff], for methods that define one."""
        return None
