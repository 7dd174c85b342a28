"""Which neurons: a ``NeuronSelection`` (layer, index pairs in rank order, with what some
interventions need of them: mean activations, scores, own dampening factors)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NeuronSelection:
    """A set of neurons (layer, index), in rank order, with optional mean activations
    ``means`` [n_layers, d_ff] (needed for mean ablation), their scores, and their own dampening
    factors ``alphas`` (one per neuron, e.g. AurA's 1 - 2 (AUROC - 0.5))."""

    neurons: tuple[tuple[int, int], ...]
    means: torch.Tensor | None = None
    scores: tuple[float, ...] | None = None
    alphas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.alphas is not None and len(self.alphas) != len(self.neurons):
            raise ValueError(f"{len(self.alphas)} dampening factors for {len(self.neurons)} neurons")

    def __len__(self) -> int:
        return len(self.neurons)

    def __iter__(self):
        return iter(self.neurons)

    def __add__(self, other: "NeuronSelection") -> "NeuronSelection":
        seen = dict.fromkeys(self.neurons)
        seen.update(dict.fromkeys(other.neurons))
        alphas = None
        if self.alphas is not None and other.alphas is not None:
            own = dict(zip(other.neurons, other.alphas)) | dict(zip(self.neurons, self.alphas))
            alphas = tuple(own[n] for n in seen)
        return NeuronSelection(tuple(seen), self.means if self.means is not None else other.means, alphas=alphas)

    def by_layer(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for l, k in self.neurons:
            out.setdefault(int(l), []).append(int(k))
        return out

    def with_alphas(self, alphas: Iterable[float] | None) -> "NeuronSelection":
        """The same neurons with these dampening factors (in rank order)."""
        return NeuronSelection(self.neurons, self.means, self.scores, None if alphas is None else tuple(map(float, alphas)))

    def check_range(self, n_layers: int, d_ff: int, what: str = "") -> None:
        """Every neuron inside ``n_layers`` blocks of ``d_ff``, or a ``ValueError`` naming the block."""
        for l, ks in self.by_layer().items():
            if not 0 <= l < n_layers or any(not 0 <= k < d_ff for k in ks):
                raise ValueError(f"{what}neuron out of range in layer {l}: the model has {n_layers} blocks of {d_ff}")


def as_selection(neurons) -> NeuronSelection:
    if isinstance(neurons, NeuronSelection):
        return neurons
    return NeuronSelection(tuple((int(l), int(k)) for l, k in neurons))
