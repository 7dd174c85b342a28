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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..concepts.conceptset import ConceptSet
from ..concepts.representations import text_pass
from ..concepts.vectors import ConceptReadout
from ..interventions import MODES, Intervention, NeuronSelection, turn_off
from ..models.loaded import LoadedModel
from ..runs import Run, RunError
from .neutral_text import NEUTRAL_TEXTS
from .perplexity import perplexity


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
    _check_two_sided(eval_set)
    texts = readout.apply(eval_set.texts)
    res = text_pass(model, texts, pool=readout.pool, batch_size=batch_size).residuals[:, readout.layer]  # [N, d]
    s = readout.score(res)  # [N]
    y = torch.tensor(eval_set.labels, dtype=torch.bool)
    return ConceptScores(pos=s[y], neg=s[~y])


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


# --- random K-sets ------------------------------------------------------------------------------
def random_selections(model: LoadedModel, k: int, n: int, seed: int = 0, layers_pool: Sequence[int] | None = None,
                      means: torch.Tensor | None = None,
                      neuron_pool: Sequence[tuple[int, int]] | None = None) -> list[NeuronSelection]:
    """``n`` sets of ``k`` distinct neurons, drawn uniformly from every neuron of the model (or of the
    blocks ``layers_pool``, or from the neurons ``neuron_pool``). Seeded by (seed, k): the sets for
    one K do not depend on the other Ks."""
    if neuron_pool is not None:
        pool = sorted({(int(l), int(n_)) for l, n_ in neuron_pool})
        if not 0 <= k <= len(pool):
            raise ValueError(f"K={k} is larger than the {len(pool)} neurons of the pool")
        rng = np.random.default_rng([seed, k])
        return [NeuronSelection(tuple(pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)), means=means)
                for _ in range(n)]
    layers = _pool_layers(model, layers_pool)
    size = len(layers) * model.d_ff
    if not 0 <= k <= size:
        raise ValueError(f"K={k} is larger than the {size} neurons to draw from "
                         f"({len(layers)} blocks of {model.d_ff})" if k > 0 else f"K must be >= 0, got {k}")
    rng = np.random.default_rng([seed, k])
    out = []
    for _ in range(n):
        flat = rng.choice(size, size=k, replace=False)
        out.append(NeuronSelection(tuple((layers[int(i) // model.d_ff], int(i) % model.d_ff) for i in flat),
                                   means=means))
    return out


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


# --- the evaluation -----------------------------------------------------------------------------
def evaluate_removal(model: LoadedModel, readout: ConceptReadout, eval_set: ConceptSet,
                     selection_by_k: Mapping[int, NeuronSelection], *, n_random: int = 5, seed: int = 0,
                     mode: str = "zero", layers_pool: Sequence[int] | None = None,
                     neutral_texts: Sequence[str] | None = None, batch_size: int = 16,
                     neuron_pool: Sequence[tuple[int, int]] | None = None,
                     random_cache: dict[int, list[RemovalEffect]] | None = None,
                     alpha: float | None = None) -> RemovalReport:
    """Turn off each top-K set (``selection_by_k[K]``, exactly K neurons) and ``n_random`` random
    K-sets, and measure the removal numbers of the module docstring on the held-out ``eval_set``
    and perplexity on ``neutral_texts`` (default ``NEUTRAL_TEXTS``).

    Cost: (1 + len(selection_by_k) * (1 + n_random)) passes over eval_set + neutral texts.
    ``mode``: ``"zero"``, ``"mean"`` (mean ablation uses the selections' ``means``, also for the random
    sets) or ``"dampen"`` (multiply by ``alpha``, or by each selected neuron's own factor; a random
    K-set then gets the top-K set's factors, so it is dampened by the same amounts).
    ``neuron_pool``: draw the random K-sets from these neurons (e.g. the subset every method scored).
    ``random_cache``: {K: effects of the random sets}, filled and reused across calls that share the
    model, readout, eval set, mode, seed and pool (``neat compare`` evaluates many methods).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if n_random < 1:
        raise ValueError(f"n_random must be at least 1 (the baseline of random K-sets), got {n_random}")
    _check_two_sided(eval_set)
    neutral = list(NEUTRAL_TEXTS if neutral_texts is None else neutral_texts)
    if not neutral:
        raise ValueError("neutral_texts is empty; perplexity needs at least one text")
    layers = _pool_layers(model, layers_pool)
    pool_size = len(layers) * model.d_ff
    if not selection_by_k:
        raise ValueError("selection_by_k is empty: give at least one K and its neuron selection")
    for k, sel in selection_by_k.items():
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"K must be a non-negative int, got {k!r}")
        if k > pool_size:
            raise ValueError(f"K={k} is larger than the {pool_size} neurons of the model"
                             + (f" in blocks {layers}" if layers_pool is not None else "")
                             + f" ({len(layers)} blocks of {model.d_ff})")
        if len(sel) != k or len(set(sel.neurons)) != k:
            raise ValueError(f"the selection for K={k} has {len(set(sel.neurons))} distinct neurons, not {k} "
                             "(did the run score fewer neurons than K?)")
    means = next((s.means for s in selection_by_k.values() if s.means is not None), None)
    if mode == "mean" and means is None:
        raise ValueError("mean ablation needs mean activations: pass selections with means (e.g. run.top(k))")
    intervention = Intervention.of(mode, means, alpha)
    if mode == "dampen":
        for sel in selection_by_k.values():
            intervention.factors(sel)  # every selection has its factors: fail before any pass
        if alpha is None:
            random_cache = None  # the random sets borrow each top set's own factors: nothing to share

    t0, c0 = time.perf_counter(), model.counter.snapshot()
    before = concept_scores(model, readout, eval_set, batch_size)
    gap = before.gap
    if not gap > 0:
        raise ValueError(f"the concept readout does not separate the eval set (mean S(P) - mean S(N) = {gap:.4g} "
                         "<= 0), so the removal ratios are undefined")
    ppl_before = perplexity(model, neutral, batch_size)

    def effect(sel: NeuronSelection) -> RemovalEffect:
        iv = Intervention("mean", sel.means) if mode == "mean" and sel.means is not None else intervention
        with turn_off(model, sel, iv):
            after = concept_scores(model, readout, eval_set, batch_size)
            ppl_after = perplexity(model, neutral, batch_size)
        return removal_effect(before, after, ppl_before, ppl_after)

    rows = []
    for k in sorted(selection_by_k):
        top = effect(selection_by_k[k])
        if random_cache is not None and k in random_cache:
            rand = random_cache[k]
        else:
            top_alphas = selection_by_k[k].alphas if mode == "dampen" and alpha is None else None
            rand = [effect(s.with_alphas(top_alphas))
                    for s in random_selections(model, k, n_random, seed, layers, means, neuron_pool)]
            if random_cache is not None:
                random_cache[k] = rand
        rows.append(RemovalAtK.from_effects(k, top, rand))
    return RemovalReport(
        concept=eval_set.name, mode=mode, seed=seed, n_random=n_random,
        layers_pool=list(layers) if layers_pool is not None else None,
        n_eval={"positive": eval_set.n_positive, "contrast": eval_set.n_contrast}, n_neutral=len(neutral),
        auroc_before=before.auroc, gap_before=gap, mean_s_pos_before=float(before.pos.double().mean()),
        mean_s_neg_before=float(before.neg.double().mean()), ppl_before=ppl_before, rows=rows,
        passes=model.counter.since(c0).as_dict(), seconds=time.perf_counter() - t0)


# --- from a finished run ------------------------------------------------------------------------
def run_readout(run: Run) -> ConceptReadout:
    """The concept readout a run used (reading layer, vector, pooling)."""
    p = run.meta.params
    return ConceptReadout(run.meta.reading_layer, run.concept_vector, p.get("vector", "diff-means"),
                          p.get("pool", "last"), p.get("read_template", "{text}"))


def run_intervention(run: Run, mode: str | None = None, alpha: float | None = None) -> Intervention:
    """How a run's neurons are turned off: ``mode`` (zero, mean, dampen) if given, else the run's
    own: dampening with each neuron's factor for runs that define one (AurA), else its ablation."""
    if mode is None:
        mode = "dampen" if run.alpha is not None and alpha is None else run.meta.params.get("ablation", "zero")
        if alpha is not None:
            mode = "dampen"
    if mode == "dampen" and alpha is None and run.alpha is None:
        raise ValueError(f"dampening needs --alpha: the {run.meta.method} run has no per-neuron factors")
    return Intervention.of(mode, run.contrast_means, alpha)


def run_eval_set(run: Run, concept: ConceptSet) -> ConceptSet:
    """The held-out eval part of ``concept`` exactly as the run split it (same data, fraction, seed)."""
    if concept.hash != run.meta.concept_hash:
        raise RunError(f"concept set {concept.name!r} is not the data of run {run.run_dir} "
                       f"(hash {concept.hash[:12]} != {run.meta.concept_hash[:12]})")
    return concept.split(eval_fraction=run.meta.params["eval_fraction"], seed=run.meta.seed).eval


def run_selections(run: Run, ks: Sequence[int]) -> dict[int, NeuronSelection]:
    """{K: the run's top-K neurons} (with contrast means, for mean ablation)."""
    n = int(torch.isfinite(run.scores).sum())
    too_many = [k for k in ks if k > n]
    if too_many:
        raise ValueError(f"K={too_many[0]} is more than the {n} neurons the run scored")
    return {int(k): run.top(int(k)) for k in ks}


# --- helpers ------------------------------------------------------------------------------------
def _check_two_sided(eval_set: ConceptSet) -> None:
    n_pos, n_neg = eval_set.n_positive, eval_set.n_contrast
    if n_pos == 0 or n_neg == 0:
        side = "positive" if n_pos == 0 else "contrast"
        raise ValueError(f"the eval set {eval_set.name!r} has no {side} examples ({n_pos} positive, {n_neg} contrast); "
                         "removal compares positives with contrast, so both sides are needed")


def _pool_layers(model: LoadedModel, layers_pool: Sequence[int] | None) -> list[int]:
    if layers_pool is None:
        return list(range(model.n_layers))
    layers = sorted({int(l) for l in layers_pool})
    if not layers:
        raise ValueError("layers_pool is empty")
    bad = [l for l in layers if not 0 <= l < model.n_layers]
    if bad:
        raise ValueError(f"layers_pool blocks {bad} out of range: the model has blocks 0..{model.n_layers - 1}")
    return layers
