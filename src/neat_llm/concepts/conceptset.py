"""Concept sets: positive texts P (express the concept) and contrast texts N (do not).

Loaders take JSONL / CSV / TSV / Parquet files, pandas frames, Hugging Face datasets, or plain
lists, with a column mapping. ``split`` makes the seeded, stratified fit / eval parts.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

MIN_PER_SIDE = 2


class ConceptSetError(ValueError):
    """The concept set cannot be used as given (missing column, unknown label, too few examples...)."""


SOURCE_KINDS = ("file", "dataset", "pairs", "templates", "demo")


@dataclass(frozen=True)
class ConceptSource:
    """How to load a concept set again (a run records it; ``concepts.sources.load_concept_source``
    reads it back). ``kind``:

    - ``file``: ``path`` with ``columns`` {text, label, positive, contrast} and the set's ``name``;
    - ``dataset``: the named data set ``data`` (``path``: its file or folder), ToxiGen ``groups``;
    - ``pairs``: the fit part of the minimal pairs ``data`` (``lang``, ``columns`` {more, less,
      bias_type}, ``bias_type``, ``eval_fraction``, ``seed``), as a study split them;
    - ``templates``: the fit part of the bias templates at ``path`` (``columns`` as ``load_templates``
      takes them), as pairs of fillings;
    - ``demo``: the built-in demo concept.
    ``sample``: (max_per_side, seed) of a ``ConceptSet.sample`` taken afterwards."""

    kind: str
    path: str | None = None
    data: str | None = None
    columns: dict = field(default_factory=dict)
    name: str | None = None
    groups: tuple[str, ...] | None = None
    lang: str | None = None
    bias_type: str | None = None
    eval_fraction: float | None = None
    seed: int | None = None
    sample: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ConceptSetError(f"unknown concept source kind {self.kind!r}; kinds: {', '.join(SOURCE_KINDS)}")

    def to_dict(self) -> dict:
        """JSON-ready, without the fields left empty."""
        out = {"kind": self.kind}
        for f in ("path", "data", "columns", "name", "groups", "lang", "bias_type", "eval_fraction", "seed", "sample"):
            v = getattr(self, f)
            if v is not None and v != {}:
                out[f] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: "dict | ConceptSource | None") -> "ConceptSource | None":
        """A source from its dict (also the untyped dicts older runs recorded)."""
        if d is None or isinstance(d, ConceptSource):
            return d
        d = dict(d)
        kind = d.pop("kind", None)
        if kind is None:
            raise ConceptSetError(f"a concept source needs a kind, got {d!r}")
        if kind == "file" and "columns" not in d:  # older runs kept the mapping at the top level
            d["columns"] = {k: d.pop(k) for k in ("text", "label", "positive", "contrast") if k in d}
        if "dataset" in d:  # older runs: "dataset" for the named data set
            d["data"] = d.pop("dataset")
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ConceptSetError(f"unknown concept source field(s) {sorted(unknown)}")
        for f in ("groups", "sample"):
            if d.get(f) is not None:
                d[f] = tuple(d[f])
        return cls(kind, **d)

    def sampled(self, max_per_side: int, seed: int) -> "ConceptSource":
        return replace(self, sample=(int(max_per_side), int(seed)))

    def describe(self) -> str:
        """What a person would call it: the file, the data set or the kind."""
        return self.path or self.data or self.name or self.kind


@dataclass(frozen=True)
class ConceptSet:
    """Texts with a boolean label: True = positive (the concept), False = contrast.

    ``name`` is for display; ``positive_label`` is the original label value that marks positives.
    """

    texts: tuple[str, ...]
    labels: tuple[bool, ...]
    name: str = "concept"
    positive_label: str = "positive"
    source: ConceptSource | None = field(default=None, compare=False)  # how to load it again

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ConceptSetError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        bad = [i for i, t in enumerate(self.texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ConceptSetError(f"{len(bad)} empty or non-text entries (first: entry {bad[0] + 1}, counting from 1); "
                                  "remove them")
        n_pos, n_neg = self.n_positive, self.n_contrast
        if n_pos + n_neg == 0:
            raise ConceptSetError(f"concept set {self.name!r} is empty")
        if n_pos == 0 or n_neg == 0:
            side = "positive" if n_pos == 0 else "contrast"
            raise ConceptSetError(f"concept set {self.name!r} is one-sided: no {side} examples "
                                  f"({n_pos} positive, {n_neg} contrast)")
        if min(n_pos, n_neg) < MIN_PER_SIDE:
            raise ConceptSetError(f"concept set {self.name!r} needs at least {MIN_PER_SIDE} examples per side, and "
                                  f"{2 * MIN_PER_SIDE} per side to be split into fit and eval parts as `find` does "
                                  f"(has {n_pos} positive, {n_neg} contrast)")

    # --- sizes and identity ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.texts)

    @property
    def n_positive(self) -> int:
        return sum(self.labels)

    @property
    def n_contrast(self) -> int:
        return len(self.labels) - sum(self.labels)

    @property
    def positives(self) -> list[str]:
        return [t for t, y in zip(self.texts, self.labels) if y]

    @property
    def contrast(self) -> list[str]:
        return [t for t, y in zip(self.texts, self.labels) if not y]

    @property
    def hash(self) -> str:
        """sha256 of the (text, label) pairs in order: identifies the exact data of a run."""
        h = hashlib.sha256()
        for t, y in zip(self.texts, self.labels):
            h.update(json.dumps([t, bool(y)]).encode())
        return h.hexdigest()

    # --- constructors ----------------------------------------------------------------------
    @classmethod
    def from_texts(cls, positives: Iterable[str], contrast: Iterable[str], name: str = "concept") -> "ConceptSet":
        pos, neg = list(positives), list(contrast)
        return cls(tuple(pos + neg), tuple([True] * len(pos) + [False] * len(neg)), name=name)

    @classmethod
    def from_pandas(cls, df: "pd.DataFrame", text: str = "text", label: str = "label", positive=None,
                    contrast=None, name: str = "concept", where: "Callable[[int], str] | None" = None) -> "ConceptSet":
        """``positive``: the label value(s) of positive rows; ``contrast``: the label value(s) of
        contrast rows (default: every other value). Values compare as strings, after stripping
        surrounding spaces; a value that differs from a named label only by case is an error (it
        would silently become a contrast example), which lists the labels found.

        ``where(i)`` names the i-th row (0-based position) in messages; by default "row i+1
        (counting from 1)". ``from_file`` names file lines (a CSV's header is line 1), so every
        message points at the same place in the file an editor shows."""
        where = where or (lambda i: f"row {i + 1} (counting from 1)")
        missing = [c for c in (text, label) if c not in df.columns]
        if missing:
            raise ConceptSetError(f"column(s) {missing} not found; available columns: {list(df.columns)}")
        if positive is None:
            raise ConceptSetError(f"say which value of column {label!r} marks positives "
                                  f"(values: {_values(df[label])})")
        pos_vals = {str(v).strip() for v in (positive if isinstance(positive, (list, tuple, set)) else [positive])}
        labels_str = df[label].astype(str).str.strip()
        unknown = pos_vals - set(labels_str)
        if unknown:
            raise ConceptSetError(f"positive label(s) {sorted(unknown)} not found in column {label!r} "
                                  f"(values: {_values(df[label])})")
        named = pos_vals | ({str(v).strip() for v in (contrast if isinstance(contrast, (list, tuple, set)) else [contrast])}
                            if contrast is not None else set())
        lower = {v.lower(): v for v in named}
        for v in sorted({x for x in set(labels_str) if isinstance(x, str)} - named):  # a missing label is not text
            if v.lower() in lower:
                raise ConceptSetError(f"column {label!r} holds {v!r}, which differs from the label {lower[v.lower()]!r} "
                                      f"only by case; name every spelling that is meant (labels found: "
                                      f"{_values(df[label])})")
        is_pos = labels_str.isin(pos_vals)
        keep = is_pos.copy()
        if contrast is None:  # every other row is a contrast example: a row without a label must not become one
            blank = df[label].isna() | (labels_str.str.strip() == "")
            if blank.any():
                first = int(blank.to_numpy().nonzero()[0][0])
                raise ConceptSetError(f"{int(blank.sum())} row(s) have no value in column {label!r} (first: "
                                      f"{where(first)}); label every row, or name the contrast label(s) so such rows "
                                      "are left out")
            keep[:] = True
        else:
            neg_vals = {str(v).strip() for v in (contrast if isinstance(contrast, (list, tuple, set)) else [contrast])}
            unknown = neg_vals - set(labels_str)
            if unknown:
                raise ConceptSetError(f"contrast label(s) {sorted(unknown)} not found in column {label!r} "
                                      f"(values: {_values(df[label])})")
            keep = is_pos | labels_str.isin(neg_vals)
        texts = df[text][keep]
        empty = (texts.isna() | (texts.astype(str).str.strip() == "")).to_numpy()
        if empty.any():
            first = int(keep.to_numpy().nonzero()[0][empty.nonzero()[0][0]])
            raise ConceptSetError(f"column {text!r} has {int(empty.sum())} missing or empty text(s) among the rows "
                                  f"used (first: {where(first)}); fill or remove them")
        return cls(tuple(texts.astype(str)), tuple(bool(v) for v in is_pos[keep]), name=name,
                   positive_label=",".join(sorted(pos_vals)))

    @classmethod
    def from_file(cls, path: str | Path, text: str = "text", label: str = "label", positive=None,
                  contrast=None, name: str | None = None) -> "ConceptSet":
        """Read ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` / ``.parquet``."""
        import pandas as pd

        p = Path(path)
        if not p.is_file():
            raise ConceptSetError(f"no such concept file: {p}")
        suffix = p.suffix.lower()
        try:
            # texts such as "NA", "None" or "null" are texts, not missing values: no NA guessing, no type guessing
            lines = None
            if suffix in (".jsonl", ".ndjson"):
                rows, lines = _read_jsonl(p)
                df = pd.DataFrame(rows)
            elif suffix == ".json":
                df = pd.read_json(p, dtype=False)
            elif suffix == ".csv":
                df = pd.read_csv(p, keep_default_na=False)
            elif suffix == ".tsv":
                df = pd.read_csv(p, sep="\t", keep_default_na=False)
            elif suffix == ".parquet":
                df = pd.read_parquet(p)
            else:
                raise ConceptSetError(f"unknown file type {suffix!r} for {p}; use .jsonl, .json, .csv, .tsv or .parquet")
        except ValueError as err:
            if isinstance(err, ConceptSetError):
                raise
            raise ConceptSetError(f"could not parse {p}: {err}") from err
        if lines is not None:
            where = lambda i: f"line {lines[i]} of {p.name}"  # noqa: E731
        elif suffix in (".csv", ".tsv"):
            where = lambda i: f"line {i + 2} of {p.name}"  # noqa: E731  (line 1 is the header)
        else:
            where = lambda i: f"record {i + 1} of {p.name} (counting from 1)"  # noqa: E731
        cs = cls.from_pandas(df, text=text, label=label, positive=positive, contrast=contrast, name=name or p.stem,
                             where=where)
        return replace(cs, source=ConceptSource("file", path=str(p.resolve()), name=cs.name,
                                                columns={"text": text, "label": label, "positive": positive,
                                                         "contrast": contrast}))

    @classmethod
    def from_hf(cls, dataset, text: str = "text", label: str = "label", positive=None, contrast=None,
                split: str = "train", name: str | None = None) -> "ConceptSet":
        """A ``datasets.Dataset``, or a hub id (loaded with ``datasets.load_dataset``; needs the network
        or a filled cache)."""
        if isinstance(dataset, str):
            try:
                import datasets
            except ImportError as err:
                raise ConceptSetError("loading a hub dataset needs `pip install neat-llm[datasets]`") from err
            ds_name = dataset
            dataset = datasets.load_dataset(dataset, split=split)
        else:
            ds_name = getattr(dataset, "info", None) and dataset.info.dataset_name
        return cls.from_pandas(dataset.to_pandas(), text=text, label=label, positive=positive,
                               contrast=contrast, name=name or ds_name or "hf-dataset")

    # --- split -----------------------------------------------------------------------------

    @property
    def n_repeated(self) -> int:
        """How many texts are repeats of an earlier text."""
        return len(self.texts) - len(set(self.texts))

    def dedupe(self) -> "ConceptSet":
        """Keep the first of repeated texts; drop texts that occur with both labels (ambiguous).
        Repeats can otherwise land in both the fit and the eval part."""
        labels: dict[str, set[bool]] = {}
        for t, y in zip(self.texts, self.labels):
            labels.setdefault(t, set()).add(y)
        seen: set[str] = set()
        keep = []
        for i, t in enumerate(self.texts):
            if t not in seen and len(labels[t]) == 1:
                keep.append(i)
            seen.add(t)
        return replace(self.subset(keep), source=self.source)

    def sample(self, max_per_side: int, seed: int = 0) -> "ConceptSet":
        """At most ``max_per_side`` positives and as many contrast texts, drawn with a seed (order kept)."""
        import random

        rng = random.Random(seed)
        keep: list[int] = []
        for side in (True, False):
            idx = [i for i, y in enumerate(self.labels) if y == side]
            keep += idx if len(idx) <= max_per_side else rng.sample(idx, max_per_side)
        out = self.subset(sorted(keep))
        return replace(out, source=None if self.source is None else self.source.sampled(max_per_side, seed))

    def subset(self, idx: Iterable[int], name: str | None = None) -> "ConceptSet":
        idx = list(idx)
        return ConceptSet(tuple(self.texts[i] for i in idx), tuple(self.labels[i] for i in idx),
                          name=name or self.name, positive_label=self.positive_label)

    def split(self, eval_fraction: float = 0.3, seed: int = 0) -> "ConceptSplit":
        """Seeded split stratified by label; both parts keep at least 2 examples per side."""
        from sklearn.model_selection import train_test_split

        if not 0 < eval_fraction < 1:
            raise ConceptSetError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        n_min = min(self.n_positive, self.n_contrast)
        if n_min < 2 * MIN_PER_SIDE:
            raise ConceptSetError(f"concept set {self.name!r} needs at least {2 * MIN_PER_SIDE} examples per side to "
                                  f"split into fit and eval parts (has {self.n_positive} positive, {self.n_contrast} contrast)")
        idx = list(range(len(self)))
        n_eval = math.ceil(eval_fraction * len(self))  # how sklearn sizes the test part
        too_small = [nm for nm, n in (("fit", len(self) - n_eval), ("eval", n_eval)) if n < 2 * MIN_PER_SIDE]
        if too_small:
            raise ConceptSetError(f"the {too_small[0]} part has fewer than {MIN_PER_SIDE} examples per side; "
                                  f"change eval_fraction ({eval_fraction})")
        try:
            fit_idx, eval_idx = train_test_split(idx, test_size=eval_fraction, random_state=seed,
                                                 stratify=list(self.labels))
        except ValueError as err:
            raise ConceptSetError(f"cannot split concept set {self.name!r} with eval_fraction={eval_fraction}: "
                                  f"{err}") from err
        fit, ev = self.subset(sorted(fit_idx)), self.subset(sorted(eval_idx))
        for part, nm in ((fit, "fit"), (ev, "eval")):
            if min(part.n_positive, part.n_contrast) < MIN_PER_SIDE:
                raise ConceptSetError(f"the {nm} part has fewer than {MIN_PER_SIDE} examples per side; "
                                      f"change eval_fraction ({eval_fraction})")
        return ConceptSplit(fit=fit, eval=ev, seed=seed, eval_fraction=eval_fraction)


@dataclass(frozen=True)
class ConceptSplit:
    fit: ConceptSet
    eval: ConceptSet
    seed: int
    eval_fraction: float


def _read_jsonl(path: Path) -> tuple[list[dict], list[int]]:
    """One JSON object per line (blank lines skipped), with the file line (from 1) of each; a broken
    line is named by its line number."""
    rows, lines = [], []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConceptSetError(f"could not parse {path}, line {i}: not valid JSON ({err.msg} at column "
                                      f"{err.colno})") from None
            if not isinstance(obj, dict):
                raise ConceptSetError(f"{path}, line {i}: expected a JSON object with named fields, got "
                                      f"{type(obj).__name__}")
            rows.append(obj)
            lines.append(i)
    return rows, lines


def _values(col) -> list:
    vals = list(col.astype(str).value_counts().index)
    return vals[:10] + (["..."] if len(vals) > 10 else [])
