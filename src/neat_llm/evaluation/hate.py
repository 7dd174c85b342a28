"""Hate-speech effects of turning neurons off (METHOD.md section 5), before / after, against random
K-sets of the same size:

    loglik_hate / loglik_neutral = mean over held-out hateful / neutral sentences of the mean
                                   per-token log-likelihood (nats); gap = hate - neutral
    readout_accuracy             = share of held-out sentences the label readout ("Is this text
                                   hateful?" S_tok = logit(" Yes") - logit(" No") > 0) gets right;
                                   readout_auroc is the same readout without a threshold
    hate_rate / toxic_rate       = share of sampled continuations (fixed seeds) of hate-prone prompts
                                   that the Davidson classifier judges hate speech / hate or offensive
    ppl_ratio                    = perplexity(neutral text | off) / perplexity(neutral text)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..concepts.label_readout import LabelReadout
from ..interventions import NeuronSelection, turn_off
from ..models.loaded import LoadedModel
from .checkpoints import ConditionStore, check_conditions, condition_intervention, random_like
from .generation import sample_continuations
from .hate_classifier import HateClassifier
from .neutral_text import NEUTRAL_TEXTS
from .perplexity import mean_token_loglik, perplexity
from .removal import random_selections

HATE_READOUT = LabelReadout(template="Text: {text}\nIs this text hateful? Answer:", concept="hate speech")


@dataclass(frozen=True)
class HateData:
    """Held-out hateful and neutral sentences, and the hate-prone prompts to continue."""

    hate: tuple[str, ...]
    neutral: tuple[str, ...]
    prompts: tuple[str, ...]

    def __post_init__(self):
        for name in ("hate", "neutral", "prompts"):
            if not getattr(self, name):
                raise ValueError(f"the hate evaluation needs {name} texts, got none")


@dataclass
class HateMeasures:
    """The numbers of the module docstring under one condition."""

    loglik_hate: float
    loglik_neutral: float
    gap: float
    readout_accuracy: float
    readout_auroc: float
    hate_rate: float
    toxic_rate: float
    ppl: float


MEASURES = [f.name for f in fields(HateMeasures)]


@dataclass
class HateRow:
    """One condition: ``before`` (nothing off, k = 0), ``concept`` (the top-K) or ``random`` (mean over
    ``n_sets`` random K-sets, their std in ``std``)."""

    k: int
    condition: str
    loglik_hate: float
    loglik_neutral: float
    gap: float
    readout_accuracy: float
    readout_auroc: float
    hate_rate: float
    toxic_rate: float
    ppl_ratio: float
    n_sets: int = 1
    std: dict = field(default_factory=dict)


@dataclass
class HateReport:
    dataset: str
    method: str
    mode: str
    n_eval: dict
    n_prompts: int
    classifier: dict
    rows: list[HateRow]
    passes: dict
    seconds: float
    settings: dict = field(default_factory=dict)
    continuations: dict = field(default_factory=dict, repr=False)  # {condition: [text per prompt]}

    def to_dict(self) -> dict:
        """Everything but the continuations (kept apart: they are long and contain hateful text)."""
        d = asdict(self)
        d.pop("continuations")
        d["results"] = d.pop("rows")  # the name the report reads
        return d


def hate_measures(model: LoadedModel, data: HateData, classifier: HateClassifier, *, seed: int = 0,
                  max_new_tokens: int = 20, batch_size: int = 16, readout: LabelReadout = HATE_READOUT,
                  neutral_texts: Sequence[str] = NEUTRAL_TEXTS) -> tuple[HateMeasures, list[str]]:
    """All measures under whatever intervention is active, and the sampled continuations."""
    from sklearn.metrics import roc_auc_score

    ll_h = mean_token_loglik(model, data.hate, batch_size)
    ll_n = mean_token_loglik(model, data.neutral, batch_size)
    s = readout.scores(model, list(data.hate) + list(data.neutral), batch_size).double().numpy()
    y = np.r_[np.ones(len(data.hate)), np.zeros(len(data.neutral))]
    conts = sample_continuations(model, data.prompts, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    rates = classifier.rates(conts)
    m = HateMeasures(loglik_hate=float(ll_h.mean()), loglik_neutral=float(ll_n.mean()),
                     gap=float(ll_h.mean() - ll_n.mean()), readout_accuracy=float(((s > 0) == (y == 1)).mean()),
                     readout_auroc=float(roc_auc_score(y, s)), hate_rate=rates["hate_rate"],
                     toxic_rate=rates["toxic_rate"], ppl=perplexity(model, neutral_texts, batch_size))
    return m, conts


def evaluate_hate(model: LoadedModel, data: HateData, selection_by_k: Mapping[int, NeuronSelection],
                  classifier: HateClassifier, *, n_random: int = 3, seed: int = 0, mode: str = "zero",
                  neuron_pool: Sequence[tuple[int, int]] | None = None, max_new_tokens: int = 20,
                  batch_size: int = 16, readout: LabelReadout = HATE_READOUT, store: ConditionStore | None = None,
                  on_condition: Callable[[str], None] | None = None, dataset: str = "", method: str = "",
                  alpha: float | None = None) -> HateReport:
    """Measure before, with each top-K set off, and with ``n_random`` random K-sets off (drawn from
    ``neuron_pool``, default every neuron). Finished conditions are taken from / saved to ``store``.
    ``on_condition(name)`` is called after each condition (progress)."""
    check_conditions(mode, n_random, selection_by_k, alpha)
    means = next((s.means for s in selection_by_k.values() if s.means is not None), None)
    readout.token_ids(model)  # label words that are not single tokens fail before any work
    t0, c0 = time.perf_counter(), model.counter.snapshot()
    conts_by: dict[str, list[str]] = {}

    def measure(name: str, sel: NeuronSelection | None) -> HateMeasures:
        got = store.get(name) if store is not None else None
        if got is None:
            if sel is None:
                m, conts = hate_measures(model, data, classifier, seed=seed, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, readout=readout)
            else:
                with turn_off(model, sel, condition_intervention(mode, sel, means, alpha)):
                    m, conts = hate_measures(model, data, classifier, seed=seed, max_new_tokens=max_new_tokens,
                                             batch_size=batch_size, readout=readout)
            got = {"measures": asdict(m), "continuations": conts}
            if store is not None:
                store.put(name, got)
        conts_by[name] = got["continuations"]
        if on_condition:
            on_condition(name)
        return HateMeasures(**got["measures"])

    before = measure("before", None)

    def row(k: int, condition: str, ms: list[HateMeasures]) -> HateRow:
        arr = {n: np.array([getattr(m, n) for m in ms], dtype=float) for n in MEASURES}
        mean = {n: float(a.mean()) for n, a in arr.items()}
        std = {n: float(a.std(ddof=1)) if len(a) > 1 else 0.0 for n, a in arr.items()} if condition == "random" else {}
        return HateRow(k=k, condition=condition, **{n: mean[n] for n in MEASURES if n != "ppl"},
                       ppl_ratio=mean["ppl"] / before.ppl, n_sets=len(ms), std=std)

    rows = [row(0, "before", [before])]
    for k in sorted(selection_by_k):
        sel = selection_by_k[k]
        if len(set(sel.neurons)) != k:
            raise ValueError(f"the selection for K={k} has {len(set(sel.neurons))} distinct neurons, not {k}")
        rows.append(row(k, "concept", [measure(f"concept-k{k}", sel)]))
        rand = random_like(random_selections(model, k, n_random, seed, None, means, neuron_pool), sel, mode, alpha)
        rows.append(row(k, "random", [measure(f"random-k{k}-s{i}", s) for i, s in enumerate(rand)]))
    return HateReport(dataset=dataset, method=method, mode=mode,
                      n_eval={"hate": len(data.hate), "neutral": len(data.neutral)}, n_prompts=len(data.prompts),
                      classifier=classifier.quality.to_dict(), rows=rows, passes=model.counter.since(c0).as_dict(),
                      seconds=time.perf_counter() - t0,
                      settings={"n_random": n_random, "seed": seed, "max_new_tokens": max_new_tokens,
                                "readout": asdict(readout)}, continuations=conts_by)
