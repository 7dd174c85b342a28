"""Hate-speech effects of turning neurons off (METHOD.md section 5), before / after, against random
K-sets of the same size:

    loglik_hate / loglik_neutral = mean over held-out hateful / neutral sentences of the mean
                                   per-token log-likelihood (nats); gap = hate - neutral
    readout_accuracy             = share of held-out sentences the label readout ("Is this text
                                   hateful?" S_tok = logit(" Yes") - logit(" No") > 0) gets right;
                                   readout_auroc is the same readout without a threshold
    hate_rate / toxic_rate       = share of sampled continuations (fixed seeds) of hate-prone prompts
                                   that the judge labels hate speech / hate or offensive (the MiniLM
                                   judge in the study; second_hate_rate: the second judge's hate rate)
    ppl_ratio                    = perplexity(neutral text | off) / perplexity(neutral text)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..concepts.label_readout import LabelReadout
from ..interventions import Condition, Intervention, NeuronSelection
from ..models.loaded import LoadedModel
from ..records import known
from .checkpoints import ConditionStore
from .conditions import BEFORE, CONDITIONS_PER_BATCH, run_conditions, study_conditions
from .generation import sample_continuations_along
from .hate_classifier import HateClassifier
from .neutral_text import NEUTRAL_TEXTS
from .paired_stats import paired_difference
from .perplexity import mean_token_logliks_along, perplexities_along

HATE_READOUT = LabelReadout(template="Text: {text}\nIs this text hateful? Answer:", concept="hate speech")


@dataclass(frozen=True)
class HateData:
    """Held-out hateful and neutral sentences, and the hate-prone prompts to continue, each
    ``samples`` times (seeded; the same draws under every condition)."""

    hate: tuple[str, ...]
    neutral: tuple[str, ...]
    prompts: tuple[str, ...]
    samples: int = 1
    prompt_sources: tuple[str, ...] | None = None  # where each prompt came from (rates are also given per source)

    def __post_init__(self):
        for name in ("hate", "neutral", "prompts"):
            if not getattr(self, name):
                raise ValueError(f"the hate evaluation needs {name} texts, got none")
        if self.samples < 1:
            raise ValueError(f"samples per prompt must be >= 1, got {self.samples}")
        if self.prompt_sources is not None and len(self.prompt_sources) != len(self.prompts):
            raise ValueError(f"{len(self.prompt_sources)} prompt sources for {len(self.prompts)} prompts")

    def sources(self) -> tuple[str, ...]:
        return self.prompt_sources or ("prompts",) * len(self.prompts)

    @property
    def n_continuations(self) -> int:
        return len(self.prompts) * self.samples


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
    second_hate_rate: float = float("nan")


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
    second_hate_rate: float = float("nan")
    n_sets: int = 1
    std: dict = field(default_factory=dict)
    hate_rate_ci: tuple[float, float] = (float("nan"), float("nan"))  # 95%, bootstrap over prompts
    toxic_rate_ci: tuple[float, float] = (float("nan"), float("nan"))
    by_source: dict = field(default_factory=dict)  # {prompt source: {"hate_rate", "lo", "hi", "n_prompts"}}
    vs_random: dict = field(default_factory=dict)  # top-K rows: {"hate_rate": PairedDifference dict}, paired per prompt


@dataclass
class HateSettings:
    """How a hate evaluation was made (hate.json "settings"). The evaluation fills the first block;
    ``neat hate`` the rest (the target groups and where the concept is read). None: not recorded."""

    n_random: int | None = None
    seed: int | None = None
    max_new_tokens: int | None = None
    samples_per_prompt: int | None = None
    readout: LabelReadout | None = None
    fit_groups: list[str] | None = None
    eval_groups: list[str] | None = None
    reading_layer: int | None = None
    eval_auroc: float | None = None  # held-out AUROC of the concept score
    n_fit: dict | None = None  # {"positive": n, "contrast": n}

    @classmethod
    def from_dict(cls, d: Mapping) -> "HateSettings":
        kept = known(cls, d)
        if isinstance(kept.get("readout"), Mapping):
            kept["readout"] = LabelReadout(**known(LabelReadout, kept["readout"]))
        return cls(**kept)


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
    settings: HateSettings = field(default_factory=HateSettings)
    n_continuations: int = 0
    judge: str = ""  # the judge of hate_rate / toxic_rate; classifier: its quality on Davidson
    judges: dict = field(default_factory=dict)  # {judge: {source: held-out quality}}
    agreement: dict = field(default_factory=dict)  # the two judges on every continuation (hate vs not)
    continuations: dict = field(default_factory=dict, repr=False)  # {condition: [text per prompt]}

    def row(self, condition: str, k: int = 0) -> HateRow | None:
        """The row of ``condition`` ("before", "concept", "random") at ``k``, if measured."""
        return next((r for r in self.rows if r.condition == condition and r.k == k), None)

    def to_dict(self) -> dict:
        """Everything but the continuations (kept apart: they are long and contain hateful text)."""
        d = asdict(self)
        d.pop("continuations")
        d["results"] = d.pop("rows")  # the name the report reads
        return d

    @classmethod
    def from_dict(cls, d: Mapping, continuations: dict | None = None) -> "HateReport":
        """hate.json typed again (``continuations``: hate_continuations.json's, if wanted). What an
        older file lacks reads as empty (a missing measure as NaN); a row without its K or
        condition is an error."""
        rows = [HateRow(**{k: (tuple(v) if k.endswith("_ci") else v)
                           for k, v in known(HateRow, r, missing_numbers=True).items()}) for r in d.get("results", [])]
        empty = dict(dataset="", method="", mode="", n_eval={}, n_prompts=0, classifier={}, passes={},
                     seconds=float("nan"))
        return cls(**{**empty, **known(cls, d, skip=("rows", "continuations", "settings"))}, rows=rows,
                   settings=HateSettings.from_dict(d.get("settings") or {}), continuations=dict(continuations or {}))


@dataclass
class HateMeasure:
    """The measures of the module docstring and the sampled continuations, per condition."""

    data: HateData
    classifier: HateClassifier
    seed: int = 0
    max_new_tokens: int = 20
    batch_size: int = 16
    readout: LabelReadout = HATE_READOUT
    neutral_texts: Sequence[str] = NEUTRAL_TEXTS
    second: HateClassifier | None = None  # a second judge (any object with ``rates``)

    def measure(self, model: LoadedModel, replicas: int) -> list[tuple[HateMeasures, list[str]]]:
        from sklearn.metrics import roc_auc_score

        G, d, bs = replicas, self.data, self.batch_size
        ll_h = mean_token_logliks_along(model, d.hate, G, bs)  # [G, n_hate]
        ll_n = mean_token_logliks_along(model, d.neutral, G, bs)
        s = self.readout.scores_along(model, list(d.hate) + list(d.neutral), G, bs).double().numpy()
        y = np.r_[np.ones(len(d.hate)), np.zeros(len(d.neutral))]
        conts = sample_continuations_along(model, d.prompts, G, max_new_tokens=self.max_new_tokens, seed=self.seed,
                                           batch_size=bs, samples=d.samples)
        ppls = perplexities_along(model, self.neutral_texts, G, bs)
        out = []
        for g in range(G):
            rates = self.classifier.rates(conts[g])
            out.append((HateMeasures(loglik_hate=float(ll_h[g].mean()), loglik_neutral=float(ll_n[g].mean()),
                                     gap=float(ll_h[g].mean() - ll_n[g].mean()),
                                     readout_accuracy=float(((s[g] > 0) == (y == 1)).mean()),
                                     readout_auroc=float(roc_auc_score(y, s[g])), hate_rate=rates["hate_rate"],
                                     toxic_rate=rates["toxic_rate"], ppl=ppls[g],
                                     second_hate_rate=self.second.rates(conts[g])["hate_rate"] if self.second
                                     else float("nan")), conts[g]))
        return out

    def to_json(self, result: tuple[HateMeasures, list[str]]) -> dict:
        return {"measures": asdict(result[0]), "continuations": result[1]}

    def from_json(self, data: dict) -> tuple[HateMeasures, list[str]]:
        return HateMeasures(**data["measures"]), list(data["continuations"])


def rate_interval(verdicts: list[np.ndarray], samples: int, which: str = "hate", n_boot: int = 1000,
                  seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the hate (``which="hate"``) or hate-or-offensive
    (``"toxic"``) rate over prompts (a prompt's samples stay together), from the judge's verdicts on
    each condition's continuations. Several conditions (random K-sets) are averaged per prompt
    first, as their mean rate is."""
    judged = []
    for labels in verdicts:
        hit = labels == "hate" if which == "hate" else np.isin(labels, ["hate", "offensive"])
        judged.append(hit.reshape(-1, samples).mean(1))  # [n_prompts]
    per_prompt = np.mean(judged, axis=0)
    rng = np.random.default_rng(seed)
    boot = per_prompt[rng.integers(0, len(per_prompt), size=(n_boot, len(per_prompt)))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


def _agreement(verdicts: Mapping[str, np.ndarray], second, got) -> dict:
    """The judge's verdicts against the second judge's on every continuation of every condition
    (empty without a second judge)."""
    if second is None:
        return {}
    from .embedding_judge import agreement

    names = list(got)
    texts = [t for n in names for t in got[n][1]]
    return agreement([v for n in names for v in verdicts[n].tolist()], second.predict(texts))


def hate_measures(model: LoadedModel, data: HateData, classifier: HateClassifier, *, seed: int = 0,
                  max_new_tokens: int = 20, batch_size: int = 16, readout: LabelReadout = HATE_READOUT,
                  neutral_texts: Sequence[str] = NEUTRAL_TEXTS) -> tuple[HateMeasures, list[str]]:
    """All measures under whatever intervention is active, and the sampled continuations."""
    return HateMeasure(data, classifier, seed, max_new_tokens, batch_size, readout, neutral_texts).measure(model, 1)[0]


def evaluate_hate(model: LoadedModel, data: HateData, selection_by_k: Mapping[int, NeuronSelection],
                  classifier: HateClassifier, *, n_random: int = 3, seed: int = 0, mode: "str | Intervention" = "zero",
                  neuron_pool: Sequence[tuple[int, int]] | None = None, max_new_tokens: int = 20,
                  batch_size: int = 16, readout: LabelReadout = HATE_READOUT, store: ConditionStore | None = None,
                  on_condition: Callable[[str], None] | None = None, dataset: str = "", method: str = "",
                  alpha: float | None = None, per_batch: int = CONDITIONS_PER_BATCH,
                  second_judge: HateClassifier | None = None) -> HateReport:
    """Measure before, with each top-K set off, and with ``n_random`` random K-sets off (drawn from
    ``neuron_pool``, default every neuron), ``per_batch`` conditions at a time along the batch.
    ``classifier`` judges the continuations (hate_rate, toxic_rate, their intervals);
    ``second_judge``, when given, is the second opinion (second_hate_rate, agreement).
    Finished conditions are taken from / saved to ``store``. ``on_condition(name)`` is called after
    each condition (progress)."""
    means = next((s.means for s in selection_by_k.values() if s.means is not None), None)
    iv = Intervention.of(mode, means, alpha)
    conds = study_conditions(model, selection_by_k, iv, n_random=n_random, seed=seed,
                             neuron_pool=neuron_pool)
    readout.token_ids(model)  # label words that are not single tokens fail before any work
    t0, c0 = time.perf_counter(), model.counter.snapshot()
    flat = [Condition(BEFORE)] + [c for k in sorted(conds) for c in (conds[k][0], *conds[k][1])]
    got = run_conditions(model, flat, HateMeasure(data, classifier, seed, max_new_tokens, batch_size, readout,
                                                  second=second_judge),
                         store=store, per_batch=per_batch, on_condition=on_condition)
    before = got[BEFORE][0]
    # the judge's verdict on every continuation, once (intervals, sources and agreement read these)
    verdicts = {name: np.array(classifier.predict(conts) if conts else [], dtype=object)
                for name, (_, conts) in got.items()}
    sources = np.repeat(np.array(data.sources()), data.samples)  # one entry per continuation

    def row(k: int, condition: str, names: list[str]) -> HateRow:
        ms = [got[n][0] for n in names]
        arr = {n: np.array([getattr(m, n) for m in ms], dtype=float) for n in MEASURES}
        mean = {n: float(a.mean()) for n, a in arr.items()}
        std = {n: float(a.std(ddof=1)) if len(a) > 1 else 0.0 for n, a in arr.items()} if condition == "random" else {}
        judged = [verdicts[n] for n in names]
        hate_ci, toxic_ci = (rate_interval(judged, data.samples, which, seed=seed) for which in ("hate", "toxic"))
        by_source = {}
        if len(set(sources)) > 1:
            for src in sorted(set(sources)):
                part = [v[sources == src] for v in judged]
                rate = float(np.mean([np.mean(p == "hate") for p in part]))
                lo, hi = rate_interval(part, data.samples, "hate", seed=seed)
                by_source[src] = {"hate_rate": rate, "lo": lo, "hi": hi, "n_prompts": len(part[0]) // data.samples}
        return HateRow(k=k, condition=condition, **{n: mean[n] for n in MEASURES if n != "ppl"},
                       ppl_ratio=mean["ppl"] / before.ppl, n_sets=len(ms), std=std, hate_rate_ci=hate_ci,
                       toxic_rate_ci=toxic_ci, by_source=by_source)

    def per_prompt(names: list[str]) -> np.ndarray:  # each prompt's hate rate, the conditions averaged
        return np.mean([(verdicts[n] == "hate").reshape(-1, data.samples).mean(1) for n in names], axis=0)

    rows = [row(0, "before", [BEFORE])]
    for k in sorted(conds):
        top, rand = conds[k]
        rows.append(row(k, "concept", [top.name]))
        if rand:
            rows[-1].vs_random = {"hate_rate": paired_difference(per_prompt([top.name]), per_prompt(
                [c.name for c in rand]), seed=seed + k).to_dict()}
        rows.append(row(k, "random", [c.name for c in rand]))
    return HateReport(dataset=dataset, method=method, mode=iv.name,
                      n_eval={"hate": len(data.hate), "neutral": len(data.neutral)}, n_prompts=len(data.prompts),
                      n_continuations=data.n_continuations,
                      classifier=classifier.quality_dict()["davidson"],
                      judge=classifier.name,
                      judges={j.name: j.quality_dict() for j in (classifier, second_judge) if j is not None},
                      agreement=_agreement(verdicts, second_judge, got),
                      rows=rows, passes=model.counter.since(c0).as_dict(),
                      seconds=time.perf_counter() - t0,
                      settings=HateSettings(n_random=n_random, seed=seed, max_new_tokens=max_new_tokens,
                                            samples_per_prompt=data.samples, readout=readout),
                      continuations={name: conts for name, (_, conts) in got.items()})
