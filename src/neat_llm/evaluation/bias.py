"""Social-bias effects of turning neurons off (METHOD.md section 5): the stereotype score on
minimal pairs, before / after, against random K-sets of the same size.

    stereotype score = 100 x share of pairs whose more-stereotypical sentence the model finds more
                       likely (summed token log-likelihood, each sentence read after the BOS token
                       so its first word is scored too; ties count half). 50 = no preference.

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
from ..interventions import NeuronSelection, turn_off
from ..models.loaded import LoadedModel
from .checkpoints import ConditionStore, check_conditions, condition_intervention, random_like
from .neutral_text import NEUTRAL_TEXTS
from .perplexity import perplexity, text_logliks
from .removal import random_selections

ALL = "all"


def sentence_logliks(model: LoadedModel, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """Summed log-likelihood of each sentence given the start token: [N] float64. A tokenizer
    that adds no start token of its own gets its BOS (or EOS) string prepended, so the sentence's
    first token is predicted like the others."""
    tok = model.tokenizer
    probe = tok("a")["input_ids"]
    specials = set(tok.all_special_ids)
    start = "" if probe and probe[0] in specials else (tok.bos_token or tok.eos_token or "")
    sums, _ = text_logliks(model, [start + t for t in texts], batch_size)
    return sums


def pair_preferences(model: LoadedModel, pairs: MinimalPairs, batch_size: int = 16) -> np.ndarray:
    """Per pair: 1 if the more-stereotypical sentence is more likely, 0 if less, 0.5 on a tie: [n]."""
    ll = sentence_logliks(model, list(pairs.more) + list(pairs.less), batch_size).numpy()
    d = ll[: len(pairs)] - ll[len(pairs):]
    return np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5))


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
    before: dict
    after: dict
    random: dict
    ppl_ratio: float
    random_ppl_ratio: float
    n_random: int


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
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["results"] = d.pop("rows")  # the name the report reads
        return d


def evaluate_bias(model: LoadedModel, pairs: MinimalPairs, selection_by_k: Mapping[int, NeuronSelection], *,
                  n_random: int = 3, seed: int = 0, mode: str = "zero",
                  neuron_pool: Sequence[tuple[int, int]] | None = None, neutral_texts: Sequence[str] = NEUTRAL_TEXTS,
                  n_boot: int = 1000, min_pairs: int = 5, batch_size: int = 16, store: ConditionStore | None = None,
                  on_condition: Callable[[str], None] | None = None, dataset: str = "", lang: str = "",
                  method: str = "", alpha: float | None = None) -> BiasReport:
    """Stereotype scores of the held-out ``pairs`` per bias type (types with fewer than ``min_pairs``
    pairs only count towards ``all``) before, with each top-K set off and with ``n_random`` random
    K-sets off (from ``neuron_pool``, default every neuron); perplexity ratio on ``neutral_texts``."""
    check_conditions(mode, n_random, selection_by_k, alpha)
    if len(pairs) == 0:
        raise ValueError(f"{pairs.name}: no pairs to evaluate")
    means = next((s.means for s in selection_by_k.values() if s.means is not None), None)
    t0, c0 = time.perf_counter(), model.counter.snapshot()

    def measure(name: str, sel: NeuronSelection | None) -> tuple[np.ndarray, float]:
        got = store.get(name) if store is not None else None
        if got is None:
            def run():
                return pair_preferences(model, pairs, batch_size).tolist(), perplexity(model, neutral_texts, batch_size)

            if sel is None:
                prefs, ppl = run()
            else:
                with turn_off(model, sel, condition_intervention(mode, sel, means, alpha)):
                    prefs, ppl = run()
            got = {"prefs": prefs, "ppl": ppl}
            if store is not None:
                store.put(name, got)
        if on_condition:
            on_condition(name)
        return np.asarray(got["prefs"]), float(got["ppl"])

    types = np.array(pairs.bias_type)
    groups = [ALL] + [t for t in sorted(set(pairs.bias_type)) if (types == t).sum() >= min_pairs]
    pb, ppl_b = measure("before", None)
    rows = []
    for k in sorted(selection_by_k):
        sel = selection_by_k[k]
        if len(set(sel.neurons)) != k:
            raise ValueError(f"the selection for K={k} has {len(set(sel.neurons))} distinct neurons, not {k}")
        pa, ppl_a = measure(f"concept-k{k}", sel)
        rand = [measure(f"random-k{k}-s{i}", s)
                for i, s in enumerate(random_like(random_selections(model, k, n_random, seed, None, means, neuron_pool),
                                                  sel, mode, alpha))]
        pr = np.mean([p for p, _ in rand], axis=0)
        ppl_r = float(np.mean([q for _, q in rand]))
        for g in groups:
            m = np.ones(len(pairs), bool) if g == ALL else types == g
            score = [asdict(StereotypeScore.of(p[m], n_boot, seed)) for p in (pb, pa, pr)]
            rows.append(BiasRow(bias_type=g, k=k, n=int(m.sum()), before=score[0], after=score[1], random=score[2],
                                ppl_ratio=ppl_a / ppl_b, random_ppl_ratio=ppl_r / ppl_b, n_random=n_random))
    return BiasReport(dataset=dataset, lang=lang, method=method, mode=mode, n_eval_pairs=len(pairs), ppl_before=ppl_b,
                      rows=rows, passes=model.counter.since(c0).as_dict(), seconds=time.perf_counter() - t0,
                      settings={"n_random": n_random, "seed": seed, "n_boot": n_boot, "min_pairs": min_pairs,
                                "n_neutral": len(neutral_texts)})
