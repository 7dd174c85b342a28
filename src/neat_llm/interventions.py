"""Turning neurons off: ``with turn_off(model, neurons): ...``.

What a chosen neuron becomes is an ``Intervention`` value (the pyvene idea of interventions as
types): ``zero`` (a -> 0), ``mean`` (a -> its mean activation over the contrast texts) or
``dampen`` (a -> alpha * a, one alpha per neuron or one for all; alpha = 0 is ``zero``, alpha = 1
leaves the neuron alone). Contexts compose (nest them, or add selections with ``+``), work with
``model.generate`` (every forward, cached decoding included, sees the neurons changed), and are
always undone on exit.

A ``Condition`` is one arm of an evaluation (a name, a neuron set and its intervention).
``conditions_along_batch`` runs several at once: every batch holds G equal blocks of rows, block c
under condition c, so one pass over the texts measures G conditions (``turn_off`` is its plain
one-condition reference).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .hooks import edit_inputs
from .models.loaded import LoadedModel

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


@contextmanager
def turn_off(model: LoadedModel, neurons: NeuronSelection | Iterable[tuple[int, int]],
             mode: str | Intervention = "zero", means: torch.Tensor | None = None,
             alpha: float | None = None) -> Iterator[NeuronSelection]:
    """Turn the chosen neurons off at every position: set them to 0 (``mode="zero"``), to their
    mean activation over the contrast set (``mode="mean"``; ``means`` [n_layers, d_ff], or the
    selection's own), or multiply them by a factor (``mode="dampen"``; ``alpha`` for all, or the
    selection's own ``alphas``). ``mode`` may also be an ``Intervention``."""
    sel = as_selection(neurons)
    if isinstance(mode, Intervention):
        iv = mode
    else:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        iv = Intervention.of(mode, means if means is not None else sel.means, alpha)
    layers = sel.by_layer()
    for l, ks in layers.items():
        if not 0 <= l < model.n_layers or any(not 0 <= k < model.d_ff for k in ks):
            raise ValueError(f"neuron out of range in layer {l}: the model has {model.n_layers} blocks of {model.d_ff}")
    index = {l: torch.tensor(ks, device=model.device) for l, ks in layers.items()}
    if iv.mode == "dampen":
        factor = dict(zip(sel.neurons, iv.factors(sel)))
        scale = {l: torch.tensor([factor[(l, k)] for k in ks]).to(model.device) for l, ks in layers.items()}
    else:
        values = {l: (torch.zeros(len(ks)) if iv.mode == "zero" else iv.means[l, ks].float()).to(model.device)
                  for l, ks in layers.items()}

    def off(layer, x):
        x = x.clone()
        if iv.mode == "dampen":
            x[..., index[layer]] = x[..., index[layer]] * scale[layer].to(x.dtype)
        else:
            x[..., index[layer]] = values[layer].to(x.dtype)
        return x

    with edit_inputs({l: model.sites[l] for l in layers}, off):
        yield sel


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


@contextmanager
def conditions_along_batch(model: LoadedModel, conditions: Sequence[Condition]) -> Iterator[int]:
    """Turn neurons off per block of rows: every batch the model sees while the context is open
    must hold ``G = len(conditions)`` equal blocks of rows (condition-major: rows [c*B, (c+1)*B)
    are under ``conditions[c]``); yields G. Each neuron activation becomes a * scale + shift with
    (1, 0) for neurons a condition leaves alone, so a block equals ``turn_off`` with its condition."""
    conditions = list(conditions)
    if not conditions:
        raise ValueError("no conditions given")
    G, d_ff = len(conditions), model.d_ff
    scale: dict[int, torch.Tensor] = {}
    shift: dict[int, torch.Tensor] = {}
    for c, cond in enumerate(conditions):
        for l, (idx, sc, sh) in cond.edits(model).items():
            if l not in scale:
                scale[l], shift[l] = torch.ones(G, d_ff), torch.zeros(G, d_ff)
            scale[l][c, idx], shift[l][c, idx] = sc, sh
    scale = {l: t.to(model.device) for l, t in scale.items()}
    shift = {l: t.to(model.device) for l, t in shift.items()}

    def edit(layer, x):
        if x.shape[0] % G:
            raise RuntimeError(f"a batch of {x.shape[0]} rows cannot be split into {G} condition blocks")
        y = x.reshape(G, -1, x.shape[-1])
        y = y * scale[layer][:, None].to(x.dtype) + shift[layer][:, None].to(x.dtype)
        return y.reshape(x.shape)

    with edit_inputs({l: model.sites[l] for l in scale}, edit):
        yield G

