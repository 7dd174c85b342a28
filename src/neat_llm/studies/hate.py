"""``neat hate``: hate-speech concept neurons found on fit data (hateful vs neutral text), turned
off, and measured on held-out data (log-likelihoods, label readout, hate rate of sampled
continuations, perplexity) against random neurons. With target groups (ToxiGen), the neurons found
on some groups are evaluated on sentences about the others.

The study folder is the run folder: the run's files, ``hate.json`` (the report),
``hate_continuations.json`` (every sampled continuation per condition) and ``.hate-partial/``
(finished conditions, so an interrupted study resumes).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..concepts.conceptset import ConceptSet, ConceptSetError, ConceptSource
from ..concepts.datasets import load_davidson, load_toxigen, resolve
from ..evaluation.generation import prompt_prefixes
from ..evaluation.hate import HateData, HateReport, evaluate_hate
from ..evaluation.hate_classifier import load_hate_classifier

from ..find import default_run_dir
from ..find_settings import FindSettings
from ..records import split_known
from ..models.loaded import LoadedModel
from ..runs import Run, RunFiles
from .common import find_or_reuse, measure_conditions, neuron_pool, study_folder, write_results
from .settings import HateStudySettings


@dataclass
class HateStudy:
    run: Run
    report: HateReport
    path: Path  # hate.json


def hate_concept(data: str = "toxigen", data_path: str | Path | None = None, *, groups: Sequence[str] | None = None,
                 text_col: str = "text", label_col: str = "label", positive: Sequence[str] = ("hate",),
                 contrast: Sequence[str] | None = None) -> ConceptSet:
    """Hateful (positive) vs neutral (contrast) texts: ``toxigen`` (optionally some target groups),
    ``davidson`` (hate speech vs neither), or any file with a column mapping."""
    if data == "toxigen":
        cs = load_toxigen(data_path, list(groups) if groups else None)
    elif groups:
        raise ConceptSetError("--fit-groups / --eval-groups need the ToxiGen data (target groups)")
    elif data == "davidson":
        cs = load_davidson(data_path)
    else:
        path = Path(data)
        if not path.is_file():
            raise ConceptSetError(f"--data must be toxigen, davidson or a file; no file {path}")
        return ConceptSet.from_file(path, text=text_col, label=label_col, positive=list(positive),
                                    contrast=list(contrast) if contrast else None)
    source = ConceptSource("dataset", data=data, path=None if data_path is None else str(data_path),
                           groups=tuple(sorted(groups)) if groups else None)  # lets `neat evaluate` reload it
    return replace(cs, source=source)


def _groups(data_path, fit_groups, eval_groups) -> tuple[list[str] | None, list[str] | None]:
    """Complete the group split: groups not named on one side go to the other."""
    if not fit_groups and not eval_groups:
        return None, None
    import pandas as pd

    every = sorted(pd.read_json(resolve("toxigen", data_path), lines=True)["group"].unique())
    fit = sorted(fit_groups) if fit_groups else sorted(set(every) - set(eval_groups))
    ev = sorted(eval_groups) if eval_groups else sorted(set(every) - set(fit))
    unknown = sorted((set(fit) | set(ev)) - set(every))
    if unknown:
        raise ConceptSetError(f"unknown ToxiGen group(s) {unknown}; groups: {every}")
    if set(fit) & set(ev):
        raise ConceptSetError(f"group(s) {sorted(set(fit) & set(ev))} are in both --fit-groups and --eval-groups")
    if not fit or not ev:
        raise ConceptSetError("the group split leaves no group on one side")
    return fit, ev


def davidson_hate_prompts(path: str | Path | None, n: int, seed: int = 0) -> list[str]:
    """Prefixes of ``n`` seeded hate-class tweets from the Davidson test part (the 20% no judge is
    trained on), cleaned of retweet marks, mentions, links and HTML entities."""
    import html
    import re

    from ..concepts.datasets import resolve
    from ..evaluation.hate_classifier import davidson_split

    _, _, xte, yte = davidson_split(resolve("davidson", path))
    tweets = []
    for t in (str(x) for x, y in zip(xte, yte) if int(y) == 0):
        t = html.unescape(t)
        t = re.sub(r"https?://\S+", " ", t)
        t = re.sub(r"\bRT\b|@\w+:?", " ", t)
        t = re.sub(r"\s+", " ", t).strip(" !\"'")
        if len(t.split()) >= 4:
            tweets.append(t)
    prefixes = prompt_prefixes(tweets)
    if n > len(prefixes):
        raise ConceptSetError(f"--davidson-prompts {n}: the Davidson test part has {len(prefixes)} usable hate tweets")
    return _cap(prefixes, n, seed)


def _names_list(v: tuple[str, ...] | None) -> list[str] | None:
    return None if v is None else list(v)


def _cap(texts: list[str], n: int | None, seed: int) -> list[str]:
    if n is None or len(texts) <= n:
        return texts
    keep = sorted(random.Random(seed).sample(range(len(texts)), n))
    return [texts[i] for i in keep]


def _held_out_data(s: HateStudySettings, concept: ConceptSet, run: Run, eval_g: list[str] | None) -> HateData:
    """The held-out hateful and neutral sentences (the eval groups', or the run's eval split) and the
    hate-prone prompts made from them (plus Davidson tweet prefixes, when asked)."""
    if eval_g:
        held = hate_concept(s.data, s.data_path, groups=eval_g)
        seen = set(concept.texts)
        hate = [t for t in held.positives if t not in seen]
        neutral = [t for t in held.contrast if t not in seen]
    else:
        ev = run.eval_set(concept)
        hate, neutral = ev.positives, ev.contrast
    hate, neutral = _cap(hate, s.max_eval, s.seed), _cap(neutral, s.max_eval, s.seed)
    prompts = prompt_prefixes(hate)[:s.n_prompts]
    sources = ["held-out hateful"] * len(prompts)
    if s.davidson_prompts:  # a second source: hate-class tweets of the judges' Davidson test part
        extra = davidson_hate_prompts(s.classifier_data, s.davidson_prompts, s.seed)
        prompts, sources = prompts + extra, sources + ["davidson"] * len(extra)
    if not prompts:
        raise ConceptSetError("no held-out hateful sentence is long enough (4+ words) to make a prompt from")
    return HateData(tuple(hate), tuple(neutral), tuple(prompts), s.samples, tuple(sources))


def _judges(s: HateStudySettings, concept: ConceptSet, run: Run, tfidf, encoder):
    """(judge, second opinion, the second opinion's quality on the fit part): the MiniLM judge when
    ``encoder`` is given, else the TF-IDF judge alone. The judge learns from the fit part only: the
    held-out texts never train or test it."""
    if encoder is None:
        return tfidf, None, None
    from ..evaluation.embedding_judge import judge_quality, load_embedding_judge, toxigen_split

    fit = concept.split(eval_fraction=run.meta.params["eval_fraction"], seed=run.meta.seed).fit
    source = s.data if s.data in ("toxigen", "davidson") else "fit"
    classifier = load_embedding_judge(s.classifier_data, (fit.texts, fit.labels), source=source, encoder=encoder)
    _, _, test_x, test_y = toxigen_split(fit.texts, fit.labels)
    return classifier, tfidf, judge_quality(tfidf.predict, test_x, ["hate" if y else "neither" for y in test_y], source)


def hate_study(model: LoadedModel, settings: HateStudySettings | None = None, *, out: str | Path | None = None,
               progress: bool = True, find: FindSettings | None = None,
               neurons: dict[int, list[int]] | None = None, **options) -> HateStudy:
    """Find hate-speech neurons with ``method`` and measure what turning the top-K off does.

    ``max_per_side``: seeded subsample of the fit data per side (bounds the finding cost);
    ``max_eval``: at most this many held-out sentences per side; ``n_prompts``: hate-prone prompts
    (the first half of held-out hateful sentences), each continued ``samples`` times (seeded, the
    same draws in every condition) with ``max_new_tokens`` sampled tokens; ``davidson_prompts``:
    that many prefixes of hate-class Davidson tweets from the judges' test part as a second prompt
    source (rates are also reported per source);
    ``classifier_data``: the Davidson file the judges are trained on (default: the shared data).
    ``judge``: ``"minilm"`` (MiniLM embeddings + logistic regression on Davidson and the fit part
    of the study's data; the TF-IDF judge is its second opinion) or ``"tfidf"`` (the TF-IDF judge
    alone).
    ``mode`` / ``alpha``: how the neurons are turned off (default: the run's own, see
    ``Run.intervention``).
    The settings come as a ``HateStudySettings`` (``settings``), as keyword arguments
    (``n_prompts=40``), or both (the keywords win); ``find`` (a ``FindSettings``) and keyword
    arguments naming its fields (``layers=``, ``probe_size=``) are how the neurons are found (its
    seed is the study's); ``neurons``: score only this {block: [neurons]} subset.
    """
    study_options, find_options = split_known(HateStudySettings, options)
    s = HateStudySettings.of(settings, **study_options)
    fs = FindSettings.of(find, **{**find_options, "seed": s.seed})
    data, data_path, method, ks, n_random, seed, samples = s.data, s.data_path, s.method, list(s.ks), s.n_random, \
        s.seed, s.samples
    max_new_tokens, readout, mode, alpha, judge = s.max_new_tokens, s.readout, s.mode, s.alpha, s.judge
    fit_groups, eval_groups = _names_list(s.fit_groups), _names_list(s.eval_groups)
    fit_g, eval_g = _groups(data_path, fit_groups, eval_groups) if data == "toxigen" else (fit_groups, eval_groups)
    concept = hate_concept(data, data_path, groups=fit_g, text_col=s.text_col, label_col=s.label_col,
                           positive=list(s.positive), contrast=_names_list(s.contrast))
    if s.max_per_side:
        concept = concept.sample(s.max_per_side, seed)
    readout.token_ids(model)  # before the long part: bad label words and a missing file fail now
    tfidf, encoder = load_hate_classifier(s.classifier_data), None
    if judge == "minilm":
        from ..evaluation.embedding_judge import SentenceEncoder, minilm_dir

        encoder = SentenceEncoder(minilm_dir())  # a missing encoder package fails before the long part
    out = Path(out) if out is not None else default_run_dir(concept, f"hate-{method}")
    with study_folder(out):
        run = find_or_reuse(model, concept, method, out, fs, neurons=neurons, progress=progress, ks=ks)
        iv = run.intervention(mode, alpha, s.strength)  # default: the run's own (its ablation, or AurA's dampening)

        hdata = _held_out_data(s, concept, run, eval_g)
        classifier, second, tfidf_on_fit = _judges(s, concept, run, tfidf, encoder)
        data_fp = {"method": method, "data": [hdata.hate, hdata.neutral, hdata.prompts, hdata.prompt_sources],
                   "samples": samples, "max_new_tokens": max_new_tokens, "classifier": classifier.data_sha256,
                   "judge": judge, "judge_settings": getattr(classifier, "settings", None), "readout": repr(readout)}
        report, store = measure_conditions(
            out, RunFiles.HATE_PARTIAL, run, iv, ks, n_random, seed, data_fp, "hate evaluation", progress,
            lambda store, tick: evaluate_hate(model, hdata, run.selections(ks), classifier, n_random=n_random, seed=seed,
                                              mode=iv, neuron_pool=neuron_pool(run), max_new_tokens=max_new_tokens,
                                              readout=readout, store=store, on_condition=tick, dataset=concept.name,
                                              method=method, second_judge=second))
        if tfidf_on_fit is not None:  # the second opinion measured on the same held-out part of the fit texts
            from dataclasses import asdict as _asdict

            report.judges.setdefault("tfidf", {})[tfidf_on_fit.source] = _asdict(tfidf_on_fit)
        report.settings = replace(report.settings, fit_groups=fit_g, eval_groups=eval_g,
                                  reading_layer=run.meta.reading_layer, eval_auroc=run.meta.eval_auroc,
                                  n_fit=run.meta.n_fit)
        path = write_results(out, RunFiles.HATE, report, store, (RunFiles.HATE_CONTINUATIONS, {
            "prompts": list(hdata.prompts), "samples_per_prompt": samples, **report.continuations}))
        return HateStudy(run, report, path)
