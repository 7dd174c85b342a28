"""Agreement numbers of `neat compare` against direct computations."""

import math

import torch
from scipy.stats import spearmanr

from neat_llm.compare import agreement, subset_neurons


def test_agreement_on_common_neurons():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 250, generator=g)
    b = a + 0.5 * torch.randn(4, 250, generator=g)
    b[0] = float("nan")  # b did not score block 0
    rho, overlap, n = agreement(a, b, k=100)
    both = torch.isfinite(b)
    assert n == 750
    assert rho == spearmanr(a[both].numpy(), b[both].numpy()).statistic
    ta = set(torch.topk(a[both], 100).indices.tolist())
    tb = set(torch.topk(b[both], 100).indices.tolist())
    assert overlap == len(ta & tb) / 100
    rho, overlap, n = agreement(a, a.clone(), k=100)
    assert rho == 1.0 and overlap == 1.0
    assert math.isnan(agreement(a, torch.full_like(a, float("nan")))[0])


def test_subset_is_seeded_and_sized(tiny_llama):
    s1, s2 = subset_neurons(tiny_llama, 50, seed=1), subset_neurons(tiny_llama, 50, seed=1)
    assert s1 == s2 and sum(map(len, s1.values())) == 50
    assert s1 != subset_neurons(tiny_llama, 50, seed=2)
