"""Evaluation: concept removal with the top-K neurons turned off (vs random K-sets), and perplexity."""

from .neutral_text import NEUTRAL_TEXTS
from .perplexity import mean_token_loglik, perplexity, text_logliks
from .conditions import random_selections, run_conditions, study_conditions
from .removal import (ConceptScores, RemovalAtK, RemovalEffect, RemovalReport, concept_scores, evaluate_removal,
                      removal_effect)

__all__ = ["NEUTRAL_TEXTS", "mean_token_loglik", "perplexity", "text_logliks", "ConceptScores", "RemovalAtK",
           "RemovalEffect", "RemovalReport", "concept_scores", "evaluate_removal", "random_selections",
           "removal_effect", "run_conditions", "study_conditions"]
