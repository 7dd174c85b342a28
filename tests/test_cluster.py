"""NEAT-cluster: group ablation against the plain computation, and the two-stage scorer."""

import pytest
import torch

from conftest import build_tiny, concept_texts
from neat_llm.concepts.vectors import ConceptReadout
from neat_llm.interventions import Zero, turn_off
from neat_llm.scoring import ClusterScorer, NeatScorer, ProbeSet, ScoringTask
from neat_llm.scoring.neat import ProbeCache, group_effects
from neat_llm.scoring.reference import concept_score_of


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2"])
def test_group_ablation_equals_full_forward(kind, tokenizer):
    m = build_tiny(kind, tokenizer)
    pos, _ = concept_texts(2)
    torch.manual_seed(0)
    vec = torch.nn.functional.normalize(torch.randn(m.d_model), dim=0)
    cache = ProbeCache(m, pos[0], 2, vec)
    groups = [[0], [1, 2, 3], list(range(10, 30)), [47]]
    masks = torch.zeros(len(groups), m.d_ff)
    for i, g in enumerate(groups):
        masks[i, g] = 1
    got = group_effects(m, cache, 0, 2, masks, Zero().block_affine(0, m.d_ff), tokens_per_batch=16)
    clean = concept_score_of(m, pos[0], 2, vec)
    for i, g in enumerate(groups):
        with turn_off(m, [(0, k) for k in g]):
            off = concept_score_of(m, pos[0], 2, vec)
        assert got[i].item() == pytest.approx(clean - off, abs=1e-4 * max(1.0, abs(clean)))


def test_cluster_scorer_two_stages(tiny_llama):
    m = tiny_llama
    pos, neg = concept_texts(6)
    torch.manual_seed(1)
    readout = ConceptReadout(1, torch.nn.functional.normalize(torch.randn(m.d_model), dim=0))
    task = ScoringTask(readout, ProbeSet([pos[0]], [1.0]), layers=[0, 1, 2], positives=pos, contrast=neg, seed=0)
    scorer = ClusterScorer(n_clusters=6, keep=3, positions="all")
    got = scorer.score(m, task)
    full = NeatScorer().score(m, task).scores
    kept = torch.isfinite(got.scores[:2])
    n_kept = int(kept.sum())
    sizes = {(l, c): int((scorer.last_clusters[l] == c).sum()) for _, l, c in scorer.last_cluster_scores[:3]}
    assert n_kept == sum(sizes.values())
    torch.testing.assert_close(got.scores[:2][kept], full[:2][kept], atol=1e-5, rtol=1e-4)
    assert torch.all(got.scores[2] == 0)
    # passes: one per cluster of the 2 blocks up to the reading layer, then one per kept neuron
    assert got.passes.partial_forward == 2 * 6 + n_kept
    # cluster scores are the group ablation effects, best first
    s = [r[0] for r in scorer.last_cluster_scores]
    assert s == sorted(s, reverse=True)


def test_keeping_every_cluster_is_full_neat(tiny_llama):
    m = tiny_llama
    pos, neg = concept_texts(6)
    readout = ConceptReadout(2, torch.nn.functional.normalize(torch.ones(m.d_model), dim=0))
    task = ScoringTask(readout, ProbeSet([pos[1]], [1.0]), layers=[0, 1, 2], positives=pos, contrast=neg)
    got = ClusterScorer(n_clusters=4, keep=100, basis="weights", positions="all").score(m, task)
    torch.testing.assert_close(got.scores, NeatScorer().score(m, task).scores, atol=1e-5, rtol=1e-4)
