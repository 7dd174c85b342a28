"""An exact top K for less than two sweeps.

The specific score is ΔS_P − |ΔS_N| (with the specificity penalty: that effect / gap_fit − λ × cost,
increasing in the effect), so it is at most the same expression with ΔS_N = 0. After the sweep of
the positive probes every neuron has that upper bound; the contrast probes need sweeping only where
the bound can still reach the K-th best exact score. ``prove_top_k`` sweeps them in rounds (first
the 2K best bounds, then every unswept neuron whose bound is >= the K-th best exact score so far)
until no unswept neuron can reach the top K, ties included; the top K and its order are then those
of two full sweeps. Floating-point IEEE operations are monotone, so the bound holds to the bit.

Bit for bit: a neuron's effect is computed in a batch with other neurons of its block, and the
matrix kernels round a row by the product's shape (and, in the edge tiles of a shape that is not a
multiple of their row block, by its place). So each round runs its neurons in batches of the sizes
the whole sweep gives them, padded, and the sweep's batches hold a multiple of 64 replicas
(``scoring/neat.py``: ``batches``, ``ROW_BLOCK``); a neuron's ΔS_N is then the whole sweep's to the
bit (tests/test_pruning.py: four families, both position modes; SmolLM2's whole model in
docs/performance.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .effects import combine


def upper_bound(positive: torch.Tensor, lam: float = 0.0, cost: torch.Tensor | None = None,
                gap_fit: float = 1.0) -> torch.Tensor:
    """The specific score each neuron would have with ΔS_N = 0: its largest possible score."""
    return combine(positive, torch.zeros_like(positive), lam, cost, gap_fit)[1]


@dataclass
class TopKProof:
    """k: the top K proven; rounds: neurons swept on the contrast side in each round; swept:
    [n_layers, d_ff] which neurons were (the others hold their upper bound as score)."""

    k: int
    rounds: list[int] = field(default_factory=list)
    swept: torch.Tensor | None = None

    def to_dict(self, n_scored: int) -> dict:
        n = 0 if self.swept is None else int(self.swept.sum())
        return {"k": self.k, "rounds": list(self.rounds), "contrast_swept": n, "of": n_scored,
                "share_swept": n / n_scored if n_scored else 0.0}


Sweep = Callable[[dict[int, list[int]], int], tuple[torch.Tensor, torch.Tensor | None]]


def _as_blocks(flat_idx: torch.Tensor, d_ff: int) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i in sorted(flat_idx.tolist()):
        out.setdefault(i // d_ff, []).append(i % d_ff)
    return out


def prove_top_k(positive: torch.Tensor, k: int, sweep_contrast: Sweep, lam: float = 0.0,
                cost: torch.Tensor | None = None, gap_fit: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor | None, TopKProof]:
    """Sweep the contrast side (``sweep_contrast({block: neurons}, round)`` -> (ΔS_N [n_layers,
    d_ff], NaN where not swept; its per-probe effects [Q, n_layers, d_ff] or None)) only where a
    neuron can still reach the top ``k`` of the specific score. Returns ΔS_N and its per-probe
    effects (NaN where not swept) and the proof."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"the top K to prove must be a whole number >= 1, got {k!r}")
    d_ff = positive.shape[1]
    bound = upper_bound(positive, lam, cost, gap_fit).flatten()
    ok = torch.isfinite(bound)
    k_eff = min(k, int(ok.sum()))
    contrast = torch.full_like(positive, float("nan")).flatten()
    per_probe: torch.Tensor | None = None
    swept = torch.zeros_like(ok)
    proof = TopKProof(k)
    idx = torch.nonzero(ok).flatten()
    take = idx[torch.sort(bound[idx], descending=True, stable=True).indices[:2 * k_eff]]
    keep_per_probe = True
    while len(take):
        got, got_pp = sweep_contrast(_as_blocks(take, d_ff), len(proof.rounds))
        contrast[take] = got.flatten()[take]
        if got_pp is None:
            keep_per_probe = False
        elif keep_per_probe:
            flat_pp = got_pp.reshape(got_pp.shape[0], -1)
            if per_probe is None:
                per_probe = torch.full_like(flat_pp, float("nan"))
            per_probe[:, take] = flat_pp[:, take]
        swept[take] = True
        proof.rounds.append(len(take))
        exact = combine(positive, contrast.view_as(positive), lam, cost, gap_fit)[1].flatten()
        kth = torch.topk(exact[swept], k_eff).values[-1]
        take = torch.nonzero(ok & ~swept & (bound >= kth)).flatten()
    proof.swept = swept.view_as(positive)
    pp = per_probe.reshape(-1, *positive.shape) if keep_per_probe and per_probe is not None else None
    return contrast.view_as(positive), pp, proof


def pruned_score(positive: torch.Tensor, contrast: torch.Tensor, lam: float = 0.0, cost: torch.Tensor | None = None,
                 gap_fit: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(effect, score) of a pruned run: exact where the contrast side was swept, the upper bound
    (ΔS_N taken as 0) where it was not; NaN only where the positive side is NaN."""
    filled = torch.where(torch.isnan(contrast) & torch.isfinite(positive), torch.zeros_like(contrast), contrast)
    return combine(positive, filled, lam, cost, gap_fit)
