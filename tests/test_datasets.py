"""Loaders of the public evaluation data: on small fixtures written for these tests, and on the
real files in ../shared/data where that folder exists."""

from pathlib import Path

import pandas as pd
import pytest

from neat_llm.concepts.conceptset import ConceptSetError
from neat_llm.concepts.datasets import (DataNotFoundError, load_crows_pairs, load_davidson, load_indibias,
                                        load_toxigen, pairs_from_frame, resolve)

FIX = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared evaluation data not found at {SHARED}")


def test_toxigen_fixture_and_groups():
    cs = load_toxigen(FIX / "toxigen_sentences.jsonl")
    assert (cs.n_positive, cs.n_contrast) == (4, 4)
    sub = load_toxigen(FIX / "toxigen_sentences.jsonl", groups=["riverfolk"])
    assert len(sub) == 4 and all("river" in t for t in sub.texts)
    with pytest.raises(ConceptSetError, match="unknown ToxiGen group"):
        load_toxigen(FIX / "toxigen_sentences.jsonl", groups=["martians"])


def test_davidson_fixture_drops_the_other_class():
    cs = load_davidson(FIX / "labeled_data.csv")
    assert (cs.n_positive, cs.n_contrast) == (3, 3)
    with pytest.raises(ConceptSetError, match="at least 2"):
        load_davidson(FIX / "labeled_data.csv", positive="offensive")  # one offensive tweet in the fixture


def test_pairs_fixture_types_are_lower_case():
    pairs = pairs_from_frame(pd.read_csv(FIX / "pairs.csv"), "sent_more", "sent_less", "bias_type", "mine")
    assert pairs.types() == ["age", "region", "socioeconomic"]
    age = pairs.only("Age")
    assert len(age) == 2 and age.more[0].startswith("The old woman")
    cs = age.as_concept_set()
    assert cs.positives == list(age.more) and cs.contrast == list(age.less)
    with pytest.raises(ConceptSetError, match="no pairs of bias type"):
        pairs.only("caste")
    with pytest.raises(ConceptSetError, match="not found"):
        pairs_from_frame(pd.read_csv(FIX / "pairs.csv"), "more", "sent_less", None, "mine")


def test_missing_data_says_where_it_looked(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError, match="no data at"):
        load_toxigen(tmp_path)
    monkeypatch.setenv("NEAT_LLM_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import neat_llm.concepts.datasets as ds

    monkeypatch.setattr(ds, "data_roots", lambda: [tmp_path])
    with pytest.raises(DataNotFoundError, match="looked at"):
        resolve("crows-pairs")


@needs_shared
def test_real_shared_data():
    tox = load_toxigen()
    assert (tox.n_positive, tox.n_contrast) == (264, 227)  # 545 rows, 491 distinct statements (one row per group)
    dav = load_davidson()
    assert (dav.n_positive, dav.n_contrast) == (1430, 4163)
    crows = load_crows_pairs()
    assert len(crows) == 1508 and "race-color" in crows.types()
    en, hi = load_indibias(lang="en"), load_indibias(lang="hi")
    assert len(en) == len(hi) == 561
    assert set(en.types()) == {"caste", "religion", "gender", "socioeconomic", "age", "physical-appearance", "disability"}
    assert en.only("caste").more != hi.only("caste").more
