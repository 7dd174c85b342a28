"""Evaluation with the top-K neurons turned off, against random K-sets of the same size: concept
removal (removal.py), hate speech (hate.py; on demonstration prompts: behaviour.py), social bias
(bias.py), all run by one condition engine (conditions.py) with perplexity on neutral text
beside every effect (perplexity.py)."""

from .neutral_text import NEUTRAL_TEXTS
from .perplexity import mean_token_loglik, perplexity, text_logliks
from .conditions import random_selections, run_conditions, study_conditions
from .removal import (ConceptScores, RemovalAtK, RemovalEffect, RemovalReport, concept_scores, evaluate_removal,
                      removal_effect)

__all__ = ["NEUTRAL_TEXTS", "mean_token_loglik", "perplexity", "text_logliks", "ConceptScores", "RemovalAtK",
           "RemovalEffect", "RemovalReport", "concept_scores", "evaluate_removal", "random_selections",
           "removal_effect", "run_conditions", "study_conditions"]
