"""What a chosen neuron becomes, as values (the pyvene idea of interventions as types): a
``NeuronSelection`` (which neurons, with their means, scores and own dampening factors), an
``Intervention`` (``zero``: a -> 0; ``mean``: a -> its mean activation over the contrast texts;
``dampen``: a -> alpha * a, one alpha per neuron or one for all) and a ``Condition`` (one arm of
an evaluation: a name, a selection and its intervention)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..models.loaded import LoadedModel

MODES = ("zero", "mean", "dampen")


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


def as_selection(neurons) -> NeuronSelection:
    if isinstance(neurons, NeuronSelection):
        return neurons
    return NeuronSelection(tuple((int(l), int(k)) for l, k in neurons))


@dataclass(frozen=True)
class Intervention:
    """What a turned-off neuron becomes, at every position.

    mode ``zero``: a -> 0; ``mean``: a -> means[l, k] (``means`` [n_layers, d_ff]);
    ``dampen``: a -> alpha * a with ``alpha`` a number in [0, 1] for every neuron, or None to use
    each selected neuron's own factor (``NeuronSelection.alphas``)."""

    mode: str = "zero"
    means: torch.Tensor | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "mean" and self.means is None:
            raise ValueError("mean ablation needs mean activations: pass means=[n_layers, d_ff] or a run's selection")
        if self.alpha is not None:
            if self.mode != "dampen":
                raise ValueError(f"alpha is a dampening factor; it does not apply to mode {self.mode!r}")
            if not 0.0 <= float(self.alpha) <= 1.0:
                raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    @classmethod
    def of(cls, mode: "str | Intervention" = "zero", means: torch.Tensor | None = None,
           alpha: float | None = None) -> "Intervention":
        """An ``Intervention`` from the arguments ``turn_off`` and the evaluations take."""
        if isinstance(mode, Intervention):
            return mode
        return cls(mode, means if mode == "mean" else None, alpha)

    def factors(self, sel: NeuronSelection) -> list[float]:
        """The dampening factor of each neuron of ``sel`` (mode ``dampen``)."""
        if self.alpha is not None:
            return [float(self.alpha)] * len(sel)
        if sel.alphas is None:
            raise ValueError("dampening needs a factor: pass alpha=... or a selection with its own alphas "
                             "(e.g. from the aura method)")
        bad = [a for a in sel.alphas if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"dampening factors must be in [0, 1], got {bad[0]}")
        return list(sel.alphas)

    def describe(self) -> str:
        if self.mode == "dampen":
            return f"dampen (alpha={self.alpha:g})" if self.alpha is not None else "dampen (per-neuron alpha)"
        return self.mode


@dataclass(frozen=True)
class Condition:
    """One arm of an evaluation: ``name``, the neurons turned off (none: the model as it is) and
    how. Checked when made: a dampened selection has its factors, mean ablation its means."""

    name: str
    selection: NeuronSelection = NeuronSelection(())
    intervention: Intervention = Intervention()

    def __post_init__(self) -> None:
        if self.intervention.mode == "dampen" and len(self.selection):
            self.intervention.factors(self.selection)

    def edits(self, model: LoadedModel) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """{layer: (neuron indices, scale, shift)}: neuron a -> a * scale + shift (zero: 0, 0;
        mean: 0, its mean; dampen: alpha, 0)."""
        sel, iv = self.selection, self.intervention
        layers = sel.by_layer()
        for l, ks in layers.items():
            if not 0 <= l < model.n_layers or any(not 0 <= k < model.d_ff for k in ks):
                raise ValueError(f"condition {self.name!r}: neuron out of range in layer {l}: the model has "
                                 f"{model.n_layers} blocks of {model.d_ff}")
        factor = dict(zip(sel.neurons, iv.factors(sel))) if iv.mode == "dampen" else {}
        out = {}
        for l, ks in layers.items():
            idx = torch.tensor(ks, dtype=torch.long)
            if iv.mode == "dampen":
                scale, shift = torch.tensor([factor[(l, k)] for k in ks]), torch.zeros(len(ks))
            else:
                scale = torch.zeros(len(ks))
                shift = torch.zeros(len(ks)) if iv.mode == "zero" else iv.means[l, ks].float().cpu()
            out[l] = (idx, scale, shift)
        return out
