"""Loading a concept set again from the ``source`` a run recorded (``ConceptSet.source``): a file
and its column mapping, a named data set, the fit part of minimal pairs, or the demo concept. Kept
apart from ``conceptset.py`` so the data-set loaders can build on ``ConceptSet`` without a cycle."""

from __future__ import annotations

from dataclasses import replace

from . import datasets
from .conceptset import ConceptSet, ConceptSource
from .demo import demo_concept


def load_concept_source(source: ConceptSource | dict) -> ConceptSet:
    """The concept set a run's recorded ``source`` describes (a ``ConceptSource`` or its dict)."""
    src = ConceptSource.from_dict(source)
    if src.sample is not None:
        return load_concept_source(replace(src, sample=None)).sample(*src.sample)
    if src.kind == "dataset":
        if src.groups:
            return datasets.load_toxigen(src.path, list(src.groups))
        return datasets.load_named(src.data, src.path)
    if src.kind == "pairs":  # the fit part of minimal pairs, as a study split them
        pairs = datasets.load_pairs(src.data, src.path, src.lang or "en", **src.columns).only(src.bias_type)
        return pairs.split(src.eval_fraction, src.seed)[0].as_concept_set().dedupe()
    if src.kind == "templates":  # the fit part of bias templates, as pairs of fillings
        from .templates import load_templates

        templates = load_templates(src.path, **src.columns).only(src.bias_type)
        return templates.split(src.eval_fraction, src.seed)[0].as_pairs().as_concept_set().dedupe()
    if src.kind == "demo":
        return demo_concept()
    c = src.columns
    return ConceptSet.from_file(src.path, text=c["text"], label=c["label"], positive=c["positive"],
                                contrast=c.get("contrast"), name=src.name)
