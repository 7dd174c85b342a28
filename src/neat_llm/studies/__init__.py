"""The paper's applications as reruns: hate-speech neurons (``hate_study``) and social-bias
neurons on minimal pairs (``bias_study``, CrowS-Pairs and IndiBias in English and Hindi): find the
neurons on fit data, turn them off, measure on held-out data against random neurons."""

from .bias import BiasStudy, bias_study, load_pairs
from .hate import HateStudy, hate_study, hate_concept
from .settings import BiasStudySettings, HateStudySettings

__all__ = ["BiasStudy", "bias_study", "load_pairs", "HateStudy", "hate_study", "hate_concept", "BiasStudySettings",
           "HateStudySettings"]
