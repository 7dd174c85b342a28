"""What the model writes, with power (METHOD.md section 6): demonstration prompts, before / with the
top-K neurons off / with random K-sets off, every condition drawing the same seeded samples.

Per condition:
    hate_rate          share of continuations of hate-prone demonstration prompts the statement
                       judge calls hateful (an empty continuation is not hate)
    neutral_hate_rate  the same judge on continuations of neutral demonstration prompts (false
                       alarms; the judge's threshold is set so that "before" is at most 0.10)
    next_gap           judge-free: mean over hate-prone prompts of log p(held-out hateful next
                       statement | prompt) - log p(neutral next statement about the group | prompt),
                       nats per token
    ppl_ratio          perplexity of neutral text, after / before
Each top-K row carries ``vs_random`` (top-K minus the mean of its random K-sets, per prompt) and
``vs_before`` (top-K minus before, per prompt): ``PairedDifference``s of the hate rate and the
behavioural gap, with a bootstrap interval over prompts and a sign-flip permutation p-value.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..interventions import Condition, DirectionEdit, DirectionEdits, Intervention, NeuronSelection, NeuronWrites
from ..models.loaded import LoadedModel
from ..records import known
from .checkpoints import ConditionStore
from .conditions import BEFORE, CONDITIONS_PER_BATCH, given_conditions, run_conditions, study_conditions
from .demonstrations import Demonstrations
from .generation import sample_and_score_along, sample_continuations_along
from .neutral_text import NEUTRAL_TEXTS
from .paired_stats import PairedDifference, paired_difference
from .perplexity import perplexities_along
from .statement_judge import StatementJudge


DIRECTION = "direction"  # the direction-level ceiling's condition and row
# one ceiling row: a residual edit, units under the study's intervention, or what some neurons write
Ceiling = DirectionEdit | DirectionEdits | NeuronSelection | NeuronWrites


@dataclass
class BehaviourResult:
    """One condition's raw measurements (kept per condition in the study's store)."""

    hate_continuations: list[str]  # prompt-major: prompt i's sample s at i * samples + s
    neutral_continuations: list[str]
    next_gap: list[float]  # per hate-prone prompt
    ppl: float


@dataclass
class BehaviourMeasure:
    demos: Demonstrations
    samples: int = 5
    neutral_samples: int = 2
    seed: int = 0
    max_new_tokens: int = 40
    batch_size: int = 16
    neutral_texts: Sequence[str] = NEUTRAL_TEXTS

    def measure(self, model: LoadedModel, replicas: int) -> list[BehaviourResult]:
        G, d, bs = replicas, self.demos, self.batch_size
        kw = dict(max_new_tokens=self.max_new_tokens, seed=self.seed, batch_size=bs, stop_at_newline=True,
                  share_prefill=True)  # a prompt read once per condition, its cache copied to its samples
        nexts = [[" " + s.strip() + "\n" for s in d.hate_next], [" " + s.strip() + "\n" for s in d.neutral_next]]
        # the next-statement log-likelihoods read on the hate-prone prompts' own prefill (not run again)
        hate, (ll_h, ll_n) = sample_and_score_along(model, d.hate_prompts, G, samples=self.samples, score=nexts, **kw)
        neutral = sample_continuations_along(model, d.neutral_prompts, G, samples=self.neutral_samples, **kw)
        ppls = perplexities_along(model, self.neutral_texts, G, bs)
        return [BehaviourResult(hate[g], neutral[g], (ll_h[g] - ll_n[g]).tolist(), ppls[g]) for g in range(G)]

    def to_json(self, r: BehaviourResult) -> dict:
        return asdict(r)

    def from_json(self, data: dict) -> BehaviourResult:
        return BehaviourResult(**data)


@dataclass
class BehaviourRow:
    """``before`` (k = 0), ``concept`` (the top-K) or ``random`` (mean over ``n_sets`` random K-sets)."""

    k: int
    condition: str
    hate_rate: float
    hate_rate_ci: tuple[float, float]
    neutral_hate_rate: float
    next_gap: float
    ppl_ratio: float
    empty_rate: float = float("nan")  # continuations that are an empty line
    n_sets: int = 1
    vs_random: dict = field(default_factory=dict)  # {"hate_rate": PairedDifference dict, "next_gap": ...}
    vs_before: dict = field(default_factory=dict)


@dataclass
class BehaviourReport:
    dataset: str
    method: str
    mode: str
    intervention: str
    n_prompts: int
    samples: int
    n_neutral_prompts: int
    neutral_samples: int
    rows: list[BehaviourRow]
    judge: dict  # JudgeValidation as a dict
    passes: dict
    seconds: float
    settings: dict = field(default_factory=dict)
    continuations: dict = field(default_factory=dict, repr=False)  # {condition: {"hate": [...], "neutral": [...]}}

    @property
    def n_continuations(self) -> int:
        return self.n_prompts * self.samples

    def row(self, condition: str, k: int = 0) -> BehaviourRow | None:
        return next((r for r in self.rows if r.condition == condition and r.k == k), None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("continuations")
        d["n_continuations"] = self.n_continuations
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "BehaviourReport":
        rows = [BehaviourRow(**{k: (tuple(v) if k.endswith("_ci") else v)
                                for k, v in known(BehaviourRow, r, missing_numbers=True).items()}) for r in d["rows"]]
        return cls(**{**known(cls, d, skip=("rows", "continuations")), "rows": rows})


def _ci(per_prompt: np.ndarray, seed: int, n_boot: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    boot = per_prompt[rng.integers(0, len(per_prompt), size=(n_boot, len(per_prompt)))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


def evaluate_behaviour(model: LoadedModel, demos: Demonstrations, selection_by_k: Mapping[int, NeuronSelection],
                       judge: StatementJudge, *, intervention: "str | Intervention" = "zero", n_random: int = 3,
                       seed: int = 0, samples: int = 5, neutral_samples: int = 2, max_new_tokens: int = 40,
                       neuron_pool: Sequence[tuple[int, int]] | None = None, max_neutral_rate: float = 0.10,
                       store: ConditionStore | None = None, on_condition: Callable[[str], None] | None = None,
                       per_batch: int = CONDITIONS_PER_BATCH, dataset: str = "", method: str = "",
                       batch_size: int = 16,
                       ceiling: Ceiling | Mapping[str, Ceiling] | None = None,
                       ceiling_controls: Mapping[str, Sequence[Ceiling]] | None = None,
                       conditions: Mapping[int, tuple[Condition, Sequence[Condition]]] | None = None
                       ) -> BehaviourReport:
    """Measure every condition (finished ones from ``store``), set the judge's threshold on the
    "before" neutral-prompt continuations, and compare each top-K set with before and with its
    random K-sets, paired per prompt. ``ceiling``: also measure the residual stream edited along
    the concept direction (row "direction", K = 0, compared with before): what the direction
    itself does to the writing, the most a neuron set reading it could do; several, as {row name:
    edit} (e.g. the direction at several blocks: where the model writes); a ``DirectionEdits``
    edits several blocks in one row (each block's own direction removed at every block of a span),
    and a ``NeuronSelection`` is a row of those neurons under the study's intervention (e.g. every
    MLP unit of a span of blocks transported: the unit-level ceiling); a ``NeuronWrites`` is a row of
    those neurons' writes edited along a direction. ``ceiling_controls``: {ceiling row: its random
    controls} (edits of the same kind and size on random neurons, conditions "<row>-random-<i>"):
    the row gains ``vs_random`` as a top-K row does, and a row "<row>-random" their mean.
    ``conditions``: the study's own {K: (its condition, its random controls)} instead of those made
    from ``selection_by_k`` and ``intervention`` (the concept direction out of what K neurons write,
    ``NeuronWrites``: the report's mode is then "writes")."""
    ceilings = _ceilings(ceiling)
    controls = _controls(ceiling_controls, ceilings)
    means = next((s.means for s in selection_by_k.values() if s.means is not None), None)
    iv = Intervention.of(intervention, means)
    conds, (mode, described, iv_settings) = _k_conditions(model, selection_by_k, iv, n_random, seed, neuron_pool,
                                                          conditions)
    t0, c0 = time.perf_counter(), model.counter.snapshot()
    flat = [Condition(BEFORE)] + [c for k in sorted(conds) for c in (conds[k][0], *conds[k][1])]
    flat += [_ceiling_condition(name, edit, iv) for name, edit in ceilings.items()]
    flat += [_ceiling_condition(c, edit, iv) for name in controls for c, edit in controls[name].items()]
    measure = BehaviourMeasure(demos, samples, neutral_samples, seed, max_new_tokens, batch_size)
    got = run_conditions(model, flat, measure, store=store, per_batch=per_batch, on_condition=on_condition)
    judge.calibrate(got[BEFORE].neutral_continuations, max_neutral_rate)
    n = len(demos.hate_prompts)

    def hits(texts: list[str], per: int) -> np.ndarray:  # per prompt: share of its samples judged hate
        t = list(texts)
        h = judge.is_hate(t) & np.array([bool(x.strip()) for x in t])
        return h.reshape(-1, per).mean(1)

    rate = {c: hits(r.hate_continuations, samples) for c, r in got.items()}
    neutral = {c: float(hits(r.neutral_continuations, neutral_samples).mean()) for c, r in got.items()}
    gap = {c: np.array(r.next_gap, dtype=float) for c, r in got.items()}
    empty = {c: float(np.mean([not x.strip() for x in r.hate_continuations])) for c, r in got.items()}
    ppl0 = got[BEFORE].ppl

    def paired(a: list[str], b: list[str], salt: int) -> dict:  # mean over the a-conditions minus over the b's
        return {name: paired_difference(np.mean([v[x] for x in a], 0), np.mean([v[x] for x in b], 0),
                                        seed=seed + salt).to_dict() for name, v in (("hate_rate", rate), ("next_gap", gap))}

    def row(k: int, condition: str, names: list[str], salt: int) -> BehaviourRow:
        per = np.mean([rate[x] for x in names], 0)
        return BehaviourRow(k=k, condition=condition, hate_rate=float(per.mean()), hate_rate_ci=_ci(per, seed + salt),
                            neutral_hate_rate=float(np.mean([neutral[x] for x in names])),
                            next_gap=float(np.mean([gap[x].mean() for x in names])),
                            ppl_ratio=float(np.mean([got[x].ppl for x in names]) / ppl0),
                            empty_rate=float(np.mean([empty[x] for x in names])), n_sets=len(names))

    rows = [row(0, "before", [BEFORE], 0)]
    for i, k in enumerate(sorted(conds)):
        top, rand = conds[k]
        r = row(k, "concept", [top.name], 2 * i + 1)
        r.vs_before = paired([top.name], [BEFORE], 2 * i + 1)
        if rand:
            r.vs_random = paired([top.name], [c.name for c in rand], 2 * i + 2)
        rows.append(r)
        if rand:
            rr = row(k, "random", [c.name for c in rand], 2 * i + 2)
            rr.vs_before = paired([c.name for c in rand], [BEFORE], 2 * i + 2)
            rows.append(rr)
    rows += _ceiling_rows(ceilings, controls, row, paired, 2 * len(conds) + 1)
    return BehaviourReport(
        dataset=dataset, method=method, mode=mode, intervention=described, n_prompts=n, samples=samples,
        n_neutral_prompts=len(demos.neutral_prompts), neutral_samples=neutral_samples, rows=rows,
        judge=asdict(judge.validation) if judge.validation is not None else {"threshold": judge.threshold},
        passes=model.counter.since(c0).as_dict(), seconds=time.perf_counter() - t0,
        settings={"n_random": n_random, "seed": seed, "max_new_tokens": max_new_tokens, "per_batch": per_batch,
                  "max_neutral_rate": max_neutral_rate, **iv_settings,
                  **_ceiling_settings(ceilings, iv, controls)},
        continuations={c: {"hate": r.hate_continuations, "neutral": r.neutral_continuations} for c, r in got.items()})


def _ceiling_rows(ceilings: Mapping, controls: Mapping, row: Callable, paired: Callable, first_salt: int) -> list:
    """The ceiling rows (K = 0) against before, each with its random controls' row and ``vs_random``
    where it has them; ``row`` and ``paired`` as ``evaluate_behaviour`` makes them."""
    rows = []
    for j, name in enumerate(ceilings):
        salt = first_salt + j
        r = row(0, name, [name], salt)
        r.vs_before = paired([name], [BEFORE], salt)
        rows.append(r)
        if controls.get(name):
            rand = list(controls[name])
            r.vs_random = paired([name], rand, salt + 1000)
            rr = row(0, f"{name}-random", rand, salt + 1000)
            rr.vs_before = paired(rand, [BEFORE], salt + 1000)
            rows.append(rr)
    return rows


def _k_conditions(model: LoadedModel, selection_by_k: Mapping[int, NeuronSelection], iv: Intervention, n_random: int,
                  seed: int, neuron_pool, conditions):
    """The K rows: {K: (its condition, its random controls)}, and (mode, description, settings) of
    their intervention: the study's own ``conditions`` where given, else the top-K selections under
    ``iv`` beside random K-sets."""
    if conditions is None:
        conds = study_conditions(model, selection_by_k, iv, n_random=n_random, seed=seed, neuron_pool=neuron_pool)
        return conds, (iv.name, iv.describe(), iv.settings())
    conds, (mode, iv_settings) = given_conditions(conditions, n_random)
    return conds, (mode, _writes_described(conds), iv_settings)


def _writes_described(conds: Mapping[int, tuple[Condition, Sequence[Condition]]]) -> str:
    """What a writers study's K rows do, in words (the largest K's edit, its size said as K)."""
    edit = conds[max(conds)][0].writes
    return edit.describe().replace(f"from what {len(edit)} MLP neurons", "from what the K MLP neurons", 1)


_KINDS = (DirectionEdit, DirectionEdits, NeuronSelection, NeuronWrites)  # Ceiling's members


def _ceiling_condition(name: str, edit: Ceiling, iv: Intervention) -> Condition:
    if isinstance(edit, NeuronSelection):
        return Condition(name, edit, iv.for_selection(edit))
    if isinstance(edit, NeuronWrites):
        return Condition(name, writes=edit)
    return Condition(name, residual=edit)


def _ceilings(ceiling) -> dict[str, Ceiling]:
    """{row name: edit}: one edit is the row "direction"; a mapping names its rows."""
    kinds = _KINDS
    if ceiling is None:
        return {}
    if isinstance(ceiling, kinds):
        return {DIRECTION: ceiling}
    out = dict(ceiling)
    if not out or not all(isinstance(v, kinds) for v in out.values()):
        raise TypeError("ceiling must be a DirectionEdit, a DirectionEdits, a NeuronSelection, a NeuronWrites or a "
                        "non-empty {row name: one of them}")
    if any(isinstance(v, NeuronSelection) and not len(v) for v in out.values()):
        raise ValueError("a unit-level ceiling needs at least one neuron")
    clash = [n for n in out if n in (BEFORE,) or n.startswith(("concept-", "random-"))]
    if clash:
        raise ValueError(f"ceiling row names {clash} clash with the study's own conditions")
    return out


def _controls(given, ceilings: dict[str, Ceiling]) -> dict[str, dict[str, Ceiling]]:
    """{ceiling row: {control condition name: edit}}, each control of its row's kind and size."""
    out: dict[str, dict[str, Ceiling]] = {}
    for name, edits in (given or {}).items():
        if name not in ceilings:
            raise ValueError(f"random controls for {name!r}, which is not a ceiling row ({', '.join(ceilings) or 'none'})")
        edits, main = list(edits), ceilings[name]
        if any(type(e) is not type(main) or _size(e) != _size(main) for e in edits):
            raise ValueError(f"the random controls of {name!r} must be {type(main).__name__} edits of its size")
        out[name] = {f"{name}-random-{i}": e for i, e in enumerate(edits)}
    return out


def _size(edit: Ceiling) -> int:
    """Neurons of a unit or neuron-write row, blocks of a direction row."""
    return len(edit.parts) if isinstance(edit, (DirectionEdit, DirectionEdits)) else len(edit)


def _ceiling_settings(ceilings: dict, iv: Intervention, controls: dict | None = None) -> dict:
    """How the ceilings were made, for the report: "ceiling" (the first, the reading layer's, as
    before) and, for several, "ceilings" {row name: ...}; a row with random controls says how many."""
    if not ceilings:
        return {}

    def what(c) -> dict:
        if isinstance(c, NeuronSelection):
            blocks = sorted(c.by_layer())
            return {"n_neurons": len(c), "blocks": blocks, **iv.settings(),
                    "what": f"{iv.describe()} on {len(c)} MLP units of blocks {blocks[0]}-{blocks[-1]}, every position"}
        return {**c.settings(), "what": c.describe()}

    desc = {n: {**what(c), **({"n_random": len(controls[n])} if controls and controls.get(n) else {})}
            for n, c in ceilings.items()}
    return {"ceiling": next(iter(desc.values())), **({"ceilings": desc} if len(desc) > 1 else {})}


def vs_random_of(row: BehaviourRow, measure: str = "hate_rate") -> PairedDifference | None:
    """The row's paired difference against its random K-sets, typed (None when not measured)."""
    d = row.vs_random.get(measure)
    return None if d is None else PairedDifference.from_dict(d)
