"""Turning neurons off: ``with turn_off(model, neurons): ...`` (zero or mean ablation).

Contexts compose (nest them, or add selections with ``+``), work with ``model.generate`` (every
forward, cached decoding included, sees the neurons off), and are always undone on exit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .hooks import edit_inputs
from .models.loaded import LoadedModel


@dataclass(frozen=True)
class NeuronSelection:
    """A set of neurons (layer, index), in rank order, with optional mean activations
    ``means`` [n_layers, d_ff] (needed for mean ablation) and their scores."""

    neurons: tuple[tuple[int, int], ...]
    means: torch.Tensor | None = None
    scores: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return len(self.neurons)

    def __iter__(self):
        return iter(self.neurons)

    def __add__(self, other: "NeuronSelection") -> "NeuronSelection":
        seen = dict.fromkeys(self.neurons)
        seen.update(dict.fromkeys(other.neurons))
        return NeuronSelection(tuple(seen), self.means if self.means is not None else other.means)

    def by_layer(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for l, k in self.neurons:
            out.setdefault(int(l), []).append(int(k))
        return out


def as_selection(neurons) -> NeuronSelection:
    if isinstance(neurons, NeuronSelection):
        return neurons
    return NeuronSelection(tuple((int(l), int(k)) for l, k in neurons))


@contextmanager
def turn_off(model: LoadedModel, neurons: NeuronSelection | Iterable[tuple[int, int]], mode: str = "zero",
             means: torch.Tensor | None = None) -> Iterator[NeuronSelection]:
    """Set the chosen neurons to 0 (``mode="zero"``) or to their mean activation over the contrast
    set (``mode="mean"``; ``means`` [n_layers, d_ff], or the selection's own) at every position."""
    sel = as_selection(neurons)
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode must be 'zero' or 'mean', got {mode!r}")
    means = means if means is not None else sel.means
    if mode == "mean" and means is None:
        raise ValueError("mean ablation needs mean activations: pass means=[n_layers, d_ff] or a run's selection")
    layers = sel.by_layer()
    for l, ks in layers.items():
        if not 0 <= l < model.n_layers or any(not 0 <= k < model.d_ff for k in ks):
            raise ValueError(f"neuron out of range in layer {l}: the model has {model.n_layers} blocks of {model.d_ff}")
    index = {l: torch.tensor(ks, device=model.device) for l, ks in layers.items()}
    values = {l: (torch.zeros(len(ks)) if mode == "zero" else means[l, ks].float()).to(model.device)
              for l, ks in layers.items()}

    def off(layer, x):
        x = x.clone()
        x[..., index[layer]] = values[layer].to(x.dtype)
        return x

    with edit_inputs({l: model.sites[l] for l in layers}, off):
        yield sel
