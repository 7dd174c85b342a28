"""What a run's score is made of, probe by probe, and how much of its ranking would survive other
probes.

A probe-based score is a weighted sum of each probe text's own effect (the drop of S when a neuron
is turned off), combined under a score rule and, optionally, the specificity-aware penalty:

- "positive": ΔS_P = sum_p w_p e_p over the positive probes (w_p = 1/b);
- "contrastive": the same sum over one probe set that also holds the contrast probes at −1/b;
- "specific": ΔS_P − |ΔS_N|, ΔS_N from a second sweep over the b lowest-S contrast texts;
- with lambda > 0: score = effect / gap_fit − lambda × fluency cost (the cost does not depend on
  the probes).

``ProbeEffects`` keeps the per-probe effects (the sweep computes them anyway; a run stores them in
``probe_effects.safetensors``) and recomputes the score from them exactly, in the sweep's order.
``bootstrap`` resamples the probes with replacement (each side apart) and gives every neuron's
score a percentile interval and each neuron the share of resamples in which it is in the top K."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .fluency import specificity_aware

SCORE_RULES = ("specific", "contrastive", "positive")


def score_from_effects(rule: str, effect_positive: torch.Tensor, effect_contrast: torch.Tensor) -> torch.Tensor:
    """A neuron's score under ``rule`` from its effects on the positive and the contrast probes
    (each the mean drop of S when it is removed): "positive" ΔS_P; "contrastive" ΔS_P − ΔS_N (the
    effect on the P−N gap: a contrastive sweep weighs the contrast probes by −1/b, and the sweep is
    linear in its weights); "specific" ΔS_P − |ΔS_N|."""
    if rule not in SCORE_RULES:
        raise ValueError(f"score must be one of {', '.join(SCORE_RULES)}, got {rule!r}")
    if rule == "positive":
        return effect_positive
    return effect_positive - (effect_contrast if rule == "contrastive" else effect_contrast.abs())


def combine(effect_positive: torch.Tensor, effect_contrast: torch.Tensor | None, lam: float = 0.0,
            cost: torch.Tensor | None = None, gap_fit: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(effect, score): the effect is ΔS_P, or ΔS_P − |ΔS_N| when the contrast sweep's effects are
    given (the specific rule); the score is the effect, or with ``lam`` > 0 the specificity-aware
    score effect / gap_fit − lam × cost. The one place a run's score is made from its sweeps."""
    effect = effect_positive if effect_contrast is None else score_from_effects("specific", effect_positive,
                                                                               effect_contrast)
    return effect, (specificity_aware(effect, cost, gap_fit, lam) if lam > 0 else effect)


def weighted_sum(effects: torch.Tensor, weights, order=None) -> torch.Tensor:
    """sum_p w_p e_p over ``order`` (default: every probe in turn), accumulated as the sweep does
    (so the stored score comes back bit for bit)."""
    order = range(effects.shape[0]) if order is None else order
    out = torch.zeros(effects.shape[1:])
    for p in order:
        out += weights[p] * effects[p]
    return out


@dataclass(frozen=True)
class ProbeEffects:
    """positive: [P, n_layers, d_ff] each probe's effect in the main sweep, ``positive_weights`` its
    weights (negative for contrast probes of the contrastive rule); contrast: [Q, n_layers, d_ff]
    the specific rule's contrast sweep, or None; rule, lam, gap_fit and cost ([n_layers, d_ff] or
    None): how the score is made from them."""

    positive: torch.Tensor
    positive_weights: tuple[float, ...]
    rule: str
    contrast: torch.Tensor | None = None
    contrast_weights: tuple[float, ...] = ()
    lam: float = 0.0
    gap_fit: float = 1.0
    cost: torch.Tensor | None = None

    FILE = "probe_effects.safetensors"

    def __post_init__(self) -> None:
        if self.rule not in SCORE_RULES:
            raise ValueError(f"score must be one of {', '.join(SCORE_RULES)}, got {self.rule!r}")
        if self.positive.shape[0] != len(self.positive_weights):
            raise ValueError(f"{self.positive.shape[0]} positive probe effects but {len(self.positive_weights)} weights")
        if (self.rule == "specific") != (self.contrast is not None):
            raise ValueError("the specific rule, and only it, needs the contrast sweep's effects")
        if self.contrast is not None and self.contrast.shape[0] != len(self.contrast_weights):
            raise ValueError(f"{self.contrast.shape[0]} contrast probe effects but {len(self.contrast_weights)} weights")

    def score(self, positive_order=None, contrast_order=None) -> torch.Tensor:
        """The score [n_layers, d_ff] from the probes in ``positive_order`` / ``contrast_order``
        (indices, repeats allowed: a resample); by default every probe once: the run's own score."""
        contrast = None if self.contrast is None else weighted_sum(self.contrast, self.contrast_weights, contrast_order)
        return combine(weighted_sum(self.positive, self.positive_weights, positive_order), contrast, self.lam,
                       self.cost, self.gap_fit)[1]

    # --- to and from the run folder -----------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        from ..files import atomic_write

        tensors = {"positive": self.positive.contiguous()}
        if self.contrast is not None:
            tensors["contrast"] = self.contrast.contiguous()
        if self.cost is not None:
            tensors["cost"] = self.cost.contiguous()
        meta = {"record": json.dumps({"positive_weights": list(self.positive_weights), "rule": self.rule,
                                      "contrast_weights": list(self.contrast_weights), "lam": self.lam,
                                      "gap_fit": self.gap_fit})}
        atomic_write(Path(path), lambda p: save_file(tensors, str(p), metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> "ProbeEffects":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            rec = json.loads((f.metadata() or {})["record"])
            t = {k: f.get_tensor(k) for k in f.keys()}
        return cls(t["positive"], tuple(rec["positive_weights"]), rec["rule"], t.get("contrast"),
                   tuple(rec["contrast_weights"]), float(rec["lam"]), float(rec["gap_fit"]), t.get("cost"))


@dataclass(frozen=True)
class Stability:
    """From ``n`` bootstrap resamples of the probes: each neuron's score interval ``lo``..``hi``
    [n_layers, d_ff] (``level`` percentile interval) and ``in_top`` [n_layers, d_ff], the share of
    resamples in which the neuron is among the top ``k``."""

    lo: torch.Tensor
    hi: torch.Tensor
    in_top: torch.Tensor
    k: int
    n: int
    level: float


def _sides(weights) -> list[list[int]]:
    """Probe indices resampled apart: the positives, and the contrast probes a contrastive set holds."""
    pos = [i for i, w in enumerate(weights) if w >= 0]
    neg = [i for i, w in enumerate(weights) if w < 0]
    return [s for s in (pos, neg) if s]


def bootstrap(effects: ProbeEffects, k: int, n: int = 200, seed: int = 0, level: float = 0.95) -> Stability:
    """Resample the probes with replacement (each side apart, sizes kept), recompute every score,
    and read each neuron's interval and top-``k`` share. Neurons never scored (NaN) stay NaN and are
    never in the top K."""
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 resamples, got {n}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    g = torch.Generator().manual_seed(seed)

    def draw(sides: list[list[int]]) -> list[int]:
        out = []
        for s in sides:
            out += [s[int(i)] for i in torch.randint(len(s), (len(s),), generator=g)]
        return out

    shape = effects.positive.shape[1:]
    flat_n = int(torch.tensor(shape).prod())
    samples = torch.empty((n, flat_n))
    counts = torch.zeros(flat_n)
    pos_sides = _sides(effects.positive_weights)
    neg_sides = _sides(effects.contrast_weights) if effects.contrast is not None else []
    for b in range(n):
        s = effects.score(draw(pos_sides), draw(neg_sides) if neg_sides else None).flatten()
        samples[b] = s
        finite = torch.nan_to_num(s, nan=-torch.inf)
        top = torch.topk(finite, min(k, int(torch.isfinite(s).sum()))).indices
        counts[top] += 1
    a = (1 - level) / 2
    lo = torch.nanquantile(samples, a, dim=0).reshape(shape)
    hi = torch.nanquantile(samples, 1 - a, dim=0).reshape(shape)
    in_top = (counts / n).reshape(shape)
    in_top[~torch.isfinite(effects.positive[0])] = float("nan")
    return Stability(lo, hi, in_top, k, n, level)
