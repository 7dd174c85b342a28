"""What a chosen neuron becomes, as types (the pyvene idea of interventions as types).

Every intervention here is a per-neuron affine map of the activation, a -> scale * a + shift:

- ``Zero``: a -> 0 (scale 0, shift 0);
- ``Mean``: a -> its mean activation over the contrast texts (scale 0, shift mu);
- ``Dampen``: a -> alpha * a, one alpha for every neuron or each neuron's own (``NeuronSelection.alphas``);
- ``Transport`` (AcT, Rodriguez et al. 2024): a -> (1 - t) a + t (omega a + beta), a map fitted per
  neuron that carries its activations on concept text onto its activations on contrast text
  (``interventions/transport.py`` fits it), at strength t in [0, 1].

Each class owns its edit (``affine`` for a selection's neurons, ``block_affine`` for every neuron
of a block: what scorers and the fluency cost use), whether baking it into a checkpoint needs a bias
(``adds_constant``), its record in an intervention file (``spec_values`` / ``from_spec``) and how it
is made from a run's statistics (``from_stats``). Everything else (``turn_off``, conditions along
the batch, the sweep, the fluency cost, the hf export) is written once against the affine form, so
adding an intervention means adding one class here and its tests.

``NeuronSelection`` (which neurons) lives in selection.py, ``Condition`` (one arm of an
evaluation) in values.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .selection import NeuronSelection


@dataclass(frozen=True)
class NeuronStats:
    """What a run knows about every neuron, from which an intervention is made: mean activations
    over the fit contrast texts' and fit positives' tokens [n_layers, d_ff], and a fitted
    ``Transport`` when the run has one."""

    contrast_means: torch.Tensor | None = None
    positive_means: torch.Tensor | None = None
    transport: "Transport | None" = None


@dataclass(frozen=True)
class BlockEdit:
    """One block's edit in affine form: neuron a -> a * scale + shift ([d_ff] each, or [len(ks)]
    for the neurons ``ks``). ``apply`` gives the new activation, ``delta`` the change."""

    scale: torch.Tensor
    shift: torch.Tensor

    def to(self, device, dtype=None) -> "BlockEdit":
        return BlockEdit(self.scale.to(device, dtype), self.shift.to(device, dtype))

    def at(self, ks) -> "BlockEdit":
        return BlockEdit(self.scale[ks], self.shift[ks])

    def apply(self, a: torch.Tensor) -> torch.Tensor:
        return a * self.scale.to(a.dtype) + self.shift.to(a.dtype)

    def delta(self, a: torch.Tensor) -> torch.Tensor:
        """new - a; for scale 0 it is exactly shift - a (zero and mean ablation as before)."""
        return a * (self.scale.to(a.dtype) - 1) + self.shift.to(a.dtype)


INTERVENTIONS: dict[str, type["Intervention"]] = {}


class Intervention:
    """What a turned-off neuron becomes, at every position: the base of ``Zero``, ``Mean``,
    ``Dampen`` and ``Transport``. ``Intervention.of("mean", means)`` makes one by name."""

    name: ClassVar[str] = ""
    adds_constant: ClassVar[bool] = False  # baking it into weights needs a down-projection bias

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        if cls.name:
            INTERVENTIONS[cls.name] = cls

    # --- the edit ----------------------------------------------------------------------------------
    def block_affine(self, layer: int, d_ff: int) -> BlockEdit:
        """The edit of every neuron of block ``layer`` (scorers, the fluency cost): [d_ff] each."""
        raise NotImplementedError

    def affine(self, sel: NeuronSelection, layer: int, ks: list[int], d_ff: int) -> BlockEdit:
        """The edit of neurons ``ks`` of block ``layer``, all of them in ``sel``: [len(ks)] each."""
        return self.block_affine(layer, d_ff).at(torch.tensor(ks, dtype=torch.long))

    def check(self, sel: NeuronSelection) -> None:
        """Refuse a selection this intervention cannot be applied to (without a model)."""

    def edits(self, sel: NeuronSelection, n_layers: int, d_ff: int) -> dict[int, tuple[torch.Tensor, BlockEdit]]:
        """{layer: (neuron indices, their edit)} for the selection, checked (factors, range)."""
        self.check(sel)
        sel.check_range(n_layers, d_ff)
        return {l: (torch.tensor(ks, dtype=torch.long), self.affine(sel, l, ks, d_ff))
                for l, ks in sel.by_layer().items()}

    # --- how it is made and shared -------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.name

    alpha: float | None = None  # the one dampening factor (Dampen only)
    means: torch.Tensor | None = None  # the mean activations (Mean only)

    def for_selection(self, sel: NeuronSelection) -> "Intervention":
        """The intervention a top-K set gets (mean ablation takes the selection's own means)."""
        return self

    def random_selection(self, top: NeuronSelection, rand: NeuronSelection) -> NeuronSelection:
        """A random K-set as it is turned off beside ``top`` (own dampening factors are lent)."""
        return rand

    @property
    def uses_selection_factors(self) -> bool:
        """Each neuron's own factor comes from the selection (so random K-sets borrow the top-K set's,
        and cannot be shared across runs)."""
        return False

    def settings(self) -> dict:
        """What a report records of it (and what ``of`` reads back, with the run's statistics)."""
        return {"mode": self.name}

    def describe(self) -> str:
        return self.name

    @classmethod
    def from_stats(cls, stats: NeuronStats, *, alpha: float | None = None,
                   strength: float | None = None) -> "Intervention":
        """The intervention made from a run's statistics (``Run.intervention``)."""
        raise NotImplementedError

    @staticmethod
    def of(mode: "str | Intervention" = "zero", means: torch.Tensor | None = None, alpha: float | None = None, *,
           stats: NeuronStats | None = None, strength: float | None = None) -> "Intervention":
        """An intervention by name, from the arguments ``turn_off`` and the evaluations take
        (``means`` for ``mean``, ``alpha`` for ``dampen``, ``stats`` / ``strength`` for ``transport``);
        an ``Intervention`` is returned as it is."""
        if isinstance(mode, Intervention):
            return mode
        check_choice(mode, alpha, strength)
        cls = INTERVENTIONS[mode]
        stats = stats or NeuronStats()
        if means is not None:
            stats = NeuronStats(means, stats.positive_means, stats.transport)
        return cls.from_stats(stats, alpha=alpha, strength=strength)

    # --- its record in an intervention file ----------------------------------------------------------
    def spec_values(self, sel: NeuronSelection) -> list[dict]:
        """Per neuron of ``sel`` (rank order): the fields the file keeps ({"value": ...})."""
        raise NotImplementedError

    def spec_settings(self) -> dict:
        """The file's ``intervention`` object."""
        return {"mode": self.name}

    @classmethod
    def from_spec(cls, neurons: list[tuple[int, int, dict]], settings: dict, n_layers: int,
                  d_ff: int) -> tuple["Intervention", tuple[float, ...] | None]:
        """The intervention an intervention file describes (``neurons``: (layer, index, its fields)
        in rank order) and the selection's own dampening factors, if any."""
        raise NotImplementedError

    @classmethod
    def check_spec_value(cls, field_name: str, value: float) -> str | None:
        """Why a neuron's value in a file is impossible for this intervention (None: it is fine)."""
        if not math.isfinite(value):
            return f"{field_name} {value} is not a finite number"
        return None


def _full(n_layers: int, d_ff: int, neurons: list[tuple[int, int, dict]], key: str, fill: float = 0.0) -> torch.Tensor:
    t = torch.full((n_layers, d_ff), fill)
    for l, k, f in neurons:
        t[l, k] = float(f[key])
    return t


@dataclass(frozen=True)
class Zero(Intervention):
    """a -> 0."""

    name: ClassVar[str] = "zero"

    def block_affine(self, layer: int, d_ff: int) -> BlockEdit:
        return BlockEdit(torch.zeros(d_ff), torch.zeros(d_ff))

    @classmethod
    def from_stats(cls, stats, *, alpha=None, strength=None) -> "Zero":
        return cls()

    def spec_values(self, sel):
        return [{"value": 0.0} for _ in sel.neurons]

    @classmethod
    def from_spec(cls, neurons, settings, n_layers, d_ff):
        return cls(), None


@dataclass(frozen=True, eq=False)
class Mean(Intervention):
    """a -> means[l, k]: the neuron's mean activation over the contrast texts ([n_layers, d_ff])."""

    name: ClassVar[str] = "mean"
    adds_constant: ClassVar[bool] = True
    means: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.means is None:
            raise ValueError("mean ablation needs mean activations: pass means=[n_layers, d_ff] or a run's selection")

    def block_affine(self, layer: int, d_ff: int) -> BlockEdit:
        return BlockEdit(torch.zeros(d_ff), self.means[layer].float().cpu())

    def for_selection(self, sel: NeuronSelection) -> "Mean":
        return Mean(sel.means) if sel.means is not None else self

    @classmethod
    def from_stats(cls, stats, *, alpha=None, strength=None) -> "Mean":
        return cls(stats.contrast_means)

    def spec_values(self, sel):
        return [{"value": float(self.means[l, k])} for l, k in sel.neurons]

    @classmethod
    def from_spec(cls, neurons, settings, n_layers, d_ff):
        return cls(_full(n_layers, d_ff, neurons, "value")), None


@dataclass(frozen=True)
class Dampen(Intervention):
    """a -> alpha * a: ``alpha`` in [0, 1] for every neuron, or None for each selected neuron's own
    factor (``NeuronSelection.alphas``, e.g. AurA's)."""

    name: ClassVar[str] = "dampen"
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.alpha is not None and not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    def factors(self, sel: NeuronSelection) -> list[float]:
        """The dampening factor of each neuron of ``sel``."""
        if self.alpha is not None:
            return [float(self.alpha)] * len(sel)
        if sel.alphas is None:
            raise ValueError("dampening needs a factor: pass alpha=... or a selection with its own alphas "
                             "(e.g. from the aura method)")
        bad = [a for a in sel.alphas if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"dampening factors must be in [0, 1], got {bad[0]}")
        return list(sel.alphas)

    def block_affine(self, layer: int, d_ff: int) -> BlockEdit:
        if self.alpha is None:
            raise ValueError("dampening every neuron of a block needs one alpha for all neurons")
        return BlockEdit(torch.full((d_ff,), float(self.alpha)), torch.zeros(d_ff))

    def affine(self, sel, layer, ks, d_ff) -> BlockEdit:
        factor = dict(zip(sel.neurons, self.factors(sel)))
        return BlockEdit(torch.tensor([factor[(layer, k)] for k in ks]), torch.zeros(len(ks)))

    def check(self, sel) -> None:
        if len(sel):
            self.factors(sel)

    def random_selection(self, top, rand):
        return rand.with_alphas(top.alphas) if self.alpha is None else rand

    @property
    def uses_selection_factors(self) -> bool:
        return self.alpha is None

    def settings(self) -> dict:
        return {"mode": self.name, "alpha": self.alpha}

    def describe(self) -> str:
        return f"dampen (alpha={self.alpha:g})" if self.alpha is not None else "dampen (per-neuron alpha)"

    @classmethod
    def from_stats(cls, stats, *, alpha=None, strength=None) -> "Dampen":
        return cls(alpha)

    def spec_values(self, sel):
        return [{"value": float(a)} for a in self.factors(sel)]

    @classmethod
    def from_spec(cls, neurons, settings, n_layers, d_ff):
        return cls(), tuple(float(f["value"]) for _, _, f in neurons)

    @classmethod
    def check_spec_value(cls, field_name, value):
        if field_name == "value" and not 0.0 <= value <= 1.0:
            return f"dampening factor {value} is outside [0, 1]"
        return super().check_spec_value(field_name, value)


TRANSPORT_KINDS = ("mean", "linear")
TRANSPORT_AT = ("all", "last")  # where a transport map is fitted: every token, or each text's last


def check_fitted_at(at: str) -> None:
    """``at`` names where a transport map is fitted: one of ``TRANSPORT_AT``."""
    if at not in TRANSPORT_AT:
        raise ValueError(f"transport is fitted at {' or '.join(TRANSPORT_AT)} tokens, got {at!r}")


@dataclass(frozen=True, eq=False)
class Transport(Intervention):
    """a -> (1 - t) a + t (omega a + beta), per neuron: the map that carries the neuron's activations
    on concept text onto those on contrast text (``omega``, ``beta`` [n_layers, d_ff]; ``kind``
    ``mean``: omega = 1, beta = mu_N - mu_P; ``linear``: least squares between matched quantiles),
    at ``strength`` t in [0, 1] (0 leaves the model as it is). ``at``: where the map was fitted, at
    every token (``"all"``; a run's own means) or at each fit text's last token (``"last"``)."""

    name: ClassVar[str] = "transport"
    adds_constant: ClassVar[bool] = True
    omega: torch.Tensor | None = None
    beta: torch.Tensor | None = None
    strength: float = 1.0
    kind: str = "mean"
    at: str = "all"

    def __post_init__(self) -> None:
        if self.omega is None or self.beta is None:
            raise ValueError("transport needs a fitted map (omega, beta [n_layers, d_ff]): fit one with "
                             "fit_transport, or use a run that has its positive and contrast means")
        if self.omega.shape != self.beta.shape or self.omega.dim() != 2:
            raise ValueError(f"transport's omega {tuple(self.omega.shape)} and beta {tuple(self.beta.shape)} must "
                             "both be [n_layers, d_ff]")
        if not (torch.isfinite(self.omega).all() and torch.isfinite(self.beta).all()):
            raise ValueError("transport's omega and beta must be finite")
        if not 0.0 <= float(self.strength) <= 1.0:
            raise ValueError(f"transport strength must be in [0, 1], got {self.strength}")
        if self.kind not in TRANSPORT_KINDS:
            raise ValueError(f"transport kind must be one of {', '.join(TRANSPORT_KINDS)}, got {self.kind!r}")
        check_fitted_at(self.at)

    def block_affine(self, layer: int, d_ff: int) -> BlockEdit:
        t = float(self.strength)
        return BlockEdit((1.0 - t) + t * self.omega[layer].float().cpu(), t * self.beta[layer].float().cpu())

    def _fitted(self) -> dict:
        return {} if self.at == "all" else {"at": self.at}  # the default unsaid: earlier records stay equal

    def settings(self) -> dict:
        return {"mode": self.name, "strength": self.strength, "kind": self.kind, **self._fitted()}

    def describe(self) -> str:
        where = "" if self.at == "all" else f" at {self.at} tokens"
        return f"transport ({self.kind}{where}, strength={self.strength:g})"

    def with_strength(self, strength: float) -> "Transport":
        return Transport(self.omega, self.beta, float(strength), self.kind, self.at)

    @classmethod
    def from_stats(cls, stats, *, alpha=None, strength=None) -> "Transport":
        if stats.transport is not None:
            return stats.transport if strength is None else stats.transport.with_strength(strength)
        if stats.positive_means is None or stats.contrast_means is None:
            raise ValueError("transport needs the neurons' mean activations on the positive and the contrast fit "
                             "texts; this run has no positive means (fit one with fit_transport)")
        beta = (stats.contrast_means - stats.positive_means).float()
        return cls(torch.ones_like(beta), beta, 1.0 if strength is None else float(strength), "mean")

    def spec_values(self, sel):
        return [{"value": float(self.beta[l, k]), "omega": float(self.omega[l, k])} for l, k in sel.neurons]

    def spec_settings(self) -> dict:
        return {"mode": self.name, "strength": self.strength, "kind": self.kind, **self._fitted()}

    @classmethod
    def from_spec(cls, neurons, settings, n_layers, d_ff):
        if any(f.get("omega") is None for _, _, f in neurons):
            raise ValueError("a transport neuron needs its 'omega' beside its 'value' (beta)")
        return cls(_full(n_layers, d_ff, neurons, "omega", 1.0), _full(n_layers, d_ff, neurons, "value"),
                   float(settings.get("strength", 1.0)), str(settings.get("kind", "mean")),
                   str(settings.get("at", "all"))), None


MODES = tuple(INTERVENTIONS)


def check_transport_at(mode: str | None, at: str | None) -> None:
    """A transport's fitting place chosen by name (``at``; None: the run's own means, every token):
    one of ``TRANSPORT_AT``, and only with mode transport."""
    if at is None:
        return
    check_fitted_at(at)
    if mode != Transport.name:
        given = "no mode was given (the run's own ablation)" if mode is None else f"mode is {mode!r}"
        raise ValueError(f"where transport is fitted (at {at!r}) applies to mode transport; {given}")


def check_choice(mode: str | None, alpha: float | None = None, strength: float | None = None) -> None:
    """The checks of an intervention chosen by name (``mode``; None: a run's own) that need no model
    or run: a known name, alpha only for dampen and in [0, 1], strength only for transport and in [0, 1]."""
    if mode is not None and mode not in INTERVENTIONS:
        raise ValueError(f"mode must be one of {', '.join(INTERVENTIONS)}, got {mode!r}")
    for value, name, cls, what in ((alpha, "alpha", Dampen, "a dampening factor"),
                                   (strength, "strength", Transport, "transport's strength")):
        if value is None:
            continue
        if mode not in (None, cls.name):
            raise ValueError(f"{name} is {what}; it does not apply to mode {mode!r}")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
