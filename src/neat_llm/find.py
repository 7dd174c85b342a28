"""From a model and a concept set to ranked concept neurons: the whole pipeline of one run."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import platform
import re
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .concepts.conceptset import ConceptSet
from .concepts.label_readout import LabelReadout
from .concepts.representations import text_pass
from .concepts.vectors import (ConceptReadout, apply_template,
                               choose_reading_layer, concept_vectors, layer_aurocs)
from .models.loaded import LoadedModel
from .progress import progress_bar
from .concepts.examples import neuron_examples
from .runs import PartialSweep, Run, RunError, RunFiles, RunMeta, check_run_folder, run_folder_lock, write_text
from .interventions import Intervention
from .find_settings import (DEFAULT_POSITIONS, EFFECT_METHODS, POSITION_METHODS,
                            PROBE_METHODS, FindSettings, build_scorer)
from .models.loaded import PassCounter
from .scoring import NeuronScores, ProbeSet, Scorer, ScoringTask
from .scoring.effects import ProbeEffects, combine, score_from_effects  # noqa: F401  (score_from_effects: find.score_from_effects, as before)
from .scoring.fluency import fluency_cost
from .sweeps import LocalSweep, SweepExecutor

# top.csv: the ranking with what tells a concept neuron from a generic one (runs.NeuronRow)
TOP_COLUMNS = ("rank", "layer", "neuron", "score", "effect", "effect_positive", "effect_contrast", "mean_positive",
               "mean_contrast", "fluency_cost", "score_lo", "score_hi", "stability")


EXAMPLE_NEURONS = 50  # top neurons whose top-activating examples the run keeps for its report


def paired_probes(pairs: Sequence[tuple[str, str]], pos: list[str], neg: list[str], s_pos: torch.Tensor,
                  s_neg: torch.Tensor, b: int, read_template: str) -> tuple[list[str], list[str]]:
    """The probe batch of ``b`` pairs with the largest S(positive) − S(counterpart) among the pairs
    whose two sentences are both fit texts: (their positives, their counterparts), as the model reads
    them (with ``read_template``), pair i of one list matching pair i of the other."""
    sp = {t: float(v) for t, v in zip(pos, s_pos)}
    sn = {t: float(v) for t, v in zip(neg, s_neg)}
    usable = list(dict.fromkeys((a, c) for a, c in pairs if a in sp and c in sn))
    if not usable:
        raise ValueError("no probe pair has both sentences in the fit split; give the pairs the concept was made from")
    usable.sort(key=lambda p: sp[p[0]] - sn[p[1]], reverse=True)
    chosen = usable[:b]
    return (apply_template(read_template, [a for a, _ in chosen]), apply_template(read_template, [c for _, c in chosen]))


def _pairs_sha(pairs: Sequence[tuple[str, str]]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps([list(p) for p in pairs]).encode()).hexdigest()


def parse_layers(spec: str | None, n_layers: int) -> list[int] | None:
    """``"0-5,7,10-"`` -> [0..5, 7, 10..n-1]; None -> None (all)."""
    if spec is None or spec == "":
        return None
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d*)\s*-\s*(\d*)", part)
        if m and not m.group(1):  # "-3" reads as a negative block (or "the last 3") as easily as "0-3"
            raise ValueError(f"layer spec {part!r} is ambiguous (block numbers are never negative): write "
                             f"'0-{m.group(2)}' for blocks 0 to {m.group(2) or n_layers - 1}")
        if m:
            a = int(m.group(1)) if m.group(1) else 0
            b = int(m.group(2)) if m.group(2) else n_layers - 1
            if a > b:
                raise ValueError(f"layer range {part!r} is empty: write the lower block first (e.g. '{b}-{a}')")
            out.update(range(a, b + 1))
        elif part.isdigit():
            out.add(int(part))
        else:
            raise ValueError(f"cannot read layer spec {part!r}; use e.g. '0-5,7,20-'")
    bad = sorted(l for l in out if l >= n_layers)
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has blocks 0..{n_layers - 1}")
    return sorted(out)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("neat-llm", "torch", "transformers", "safetensors", "scikit-learn", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def default_run_dir(concept: ConceptSet, method: str, root: str | Path = "runs") -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", concept.name)[:40] or "concept"
    return Path(root) / f"{stamp}-{safe}-{method}"


def own_token_counts(model: LoadedModel, texts: list[str], template: str) -> list[int]:
    """Per text, how many of its read tokens (``template`` applied) are the text's own: the
    template's prefix and the text, up to where the template's suffix begins (a last token merged
    with the suffix counts as the template's)."""
    prefix = template.split("{text}")[0]
    full = model.tokenizer(apply_template(template, texts))["input_ids"]
    own = model.tokenizer([prefix + t for t in texts])["input_ids"]
    out = []
    for a, b in zip(full, own):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        out.append(n)
    return out


def top_tokens(model: LoadedModel, texts: list[str], stats, layer: int, neuron: int, n: int = 3,
               own: list[int] | None = None) -> str:
    """The distinct tokens (with their highest activation) that excite neuron (layer, neuron) most
    in ``texts``, e.g. ``'idiot':4.12 ' you':3.80``; with ``own`` (``own_token_counts``) only the
    texts' own tokens count, never the read template's (its "\n" is where S is read, not a word)."""
    best: dict[str, float] = {}
    for v, t, p in zip(stats.top_values[layer, neuron], stats.top_text[layer, neuron], stats.top_pos[layer, neuron]):
        if t < 0 or not torch.isfinite(v) or (own is not None and int(p) >= own[int(t)]):
            continue
        ids = model.tokenizer(texts[int(t)])["input_ids"]
        tok = model.tokenizer.decode([ids[int(p)]]) if int(p) < len(ids) else "?"
        best.setdefault(tok, float(v))  # values arrive in descending order
    return " ".join(f"{tok!r}:{v:.2f}" for tok, v in list(best.items())[:n])


def _check_layers_reach_the_readout(layers: list[int], reading_layer: int, method: str) -> None:
    """Removing a neuron after the reading layer cannot change S (read at that layer's output), so
    methods that score a change of S rank such blocks at exactly 0: an error when every requested
    block lies there, a warning when some do."""
    if method not in EFFECT_METHODS:
        return
    past = [l for l in layers if l > reading_layer]
    if not past:
        return
    what = (f"blocks {past} lie past the reading layer {reading_layer}: removing a neuron there cannot change the "
            f"concept score read at block {reading_layer}")
    if len(past) == len(layers):
        raise ValueError(f"{what}; choose --layers up to {reading_layer} (or, with neat find, a later --reading-layer)")
    import warnings

    warnings.warn(f"{what}, so they all score 0", stacklevel=3)


def probe_effects(model: LoadedModel, readout: ConceptReadout, positives: list[str], contrast: list[str], sel,
                  intervention: Intervention, positions: str,
                  tokens_per_batch: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean drop of S on the positive probes and on the contrast probes when each neuron of
    ``sel`` alone is turned off (NEAT's exact sweep restricted to those neurons): two
    [n_layers, d_ff] tables, NaN outside ``sel``. Cost: len(sel) x (b positive + b contrast)
    partial passes."""
    from .scoring.neat import NeatScorer

    neurons = sel.by_layer()
    out = []
    for texts in (positives, contrast):
        task = ScoringTask(readout=readout, probes=ProbeSet(list(texts), [1.0 / len(texts)] * len(texts)),
                           layers=sorted(neurons), neurons=neurons, intervention=intervention)
        out.append(NeatScorer(tokens_per_batch, positions=positions).score(model, task).scores)
    return out[0], out[1]


class Stages:
    """Each named stage of a run, timed and with the passes it cost (one place that counts them)."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self.seconds: dict[str, float] = {}
        self.passes: dict[str, dict] = {}

    @contextmanager
    def stage(self, name: str):
        t0, c0 = time.perf_counter(), self.model.counter.snapshot()
        yield
        self.seconds[name] = time.perf_counter() - t0
        self.passes[name] = self.model.counter.since(c0).as_dict()


@dataclass
class Plan:
    """What a run will do, checked before anything is read or written."""

    settings: FindSettings
    scorer: Scorer
    method: str
    score: str  # the score rule: specific, contrastive or positive
    lam: float  # the specificity-aware penalty
    positions: str  # where the contrast side and the probe effects turn neurons off
    layers: list[int] | None
    neurons: dict[int, list[int]] | None
    executor: SweepExecutor


@dataclass
class ConceptRead:
    """The concept as the model reads it on the fit split (stage 1)."""

    split: object  # ConceptSplit
    read_pos: list[str]
    read_neg: list[str]
    sp: object  # the fit positives' text pass (residuals, neuron statistics)
    sn: object
    aucs: list[float]
    readout: ConceptReadout
    eval_auroc: float
    contrast_means: torch.Tensor
    positive_means: torch.Tensor
    off: Intervention  # what a scored neuron becomes
    gap_fit: float

    @property
    def fit(self) -> ConceptSet:
        return self.split.fit


def _plan(model: LoadedModel, concept: ConceptSet, method: "str | Scorer", s: FindSettings, label, neurons,
          probe_pairs, distributed) -> Plan:
    if isinstance(method, Scorer):  # a scorer made by the caller, with its own options
        scorer, method = method, method.name
        s.check_for(method)
        if label is not None:
            raise ValueError(f"label= goes to the {method} scorer's constructor when the scorer is given, not to find")
        if s.positions is not None and getattr(scorer, "positions", s.positions) != s.positions:
            raise ValueError(f"positions={s.positions!r} but the {method} scorer given turns neurons off at "
                             f"{scorer.positions!r} positions")
    else:
        scorer = build_scorer(method, s, label=label, concept_name=concept.name)
    if getattr(scorer, "label", None) is not None:
        scorer.label.token_ids(model)  # bad label words fail here, before anything is written
    if probe_pairs is not None and method not in PROBE_METHODS:
        raise ValueError(f"probe_pairs choose a probe batch, which the {method!r} method does not use "
                         f"(probe-based methods: {', '.join(PROBE_METHODS)})")
    positions = s.positions or (scorer.positions if method in POSITION_METHODS and method != "exhaustive"
                                else DEFAULT_POSITIONS)
    layers = parse_layers(s.layers, model.n_layers) if isinstance(s.layers, str) else \
        (list(s.layers) if s.layers is not None else None)
    if neurons is not None:
        neurons = {int(l): sorted(int(k) for k in ks) for l, ks in neurons.items()}
        bad = [(l, k) for l, ks in neurons.items() for k in ks if not (0 <= l < model.n_layers and 0 <= k < model.d_ff)]
        if bad:
            raise ValueError(f"neurons {bad[:3]} out of range: {model.n_layers} blocks of {model.d_ff}")
        layers = sorted(set(layers or neurons) & set(neurons))
    if s.reading_layer is not None and not 0 <= s.reading_layer < model.n_layers:
        raise ValueError(f"reading layer {s.reading_layer} out of range 0..{model.n_layers - 1}")
    if layers is not None and s.reading_layer is not None:
        _check_layers_reach_the_readout(layers, s.reading_layer, method)
    executor = distributed if distributed is not None else LocalSweep()
    executor.check(scorer)  # Ray missing or a scorer it cannot shard: fail before any work
    return Plan(s, scorer, method, s.rule(method), s.specificity_for(method), positions, layers, neurons, executor)


def _read_concept(model: LoadedModel, concept: ConceptSet, plan: Plan, probe_pairs, progress: bool) -> ConceptRead:
    """Stage 1: the fit texts read once (m passes): concept vectors, the reading layer, neuron means."""
    import warnings

    s = plan.settings
    split = concept.split(eval_fraction=s.eval_fraction, seed=s.seed)
    pos, neg = split.fit.positives, split.fit.contrast
    if probe_pairs is None and s.probe_size > len(set(pos)):
        warnings.warn(f"probe size {s.probe_size}: the fit split has {len(set(pos))} distinct positives, so the probe "
                      f"batch holds {len(set(pos))} (recorded as the run's probe_size)", stacklevel=3)
    read_pos, read_neg = apply_template(s.read_template, pos), apply_template(s.read_template, neg)  # as the model reads them
    kw = dict(pool=s.pool, batch_size=s.batch_size, strict=s.strict)
    with progress_bar("fit texts", len(split.fit) + len(split.eval), progress) as adv:
        sp = text_pass(model, read_pos, neuron_stats=True, on_batch=adv, **kw)
        sn = text_pass(model, read_neg, neuron_stats=True, on_batch=adv, **kw)
        se = text_pass(model, apply_template(s.read_template, split.eval.texts), on_batch=adv, **kw)
    h = torch.cat([sp.residuals, sn.residuals])  # [m, L, d]
    y = torch.tensor([True] * len(pos) + [False] * len(neg))
    aucs = layer_aurocs(h, y, method=s.vector, seed=s.seed)
    layer = choose_reading_layer(aucs) if s.reading_layer is None else s.reading_layer
    if plan.layers is not None and s.reading_layer is None:
        _check_layers_reach_the_readout(plan.layers, layer, plan.method)
    readout = ConceptReadout(layer, concept_vectors(h, y, s.vector, s.seed)[layer], s.vector, s.pool, s.read_template)
    from sklearn.metrics import roc_auc_score

    eval_auroc = float(roc_auc_score(list(split.eval.labels), readout.score(se.residuals[:, layer]).numpy()))
    contrast_means = (sn.neuron_sum / max(sn.n_tokens, 1)).float()
    positive_means = (sp.neuron_sum / max(sp.n_tokens, 1)).float()
    gap_fit = float(readout.score(sp.residuals[:, layer]).double().mean()
                    - readout.score(sn.residuals[:, layer]).double().mean())
    return ConceptRead(split, read_pos, read_neg, sp, sn, aucs, readout, eval_auroc, contrast_means, positive_means,
                       Intervention.of(s.ablation, contrast_means), gap_fit)


def _probe_batch(plan: Plan, cr: ConceptRead, probe_pairs) -> tuple[ProbeSet, list[str], list[str]]:
    """Stage 2: the probe batch X* (the b most prototypical positives; the b lowest-S contrast texts)."""
    b_max, layer = plan.settings.probe_size, cr.readout.layer
    s_pos, s_neg = cr.readout.score(cr.sp.residuals[:, layer]), cr.readout.score(cr.sn.residuals[:, layer])

    def distinct(texts: list[str], order: torch.Tensor) -> list[str]:  # the first b distinct texts
        return list(dict.fromkeys(texts[int(i)] for i in order))[:b_max]

    if probe_pairs is None:
        top_pos = distinct(cr.read_pos, torch.argsort(s_pos, descending=True))
        low_neg = distinct(cr.read_neg, torch.argsort(s_neg))
    else:  # the pairs themselves: the b most stereotypical-leaning pairs, each with its own counterpart
        top_pos, low_neg = paired_probes(probe_pairs, cr.fit.positives, cr.fit.contrast, s_pos, s_neg, b_max,
                                         plan.settings.read_template)
    b = len(top_pos)
    probes = ProbeSet(top_pos, [1.0 / b] * b)
    if plan.score == "contrastive":
        probes = ProbeSet(probes.texts + low_neg, probes.weights + [-1.0 / len(low_neg)] * len(low_neg))
    return probes, top_pos, low_neg


def _params(plan: Plan, cr: ConceptRead, probes: ProbeSet, n_probes: int, probe_pairs) -> dict:
    s = plan.settings
    return {"reading_layer": cr.readout.layer, "reading_layer_chosen": s.reading_layer is None, "vector": s.vector,
            "pool": s.pool, "read_template": s.read_template, "probe_size": n_probes, "score": plan.score,
            "contrastive": plan.score == "contrastive", "specificity": plan.lam,
            **({"probe": "paired", "probe_pairs_sha": _pairs_sha(probe_pairs)} if probe_pairs is not None else {}),
            "gap_fit": cr.gap_fit, "ablation": s.ablation, "eval_fraction": s.eval_fraction, "layers": plan.layers,
            "top_k": s.top_k, "neuron_subset": plan.neurons, **({"exact_top": s.exact_top} if s.exact_top else {}),
            "scorer": plan.scorer.params()}  # the scorer's own options, kept apart from the readout's


@dataclass
class Swept:
    """Stage 3's outcome: each side's scores, what was resumed, the sharding summaries."""

    results: dict
    resumed: dict
    sharded: dict
    seconds: float
    passes: dict
    probes: dict  # each side's probe set (texts and weights)
    proof: "TopKProof | None" = None  # exact_top: the contrast side swept only where the top K could change

    @property
    def one_side(self) -> bool:
        return len(self.results) == 1


def _sweep(model: LoadedModel, concept: ConceptSet, plan: Plan, cr: ConceptRead, probes: ProbeSet,
           low_neg: list[str], params: dict, run_dir: Path, progress: bool, cost: torch.Tensor | None = None) -> Swept:
    """Stage 3: the scorer over every requested neuron (and, for the specific score, NEAT's exact
    sweep of the contrast probes over what it scored, or with ``exact_top`` only over the neurons
    that can still reach the top K), resuming finished blocks."""
    s, method, model_n = plan.settings, plan.method, model.n_layers
    fingerprint = {"model": model.weights_hash, "concept": concept.hash, "method": method, "seed": s.seed,
                   **{k: v for k, v in params.items() if k != "scorer"},
                   "scorer": {k: v for k, v in params["scorer"].items() if k != "tokens_per_batch"}}  # speed only
    score_layers = plan.layers if plan.layers is not None else list(range(model_n))
    sides = {"positive": probes} if plan.score != "specific" else {
        "positive": probes, "contrast": ProbeSet(low_neg, [1.0 / len(low_neg)] * len(low_neg))}
    results, sharded, resumed, side_passes, proof = {}, {}, {}, {}, None

    def one_sweep(side: str, side_neurons, name: str | None, extra: dict, what: str, scorer=None, batches_as=None):
        partial = PartialSweep(run_dir, {**fingerprint, "side": side, **extra}, name=name)
        task = ScoringTask(readout=cr.readout, probes=sides[side], layers=score_layers if side_neurons is None else
                           sorted(side_neurons), neurons=side_neurons, intervention=cr.off,
                           positives=cr.fit.positives, contrast=cr.fit.contrast, seed=s.seed, batches_as=batches_as)
        return plan.executor.sweep(model, scorer or plan.scorer, task, partial, progress=progress, what=what)

    try:
        for side in sides:
            what = f"{method} sweep" + (f", {side} probes" if len(sides) > 1 else "")
            if side == "contrast":  # NEAT's exact sweep over what was scored (or what can reach the top K)
                outcome, proof = _contrast_side(model, plan, results["positive"].scores, cost, cr.gap_fit, one_sweep,
                                                what)
            else:
                outcome = one_sweep(side, plan.neurons, side if len(sides) > 1 else None, {}, what)
            results[side], resumed[side], side_passes[side] = outcome.scores, outcome.resumed, outcome.passes
            if outcome.summary is not None:
                sharded[side] = outcome.summary
    finally:
        plan.executor.close()  # the workers (if any) served every sweep of the run
    first = results["positive"]
    return Swept(results, resumed, sharded, sum(r.seconds for r in results.values()),
                 {k: sum(p[k] for p in side_passes.values()) for k in first.passes.as_dict()}, sides, proof)


def _contrast_side(model: LoadedModel, plan: Plan, positive: torch.Tensor, cost, gap_fit: float, one_sweep,
                   what: str):
    """The specific score's contrast sweep (NEAT's exact sweep): over every neuron the positive side
    scored, or with ``exact_top`` K in rounds over those that can still reach the top K
    (``scoring/pruning.py``). Returns (the sweep's outcome, the proof or None)."""
    from .scoring.pruning import prove_top_k
    from .sweeps import SweepOutcome

    scorer = build_scorer("neat", FindSettings.of(plan.settings, positions=plan.positions)) \
        if plan.method != "neat" else plan.scorer
    ok = torch.isfinite(positive)
    every = {l: torch.nonzero(ok[l]).flatten().tolist() for l in range(model.n_layers) if ok[l].any()}
    k = plan.settings.exact_top
    whole = plan.neurons if plan.method == "neat" else every
    if k is None:
        return one_sweep("contrast", whole, "contrast", {}, what, scorer), None
    outcomes = []
    # each round's neurons run in batches of the sizes the whole sweep gives them: the same numbers, bit for bit
    batches_as = whole if whole is not None else {l: list(range(model.d_ff)) for l in range(model.n_layers)}

    def rounds(neurons: dict[int, list[int]], r: int):
        sha = hashlib.sha256(json.dumps(sorted(neurons.items())).encode()).hexdigest()[:16]
        o = one_sweep("contrast", neurons, f"contrast-{r}", {"round": r, "neurons": sha, "batches": "whole"},
                      f"{what}, round {r + 1} ({sum(map(len, neurons.values())):,} neurons)", scorer, batches_as)
        outcomes.append(o)
        return o.scores.scores, o.scores.per_probe

    contrast, per_probe, proof = prove_top_k(positive, k, rounds, plan.lam, cost, float(gap_fit))  # combine: lam 0 ignores both
    last = outcomes[-1].scores
    passes = {key: sum(o.passes[key] for o in outcomes) for key in outcomes[0].passes}
    scores = NeuronScores(contrast, last.method, PassCounter.from_dict(passes), sum(o.scores.seconds for o in outcomes),
                          last.params, per_probe=per_probe)
    return SweepOutcome(scores, passes, sorted({l for o in outcomes for l in o.resumed}),
                        outcomes[0].summary), proof


def _probe_effects(plan: Plan, swept: Swept, cost: torch.Tensor | None, gap_fit: float) -> ProbeEffects | None:
    """Each probe text's own effect and how the score is made of them (for the bootstrap over
    probes), when every sweep of the score gave them."""
    per = {side: r.per_probe for side, r in swept.results.items()}
    if any(v is None for v in per.values()):
        return None
    neg = "contrast" in per
    if neg and swept.proof is not None:  # not swept: 0 on every probe, so the per-probe score is the stored bound
        ok = torch.isfinite(per["positive"][:1]) & torch.isnan(per["contrast"])
        per["contrast"] = torch.where(ok, torch.zeros_like(per["contrast"]), per["contrast"])
    return ProbeEffects(per["positive"], tuple(swept.probes["positive"].weights), plan.score,
                        per["contrast"] if neg else None, tuple(swept.probes["contrast"].weights) if neg else (),
                        plan.lam, float(gap_fit) if plan.lam > 0 else 1.0, cost if plan.lam > 0 else None)


def _cost(model: LoadedModel, plan: Plan, cr: ConceptRead, stages: Stages) -> torch.Tensor | None:
    """Stage 2b: each neuron's fluency cost, for the specificity-aware score (lambda > 0)."""
    if plan.lam <= 0:
        return None
    with stages.stage("fluency_cost"):
        return fluency_cost(model, cr.fit.contrast, cr.off, batch_size=8)


def _scored_run(run_dir: Path, plan: Plan, cr: ConceptRead, swept: Swept, cost: torch.Tensor | None) -> Run:
    """Stage 3b: the run's score from its sweeps (the specific rule's contrast side, the
    specificity-aware penalty with its fluency cost), as a run not yet written. With ``exact_top``
    the neurons not swept on the contrast side hold their upper bound (``scoring/pruning.py``)."""
    from .scoring.pruning import pruned_score

    contrast = swept.results["contrast"].scores if "contrast" in swept.results else None
    positive = swept.results["positive"].scores
    if swept.proof is not None:
        effect, scores = pruned_score(positive, contrast, plan.lam, cost, cr.gap_fit)
    else:
        effect, scores = combine(positive, contrast, plan.lam, cost, cr.gap_fit)
    return Run(run_dir, meta=None, scores=scores, concept_vector=cr.readout.vector.float(),
               contrast_means=cr.contrast_means, layer_auroc=torch.tensor(cr.aucs, dtype=torch.float32),
               top_table=None, positive_means=cr.positive_means, effect=effect if plan.lam > 0 else None,
               fluency_cost=cost, alpha=swept.results["positive"].alpha,
               probe_effects=_probe_effects(plan, swept, cost, cr.gap_fit))


def _warn_repeats(concept: ConceptSet) -> None:
    import warnings

    seen: set[str] = set()
    first = next(t for t in concept.texts if t in seen or seen.add(t))
    shown = first if len(first) <= 60 else first[:57] + "..."
    warnings.warn(f"concept set {concept.name!r} repeats {concept.n_repeated} text(s) (first: {shown!r}); a repeat "
                  "can land in both the fit and the eval part and inflate the held-out numbers: remove the repeated "
                  "lines from the file", stacklevel=3)


def _top_rows(model: LoadedModel, run: Run, plan: Plan, cr: ConceptRead, swept: Swept, top_pos: list[str],
              low_neg: list[str]):
    """Stage 4b: what the top rows do to positives and to contrast texts, measured apart (a generic
    neuron moves both), and the ranking table with each row's top tokens."""
    import pandas as pd

    sel = run.top(min(plan.settings.top_k, int(torch.isfinite(run.scores).sum())))
    if plan.score == "specific" and plan.method == "neat":  # both sides were swept in full
        run.effect_positive, run.effect_contrast = swept.results["positive"].scores, swept.results["contrast"].scores
    else:
        run.effect_positive, run.effect_contrast = probe_effects(model, cr.readout, top_pos, low_neg, sel, cr.off,
                                                                 plan.positions, plan.settings.tokens_per_batch)
    own = own_token_counts(model, cr.fit.positives, plan.settings.read_template)
    tokens = {(l, k): top_tokens(model, cr.read_pos, cr.sp, l, k, own=own) for l, k in sel.neurons}
    run.top_table = pd.DataFrame([{**{c: getattr(r, c) for c in TOP_COLUMNS}, "top_tokens": tokens[(r.layer, r.neuron)]}
                                  for r in run.rows(len(sel.neurons))], columns=[*TOP_COLUMNS, "top_tokens"])
    return sel


def _meta(model: LoadedModel, concept: ConceptSet, plan: Plan, cr: ConceptRead, swept: Swept, stages: Stages,
          params: dict, probes: ProbeSet, low_neg: list[str], scores: torch.Tensor, k_choice: dict | None) -> RunMeta:
    fit, ev = cr.fit, cr.split.eval
    one = swept.one_side
    return RunMeta(
        model_id=model.model_id, model_family=model.family.name, weights_hash=model.weights_hash,
        n_layers=model.n_layers, d_ff=model.d_ff, concept_name=concept.name, concept_hash=concept.hash,
        n_fit={"positive": fit.n_positive, "contrast": fit.n_contrast},
        n_eval={"positive": ev.n_positive, "contrast": ev.n_contrast},
        method=plan.method, params=params, seed=plan.settings.seed, reading_layer=cr.readout.layer,
        eval_auroc=cr.eval_auroc, n_neurons_scored=int(torch.isfinite(scores).sum()), passes=stages.passes,
        seconds={**stages.seconds, "total": sum(stages.seconds.values())}, versions=_versions(),
        probe_texts=probes.texts, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        extra={"resumed_layers": swept.resumed["positive"] if one else swept.resumed,
               "concept_source": None if concept.source is None else concept.source.to_dict(),
               "contrast_probe_texts": low_neg,
               **({"k_choice": k_choice} if k_choice is not None else {}),
               **({"exact_top": swept.proof.to_dict(int(torch.isfinite(scores).sum()))} if swept.proof else {}),
               **({"distributed": swept.sharded["positive"] if one else swept.sharded} if swept.sharded else {})},
    )


def find_concept_neurons(model: LoadedModel, concept: ConceptSet, method: str | Scorer = "neat",
                         settings: FindSettings | None = None, *, out: str | Path | None = None,
                         progress: bool = True, label: LabelReadout | None = None,
                         neurons: dict[int, list[int]] | None = None, distributed: SweepExecutor | None = None,
                         probe_pairs: Sequence[tuple[str, str]] | None = None, **options) -> Run:
    """Find the concept neurons of ``model`` for ``concept`` and write a run folder.

    Steps: seeded stratified fit/eval split; one pass over the fit texts (residuals at every layer,
    neuron means over the contrast texts, top-activating tokens); concept vectors and the reading
    layer (cross-validated AUROC; ties go to the later layer); the probe batch X* (the
    ``probe_size`` fit positives with the highest S, plus as many lowest-S contrast texts if
    ``contrastive``); the scorer over every requested neuron; the run folder.

    Defaults (each chosen by the held-out grid of docs/results.md): ``probe_size`` 8 positives;
    ``score`` (probe-based methods: neat, neat-cluster, screen-verify, reference): ``"specific"``
    (default): effect = drop of S on the b positive probes minus the size of the change of S on the b
    lowest-S contrast texts, ΔS_P − |ΔS_N| (a neuron that moves contrast texts as much as positives
    is generic machinery; the contrast side is NEAT's exact sweep over the neurons the method
    scored); ``"contrastive"`` (``contrastive=True``): ΔS_P − ΔS_N, the effect on the P−N gap;
    ``"positive"``: ΔS_P alone (the only rule of the other methods);
    ``positions`` (neat only; default ``"read"``): NEAT turns a neuron off at the read position only
    (the KV-cache replay, T times cheaper; ``"all"`` turns it off at every position, the method's
    plain form);
    ``specificity`` (lambda of ``scoring/fluency.py``, default 10 for the methods whose score is a
    drop of S, 0 for the others): score = effect / gap_fit - lambda * fluency cost, which ranks down
    neurons whose removal hurts language modelling of everything.
    ``read_template``: what the model reads for the concept score, ``{text}`` standing for the text
    (default: the text and a newline, so S is read at the same token for every text; ``"{text}"``
    reads the text's own last token).
    ``method``: a method name (``neat_llm.scoring.SCORERS``) or a scorer made with its own options,
    e.g. ``ClusterScorer(n_clusters=32, keep=16)`` (``find_settings.build_scorer`` makes one with
    find's defaults). The settings come as a ``FindSettings`` (``settings``), as keyword arguments
    (``probe_size=4``), or both (the keywords win); each is checked before anything is loaded.
    ``label``: the label readout used by ``integrated-gradients`` and ``logprob-increase`` (default:
    the generic template with the concept's name). ``neurons``:
    {block: [neuron indices]} to score only a subset (blocks not named are not scored).
    ``distributed``: a ``neat_llm.distributed.RaySweep`` to shard the sweep over a Ray cluster
    (same scores; see docs/scaling.md).
    ``probe_pairs``: (positive, its own contrast counterpart) pairs, e.g. minimal pairs (probe-based
    methods): the probe batch is the ``probe_size`` pairs (both sentences in the fit split) with the
    largest S(positive) − S(counterpart), the positive probes their positives and the contrast probes
    their own counterparts, so ``score="contrastive"`` is each neuron's effect on the within-pair
    difference, averaged over the b pairs.
    ``max_ppl``: also choose K on the fit split: the top-K set with the largest fit gap removal
    whose perplexity ratio on fluency texts stays <= max_ppl (``evaluation/budget.py``); stored in
    meta.json (``extra["k_choice"]``).
    """
    plan = _plan(model, concept, method, FindSettings.of(settings, **options), label, neurons, probe_pairs, distributed)
    s = plan.settings
    run_dir = Path(out) if out is not None else default_run_dir(concept, plan.method)
    check_run_folder(run_dir)  # a folder of the user's own files: refused before the lock file is made
    with run_folder_lock(run_dir):  # one writer: a second process gets an error, not a mixed folder
        if (run_dir / RunFiles.META).exists():
            raise RunError(f"{run_dir} already holds a finished run; choose another --out")
        if concept.n_repeated:
            _warn_repeats(concept)
        stages = Stages(model)
        with stages.stage("concept"):  # 1. the fit texts read once
            cr = _read_concept(model, concept, plan, probe_pairs, progress)
        probes, top_pos, low_neg = _probe_batch(plan, cr, probe_pairs)  # 2. X*
        params = _params(plan, cr, probes, len(top_pos), probe_pairs)
        cost = _cost(model, plan, cr, stages)  # 2b. the fluency cost (the specificity penalty; exact_top's bound)
        swept = _sweep(model, concept, plan, cr, probes, low_neg, params, run_dir, progress, cost)  # 3. the sweep
        stages.seconds["scoring"], stages.passes["scoring"] = swept.seconds, swept.passes
        run = _scored_run(run_dir, plan, cr, swept, cost)  # 3b. specific rule, specificity penalty
        scores = run.scores
        with stages.stage("probe_effects"):  # 4. the ranking with what tells a concept neuron from a generic one
            sel = _top_rows(model, run, plan, cr, swept, top_pos, low_neg)
        k_choice = None
        if s.max_ppl is not None:  # 4c. K within the fluency budget, chosen on the fit split
            from .evaluation.budget import choose_k

            with stages.stage("k_choice"):
                k_choice = choose_k(model, cr.readout, cr.fit, run.top(int(torch.isfinite(scores).sum())), s.max_ppl,
                                    cr.off, seed=s.seed, batch_size=s.batch_size).to_dict()
        with stages.stage("examples"):  # 5. the top neurons' top-activating examples, token by token, for the report
            examples = neuron_examples(model, {"positive": cr.read_pos, "contrast": cr.read_neg},
                                       {"positive": cr.sp, "contrast": cr.sn}, list(sel.neurons[:EXAMPLE_NEURONS]),
                                       batch_size=s.batch_size)
        run.meta = _meta(model, concept, plan, cr, swept, stages, params, probes, low_neg, scores, k_choice)
        write_text(run_dir / RunFiles.EXAMPLES, json.dumps(examples))  # before meta.json, which marks the run finished
        run.save()
        PartialSweep.clear_all(run_dir)
        return run
