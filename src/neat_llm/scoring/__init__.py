"""Scorers: one interface, each counting its own passes."""

from .base import NeuronScores, ProbeSet, Scorer, ScoringTask
from .neat import NeatScorer
from .reference import ReferenceScorer

SCORERS = {"neat": NeatScorer, "reference": ReferenceScorer}


def get_scorer(name: str, **kwargs) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(SCORERS)}")
    return SCORERS[name](**kwargs)


__all__ = ["NeuronScores", "ProbeSet", "Scorer", "ScoringTask", "NeatScorer", "ReferenceScorer", "SCORERS",
           "get_scorer"]
