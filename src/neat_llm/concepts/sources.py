"""Loading a concept set again from the ``source`` a run recorded (``ConceptSet.source``): a file
and its column mapping, a named data set, the fit part of minimal pairs, or the demo concept. Kept
apart from ``conceptset.py`` so the data-set loaders can build on ``ConceptSet`` without a cycle."""

from __future__ import annotations

from . import datasets
from .conceptset import ConceptSet, ConceptSetError
from .demo import demo_concept


def load_concept_source(source: dict) -> ConceptSet:
    """The concept set a run's recorded ``source`` describes."""
    if "sample" in source:
        return load_concept_source({k: v for k, v in source.items() if k != "sample"}).sample(*source["sample"])
    kind = source.get("kind")
    if kind == "dataset":
        if source.get("groups"):
            return datasets.load_toxigen(source.get("path"), source["groups"])
        return datasets.load_named(source["dataset"], source.get("path"))
    if kind == "pairs":  # the fit part of minimal pairs, as a study split them
        pairs = datasets.load_pairs(source["data"], source.get("path"), source.get("lang", "en"),
                                    **source.get("columns", {})).only(source.get("bias_type"))
        return pairs.split(source["eval_fraction"], source["seed"])[0].as_concept_set().dedupe()
    if kind == "templates":  # the fit part of bias templates, as pairs of fillings
        from .templates import load_templates

        templates = load_templates(source["path"], **source.get("columns", {})).only(source.get("bias_type"))
        return templates.split(source["eval_fraction"], source["seed"])[0].as_pairs().as_concept_set().dedupe()
    if kind == "demo":
        return demo_concept()
    if kind == "file":
        return ConceptSet.from_file(source["path"], text=source["text"], label=source["label"],
                                    positive=source["positive"], contrast=source["contrast"], name=source.get("name"))
    raise ConceptSetError(f"cannot reload a concept set from {source!r}; pass it explicitly (--concept ...)")
