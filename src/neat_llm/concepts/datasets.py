"""Loaders for the public evaluation data: ToxiGen, Davidson et al., CrowS-Pairs, IndiBias.

Each takes any path (a file, or the folder that holds it); with no path it looks in
``$NEAT_LLM_DATA`` and then ``../shared/data`` (relative to the working directory and to this
checkout), and says clearly where it looked when nothing is there. None of this data ships with
neat-llm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .conceptset import ConceptSet, ConceptSetError, ConceptSource

FILES = {
    "toxigen": "toxigen/toxigen_sentences.jsonl",
    "davidson": "davidson/labeled_data.csv",
    "crows-pairs": "crows_pairs/crows_pairs_anonymized.csv",
    "indibias": "indibias/IndiBias_v1_sample.csv",
}


class DataNotFoundError(FileNotFoundError):
    """A data set is not where it was looked for."""


def data_roots() -> list[Path]:
    roots = []
    if os.environ.get("NEAT_LLM_DATA"):
        roots.append(Path(os.environ["NEAT_LLM_DATA"]))
    roots.append(Path.cwd() / ".." / "shared" / "data")
    roots.append(Path(__file__).resolve().parents[4] / "shared" / "data")  # <checkout>/../shared/data
    return roots


def resolve(name: str, path: str | Path | None = None) -> Path:
    """The file of data set ``name``: ``path`` itself, ``path/<default file>``, or the default places."""
    rel = FILES[name]
    if path is not None:
        p = Path(path)
        for cand in (p, p / rel, p / Path(rel).name):
            if cand.is_file():
                return cand
        raise DataNotFoundError(f"{name}: no data at {p} (expected the file itself or a folder holding {rel})")
    for root in data_roots():
        if (root / rel).is_file():
            return root / rel
    looked = ", ".join(str(r / rel) for r in data_roots())
    raise DataNotFoundError(f"{name}: data not found (looked at {looked}); pass its path, or set NEAT_LLM_DATA "
                            "to the folder that holds it")


def load_toxigen(path: str | Path | None = None, groups: list[str] | None = None) -> ConceptSet:
    """ToxiGen statements: positives = ``hate``, contrast = ``neutral``; optionally only some target
    groups (column ``group``)."""
    import pandas as pd

    df = pd.read_json(resolve("toxigen", path), lines=True)
    if groups:
        unknown = sorted(set(groups) - set(df["group"]))
        if unknown:
            raise ConceptSetError(f"unknown ToxiGen group(s) {unknown}; groups: {sorted(df['group'].unique())}")
        df = df[df["group"].isin(groups)]
    name = "toxigen-hate" + (f"[{','.join(sorted(groups))}]" if groups else "")
    # the same statement is listed once per target group; keep one copy
    return ConceptSet.from_pandas(df, text="text", label="label", positive="hate", contrast="neutral",
                                  name=name).dedupe()


def load_named(name: str, path: str | Path | None = None) -> ConceptSet:
    """A concept set by data-set name: ``toxigen`` (hate vs neutral), ``davidson`` (hate vs neither),
    ``davidson-offensive``, ``crows-pairs`` / ``indibias-en`` / ``indibias-hi`` (stereotypical vs
    anti-stereotypical sentences). Remembers how to load it again (``source``)."""
    from dataclasses import replace

    loaders = {"toxigen": lambda: load_toxigen(path), "davidson": lambda: load_davidson(path),
               "davidson-offensive": lambda: load_davidson(path, positive="offensive"),
               "crows-pairs": lambda: load_crows_pairs(path).as_concept_set(),
               "indibias-en": lambda: load_indibias(path, "en").as_concept_set(),
               "indibias-hi": lambda: load_indibias(path, "hi").as_concept_set()}
    if name not in loaders:
        raise ConceptSetError(f"unknown data set {name!r}; choose from {', '.join(loaders)}")
    cs = loaders[name]()
    return replace(cs, source=ConceptSource("dataset", data=name, path=None if path is None else str(path)))


def load_davidson(path: str | Path | None = None, positive: str = "hate") -> ConceptSet:
    """Davidson et al. tweets: positives = class 0 (hate speech) or, with ``positive="offensive"``,
    class 1; contrast = class 2 (neither). The other class is left out."""
    import pandas as pd

    classes = {"hate": 0, "offensive": 1}
    if positive not in classes:
        raise ConceptSetError(f"positive must be 'hate' or 'offensive', got {positive!r}")
    df = pd.read_csv(resolve("davidson", path))
    return ConceptSet.from_pandas(df, text="tweet", label="class", positive=classes[positive], contrast=2,
                                  name=f"davidson-{positive}").dedupe()


@dataclass(frozen=True)
class MinimalPairs:
    """Minimal sentence pairs: ``more`` is the more stereotypical sentence of each pair, ``less`` the
    other; ``bias_type`` per pair (lower case)."""

    more: tuple[str, ...]
    less: tuple[str, ...]
    bias_type: tuple[str, ...]
    name: str

    def __len__(self) -> int:
        return len(self.more)

    def types(self) -> list[str]:
        return sorted(set(self.bias_type))

    def only(self, bias_type: str | None) -> "MinimalPairs":
        if bias_type is None:
            return self
        bt = bias_type.lower()
        if bt not in self.bias_type:
            raise ConceptSetError(f"no pairs of bias type {bias_type!r} in {self.name}; types: {self.types()}")
        keep = [i for i, t in enumerate(self.bias_type) if t == bt]
        return MinimalPairs(tuple(self.more[i] for i in keep), tuple(self.less[i] for i in keep),
                            tuple(self.bias_type[i] for i in keep), f"{self.name}[{bt}]")

    def split(self, eval_fraction: float = 0.3, seed: int = 0) -> tuple["MinimalPairs", "MinimalPairs"]:
        """Seeded (fit, eval) split of whole pairs, stratified by bias type where every type has at
        least 2 pairs; both parts keep at least 2 pairs."""
        fit_i, eval_i = split_indices(self.bias_type, eval_fraction, seed, self.name, "pair")
        return self.subset(fit_i, f"{self.name}:fit"), self.subset(eval_i, f"{self.name}:eval")

    def subset(self, idx, name: str | None = None) -> "MinimalPairs":
        idx = sorted(int(i) for i in idx)
        return MinimalPairs(tuple(self.more[i] for i in idx), tuple(self.less[i] for i in idx),
                            tuple(self.bias_type[i] for i in idx), name or self.name)

    def as_concept_set(self) -> ConceptSet:
        """Stereotypical sentences as positives, their minimal counterparts as contrast."""
        return ConceptSet.from_texts(self.more, self.less, name=self.name)


def split_indices(types, eval_fraction: float, seed: int, name: str, what: str) -> tuple[list[int], list[int]]:
    """Seeded (fit, eval) indices of ``len(types)`` items, stratified by ``types`` where every type
    has at least 2 items; both parts keep at least 2."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    n = len(types)
    if n < 4:
        raise ConceptSetError(f"{name}: {n} {what}(s); at least 4 are needed to fit on some and evaluate on others")
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    types = np.array(types)
    _, counts = np.unique(types, return_counts=True)
    n_eval = min(max(2, round(n * eval_fraction)), n - 2)
    strat = types if counts.min() >= 2 and min(n_eval, n - n_eval) >= len(counts) else None
    fit_i, eval_i = train_test_split(np.arange(n), test_size=n_eval, random_state=seed, stratify=strat)
    return [int(i) for i in fit_i], [int(i) for i in eval_i]


def pairs_from_frame(df, more: str, less: str, bias_type: str | None, name: str) -> MinimalPairs:
    """Pairs from any table with a column mapping (a user's own CSV of minimal pairs works too)."""
    missing = [c for c in (more, less, bias_type) if c is not None and c not in df.columns]
    if missing:
        raise ConceptSetError(f"column(s) {missing} not found; available columns: {list(df.columns)}")
    df = df.dropna(subset=[more, less])
    if df.empty:
        raise ConceptSetError(f"{name}: no complete pairs")
    types = df[bias_type].astype(str).str.lower() if bias_type else ["all"] * len(df)
    return MinimalPairs(tuple(df[more].astype(str)), tuple(df[less].astype(str)), tuple(types), name)


def load_crows_pairs(path: str | Path | None = None) -> MinimalPairs:
    """CrowS-Pairs: ``sent_more`` is the more stereotypical sentence in both directions (the metric of
    Nangia et al. counts a pair as biased when the model prefers ``sent_more``)."""
    import pandas as pd

    return pairs_from_frame(pd.read_csv(resolve("crows-pairs", path)), "sent_more", "sent_less", "bias_type",
                            "crows-pairs")


def load_indibias(path: str | Path | None = None, lang: str = "en") -> MinimalPairs:
    """IndiBias (Indian context), English (``lang="en"``) or Hindi (``"hi"``) pairs; bias types
    caste, religion, gender, socioeconomic, age, physical appearance, disability."""
    import pandas as pd

    cols = {"en": ("modified_eng_sent_more", "modified_eng_sent_less"), "hi": ("sent_more_hindi", "sent_less_hindi")}
    if lang not in cols:
        raise ConceptSetError(f"lang must be 'en' or 'hi', got {lang!r}")
    more, less = cols[lang]
    return pairs_from_frame(pd.read_csv(resolve("indibias", path)), more, less, "bias_type", f"indibias-{lang}")


def load_pairs(data: str, path: str | Path | None = None, lang: str = "en", *, more: str = "sent_more",
               less: str = "sent_less", bias_type: str | None = "bias_type") -> MinimalPairs:
    """Minimal pairs by name (``crows-pairs``, ``indibias`` with ``lang`` en or hi) or from any
    CSV/TSV/JSONL/parquet file with a column mapping (``more``, ``less``, ``bias_type`` or None)."""
    if data == "crows-pairs":
        if lang != "en":
            raise ConceptSetError(f"CrowS-Pairs is English only; --lang {lang} is for IndiBias")
        return load_crows_pairs(path)
    if data == "indibias":
        return load_indibias(path, lang)
    import pandas as pd

    p = Path(data)
    if not p.is_file():
        raise ConceptSetError(f"--data must be crows-pairs, indibias or a file of minimal pairs; no file {p}")
    readers = {".csv": pd.read_csv, ".tsv": lambda f: pd.read_csv(f, sep="\t"), ".parquet": pd.read_parquet,
               ".jsonl": lambda f: pd.read_json(f, lines=True), ".json": pd.read_json}
    if p.suffix.lower() not in readers:
        raise ConceptSetError(f"{p}: unknown file type {p.suffix!r}; use one of {', '.join(readers)}")
    return pairs_from_frame(readers[p.suffix.lower()](p), more, less, bias_type, p.stem)
