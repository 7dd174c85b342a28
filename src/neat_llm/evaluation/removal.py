"""Concept removal: turn off the top-K neurons and measure how much of the concept is gone,
against random K-sets of the same size, and what it costs in perplexity (METHOD.md section 5).

With S(x) = <h_layer(x), c> the concept score (``ConceptReadout``), P / N the eval positives /
contrast texts and "|off" the scores with the neurons turned off:

    gap_before     = mean S(P) - mean S(N)
    gap_removal    = 1 - [mean S(P|off) - mean S(N|off)] / gap_before     (1 = concept gap gone)
    positive_shift = [mean S(P) - mean S(P|off)] / gap_before              (1 = P moved down to N)
    auroc_after    = AUROC of S(P|off) vs S(N|off)                         (0.5 = indistinguishable)
    specificity    = mean S(N|off) - mean S(N)                             (0 = contrast untouched)
    ppl_ratio      = perplexity(neutral | off) / perplexity(neutral)       (1 = fluency untouched)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..concepts.conceptset import ConceptSet
from ..concepts.representations import residuals_along
from ..concepts.vectors import ConceptReadout
from ..interventions import Condition, Intervention, NeuronSelection
from ..records import known
from ..models.loaded import LoadedModel
from .conditions import BEFORE, CONDITIONS_PER_BATCH, pool_layers, run_conditions, study_conditions
from .neutral_text import NEUTRAL_TEXTS
from .perplexity import perplexities_along


# --- the concept score on the eval set -------------------------------------------------------
@dataclass(frozen=True)
class ConceptScores:
    """S on the eval set: pos [n_P] (positives), neg [n_N] (contrast)."""

    pos: torch.Tensor
    neg: torch.Tensor

    @property
    def gap(self) -> float:
        """mean S(P) - mean S(N)."""
        return float(self.pos.double().mean() - self.neg.double().mean())

    @property
    def auroc(self) -> float:
        """P-vs-N AUROC of S (0.5 = the two sides cannot be told apart)."""
        from sklearn.metrics import roc_auc_score

        y = np.r_[np.ones(len(self.pos)), np.zeros(len(self.neg))]
        return float(roc_auc_score(y, torch.cat([self.pos, self.neg]).double().numpy()))


def concept_scores(model: LoadedModel, readout: ConceptReadout, eval_set: ConceptSet,
                   batch_size: int = 16) -> ConceptScores:
    """One pass over the eval texts (under whatever ``turn_off`` is active): S at ``readout.layer``."""
    return concept_scores_along(model, readout, eval_set, 1, batch_size)[0]


def concept_scores_along(model: LoadedModel, readout: ConceptReadout, eval_set: ConceptSet, replicas: int,
                         batch_size: int = 16) -> list[ConceptScores]:
    """``concept_scores`` under each of ``replicas`` conditions along the batch."""
    _check_two_sided(eval_set)
    res = residuals_along(model, readout.apply(eval_set.texts), readout.layer, replicas, pool=readout.pool,
                          batch_size=batch_size)  # [G, N, d]
    s = readout.score(res)  # [G, N]
    y = torch.tensor(eval_set.labels, dtype=torch.bool)
    return [ConceptScores(pos=row[y], neg=row[~y]) for row in s]


# --- one neuron set's effect --------------------------------------------------------------------
@dataclass(frozen=True)
class RemovalEffect:
    """What turning off one neuron set did (formulas in the module docstring)."""

    gap_removal: float
    positive_shift: float
    auroc_after: float
    specificity: float
    ppl_after: float
    ppl_ratio: float
    mean_s_pos_after: float
    mean_s_neg_after: float


def removal_effect(before: ConceptScores, after: ConceptScores, ppl_before: float, ppl_after: float) -> RemovalEffect:
    gap = before.gap
    mp, mn = float(before.pos.double().mean()), float(before.neg.double().mean())
    mp_off, mn_off = float(after.pos.double().mean()), float(after.neg.double().mean())
    return RemovalEffect(gap_removal=1.0 - (mp_off - mn_off) / gap, positive_shift=(mp - mp_off) / gap,
                         auroc_after=after.auroc, specificity=mn_off - mn, ppl_after=ppl_after,
                         ppl_ratio=ppl_after / ppl_before, mean_s_pos_after=mp_off, mean_s_neg_after=mn_off)


# --- the report ---------------------------------------------------------------------------------
@dataclass
class RemovalAtK:
    """The top-K set's effect and the mean / std (ddof=1; 0 for one set) over the random K-sets."""

    k: int
    gap_removal: float
    positive_shift: float
    auroc_after: float
    specificity: float
    ppl_ratio: float
    random_gap_removal_mean: float
    random_gap_removal_std: float
    random_positive_shift_mean: float
    random_positive_shift_std: float
    random_auroc_after_mean: float
    random_auroc_after_std: float
    random_specificity_mean: float
    random_specificity_std: float
    random_ppl_ratio_mean: float
    random_ppl_ratio_std: float
    top: RemovalEffect
    random: list[RemovalEffect]

    @classmethod
    def from_effects(cls, k: int, top: RemovalEffect, random: list[RemovalEffect]) -> "RemovalAtK":
        def stats(name: str) -> tuple[float, float]:
            v = np.array([getattr(e, name) for e in random], dtype=np.float64)
            return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

        names = ("gap_removal", "positive_shift", "auroc_after", "specificity", "ppl_ratio")
        rand = {}
        for nm in names:
            rand[f"random_{nm}_mean"], rand[f"random_{nm}_std"] = stats(nm)
        return cls(k=k, **{nm: getattr(top, nm) for nm in names}, **rand, top=top, random=list(random))


BUDGETS = (1.05, 1.10)  # perplexity ratios at which methods are compared


@dataclass
class BudgetResult:
    """Removal at a fluency budget: the best top-K set whose perplexity ratio stays <= ``max_ppl``
    (``k`` None when no K does), with the random K-sets of the same K beside it."""

    max_ppl: float
    k: int | None
    gap_removal: float
    auroc_after: float
    ppl_ratio: float
    random_gap_removal_mean: float
    random_gap_removal_std: float


@dataclass
class RemovalReport:
    """Concept removal for every K. ``*_before`` are computed once, with nothing turned off.
    passes: model.counter difference (forward, partial_forward, block_forward, backward)."""

    concept: str
    mode: str
    seed: int
    n_random: int
    layers_pool: list[int] | None
    n_eval: dict[str, int]
    n_neutral: int
    auroc_before: float
    gap_before: float
    mean_s_pos_before: float
    mean_s_neg_before: float
    ppl_before: float
    rows: list[RemovalAtK] = field(default_factory=list)
    passes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def row(self, k: int) -> RemovalAtK:
        for r in self.rows:
            if r.k == k:
                return r
        raise KeyError(f"no row for K={k}; have {[r.k for r in self.rows]}")

    def at_budget(self, max_ppl: float) -> BudgetResult:
        """The largest gap removal among the top-K sets with ppl_ratio <= max_ppl (ties: the smaller
        K), next to the random K-sets of that K: the one number to compare methods by."""
        ok = [r for r in self.rows if r.ppl_ratio <= max_ppl]
        if not ok:
            nan = float("nan")
            return BudgetResult(max_ppl, None, nan, nan, nan, nan, nan)
        best = max(ok, key=lambda r: (r.gap_removal, -r.k))
        return BudgetResult(max_ppl, best.k, best.gap_removal, best.auroc_after, best.ppl_ratio,
                            best.random_gap_removal_mean, best.random_gap_removal_std)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (floats, ints, lists), with the removal at each budget of ``BUDGETS``."""
        return {**asdict(self), "budgets": [asdict(self.at_budget(b)) for b in BUDGETS]}

    @classmethod
    def from_dict(cls, d: dict) -> "RemovalReport":
        """The report ``to_dict`` wrote (e.g. evaluation.json), typed again; extra keys (the budgets,
        which follow from the rows, and what a command added around it) are ignored."""
        rows = [RemovalAtK(**{**known(RemovalAtK, r), "top": RemovalEffect(**known(RemovalEffect, r["top"])),
                              "random": [RemovalEffect(**known(RemovalEffect, e)) for e in r["random"]]})
                for r in d.get("rows", [])]
        return cls(**known(cls, d, skip=("rows",)), rows=rows)


# --- the evaluation -----------------------------------------------------------------------------
@dataclass
class RemovalMeasure:
    """The concept score on the eval set and perplexity on the neutral texts, per condition."""

    readout: ConceptReadout
    eval_set: ConceptSet
    neutral: Sequence[str]
    batch_size: int = 16

    def measure(self, model: LoadedModel, replicas: int) -> list[tuple[ConceptScores, float]]:
        scores = concept_scores_along(model, self.readout, self.eval_set, replicas, self.batch_size)
        ppls = perplexities_along(model, self.neutral, replicas, self.batch_size)
        return list(zip(scores, ppls))

    def to_json(self, result: tuple[ConceptScores, float]) -> dict:
        s, ppl = result
        return {"pos": s.pos.tolist(), "neg": s.neg.tolist(), "ppl": ppl}

    def from_json(self, data: dict) -> tuple[ConceptScores, float]:
        return ConceptScores(torch.tensor(data["pos"]), torch.tensor(data["neg"])), float(data["ppl"])


def evaluate_removal(model: LoadedModel, readout: ConceptReadout, eval_set: ConceptSet,
                     selection_by_k: Mapping[int, NeuronSelection], *, n_random: int = 5, seed: int = 0,
                     mode: "str | Intervention" = "zero", layers_pool: Sequence[int] | None = None,
                     neutral_texts: Sequence[str] | None = None, batch_size: int = 16,
                     neuron_pool: Sequence[tuple[int, int]] | None = None,
                     random_cache: dict[int, list[RemovalEffect]] | None = None,
                     alpha: float | None = None, per_batch: int = CONDITIONS_PER_BATCH,
                     on_condition: Callable[[str], None] | None = None) -> RemovalReport:
    """Turn off each top-K set (``selection_by_k[K]``, exactly K neurons) and ``n_random`` random
    K-sets, and measure the removal numbers of the module docstring on the held-out ``eval_set``
    and perplexity on ``neutral_texts`` (default ``NEUTRAL_TEXTS``).

    Cost: (1 + len(selection_by_k) * (1 + n_random)) passes over eval_set + neutral texts, run
    ``per_batch`` conditions at a time along the batch (``conditions.run_conditions``).
    ``mode``: ``"zero"``, ``"mean"`` (mean ablation uses the selections' ``means``, also for the random
    sets), ``"dampen"`` (multiply by ``alpha``, or by each selected neuron's own factor; a random
    K-set then gets the top-K set's factors, so it is dampened by the same amounts), or an
    ``Intervention`` (e.g. a fitted ``Transport``).
    ``neuron_pool``: draw the random K-sets from these neurons (e.g. the subset every method scored).
    ``random_cache``: {K: effects of the random sets}, filled and reused across calls that share the
    model, readout, eval set, mode, seed and pool (``neat compare`` evaluates many methods).
    """
    _check_two_sided(eval_set)
    neutral = list(NEUTRAL_TEXTS if neutral_texts is None else neutral_texts)
    if not neutral:
        raise ValueError("neutral_texts is empty; perplexity needs at least one text")
    means = next((s.means for s in selection_by_k.values() if s.means is not None), None)
    intervention = Intervention.of(mode, means, alpha)
    if intervention.uses_selection_factors:
        random_cache = None  # the random sets borrow each top set's own factors: nothing to share
    cached = set(random_cache or ())
    conds = study_conditions(model, selection_by_k, intervention, n_random=n_random, seed=seed,
                             layers_pool=layers_pool, neuron_pool=neuron_pool,
                             random_ks=[k for k in selection_by_k if k not in cached])

    t0, c0 = time.perf_counter(), model.counter.snapshot()
    measure = RemovalMeasure(readout, eval_set, neutral, batch_size)
    [(before, ppl_before)] = run_conditions(model, [Condition(BEFORE)], measure).values()
    gap = before.gap
    if not gap > 0:
        raise ValueError(f"the concept readout does not separate the eval set (mean S(P) - mean S(N) = {gap:.4g} "
                         "<= 0), so the removal ratios are undefined")
    flat = [c for k in sorted(conds) for c in (conds[k][0], *conds[k][1])]
    got = run_conditions(model, flat, measure, per_batch=per_batch, on_condition=on_condition)

    def effect(name: str) -> RemovalEffect:
        after, ppl_after = got[name]
        return removal_effect(before, after, ppl_before, ppl_after)

    rows = []
    for k in sorted(conds):
        top, rand = conds[k]
        if random_cache is not None and k in random_cache:
            effects = random_cache[k]
        else:
            effects = [effect(c.name) for c in rand]
            if random_cache is not None:
                random_cache[k] = effects
        rows.append(RemovalAtK.from_effects(k, effect(top.name), effects))
    return RemovalReport(
        concept=eval_set.name, mode=intervention.name, seed=seed, n_random=n_random,
        layers_pool=pool_layers(model, layers_pool) if layers_pool is not None else None,
        n_eval={"positive": eval_set.n_positive, "contrast": eval_set.n_contrast}, n_neutral=len(neutral),
        auroc_before=before.auroc, gap_before=gap, mean_s_pos_before=float(before.pos.double().mean()),
        mean_s_neg_before=float(before.neg.double().mean()), ppl_before=ppl_before, rows=rows,
        passes=model.counter.since(c0).as_dict(), seconds=time.perf_counter() - t0)


# --- helpers ------------------------------------------------------------------------------------
def _check_two_sided(eval_set: ConceptSet) -> None:
    n_pos, n_neg = eval_set.n_positive, eval_set.n_contrast
    if n_pos == 0 or n_neg == 0:
        side = "positive" if n_pos == 0 else "contrast"
        raise ValueError(f"the eval set {eval_set.name!r} has no {side} examples ({n_pos} positive, {n_neg} contrast); "
                         "removal compares positives with contrast, so both sides are needed")
