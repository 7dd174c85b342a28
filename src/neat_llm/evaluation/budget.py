"""Choosing K within a fluency budget on the fit split (``RemovalReport.at_budget`` reads the same
rule off a held-out evaluation).

- ``choose_k``: the fluency-budget rule on the *fit* split, so a run can pick its K without looking at
  held-out data: the top-K sets are turned off, the gap removal is measured on (a sample of) the
  fit texts and the perplexity ratio on ``FLUENCY_TEXTS`` (the perplexity check of the evaluation
  uses other texts).
- ``choose_ks``: the same rule at several budgets from one curve (a study's default sizes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..concepts.conceptset import ConceptSet
from ..concepts.vectors import ConceptReadout
from ..interventions import Intervention, NeuronSelection, turn_off
from ..models.loaded import LoadedModel
from ..scoring.fluency import FLUENCY_TEXTS
from .perplexity import perplexity
from .removal import concept_scores

CANDIDATE_KS = (10, 20, 50, 100, 200, 500, 1000, 2000)


@dataclass
class KChoice:
    """``choose_k``'s result: the chosen K (None when even the smallest K costs more) and the fit
    curve it was chosen from (one entry per K tried)."""

    max_ppl: float
    k: int | None
    ks: list[int] = field(default_factory=list)
    fit_gap_removal: list[float] = field(default_factory=list)
    fit_ppl_ratio: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def within(self, max_ppl: float) -> "KChoice":
        """The choice at budget ``max_ppl`` from this curve: the K with the largest fit gap removal
        before the first K whose perplexity ratio exceeds the budget (the curve is cut there)."""
        out = KChoice(max_ppl, None)
        best = -math.inf
        for k, removal, ratio in zip(self.ks, self.fit_gap_removal, self.fit_ppl_ratio):
            out.ks.append(k)
            out.fit_gap_removal.append(removal)
            out.fit_ppl_ratio.append(ratio)
            if ratio > max_ppl:
                break
            if removal > best:
                best, out.k = removal, k
        return out


def choose_k(model: LoadedModel, readout: ConceptReadout, fit: ConceptSet, ranking: NeuronSelection,
             max_ppl: float, intervention: Intervention, *, ks: Sequence[int] = CANDIDATE_KS,
             max_per_side: int | None = 64, seed: int = 0, batch_size: int = 16) -> KChoice:
    """The K (among ``ks``, at most len(ranking)) with the largest fit gap removal whose perplexity
    ratio on ``FLUENCY_TEXTS`` stays <= ``max_ppl``; ``ranking``: the run's ranking (top first).
    Stops at the first K over the budget (removing more neurons rarely costs less).
    Cost: (1 + len(ks)) passes over the fit sample and the fluency texts."""
    if not max_ppl > 1.0:
        raise ValueError(f"--max-ppl is a perplexity ratio and must be > 1, got {max_ppl}")
    ks = sorted({int(k) for k in ks if 0 < int(k) <= len(ranking)})
    if not ks:
        raise ValueError(f"no candidate K fits the {len(ranking)} ranked neurons")
    sample = fit.sample(max_per_side, seed) if max_per_side else fit
    before = concept_scores(model, readout, sample, batch_size)
    ppl0 = perplexity(model, FLUENCY_TEXTS, batch_size)
    out = KChoice(max_ppl, None)
    for k in ks:
        with turn_off(model, selection_prefix(ranking, k), intervention):
            after = concept_scores(model, readout, sample, batch_size)
            ratio = perplexity(model, FLUENCY_TEXTS, batch_size) / ppl0
        out.ks.append(k)
        out.fit_gap_removal.append(1.0 - after.gap / before.gap)
        out.fit_ppl_ratio.append(ratio)
        if ratio > max_ppl:
            break
    return out.within(max_ppl)


def choose_ks(model: LoadedModel, readout: ConceptReadout, fit: ConceptSet, ranking: NeuronSelection,
              budgets: Sequence[float], intervention: Intervention, **kw) -> list[KChoice]:
    """``choose_k`` at each of ``budgets`` from one fit curve (measured up to the largest budget):
    the same choices as one ``choose_k`` per budget, for the passes of one."""
    if not budgets:
        raise ValueError("no fluency budget given")
    curve = choose_k(model, readout, fit, ranking, max(budgets), intervention, **kw)
    return [curve.within(b) for b in budgets]


def selection_prefix(sel: NeuronSelection, k: int) -> NeuronSelection:
    """The first k neurons of a ranked selection (with their means, scores and factors)."""
    return NeuronSelection(sel.neurons[:k], sel.means, None if sel.scores is None else sel.scores[:k],
                           None if sel.alphas is None else sel.alphas[:k])


