"""Bias templates: a sentence with a ``MASK`` slot and two lists of targets (stereotypical and
anti-stereotypical groups), the shape of many Indian-context bias sets, e.g. the columns
``Sentence``, ``Target_Stereotypical``, ``Target_Anti-Stereotypical`` with lists written as
Python-style literals (``['Dalits', 'Adivasis']``). Lists are read with ``ast.literal_eval`` (never
``eval``); a plain string is one target.

A template may hold k ``MASK`` slots, as public Indian-context sets write them: its target lists
then hold k-item fillings, filled in order (a flat list of k strings is one filling; a list of
k-item lists is several). A one-slot template takes one filling per item of its list.

For finding neurons a template becomes minimal pairs (every stereotypical filling against every
anti-stereotypical one); for scoring it is read the way its decoder metric reads it (see
``evaluation.bias.template_preferences_along``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from .conceptset import ConceptSetError
from .datasets import MinimalPairs, split_indices

MASK = "MASK"
COLUMNS = {"template": "Sentence", "stereo": "Target_Stereotypical", "anti": "Target_Anti-Stereotypical",
           "bias_type": None}


@dataclass(frozen=True)
class BiasTemplates:
    """``sentence[i]`` holds ``mask`` k >= 1 times; ``stereo[i]`` / ``anti[i]`` are its fillings: a
    target string each for one slot, a tuple of k targets each for k slots."""

    sentence: tuple[str, ...]
    stereo: tuple[tuple[str, ...], ...]
    anti: tuple[tuple[str, ...], ...]
    bias_type: tuple[str, ...]
    name: str
    mask: str = MASK

    def __post_init__(self) -> None:
        n = len(self.sentence)
        if not (len(self.stereo) == len(self.anti) == len(self.bias_type) == n):
            raise ValueError("sentence, stereo, anti and bias_type must have one entry per template")
        for i, s in enumerate(self.sentence):
            k = s.count(self.mask)
            if k < 1:
                raise ConceptSetError(f"{self.name}: template {i} has no {self.mask!r} slot: {s!r}")
            if not self.stereo[i] or not self.anti[i]:
                raise ConceptSetError(f"{self.name}: template {i} has an empty target list")
            for f in self.stereo[i] + self.anti[i]:
                if len(targets_of(f)) != k:
                    raise ConceptSetError(f"{self.name}: template {i} has {k} {self.mask!r} slots but a filling of "
                                          f"{len(targets_of(f))} target(s) {f!r}")

    def __len__(self) -> int:
        return len(self.sentence)

    def fill(self, i: int, filling: "str | tuple[str, ...]") -> str:
        """Template i with its slots filled in order by ``filling`` (one target, or k)."""
        out = self.sentence[i]
        for t in targets_of(filling):
            out = out.replace(self.mask, t, 1)
        return out

    def subset(self, idx, name: str | None = None) -> "BiasTemplates":
        idx = sorted(int(i) for i in idx)
        return BiasTemplates(*(tuple(getattr(self, f)[i] for i in idx) for f in ("sentence", "stereo", "anti", "bias_type")),
                             name=name or self.name, mask=self.mask)

    def only(self, bias_type: str | None) -> "BiasTemplates":
        if bias_type is None:
            return self
        bt = bias_type.lower()
        keep = [i for i, t in enumerate(self.bias_type) if t == bt]
        if not keep:
            raise ConceptSetError(f"no templates of bias type {bias_type!r} in {self.name}; "
                                  f"types: {sorted(set(self.bias_type))}")
        return self.subset(keep, f"{self.name}[{bt}]")

    def split(self, eval_fraction: float = 0.3, seed: int = 0) -> tuple["BiasTemplates", "BiasTemplates"]:
        """Seeded (fit, eval) split of whole templates, stratified by bias type (as pairs are split)."""
        fit_i, eval_i = split_indices(self.bias_type, eval_fraction, seed, self.name, "template")
        return self.subset(fit_i, f"{self.name}:fit"), self.subset(eval_i, f"{self.name}:eval")

    def as_pairs(self) -> MinimalPairs:
        """Minimal pairs: every stereotypical filling against every anti-stereotypical filling of
        the same template."""
        more, less, types = [], [], []
        for i in range(len(self)):
            for s in self.stereo[i]:
                for a in self.anti[i]:
                    more.append(self.fill(i, s))
                    less.append(self.fill(i, a))
                    types.append(self.bias_type[i])
        return MinimalPairs(tuple(more), tuple(less), tuple(types), self.name)


def targets_of(filling: "str | tuple[str, ...]") -> tuple[str, ...]:
    """The targets of one filling, in slot order."""
    return (filling,) if isinstance(filling, str) else tuple(filling)


def fillings_for(targets: tuple, slots: int, where: str, mask: str = MASK) -> tuple:
    """A parsed target list as the fillings of a template with ``slots`` slots: one per item for
    one slot; for k slots, a flat list of k strings is one filling, a list of k-item lists several."""
    if slots == 1:
        if not all(isinstance(t, str) for t in targets):
            raise ConceptSetError(f"{where}: a one-slot template takes a list of strings, got {targets!r}")
        return targets
    if all(isinstance(t, str) for t in targets):
        if len(targets) != slots:
            raise ConceptSetError(f"{where}: the template has {slots} {mask!r} slots, so its list must hold {slots} targets "
                                  f"(filled in order) or {slots}-item lists; got {len(targets)}: {targets!r}")
        return (tuple(targets),)
    bad = [t for t in targets if isinstance(t, str) or len(t) != slots]
    if bad:
        raise ConceptSetError(f"{where}: the template has {slots} {mask!r} slots, so each filling must hold {slots} targets; "
                              f"got {bad[0]!r}")
    return tuple(tuple(t) for t in targets)


def parse_targets(value, where: str) -> tuple:
    """A target list cell: a Python-style list/tuple literal of strings, or one plain string."""
    if not isinstance(value, str):
        raise ConceptSetError(f"{where}: expected a list of targets as text, got {value!r}")
    text = value.strip()
    if not text:
        raise ConceptSetError(f"{where}: empty target list")
    if text[0] in "[({":
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError) as e:
            raise ConceptSetError(f"{where}: cannot read the target list {text!r} ({type(e).__name__}: {e})") from None
        def item(t):  # a string, or a list of strings (one filling of a template with several slots)
            if isinstance(t, str):
                return t.strip()
            if isinstance(t, (list, tuple)) and t and all(isinstance(x, str) and x.strip() for x in t):
                return tuple(x.strip() for x in t)
            raise ConceptSetError(f"{where}: the target list must hold strings only (or, for a template with several "
                                  f"slots, lists of strings), got {text!r}")

        if not isinstance(parsed, (list, tuple)):
            raise ConceptSetError(f"{where}: the target list must hold strings only, got {text!r}")
        targets = tuple(x for x in map(item, parsed) if x)
    else:
        targets = (text,)
    if not targets:
        raise ConceptSetError(f"{where}: empty target list")
    return targets


def load_templates(path: str | Path, *, template: str = COLUMNS["template"], stereo: str = COLUMNS["stereo"],
                   anti: str = COLUMNS["anti"], bias_type: str | None = None, mask: str = MASK,
                   name: str | None = None) -> BiasTemplates:
    """Bias templates from a CSV/TSV/JSONL/parquet file with the given columns (rows whose template
    cell is blank are skipped; every other problem names its row)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise ConceptSetError(f"no template file {p}")
    readers = {".csv": lambda f: pd.read_csv(f, keep_default_na=False, dtype=str),
               ".tsv": lambda f: pd.read_csv(f, sep="\t", keep_default_na=False, dtype=str),
               ".jsonl": lambda f: pd.read_json(f, lines=True, dtype=False), ".parquet": pd.read_parquet}
    if p.suffix.lower() not in readers:
        raise ConceptSetError(f"{p}: unknown file type {p.suffix!r}; use one of {', '.join(readers)}")
    df = readers[p.suffix.lower()](p)
    missing = [c for c in (template, stereo, anti, bias_type) if c is not None and c not in df.columns]
    if missing:
        raise ConceptSetError(f"{p}: column(s) {missing} not found; available columns: {list(df.columns)}")
    sentences, st, an, types = [], [], [], []
    for row, rec in enumerate(df.to_dict("records"), start=2 if p.suffix.lower() in (".csv", ".tsv") else 1):
        sent = str(rec[template]).strip()
        if not sent:
            continue
        where = f"{p.name} line {row}"
        k = sent.count(mask)
        if k < 1:
            raise ConceptSetError(f"{where}: the template has no {mask!r} slot: {sent!r}")
        sentences.append(sent)
        for col, into in ((stereo, st), (anti, an)):
            into.append(fillings_for(parse_targets(rec[col], f"{where}, column {col!r}"), k, f"{where}, column {col!r}",
                                     mask))
        types.append(str(rec[bias_type]).strip().lower() if bias_type else "all")
    if not sentences:
        raise ConceptSetError(f"{p}: no templates")
    return BiasTemplates(tuple(sentences), tuple(st), tuple(an), tuple(types), name or p.stem, mask)
