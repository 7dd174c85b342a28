"""Scorers that need no ablation: ``random`` and the activation contrasts ``activation`` / ``auroc``."""

from __future__ import annotations

import torch

from ..concepts.representations import neuron_profiles
from ..models.loaded import LoadedModel
from .base import Scorer, ScoringTask


class RandomScorer(Scorer):
    """A seeded random order: score(l, k) ~ U(0, 1) from ``task.seed``. Cost: 0 passes.
    The floor every method has to beat."""

    name = "random"

    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor) -> None:
        g = torch.Generator().manual_seed(task.seed)
        noise = torch.rand(model.n_layers, model.d_ff, generator=g)
        for l in task.layers:
            idx = task.neurons_of(l, model.d_ff)
            scores[l, idx] = noise[l, idx]


class ActivationScorer(Scorer):
    """Activation contrast: score(l, k) = mean_{x in P_fit} a(x) - mean_{x in N_fit} a(x), where a(x)
    is the neuron's activation averaged over the text's tokens (``pool="mean"``) or taken at the
    last token (``pool="last"``). Cost: m forward passes, no ablation."""

    name = "activation"
    pools_activations = True

    def __init__(self, pool: str = "mean"):
        if pool not in ("mean", "last", "max"):
            raise ValueError(f"pool must be 'mean', 'last' or 'max', got {pool!r}")
        self.pool = pool

    def params(self) -> dict:
        return {"pool": self.pool}

    def _contrast(self, prof_p: torch.Tensor, prof_n: torch.Tensor) -> torch.Tensor:
        return prof_p.mean(0) - prof_n.mean(0)

    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor) -> None:
        pos, neg = task.fit_texts(self.name)
        layers = sorted(task.layers)
        prof_p = neuron_profiles(model, pos, layers, pool=self.pool)  # [P, len(layers), d_ff]
        prof_n = neuron_profiles(model, neg, layers, pool=self.pool)
        values = self._contrast(prof_p, prof_n)  # [len(layers), d_ff]
        for i, l in enumerate(layers):
            idx = task.neurons_of(l, model.d_ff)
            scores[l, idx] = values[i, idx]
            if task.on_progress:
                task.on_progress(len(idx))


class AurocScorer(ActivationScorer):
    """score(l, k) = AUROC of the neuron's pooled activation as a P-vs-N classifier (0.5 = chance,
    1 = fires more on every positive than on every contrast text). Computed exactly with the
    Mann-Whitney U statistic (ties count one half). Cost: m forward passes."""

    name = "auroc"
    chance_score = 0.5

    COLUMNS = 4096  # neurons per chunk: memory ~ COLUMNS x (|P| + |N|), never |P| x |N| x neurons

    def _contrast(self, prof_p: torch.Tensor, prof_n: torch.Tensor) -> torch.Tensor:
        return auroc_columns(prof_p, prof_n, self.COLUMNS)


def auroc_columns(pos: torch.Tensor, neg: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Per column, U / (|P| |N|): the share of (p, n) pairs with a_p > a_n, ties counting one half
    (the Mann-Whitney AUROC, exactly), from [P, ...] and [N, ...] values; shape ``pos.shape[1:]``.
    Each positive is placed among the sorted negatives (``searchsorted`` on both sides), so memory
    grows with the texts, not with their pairs; ``auroc_pairwise`` is the plain reference."""
    shape = pos.shape[1:]
    p, n = pos.reshape(len(pos), -1).T.contiguous(), neg.reshape(len(neg), -1).T.contiguous()  # [C, P], [C, N]
    out = torch.empty(p.shape[0], dtype=torch.float64)
    for a in range(0, p.shape[0], chunk):
        sn = n[a:a + chunk].sort(dim=1).values
        below = torch.searchsorted(sn, p[a:a + chunk].contiguous(), side="left")  # negatives < p
        upto = torch.searchsorted(sn, p[a:a + chunk].contiguous(), side="right")  # negatives <= p
        out[a:a + chunk] = (below + upto).double().sum(1) / (2.0 * p.shape[1] * n.shape[1])
    return out.float().reshape(shape)


def auroc_pairwise(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """``auroc_columns`` by comparing every (p, n) pair: the plain reference (memory |P| |N| per column)."""
    gt = (pos[:, None] > neg[None, :]).double().mean((0, 1))
    eq = (pos[:, None] == neg[None, :]).double().mean((0, 1))
    return (gt + 0.5 * eq).float()


class AuraScorer(AurocScorer):
    """AurA (Suau et al., ICML 2024, "Whispering Experts"): score(l, k) = AUROC of the neuron's
    activation max-pooled over the text's tokens as a P-vs-N classifier. Every neuron with
    AUROC > 0.5 is an expert, dampened by its own factor alpha = 1 - 2 (AUROC - 0.5) (alpha = 1, left
    alone, elsewhere): ``turn_off(..., mode="dampen")`` with a run's selection applies them.
    Cost: m forward passes."""

    name = "aura"

    def __init__(self, pool: str = "max"):
        super().__init__(pool)

    def dampening(self, scores: torch.Tensor) -> torch.Tensor:
        return aura_alpha(scores)


def aura_alpha(auroc: torch.Tensor) -> torch.Tensor:
    """AurA's dampening factor of each neuron from its AUROC: 1 - 2 (AUROC - 0.5) where AUROC > 0.5,
    else 1 (NaN, not scored, stays NaN)."""
    return torch.where(auroc > 0.5, 1.0 - 2.0 * (auroc - 0.5), torch.where(torch.isnan(auroc), auroc, torch.ones_like(auroc)))
