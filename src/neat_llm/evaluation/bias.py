"""Social-bias effects of turning neurons off (METHOD.md section 5): the stereotype score on
minimal pairs, before / after, against random K-sets of the same size.

    stereotype score = 100 x share of pairs whose more-stereotypical sentence the model finds more
                       likely (summed token log-likelihood, each sentence read after the BOS token
                       so its first word is scored too; ties count half). 50 = no preference.
                       For templates (a MASK slot, stereotypical and anti-stereotypical target
                       lists): the share of templates whose stereotypical fillings score higher,
                       a filling scoring log p(sentence) - log p(target).

Each score comes with n and a 95% percentile-bootstrap interval over pairs. The random control's
per-pair preference is averaged over its K-sets before scoring and bootstrapping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..concepts.datasets import MinimalPairs
from ..concepts.templates import BiasTemplates, targets_of
from ..interventions import Condition, Intervention, NeuronSelection, NeuronWrites
from ..models.loaded import LoadedModel
from ..records import known
from .checkpoints import ConditionStore
from .conditions import BEFORE, CONDITIONS_PER_BATCH, given_conditions, run_conditions, study_conditions
from .neutral_text import NEUTRAL_TEXTS
from .perplexity import perplexities_along, text_logliks_along

ALL = "all"


def sentence_logliks(model: LoadedModel, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """Summed log-likelihood of each sentence given the start token: [N] float64. A tokenizer
    that adds no start token of its own gets its BOS (or EOS) string prepended, so the sentence's
    first token is predicted like the others."""
    return sentence_logliks_along(model, texts, 1, batch_size)[0]


def sentence_logliks_along(model: LoadedModel, texts: Sequence[str], replicas: int,
                           batch_size: int = 16) -> torch.Tensor:
    """``sentence_logliks`` under each of ``replicas`` conditions along the batch: [G, N]."""
    return text_logliks_along(model, [_start(model) + t for t in texts], replicas, batch_size)[0]


def _start(model: LoadedModel) -> str:
    tok = model.tokenizer
    probe = tok("a")["input_ids"]
    return "" if probe and probe[0] in set(tok.all_special_ids) else (tok.bos_token or tok.eos_token or "")


def pair_preferences(model: LoadedModel, pairs: MinimalPairs, batch_size: int = 16) -> np.ndarray:
    """Per pair: 1 if the more-stereotypical sentence is more likely, 0 if less, 0.5 on a tie: [n]."""
    return pair_preferences_along(model, pairs, 1, batch_size)[0]


def pair_preferences_along(model: LoadedModel, pairs: MinimalPairs, replicas: int, batch_size: int = 16) -> np.ndarray:
    """``pair_preferences`` under each of ``replicas`` conditions along the batch: [G, n]."""
    ll = sentence_logliks_along(model, list(pairs.more) + list(pairs.less), replicas, batch_size).numpy()
    d = ll[:, : len(pairs)] - ll[:, len(pairs):]
    return np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5))


def template_preferences_along(model: LoadedModel, templates: BiasTemplates, replicas: int,
                               batch_size: int = 16) -> np.ndarray:
    """Per template, under each of ``replicas`` conditions: 1 if the stereotypical fillings are
    preferred, 0 if the anti-stereotypical ones, 0.5 on a tie: [G, n]. A filling with target t
    scores log p(sentence with t) - log p(t) (both summed log-likelihoods from the start token:
    the sentence's likelihood normalised for the target word's own), averaged over each list."""
    fillings = sorted({templates.fill(i, t) for i in range(len(templates)) for t in templates.stereo[i] + templates.anti[i]})
    targets = sorted({t for i in range(len(templates)) for f in templates.stereo[i] + templates.anti[i]
                      for t in targets_of(f)})
    ll = sentence_logliks_along(model, fillings + targets, replicas, batch_size).numpy()  # [G, F + T]
    at = {x: j for j, x in enumerate(fillings + targets)}

    def side(i: int, fills: tuple) -> np.ndarray:  # a filling of k slots is normalised by its k targets' own
        return np.mean([ll[:, at[templates.fill(i, f)]] - sum(ll[:, at[t]] for t in targets_of(f)) for f in fills],
                       axis=0)  # [G]

    d = np.stack([side(i, templates.stereo[i]) - side(i, templates.anti[i]) for i in range(len(templates))], 1)
    return np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5))


def preferences_along(model: LoadedModel, items: "MinimalPairs | BiasTemplates", replicas: int,
                      batch_size: int = 16) -> np.ndarray:
    """Pair preferences for minimal pairs, template preferences for templates: [G, n]."""
    if isinstance(items, BiasTemplates):
        return template_preferences_along(model, items, replicas, batch_size)
    return pair_preferences_along(model, items, replicas, batch_size)


@dataclass(frozen=True)
class StereotypeScore:
    """Stereotype score in percent with its 95% bootstrap interval over n pairs."""

    score: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, prefs: np.ndarray, n_boot: int = 1000, seed: int = 0) -> "StereotypeScore":
        prefs = np.asarray(prefs, dtype=float)
        n = len(prefs)
        if n == 0:
            raise ValueError("no pairs to score")
        rng = np.random.default_rng(seed)
        boot = prefs[rng.integers(0, n, size=(n_boot, n))].mean(1)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        return cls(100 * float(prefs.mean()), 100 * float(lo), 100 * float(hi), n)


@dataclass
class BiasRow:
    """One bias type (or ``all``) at one K: scores before, with the top-K off, with random K-sets off."""

    bias_type: str
    k: int
    n: int
    before: StereotypeScore
    after: StereotypeScore
    random: StereotypeScore
    ppl_ratio: float
    random_ppl_ratio: float
    n_random: int
    vs_random: dict | None = None  # PairedDifference (points) of after − random, paired over items
    vs_before: dict | None = None  # the same for after − before

    @classmethod
    def from_dict(cls, d: Mapping) -> "BiasRow":
        """A row of bias.json; a missing perplexity ratio reads as NaN, a missing score is an error."""
        kept = {"n_random": 0, **known(cls, d, missing_numbers=True)}
        for name in ("vs_random", "vs_before"):
            kept[name] = d.get(name) if isinstance(d.get(name), Mapping) else None
        for side in ("before", "after", "random"):
            if not isinstance(d.get(side), Mapping):
                raise ValueError(f"a bias row ({d.get('bias_type', '?')}, K = {d.get('k', '?')}) has no {side!r} score")
            kept[side] = StereotypeScore(**{"n": d.get("n", 0), **known(StereotypeScore, d[side])})
        return cls(**kept)


@dataclass
class CeilingRow:
    """One bias type (or ``all``) under one ceiling (an edit of the concept direction itself, e.g. out
    of what every MLP writes): its score against before, paired over items, no random control."""

    bias_type: str
    ceiling: str
    n: int
    before: StereotypeScore
    after: StereotypeScore
    ppl_ratio: float
    vs_before: dict | None = None  # PairedDifference (points) of after − before

    @classmethod
    def from_dict(cls, d: Mapping) -> "CeilingRow":
        kept = known(cls, d, missing_numbers=True)
        kept["vs_before"] = d.get("vs_before") if isinstance(d.get("vs_before"), Mapping) else None
        for side in ("before", "after"):
            kept[side] = StereotypeScore(**{"n": d.get("n", 0), **known(StereotypeScore, d[side])})
        return cls(**kept)


@dataclass
class BiasSettings:
    """How a bias evaluation was made (bias.json "settings"). The evaluation fills the first block;
    ``neat bias`` the rest (the data, the reading layer and how readable the concept is there).
    None: not recorded."""

    n_random: int | None = None
    seed: int | None = None
    n_boot: int | None = None
    min_pairs: int | None = None
    n_neutral: int | None = None
    bias_type: str | None = None
    n_fit_pairs: int | None = None
    eval_fraction: float | None = None
    templates: dict | None = None  # the template columns, for a file of templates
    n_eval_items: int | None = None
    probe: str | None = None  # "prototypical" or "paired"
    score: str | None = None  # find's score rule
    reading_layer: int | None = None
    eval_auroc: float | None = None  # P-vs-N AUROC of the concept score on the held-out sentences
    n_fit: dict | None = None
    layer_rule: str | None = None  # "paired" or "auroc"
    paired_cv_accuracy: float | None = None  # at the reading layer, cross-validated on the fit pairs
    paired_cv_accuracy_by_layer: list[float] | None = None
    eval_paired_accuracy: float | None = None  # held out
    eval_paired_accuracy_by_type: dict | None = None  # {bias type: {"n", "accuracy"}}
    intervention: dict | None = None  # Intervention.settings() of what was turned off (mode, alpha, strength ...)
    folds: int | None = None  # cross-fitting: every item evaluated once, by neurons found without it
    fold_reading_layers: list[int] | None = None
    reused_conditions: list[str] | None = None  # conditions taken from an earlier study measuring the same way
    writer_rank: str | None = None  # with writers: how they were ranked ("contrast" or "effect")


@dataclass
class ItemPreferences:
    """Each held-out item's bias type and its preference (1 = the stereotypical side, ties 0.5;
    templates: the share of stereotypical fillings) under every condition, with each condition's
    perplexity on the neutral texts; ``conditions``: {K: (the top-K condition, [its random ones])}."""

    bias_type: list[str]
    prefs: dict[str, list[float]]
    ppl: dict[str, float]
    conditions: dict[int, tuple[str, list[str]]]
    ceilings: list[str] = field(default_factory=list)  # conditions measured beside the K rows, with no control

    @classmethod
    def from_dict(cls, d: Mapping) -> "ItemPreferences":
        return cls(list(d["bias_type"]), {k: [float(x) for x in v] for k, v in d["prefs"].items()},
                   {k: float(v) for k, v in d["ppl"].items()},
                   {int(k): (v[0], list(v[1])) for k, v in d["conditions"].items()}, list(d.get("ceilings") or []))

    @classmethod
    def pooled(cls, parts: Sequence["ItemPreferences"]) -> "ItemPreferences":
        """The items of several evaluations (the folds of a cross-fitted study) as one: preferences
        concatenated in the parts' order; each condition's perplexity ratio to before is the mean of
        the parts' ratios, kept as ``ppl`` with before at 1."""
        first = parts[0]
        names = list(first.prefs)
        if any(list(p.prefs) != names or p.conditions != first.conditions or p.ceilings != first.ceilings
               for p in parts):
            raise ValueError("the parts were evaluated under different conditions")
        ratio = {n: float(np.mean([p.ppl[n] / p.ppl[BEFORE] for p in parts])) for n in names}
        return cls([t for p in parts for t in p.bias_type], {n: [x for p in parts for x in p.prefs[n]] for n in names},
                   ratio, first.conditions, list(first.ceilings))


@dataclass
class BiasReport:
    dataset: str
    lang: str
    method: str
    mode: str
    n_eval_pairs: int
    ppl_before: float
    rows: list[BiasRow]
    passes: dict
    seconds: float
    settings: BiasSettings = field(default_factory=BiasSettings)
    items: ItemPreferences | None = None  # every item's preference under every condition (pooling, resume)
    ceilings: list[CeilingRow] = field(default_factory=list)  # the direction-level ceilings beside the K rows

    @property
    def edits_writes(self) -> bool:
        """Whether the K rows edited what neurons write (``conditions.writes_settings``), not their activations."""
        return (self.settings.intervention or {}).get("site") == NeuronWrites.SITE

    def to_dict(self) -> dict:
        d = asdict(self)
        d["results"] = d.pop("rows")  # the name the report reads
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "BiasReport":
        """bias.json typed again; what an older file lacks reads as empty (a missing number as NaN)."""
        empty = dict(dataset="", lang="", method="", mode="", n_eval_pairs=0, ppl_before=float("nan"), passes={},
                     seconds=float("nan"))
        items = d.get("items")
        return cls(**{**empty, **known(cls, d, skip=("rows", "settings", "items", "ceilings"))},
                   rows=[BiasRow.from_dict(r) for r in d.get("results", [])],
                   settings=BiasSettings(**known(BiasSettings, d.get("settings") or {})),
                   items=ItemPreferences.from_dict(items) if isinstance(items, Mapping) else None,
                   ceilings=[CeilingRow.from_dict(r) for r in d.get("ceilings") or []])


@dataclass
class BiasMeasure:
    """Per-pair (or per-template) preferences and perplexity on the neutral texts, per condition."""

    pairs: MinimalPairs | BiasTemplates
    neutral_texts: Sequence[str] = NEUTRAL_TEXTS
    batch_size: int = 16

    def measure(self, model: LoadedModel, replicas: int) -> list[tuple[np.ndarray, float]]:
        prefs = preferences_along(model, self.pairs, replicas, self.batch_size)
        ppls = perplexities_along(model, self.neutral_texts, replicas, self.batch_size)
        return list(zip(prefs, ppls))

    def to_json(self, result: tuple[np.ndarray, float]) -> dict:
        return {"prefs": result[0].tolist(), "ppl": result[1]}

    def from_json(self, data: dict) -> tuple[np.ndarray, float]:
        return np.asarray(data["prefs"], dtype=float), float(data["ppl"])


def evaluate_bias(model: LoadedModel, pairs: MinimalPairs | BiasTemplates, selection_by_k: Mapping[int, NeuronSelection], *,
                  n_random: int = 3, seed: int = 0, mode: "str | Intervention" = "zero",
                  neuron_pool: Sequence[tuple[int, int]] | None = None, neutral_texts: Sequence[str] = NEUTRAL_TEXTS,
                  n_boot: int = 1000, min_pairs: int = 5, batch_size: int = 16, store: ConditionStore | None = None,
                  on_condition: Callable[[str], None] | None = None, dataset: str = "", lang: str = "",
                  method: str = "", alpha: float | None = None, per_batch: int = CONDITIONS_PER_BATCH,
                  conditions: Mapping[int, tuple[Condition, Sequence[Condition]]] | None = None,
                  ceilings: Sequence[Condition] = ()) -> BiasReport:
    """Stereotype scores of the held-out ``pairs`` (minimal pairs, or templates scored by their
    decoder metric) per bias type (types with fewer than ``min_pairs``
    pairs only count towards ``all``) before, with each top-K set off and with ``n_random`` random
    K-sets off (from ``neuron_pool``, default every neuron); perplexity ratio on ``neutral_texts``;
    the top K against random and against before, paired over items.
    ``per_batch`` conditions are measured at a time along the batch. ``conditions``: the study's own
    {K: (its condition, its random controls)} instead of those made from ``selection_by_k`` and
    ``mode`` (e.g. the concept direction out of what K neurons write, ``NeuronWrites``); then the
    report's mode and intervention settings are the top conditions' kind ("writes"). ``ceilings``:
    conditions measured beside them with no random control (the concept direction edited itself,
    e.g. ``DirectionEdit``), each against before (``ceiling_rows``)."""
    if len(pairs) == 0:
        raise ValueError(f"{pairs.name}: no pairs to evaluate")
    if conditions is None:
        means = next((s.means for s in selection_by_k.values() if s.means is not None), None)
        iv = Intervention.of(mode, means, alpha)
        conds = study_conditions(model, selection_by_k, iv, n_random=n_random, seed=seed,
                                 neuron_pool=neuron_pool)
        mode_name, iv_settings = iv.name, iv.settings()
    else:
        conds, (mode_name, iv_settings) = given_conditions(conditions, n_random)
    t0, c0 = time.perf_counter(), model.counter.snapshot()
    flat = [Condition(BEFORE)] + [c for k in sorted(conds) for c in (conds[k][0], *conds[k][1])] + list(ceilings)
    got = run_conditions(model, flat, BiasMeasure(pairs, neutral_texts, batch_size), store=store,
                         per_batch=per_batch, on_condition=on_condition)
    items = ItemPreferences(list(pairs.bias_type), {n: [float(x) for x in v[0]] for n, v in got.items()},
                            {n: float(v[1]) for n, v in got.items()},
                            {int(k): (top.name, [c.name for c in rand]) for k, (top, rand) in sorted(conds.items())},
                            [c.name for c in ceilings])
    return BiasReport(dataset=dataset, lang=lang, method=method, mode=mode_name, n_eval_pairs=len(pairs),
                      ppl_before=got[BEFORE][1], rows=bias_rows(items, n_boot, seed, min_pairs),
                      ceilings=ceiling_rows(items, n_boot, seed, min_pairs),
                      passes=model.counter.since(c0).as_dict(), seconds=time.perf_counter() - t0,
                      settings=BiasSettings(n_random=n_random, seed=seed, n_boot=n_boot, min_pairs=min_pairs,
                                            n_neutral=len(neutral_texts), intervention=iv_settings), items=items)


def _groups(items: ItemPreferences, min_pairs: int) -> tuple[np.ndarray, list[str]]:
    """(each item's type, the groups reported: ``all`` first, then each type with ``min_pairs`` items)."""
    types = np.array(items.bias_type)
    return types, [ALL] + [t for t in sorted(set(items.bias_type)) if (types == t).sum() >= min_pairs]


def ceiling_rows(items: ItemPreferences, n_boot: int = 1000, seed: int = 0, min_pairs: int = 5) -> list[CeilingRow]:
    """One row per ceiling and group: its stereotype score against before, paired over items."""
    from .paired_stats import paired_difference

    types, groups = _groups(items, min_pairs)
    pb = np.asarray(items.prefs[BEFORE])
    rows = []
    for name in items.ceilings:
        pa = np.asarray(items.prefs[name])
        for g in groups:
            m = np.ones(len(pa), bool) if g == ALL else types == g
            rows.append(CeilingRow(bias_type=g, ceiling=name, n=int(m.sum()), before=StereotypeScore.of(pb[m], n_boot, seed),
                                   after=StereotypeScore.of(pa[m], n_boot, seed),
                                   ppl_ratio=items.ppl[name] / items.ppl[BEFORE],
                                   vs_before=paired_difference(100 * pa[m], 100 * pb[m], seed=seed).to_dict()))
    return rows


def bias_rows(items: ItemPreferences, n_boot: int = 1000, seed: int = 0, min_pairs: int = 5) -> list[BiasRow]:
    """One row per K and bias type (``all`` first; a type with fewer than ``min_pairs`` items only
    counts towards ``all``): the stereotype scores before, after and with the random K-sets off
    (their per-item preference averaged first), the perplexity ratios, and after − random and
    after − before paired over items (points)."""
    from .paired_stats import paired_difference

    types, groups = _groups(items, min_pairs)
    pb, ppl_b = np.asarray(items.prefs[BEFORE]), items.ppl[BEFORE]
    rows = []
    for k, (top, rand) in sorted(items.conditions.items()):
        pa = np.asarray(items.prefs[top])
        pr = np.mean([items.prefs[c] for c in rand], axis=0) if rand else np.full_like(pa, np.nan)
        ppl_r = float(np.mean([items.ppl[c] for c in rand])) if rand else float("nan")
        for g in groups:
            m = np.ones(len(pa), bool) if g == ALL else types == g
            score = [StereotypeScore.of(p[m], n_boot, seed) if np.isfinite(p[m]).all() else
                     StereotypeScore(float("nan"), float("nan"), float("nan"), int(m.sum())) for p in (pb, pa, pr)]
            vs_r = paired_difference(100 * pa[m], 100 * pr[m], seed=seed).to_dict() if rand else None
            rows.append(BiasRow(bias_type=g, k=k, n=int(m.sum()), before=score[0], after=score[1], random=score[2],
                                ppl_ratio=items.ppl[top] / ppl_b, random_ppl_ratio=ppl_r / ppl_b, n_random=len(rand),
                                vs_random=vs_r, vs_before=paired_difference(100 * pa[m], 100 * pb[m], seed=seed).to_dict()))
    return rows
