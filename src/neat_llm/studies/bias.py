"""``neat bias``: social-bias neurons found on fit minimal pairs (stereotypical sentences as
positives, their anti-stereotypical counterparts as contrast), turned off, and the stereotype
score of held-out pairs measured per bias type against random neurons, with the perplexity ratio
alongside. CrowS-Pairs, IndiBias (Indian context) in English and Hindi, or a user's own pairs.

The study folder is the run folder: the run's files, ``bias.json`` and ``.bias-partial/``
(finished conditions, so an interrupted study resumes). With ``folds`` = k (cross-fitting) every
item is evaluated once, by neurons found without it: the items are cut into k stratified folds,
fold i is a study of its own in ``fold-<i>/`` (found on the other folds, evaluated on fold i), and
``bias.json`` beside ``folds.json`` pools every item's preference under every condition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..concepts.conceptset import ConceptSource
from ..concepts.datasets import MinimalPairs, load_pairs
from ..concepts.templates import BiasTemplates, load_templates
from ..concepts.paired import pair_differences, paired_accuracy, paired_cv_accuracy
from ..concepts.vectors import choose_reading_layer
from ..evaluation.bias import BiasReport, ItemPreferences, bias_rows, ceiling_rows, evaluate_bias
from ..evaluation.neutral_text import NEUTRAL_BY_LANG, NEUTRAL_TEXTS

from ..find import default_run_dir
from ..interventions import Condition, DirectionEdit
from ..find_settings import FindSettings
from ..records import split_known
from ..models.loaded import LoadedModel
from ..runs import Run, RunFiles
from ..runs import write_text
from .common import (find_or_reuse, measure_conditions, neuron_pool, span_write_effects, span_writes, study_folder,
                     write_results, writer_conditions, writes_row)
from .settings import BiasStudySettings

__all__ = ["BiasStudy", "bias_study", "load_pairs"]


@dataclass
class BiasStudy:
    run: Run
    report: BiasReport
    path: Path  # bias.json
    fit: MinimalPairs
    eval: MinimalPairs | BiasTemplates  # templates are scored by their own metric
    folds: list["BiasStudy"] = field(default_factory=list)  # cross-fitting: each fold's own study


def _heldout_paired_accuracy(model: LoadedModel, readout, ev_pairs) -> tuple[float, dict]:
    """The held-out pairs' paired accuracy at the reading layer (share of pairs whose stereotypical
    sentence scores higher than its counterpart), in all and per bias type."""
    ev_diffs = pair_differences(model, ev_pairs.more, ev_pairs.less, pool=readout.pool,
                                template=readout.template)[:, readout.layer]
    types = list(ev_pairs.bias_type)
    by_type = {t: {"n": types.count(t), "accuracy": paired_accuracy(
        ev_diffs[[i for i, x in enumerate(types) if x == t]], readout.vector)} for t in sorted(set(types))}
    return paired_accuracy(ev_diffs, readout.vector), by_type


def _load_items(s: BiasStudySettings):
    """(every item of the study's type, the concept's source): pairs, or templates."""
    columns = dict(s.columns or {})
    if s.templates is not None:
        items = load_templates(s.data, **s.templates).only(s.bias_type)
        return items, ConceptSource("templates", path=str(s.data), columns=dict(s.templates))
    items = load_pairs(s.data, s.data_path, s.lang, **columns).only(s.bias_type)
    return items, ConceptSource("pairs", data=s.data, path=None if s.data_path is None else str(s.data_path),
                                lang=s.lang, columns=columns)


def _capped_fit(fit, s: BiasStudySettings) -> MinimalPairs:
    """The fit items as pairs (templates: pairs of their fillings), capped (seeded) where asked."""
    fit = fit.as_pairs() if isinstance(fit, BiasTemplates) else fit
    if s.max_fit_pairs and len(fit) > s.max_fit_pairs:  # the cap holds for everything read from the fit pairs
        fit = fit.subset(_sample(len(fit), s.max_fit_pairs, s.seed), fit.name)
    return fit


def _split_items(s: BiasStudySettings):
    """(the items' name, the fit pairs, the held-out items, the concept's source): pairs or
    templates split whole and stratified, each part capped (seeded) where asked."""
    items, source = _load_items(s)
    fit, ev = items.split(s.eval_fraction, s.seed)
    if s.max_eval_pairs and len(ev) > s.max_eval_pairs:
        ev = ev.subset(_sample(len(ev), s.max_eval_pairs, s.seed), ev.name)
    return items.name, _capped_fit(fit, s), ev, source


def fold_indices(types, k: int, seed: int, name: str) -> list[list[int]]:
    """k seeded folds of ``len(types)`` items, stratified by type where every type has k items."""
    import numpy as np
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(types)
    if n < 2 * k:
        raise ValueError(f"{name}: {n} items cannot make {k} folds of at least 2 (use fewer --folds)")
    _, counts = np.unique(np.array(types), return_counts=True)
    cut = StratifiedKFold(k, shuffle=True, random_state=seed) if counts.min() >= k else KFold(k, shuffle=True,
                                                                                              random_state=seed)
    return [sorted(int(i) for i in ev) for _, ev in cut.split(np.zeros(n), np.array(types))]


def _concept(fit: MinimalPairs, items_name: str, source: ConceptSource, s: BiasStudySettings):
    concept = fit.as_concept_set().dedupe()
    return replace(concept, name=f"{items_name}-stereo",
                   source=replace(source, bias_type=s.bias_type, eval_fraction=s.eval_fraction, seed=s.seed))


def bias_study(model: LoadedModel, settings: BiasStudySettings | None = None, *, out: str | Path | None = None,
               progress: bool = True, find: FindSettings | None = None,
               neurons: dict[int, list[int]] | None = None, **options) -> BiasStudy:
    """Split the pairs (seeded, whole pairs, stratified by bias type), find the bias neurons with
    ``method`` on the fit pairs, and score the eval pairs before / after / with random neurons.

    ``columns``: {"more": ..., "less": ..., "bias_type": ...} for a user's own file;
    ``max_fit_pairs`` / ``max_eval_pairs``: seeded caps (bound the cost).
    ``layer_rule``: ``"paired"`` reads the concept at the layer with the best cross-validated paired
    accuracy on the fit pairs (share of pairs whose stereotypical sentence scores higher than its
    own counterpart; see concepts/paired.py), ``"auroc"`` at find's usual P-vs-N AUROC layer. The
    held-out paired accuracy at the reading layer is reported either way.
    ``probe``: ``"prototypical"`` (find's probe batch: the b fit positives with the highest S and,
    for the contrast side, the b contrast texts with the lowest) or ``"paired"`` (the pair is the
    probe: the b fit pairs with the largest S(stereotypical) − S(counterpart), each neuron scored by
    its effect on that within-pair difference, ``score="contrastive"`` unless given).
    ``templates``: ``data`` is a file of bias templates (a ``MASK`` slot and two target lists),
    read with these ``load_templates`` options ({"template": "Sentence", "stereo": ..., "anti": ...,
    "bias_type": ..., "mask": "MASK"}); the neurons are found on pairs of fillings of the fit
    templates and the held-out templates are scored by the template metric (evaluation/bias.py).
    ``folds``: k-fold cross-fitting instead of one split (every item evaluated once, by neurons
    found on the other folds; ``eval_fraction`` and ``max_eval_pairs`` then do not apply).
    The settings come as a ``BiasStudySettings`` (``settings``), as keyword arguments
    (``probe="paired"``), or both (the keywords win); ``find`` (a ``FindSettings``) and keyword
    arguments naming its fields (``layers=``, ``probe_size=``) are how the neurons are found (its
    seed is the study's); ``neurons``: score only this {block: [neurons]} subset.
    """
    study_options, find_options = split_known(BiasStudySettings, options)
    s = BiasStudySettings.of(settings, **study_options)
    fs = FindSettings.of(find, **{**find_options, "seed": s.seed})
    if s.writers:  # before anything is found: the span exists and its neurons' writes can be edited
        a, b = s.writers
        if b >= model.n_layers:
            raise ValueError(f"--writers {a}-{b}: the model has blocks 0..{model.n_layers - 1}")
        model.check_writes(a)
    if s.folds:
        return _cross_fitted(model, s, fs, out, progress, neurons)
    items_name, fit, ev, source = _split_items(s)
    concept = _concept(fit, items_name, source, s)
    out = Path(out) if out is not None else default_run_dir(concept, f"bias-{s.method}{_writes_tag(s)}")
    with study_folder(out):
        return _one_split(model, s, fs, fit, ev, items_name, concept, out, progress, neurons)


def _one_split(model: LoadedModel, s: BiasStudySettings, fs: FindSettings, fit: MinimalPairs, ev, items_name: str,
               concept, out: Path, progress: bool, neurons) -> BiasStudy:
    """Find on ``fit``, evaluate ``ev`` (one study folder, ``out``, already locked)."""
    ev_pairs = ev.as_pairs() if isinstance(ev, BiasTemplates) else ev  # what the paired accuracy reads
    method, ks, seed = s.method, list(s.ks), s.seed
    probe_pairs = None
    if s.probe == "paired":
        probe_pairs = list(zip(fit.more, fit.less))
        fs = FindSettings.of(fs, score=fs.score or "contrastive")
    paired_cv = None
    if s.layer_rule == "paired" and fs.reading_layer is None:
        # the reading layer where, within a pair, the stereotypical sentence scores higher (paired.py)
        paired_cv = paired_cv_accuracy(pair_differences(model, fit.more, fit.less, pool=fs.pool,
                                                        template=fs.read_template), seed=seed)
        fs = FindSettings.of(fs, reading_layer=choose_reading_layer(paired_cv))
    run = find_or_reuse(model, concept, method, out, fs, neurons=neurons, probe_pairs=probe_pairs, progress=progress,
                        ks=ks)
    readout = run.readout()
    iv = run.intervention(s.mode, s.alpha, s.strength)  # default: the run's own (its ablation, or AurA's dampening)
    eval_paired, paired_by_type = _heldout_paired_accuracy(model, readout, ev_pairs)
    neutral = NEUTRAL_BY_LANG.get(s.lang, NEUTRAL_TEXTS)
    shared = {"eval": repr(ev), "neutral": neutral} if s.share_conditions else None  # what a preference depends on
    ranking = writer_effects(model, run, fit, s.writers, progress) if s.writers and s.writer_rank == "effect" else None
    writes = writer_conditions(model, run, s.writers, ks, s.n_random, seed, s.writes_strength,
                               ranking) if s.writers else None
    ceilings = bias_ceilings(model, run, s) if s.ceiling else []
    data = {"method": method, "eval": repr(ev), "neutral": neutral,
            **({"writers": list(s.writers), "writes_strength": s.writes_strength, "writer_rank": s.writer_rank}
               if s.writers else {}),
            **({"ceilings": [c.name for c in ceilings]} if ceilings else {})}
    report, store = measure_conditions(
        out, RunFiles.BIAS_PARTIAL, run, iv, ks, s.n_random, seed, data, "bias evaluation", progress,
        lambda store, tick: evaluate_bias(model, ev, run.selections(ks), n_random=s.n_random, seed=seed, mode=iv,
                                          neuron_pool=neuron_pool(run), neutral_texts=neutral, n_boot=s.n_boot,
                                          min_pairs=s.min_pairs, store=store, on_condition=tick, dataset=items_name,
                                          lang=s.lang, method=method, conditions=writes, ceilings=ceilings),
        extra=len(ceilings), shared=shared)
    report.settings = replace(
        report.settings, bias_type=s.bias_type, n_fit_pairs=len(fit), eval_fraction=s.eval_fraction,
        templates=s.templates, n_eval_items=len(ev), probe=s.probe, score=run.meta.params.get("score"),
        reading_layer=run.meta.reading_layer, eval_auroc=run.meta.eval_auroc, n_fit=run.meta.n_fit,
        layer_rule=s.layer_rule, paired_cv_accuracy=None if paired_cv is None else float(paired_cv[readout.layer]),
        paired_cv_accuracy_by_layer=None if paired_cv is None else [float(x) for x in paired_cv],
        eval_paired_accuracy=eval_paired, eval_paired_accuracy_by_type=paired_by_type,
        reused_conditions=list(store.reused) or None, writer_rank=s.writer_rank if s.writers else None)
    path = write_results(out, RunFiles.BIAS, report, store)
    return BiasStudy(run, report, path, fit, ev)


def writer_effects(model: LoadedModel, run: Run, fit: MinimalPairs, span: tuple[int, int], progress: bool):
    """Each neuron of blocks ``span``: how much removing the run's direction from its writes lowers
    the fit pairs' preference for the stereotypical sentence, to first order (``pair_write_effects``;
    each sentence read after the start token, as the stereotype score reads it)."""
    from ..evaluation.bias import _start

    start = _start(model)
    return span_write_effects(model, run, span, [start + t for t in fit.more], [start + t for t in fit.less],
                              "writers' effects on the fit pairs", progress)


def bias_ceilings(model: LoadedModel, run: Run, s: BiasStudySettings) -> list[Condition]:
    """The ceilings beside the K rows, the run's concept direction edited itself at the study's
    writes strength: out of the residual stream at the reading layer ("direction-L<r>"); out of what
    every block's MLP writes ("mlp-writes-L0-<last>", every neuron's write: the ceiling of any
    neuron-write set); with ``writers``, out of what the MLPs of that span write. The writes rows
    only where the family's MLP output is its write (not Gemma 2/3)."""
    t, u, r = s.writes_strength, run.concept_vector, run.meta.reading_layer
    out = [Condition(f"direction-L{r}", residual=DirectionEdit(r, u, "project", t))]
    if model.family.mlp_output_direct:
        spans = [(0, model.n_layers - 1)] + ([tuple(s.writers)] if s.writers and tuple(s.writers) != (0, model.n_layers - 1)
                                              else [])
        for span in spans:
            name, edit = span_writes(u, span, "mlp", t)
            out.append(Condition(name, residual=edit))
    return out


def _finished_fold(fold_dir: Path, s: BiasStudySettings, n_items: int) -> tuple[Run, BiasReport] | None:
    """A fold's run and report when it is finished under these settings (sizes, controls, items,
    the intervention with its parameters), else None."""
    f = fold_dir / RunFiles.BIAS
    if not f.is_file() or not (fold_dir / RunFiles.META).is_file():
        return None
    rep = BiasReport.from_dict(json.loads(f.read_text()))
    run = Run.load(fold_dir)
    it = rep.items
    if s.writers:  # the rows' names hold the span; the settings the strength and the ranking
        iv_ok = (rep.edits_writes and rep.settings.intervention.get("strength") == s.writes_strength
                 and rep.settings.writer_rank == s.writer_rank
                 and all(top == writes_row(k, s.writers) for k, (top, _) in it.conditions.items()))
    else:
        iv_ok = rep.settings.intervention == json.loads(json.dumps(run.intervention(s.mode, s.alpha, s.strength).settings()))
    ok = (it is not None and sorted(it.conditions) == sorted(s.ks) and len(it.bias_type) == n_items
          and bool(it.ceilings) == s.ceiling
          and all(len(r) == s.n_random for _, r in it.conditions.values()) and rep.settings.seed == s.seed and iv_ok)
    return (run, rep) if ok else None


def _cross_fitted(model: LoadedModel, s: BiasStudySettings, fs: FindSettings, out, progress: bool,
                  neurons) -> BiasStudy:
    """k-fold cross-fitting: fold i found on the other folds and evaluated on fold i, in
    ``out/fold-<i>/``; every item's preference pooled into ``out/bias.json``. A finished fold is
    reused when the study is run again (an interrupted study resumes)."""
    if s.max_eval_pairs:
        raise ValueError("max_eval_pairs does not apply with folds: cross-fitting evaluates every item once")
    items, source = _load_items(s)
    folds = fold_indices(items.bias_type, s.folds, s.seed, items.name)
    plan = {"folds": s.folds, "seed": s.seed, "items": items.name, "n_items": len(items), "eval_items": folds}
    out = Path(out) if out is not None else default_run_dir(
        _concept(_capped_fit(items, s), items.name, source, s), f"bias-{s.method}{_writes_tag(s)}-{s.folds}fold")
    parts: list[BiasStudy] = []
    with study_folder(out):
        plan_file = out / RunFiles.FOLDS
        if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
            raise ValueError(f"{out} holds a cross-fitted study with other folds (items, seed or k); choose another --out")
        write_text(plan_file, json.dumps(plan))
        for i, ev_idx in enumerate(folds):
            held = set(ev_idx)
            fit = _capped_fit(items.subset([j for j in range(len(items)) if j not in held], f"{items.name}-fit{i}"), s)
            ev = items.subset(ev_idx, f"{items.name}-fold{i}")
            concept = _concept(fit, items.name, source, s)
            fold_dir = out / f"fold-{i}"
            done = _finished_fold(fold_dir, s, len(ev))
            if done is not None:
                parts.append(BiasStudy(done[0], done[1], fold_dir / RunFiles.BIAS, fit, ev))
                continue
            with study_folder(fold_dir):
                parts.append(_one_split(model, s, fs, fit, ev, items.name, concept, fold_dir, progress, neurons))
        report = _pooled_report(parts, s, len(items))
        path = out / RunFiles.BIAS
        write_text(path, json.dumps({"run_dir": str(out), **report.to_dict()}, indent=2))
    return BiasStudy(parts[0].run, report, path, parts[0].fit, items, parts)


def _pooled_report(parts: list[BiasStudy], s: BiasStudySettings, n_items: int) -> BiasReport:
    """The folds' items as one evaluation: every item once, rows and paired differences from them."""
    pooled = ItemPreferences.pooled([p.report.items for p in parts])
    first = parts[0].report
    settings = replace(first.settings, folds=s.folds, fold_reading_layers=[p.run.meta.reading_layer for p in parts],
                       n_fit_pairs=None, eval_fraction=None, n_eval_items=n_items, reading_layer=None,
                       eval_auroc=None, n_fit=None, paired_cv_accuracy=None, paired_cv_accuracy_by_layer=None,
                       eval_paired_accuracy=None, eval_paired_accuracy_by_type=None)
    return BiasReport(dataset=first.dataset, lang=first.lang, method=first.method, mode=first.mode,
                      n_eval_pairs=n_items, ppl_before=first.ppl_before,
                      rows=bias_rows(pooled, s.n_boot, s.seed, s.min_pairs),
                      ceilings=ceiling_rows(pooled, s.n_boot, s.seed, s.min_pairs),
                      passes={k: sum(p.report.passes.get(k, 0) for p in parts) for k in first.passes},
                      seconds=sum(p.report.seconds for p in parts), settings=settings, items=pooled)


def _writes_tag(s: BiasStudySettings) -> str:
    """What a neuron-write study's default folder name adds (kept beside the plain study's)."""
    if not s.writers:
        return ""
    return (f"-writes-L{s.writers[0]}-{s.writers[1]}" + ("" if s.writes_strength == 1.0 else f"-t{s.writes_strength:g}")
            + ("" if s.writer_rank == "contrast" else f"-{s.writer_rank}"))


def _sample(n: int, k: int, seed: int) -> list[int]:
    import random

    return sorted(random.Random(seed).sample(range(n), k))
