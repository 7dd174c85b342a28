"""Paired comparisons of two conditions measured on the same prompts (METHOD.md section 6): every
condition shares the seeded draws, so the per-prompt difference is what varies with the
intervention, not with the dice. The interval is a percentile bootstrap over prompts, the p-value a
sign-flip permutation test of the mean difference (two-sided). "Beyond random" means the interval
excludes 0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """mean(a - b) over prompts, its 95% interval and the permutation p-value."""

    diff: float
    ci: tuple[float, float]
    p: float
    n: int

    def to_dict(self) -> dict:
        return {"diff": self.diff, "ci": list(self.ci), "p": self.p, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict) -> "PairedDifference":
        return cls(float(d["diff"]), (float(d["ci"][0]), float(d["ci"][1])), float(d["p"]), int(d.get("n", 0)))

    @property
    def excludes_zero(self) -> bool:
        return self.ci[0] > 0 or self.ci[1] < 0


def paired_difference(a, b, *, n_boot: int = 2000, n_perm: int = 2000, seed: int = 0) -> PairedDifference:
    """a, b: one number per prompt (e.g. the hate rate of its samples) under two conditions."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"paired values must be two equal-length 1-d sequences, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("paired values must be finite")
    rng = np.random.default_rng(seed)
    n = len(d)
    boot = d[rng.integers(0, n, size=(n_boot, n))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    observed = abs(d.mean())
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, n))
    p = (1 + int((np.abs((signs * d).mean(1)) >= observed - 1e-12).sum())) / (n_perm + 1)
    return PairedDifference(float(d.mean()), (float(lo), float(hi)), float(p), n)
