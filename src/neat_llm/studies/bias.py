"""``neat bias``: social-bias neurons found on fit minimal pairs (stereotypical sentences as
positives, their anti-stereotypical counterparts as contrast), turned off, and the stereotype
score of held-out pairs measured per bias type against random neurons, with the perplexity ratio
alongside. CrowS-Pairs, IndiBias (Indian context) in English and Hindi, or a user's own pairs.

The study folder is the run folder: the run's files, ``bias.json`` and ``.bias-partial/``
(finished conditions, so an interrupted study resumes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..concepts.conceptset import ConceptSource
from ..concepts.datasets import MinimalPairs, load_pairs
from ..concepts.templates import BiasTemplates, load_templates
from ..concepts.paired import pair_differences, paired_accuracy, paired_cv_accuracy
from ..concepts.vectors import choose_reading_layer
from ..evaluation.bias import BiasReport, evaluate_bias
from ..evaluation.neutral_text import NEUTRAL_BY_LANG, NEUTRAL_TEXTS

from ..find import default_run_dir
from ..find_settings import FindSettings
from ..records import split_known
from ..models.loaded import LoadedModel
from ..runs import Run, RunFiles
from .common import find_or_reuse, measure_conditions, neuron_pool, study_folder, write_results
from .settings import BiasStudySettings

__all__ = ["BiasStudy", "bias_study", "load_pairs"]


@dataclass
class BiasStudy:
    run: Run
    report: BiasReport
    path: Path  # bias.json
    fit: MinimalPairs
    eval: MinimalPairs | BiasTemplates  # templates are scored by their own metric


def _heldout_paired_accuracy(model: LoadedModel, readout, ev_pairs) -> tuple[float, dict]:
    """The held-out pairs' paired accuracy at the reading layer (share of pairs whose stereotypical
    sentence scores higher than its counterpart), in all and per bias type."""
    ev_diffs = pair_differences(model, ev_pairs.more, ev_pairs.less, pool=readout.pool,
                                template=readout.template)[:, readout.layer]
    types = list(ev_pairs.bias_type)
    by_type = {t: {"n": types.count(t), "accuracy": paired_accuracy(
        ev_diffs[[i for i, x in enumerate(types) if x == t]], readout.vector)} for t in sorted(set(types))}
    return paired_accuracy(ev_diffs, readout.vector), by_type


def _split_items(s: BiasStudySettings):
    """(the items' name, the fit pairs, the held-out items, the concept's source): pairs or
    templates split whole and stratified, each part capped (seeded) where asked."""
    columns = dict(s.columns or {})
    if s.templates is not None:
        items = load_templates(s.data, **s.templates).only(s.bias_type)
        fit_items, ev = items.split(s.eval_fraction, s.seed)
        fit = fit_items.as_pairs()
        source = ConceptSource("templates", path=str(s.data), columns=dict(s.templates))
    else:
        items = load_pairs(s.data, s.data_path, s.lang, **columns).only(s.bias_type)
        fit, ev = items.split(s.eval_fraction, s.seed)
        source = ConceptSource("pairs", data=s.data, path=None if s.data_path is None else str(s.data_path),
                               lang=s.lang, columns=columns)
    if s.max_eval_pairs and len(ev) > s.max_eval_pairs:
        ev = ev.subset(_sample(len(ev), s.max_eval_pairs, s.seed), ev.name)
    if s.max_fit_pairs and len(fit) > s.max_fit_pairs:  # the cap holds for everything read from the fit pairs
        fit = fit.subset(_sample(len(fit), s.max_fit_pairs, s.seed), fit.name)
    return items.name, fit, ev, source


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
    The settings come as a ``BiasStudySettings`` (``settings``), as keyword arguments
    (``probe="paired"``), or both (the keywords win); ``find`` (a ``FindSettings``) and keyword
    arguments naming its fields (``layers=``, ``probe_size=``) are how the neurons are found (its
    seed is the study's); ``neurons``: score only this {block: [neurons]} subset.
    """
    study_options, find_options = split_known(BiasStudySettings, options)
    s = BiasStudySettings.of(settings, **study_options)
    fs = FindSettings.of(find, **{**find_options, "seed": s.seed})
    lang, bias_type, method = s.lang, s.bias_type, s.method
    ks, n_random, eval_fraction, n_boot, min_pairs, seed = list(s.ks), s.n_random, s.eval_fraction, s.n_boot, \
        s.min_pairs, s.seed
    mode, alpha, layer_rule, templates, probe = s.mode, s.alpha, s.layer_rule, s.templates, s.probe
    items_name, fit, ev, source = _split_items(s)
    ev_pairs = ev.as_pairs() if isinstance(ev, BiasTemplates) else ev  # what the paired accuracy reads
    concept = fit.as_concept_set().dedupe()
    concept = replace(concept, name=f"{items_name}-stereo",
                      source=replace(source, bias_type=bias_type, eval_fraction=eval_fraction, seed=seed))
    probe_pairs = None
    if probe == "paired":
        probe_pairs = list(zip(fit.more, fit.less))
        fs = FindSettings.of(fs, score=fs.score or "contrastive")
    out = Path(out) if out is not None else default_run_dir(concept, f"bias-{method}")
    with study_folder(out):
        paired_cv = None
        if layer_rule == "paired" and fs.reading_layer is None:
            # the reading layer where, within a pair, the stereotypical sentence scores higher (paired.py)
            paired_cv = paired_cv_accuracy(pair_differences(model, fit.more, fit.less, pool=fs.pool,
                                                            template=fs.read_template), seed=seed)
            fs = FindSettings.of(fs, reading_layer=choose_reading_layer(paired_cv))
        run = find_or_reuse(model, concept, method, out, fs, neurons=neurons, probe_pairs=probe_pairs,
                            progress=progress)
        readout = run.readout()
        iv = run.intervention(mode, alpha, s.strength)  # default: the run's own (its ablation, or AurA's dampening)
        eval_paired, paired_by_type = _heldout_paired_accuracy(model, readout, ev_pairs)

        neutral = NEUTRAL_BY_LANG.get(lang, NEUTRAL_TEXTS)
        report, store = measure_conditions(
            out, RunFiles.BIAS_PARTIAL, run, iv, ks, n_random, seed, {"method": method, "eval": repr(ev), "neutral": neutral},
            "bias evaluation", progress,
            lambda store, tick: evaluate_bias(model, ev, run.selections(ks), n_random=n_random, seed=seed, mode=iv,
                                              neuron_pool=neuron_pool(run), neutral_texts=neutral, n_boot=n_boot,
                                              min_pairs=min_pairs, store=store, on_condition=tick, dataset=items_name,
                                              lang=lang, method=method))
        report.settings = replace(
            report.settings, bias_type=bias_type, n_fit_pairs=len(fit), eval_fraction=eval_fraction,
            templates=templates, n_eval_items=len(ev), probe=probe, score=run.meta.params.get("score"),
            reading_layer=run.meta.reading_layer, eval_auroc=run.meta.eval_auroc, n_fit=run.meta.n_fit,
            layer_rule=layer_rule, paired_cv_accuracy=None if paired_cv is None else float(paired_cv[readout.layer]),
            paired_cv_accuracy_by_layer=None if paired_cv is None else [float(x) for x in paired_cv],
            eval_paired_accuracy=eval_paired, eval_paired_accuracy_by_type=paired_by_type)
        path = write_results(out, RunFiles.BIAS, report, store)
        return BiasStudy(run, report, path, fit, ev)


def _sample(n: int, k: int, seed: int) -> list[int]:
    import random

    return sorted(random.Random(seed).sample(range(n), k))
