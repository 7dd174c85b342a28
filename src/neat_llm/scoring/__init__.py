"""Scorers: one interface, each counting its own passes."""

from .base import NeuronScores, ProbeSet, Scorer, ScoringTask
from .attribution import AttributionPatchingScorer
from .cluster import ClusterScorer
from .exhaustive import ExhaustiveScorer
from .label_based import IntegratedGradientsScorer, LogprobIncreaseScorer
from .neat import NeatScorer
from .next_line import NextLineScorer
from .reference import ReferenceScorer
from .screen_verify import ScreenVerifyScorer
from .simple import ActivationScorer, AuraScorer, AurocScorer, RandomScorer

SCORERS = {
    "neat": NeatScorer,
    "neat-cluster": ClusterScorer,
    "reference": ReferenceScorer,
    "exhaustive": ExhaustiveScorer,
    "screen-verify": ScreenVerifyScorer,
    "attribution-patching": AttributionPatchingScorer,
    "next-line": NextLineScorer,
    "integrated-gradients": IntegratedGradientsScorer,
    "logprob-increase": LogprobIncreaseScorer,
    "activation": ActivationScorer,
    "auroc": AurocScorer,
    "aura": AuraScorer,
    "random": RandomScorer,
}


def chance_score(method: str) -> float:
    """What ``method`` scores a neuron that carries nothing (0; an AUROC: 0.5); 0 for a method not here."""
    return SCORERS[method].chance_score if method in SCORERS else 0.0


def get_scorer(name: str, **kwargs) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(SCORERS)}")
    return SCORERS[name](**kwargs)


__all__ = ["NeuronScores", "ProbeSet", "Scorer", "ScoringTask", "NeatScorer", "ReferenceScorer", "ExhaustiveScorer",
           "ScreenVerifyScorer", "ClusterScorer", "IntegratedGradientsScorer", "LogprobIncreaseScorer", "AttributionPatchingScorer", "NextLineScorer", "ActivationScorer", "AuraScorer", "AurocScorer", "RandomScorer", "SCORERS",
           "chance_score", "get_scorer"]
