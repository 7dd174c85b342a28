"""Reading a concept from minimal pairs: is there a direction along which, within each pair, the
more stereotypical sentence scores higher than its counterpart?

A minimal pair differs in a word or two, while different pairs differ in everything. The P-vs-N
AUROC of S mixes the two (it compares every stereotypical sentence with every counterpart), so
the large variation between pairs hides a small consistent shift inside them: on IndiBias
English it is ≤ 0.50 at every layer, and the "best" layer it picks is arbitrary. The paired
accuracy, the share of pairs with S(more) > S(less), compares each sentence with its own
counterpart only.

- ``paired_cv_accuracy``: per layer, k-fold cross-validated on the fit pairs: the diff-means
  direction c = unit(mean_i [h(more_i) - h(less_i)]) of the other folds, accuracy on the held-in
  fold. Cost: one pass over the 2n fit sentences.
- ``paired_accuracy``: the share of pairs with <h(more) - h(less), c> > 0 for a given direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..models.loaded import LoadedModel
from .representations import text_pass
from .vectors import apply_template


def pair_differences(model: LoadedModel, more: Sequence[str], less: Sequence[str], pool: str = "last",
                     strict: bool = False, template: str = "{text}") -> torch.Tensor:
    """h(more_i) - h(less_i) after every block, each sentence read through ``template`` (see
    ``ConceptReadout``): [n_pairs, n_layers, d_model]. 2n forward passes."""
    if len(more) != len(less) or not more:
        raise ValueError(f"paired readout needs equally many, at least one, sentences per side; got {len(more)} "
                         f"and {len(less)}")
    both = text_pass(model, apply_template(template, list(more) + list(less)), pool=pool, strict=strict).residuals
    return both[: len(more)] - both[len(more):]


def paired_accuracy(diffs: torch.Tensor, direction: torch.Tensor) -> float:
    """Share of pairs whose difference diffs [n, d] projects positively on direction [d]."""
    return float(((diffs.float() @ direction.float()) > 0).float().mean())


def paired_cv_accuracy(diffs: torch.Tensor, folds: int = 5, seed: int = 0) -> np.ndarray:
    """k-fold cross-validated paired accuracy of the diff-means direction, per layer: [n_layers].
    diffs: [n_pairs, n_layers, d] from ``pair_differences``."""
    from sklearn.model_selection import KFold

    n = diffs.shape[0]
    if n < 2:
        raise ValueError(f"cross-validation needs at least 2 pairs, got {n}")
    hits = torch.zeros(diffs.shape[1])
    for train, test in KFold(min(folds, n), shuffle=True, random_state=seed).split(np.arange(n)):
        c = torch.nn.functional.normalize(diffs[train].float().mean(0), dim=-1)  # [L, d]
        hits += ((diffs[test].float() * c[None]).sum(-1) > 0).float().sum(0)
    return (hits / n).numpy()
