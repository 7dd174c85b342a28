"""ConceptSet: loaders (files, pandas, Hugging Face datasets), validation errors, split and hash."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest

from neat_llm import ConceptSet, ConceptSetError

ROWS = [
    ("it rained all day", "weather"),
    ("a storm hit the coast", "weather"),
    ("snow fell on the hills", "weather"),
    ("we baked fresh bread", "food"),
    ("the soup was hot", "food"),
    ("rice with honey", "food"),
    ("the bus was late", "other"),
    ("a quiet afternoon", "other"),
]


def _frame(text="sentence", label="kind"):
    return pd.DataFrame({"id": range(len(ROWS)), text: [t for t, _ in ROWS], label: [y for _, y in ROWS]})


def _expected(positive=("weather",), contrast=None):
    keep = [(t, y in positive) for t, y in ROWS if contrast is None or y in positive or y in contrast]
    return tuple(t for t, _ in keep), tuple(b for _, b in keep)


def _write(tmp_path, suffix, df):
    p = tmp_path / f"concept{suffix}"
    if suffix == ".jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict(orient="records")))
    elif suffix == ".csv":
        df.to_csv(p, index=False)
    elif suffix == ".tsv":
        df.to_csv(p, index=False, sep="\t")
    return p


def _set(n_pos, n_neg, name="c"):
    return ConceptSet.from_texts([f"positive text {i}" for i in range(n_pos)],
                                 [f"contrast text {i}" for i in range(n_neg)], name=name)


# --- loaders --------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
def test_from_file_formats(tmp_path, suffix):
    p = _write(tmp_path, suffix, _frame())
    cs = ConceptSet.from_file(p, text="sentence", label="kind", positive="weather")
    texts, labels = _expected()
    assert cs.texts == texts
    assert cs.labels == labels
    assert (cs.n_positive, cs.n_contrast) == (3, 5)
    assert cs.name == "concept"  # the file stem
    assert cs.positive_label == "weather"


def test_from_file_text_with_commas_and_tabs(tmp_path):
    df = pd.DataFrame({"text": ["rain, wind, and hail", "fog\tand snow", "cake, bread", "soup\tand rice"],
                       "label": ["w", "w", "f", "f"]})
    for suffix in (".csv", ".tsv", ".jsonl"):
        cs = ConceptSet.from_file(_write(tmp_path, suffix, df), positive="w")
        assert cs.texts == tuple(df["text"])
        assert cs.labels == (True, True, False, False)


def test_from_pandas_column_mapping():
    cs = ConceptSet.from_pandas(_frame("body", "tag"), text="body", label="tag", positive="weather", name="w")
    texts, labels = _expected()
    assert cs.texts == texts and cs.labels == labels and cs.name == "w"
    assert cs.positives == [t for t, y in ROWS if y == "weather"]
    assert cs.contrast == [t for t, y in ROWS if y != "weather"]


def test_positive_as_list():
    cs = ConceptSet.from_pandas(_frame(), text="sentence", label="kind", positive=["weather", "food"])
    texts, labels = _expected(positive=("weather", "food"))
    assert cs.texts == texts and cs.labels == labels
    assert (cs.n_positive, cs.n_contrast) == (6, 2)
    assert cs.positive_label == "food,weather"


def test_explicit_contrast_drops_other_labels():
    cs = ConceptSet.from_pandas(_frame(), text="sentence", label="kind", positive="weather", contrast="food")
    texts, labels = _expected(contrast=("food",))
    assert cs.texts == texts and cs.labels == labels
    assert "the bus was late" not in cs.texts and "a quiet afternoon" not in cs.texts
    assert (cs.n_positive, cs.n_contrast) == (3, 3)
    cs2 = ConceptSet.from_pandas(_frame(), text="sentence", label="kind", positive="weather", contrast=["food", "other"])
    assert cs2.texts == _expected()[0]


def test_numeric_labels_compare_as_strings(tmp_path):
    df = pd.DataFrame({"text": ["a b", "c d", "e f", "g h"], "label": [1, 1, 0, 0]})
    p = _write(tmp_path, ".csv", df)
    for positive in (1, "1"):
        cs = ConceptSet.from_file(p, positive=positive)
        assert cs.labels == (True, True, False, False)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None,
                    reason="the optional `datasets` package is not installed (pip install neat-llm[datasets])")
def test_from_hf_dataset():
    import datasets

    ds = datasets.Dataset.from_dict({"sentence": [t for t, _ in ROWS], "kind": [y for _, y in ROWS]})
    cs = ConceptSet.from_hf(ds, text="sentence", label="kind", positive="weather", contrast="food", name="hf")
    texts, labels = _expected(contrast=("food",))
    assert cs.texts == texts and cs.labels == labels and cs.name == "hf"


# --- errors ---------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(ConceptSetError, match="no such concept file"):
        ConceptSet.from_file(tmp_path / "nope.jsonl", positive="x")


def test_missing_column_lists_available():
    with pytest.raises(ConceptSetError) as err:
        ConceptSet.from_pandas(_frame(), text="text", label="kind", positive="weather")
    msg = str(err.value)
    assert "'text'" in msg and "not found" in msg
    for col in ("id", "sentence", "kind"):
        assert col in msg


def test_missing_label_column(tmp_path):
    p = _write(tmp_path, ".csv", _frame())
    with pytest.raises(ConceptSetError, match=r"\['label'\] not found.*available columns.*sentence"):
        ConceptSet.from_file(p, text="sentence", positive="weather")


def test_unknown_positive_label():
    with pytest.raises(ConceptSetError) as err:
        ConceptSet.from_pandas(_frame(), text="sentence", label="kind", positive="sports")
    msg = str(err.value)
    assert "sports" in msg and "not found" in msg
    assert "weather" in msg  # the available values are listed


def test_unknown_contrast_label():
    with pytest.raises(ConceptSetError, match="contrast label.*sports"):
        ConceptSet.from_pandas(_frame(), text="sentence", label="kind", positive="weather", contrast="sports")


def test_positive_required():
    with pytest.raises(ConceptSetError, match="marks positives"):
        ConceptSet.from_pandas(_frame(), text="sentence", label="kind")


def test_empty_set():
    with pytest.raises(ConceptSetError, match="empty"):
        ConceptSet.from_texts([], [])


def test_empty_file(tmp_path):
    p = tmp_path / "header_only.csv"
    p.write_text("text,label\n")
    with pytest.raises(ConceptSetError, match="not found"):
        ConceptSet.from_file(p, positive="x")
    p = tmp_path / "zero_bytes.csv"
    p.write_text("")
    with pytest.raises(ConceptSetError, match="could not parse"):
        ConceptSet.from_file(p, positive="x")


@pytest.mark.parametrize("n_pos, n_neg, side", [(0, 3, "positive"), (3, 0, "contrast")])
def test_one_sided(n_pos, n_neg, side):
    with pytest.raises(ConceptSetError, match=f"one-sided: no {side}"):
        _set(n_pos, n_neg)


def test_one_sided_from_pandas():
    df = pd.DataFrame({"text": ["a", "b", "c"], "label": ["p", "p", "p"]})
    with pytest.raises(ConceptSetError, match="one-sided: no contrast"):
        ConceptSet.from_pandas(df, positive="p")


@pytest.mark.parametrize("n_pos, n_neg", [(1, 5), (5, 1)])
def test_fewer_than_two_per_side(n_pos, n_neg):
    with pytest.raises(ConceptSetError, match="at least 2 examples per side"):
        _set(n_pos, n_neg)
    _set(2, 2)  # the minimum is accepted


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_text_rows(bad):
    with pytest.raises(ConceptSetError, match="empty or non-text entries.*entry 2, counting from 1"):
        ConceptSet(("ok one", bad, "ok two", "ok three"), (True, True, False, False))


def test_empty_text_rows_in_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"text": "rain", "label": "p"}, {"text": "", "label": "p"}, {"text": "snow", "label": "p"},
        {"text": "bread", "label": "n"}, {"text": "cake", "label": "n"}]))
    with pytest.raises(ConceptSetError, match="empty"):
        ConceptSet.from_file(tmp_path / "e.jsonl", positive="p")
    (tmp_path / "e.csv").write_text("text,label\nrain,p\n,p\nsnow,p\nbread,n\ncake,n\n")
    with pytest.raises(ConceptSetError, match="missing values|empty"):
        ConceptSet.from_file(tmp_path / "e.csv", positive="p")


def test_mismatched_lengths():
    with pytest.raises(ConceptSetError, match="3 texts but 2 labels"):
        ConceptSet(("a", "b", "c"), (True, False))


def test_unknown_file_type(tmp_path):
    p = tmp_path / "concept.xlsx"
    p.write_text("whatever")
    with pytest.raises(ConceptSetError, match=r"unknown file type '\.xlsx'"):
        ConceptSet.from_file(p, positive="x")


def test_unparsable_file(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text("{not json\n")
    with pytest.raises(ConceptSetError, match="could not parse"):
        ConceptSet.from_file(p, positive="x")


# --- split ----------------------------------------------------------------------------------------
def test_split_stratified_disjoint_covering():
    cs = _set(20, 10)
    sp = cs.split(eval_fraction=0.3, seed=0)
    assert len(sp.fit) + len(sp.eval) == len(cs)
    assert set(sp.fit.texts).isdisjoint(sp.eval.texts)
    assert set(sp.fit.texts) | set(sp.eval.texts) == set(cs.texts)
    # labels travel with their texts
    truth = dict(zip(cs.texts, cs.labels))
    for part in (sp.fit, sp.eval):
        assert all(truth[t] == y for t, y in zip(part.texts, part.labels))
    ratio = cs.n_positive / len(cs)
    for part in (sp.fit, sp.eval):
        assert abs(part.n_positive - ratio * len(part)) <= 1
    assert len(sp.eval) == 9  # ceil(0.3 * 30)
    assert sp.seed == 0 and sp.eval_fraction == 0.3


@pytest.mark.parametrize("n_pos, n_neg, frac", [(12, 36, 0.25), (7, 5, 0.4), (30, 30, 0.5)])
def test_split_keeps_label_ratio(n_pos, n_neg, frac):
    cs = _set(n_pos, n_neg)
    for seed in range(3):
        sp = cs.split(eval_fraction=frac, seed=seed)
        ratio = n_pos / (n_pos + n_neg)
        for part in (sp.fit, sp.eval):
            assert abs(part.n_positive - ratio * len(part)) <= 1, (seed, part.n_positive, len(part))
            assert min(part.n_positive, part.n_contrast) >= 2


def test_split_seeded():
    cs = _set(20, 20)
    a, b, c = cs.split(seed=3), cs.split(seed=3), cs.split(seed=4)
    assert a.fit.texts == b.fit.texts and a.eval.texts == b.eval.texts
    assert a.eval.texts != c.eval.texts
    assert a.fit.hash == b.fit.hash != c.fit.hash


def test_split_too_few():
    with pytest.raises(ConceptSetError, match="at least 4 examples per side to split"):
        _set(3, 10).split()
    with pytest.raises(ConceptSetError, match="eval_fraction"):
        _set(10, 10).split(eval_fraction=1.0)
    with pytest.raises(ConceptSetError, match="eval part has fewer than 2"):
        _set(4, 4).split(eval_fraction=0.1)


# --- hash -----------------------------------------------------------------------------------------
def test_hash_identifies_data():
    cs = _set(3, 3)
    assert len(cs.hash) == 64 and cs.hash == _set(3, 3).hash
    assert cs.hash == _set(3, 3, name="other name").hash  # the name is not data
    one_label = ConceptSet(cs.texts, cs.labels[:2] + (False,) + cs.labels[3:])  # T,T,F,F,F,F
    assert sum(a != b for a, b in zip(one_label.labels, cs.labels)) == 1
    assert one_label.hash != cs.hash
    one_text = ConceptSet(cs.texts[:4] + ("contrast text 4!",) + cs.texts[5:], cs.labels)
    assert sum(a != b for a, b in zip(one_text.texts, cs.texts)) == 1
    assert one_text.hash != cs.hash
    reordered = ConceptSet(cs.texts[1:] + cs.texts[:1], cs.labels[1:] + cs.labels[:1])
    assert reordered.hash != cs.hash  # order is part of the data


def test_dedupe_keeps_first_and_drops_ambiguous_texts():
    from neat_llm import ConceptSet

    cs = ConceptSet(("a b", "c d", "a b", "e f", "g h", "e f", "i j", "k l"),
                    (True, True, True, False, False, True, True, False))
    assert cs.n_repeated == 2
    d = cs.dedupe()
    assert d.texts == ("a b", "c d", "g h", "i j", "k l")  # "e f" has both labels: dropped
    assert d.n_repeated == 0 and d.labels == (True, True, False, True, False)


# --- lossless loading ------------------------------------------------------------------------
def test_rows_without_a_label_are_not_made_contrast_examples(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("text,label\nhot day,hot\nwarm sun,hot\ncold snow,cold\nicy wind,cold\nmystery,\n")
    with pytest.raises(ConceptSetError, match=r"1 row\(s\) have no value in column 'label' \(first: line 6 of c.csv\)"):
        ConceptSet.from_file(p, positive="hot")
    cs = ConceptSet.from_file(p, positive="hot", contrast="cold")  # named contrast: the blank row is left out
    assert cs.n_positive == 2 and cs.n_contrast == 2 and "mystery" not in cs.texts
    df = pd.DataFrame({"text": ["a", "b", "c", "d", "e"], "label": ["p", "p", "n", "n", None]})
    with pytest.raises(ConceptSetError, match=r"no value in column .*first: row 5 \(counting from 1\)"):
        ConceptSet.from_pandas(df, positive="p")


def test_every_message_names_a_row_the_way_an_editor_shows_it(tmp_path):
    """One convention: file lines counted from 1 (a CSV's header is line 1), blank lines of a
    JSONL file counted too; in-memory data names entries counting from 1."""
    p = tmp_path / "c.jsonl"
    p.write_text('{"text": "hot day", "label": "hot"}\n\n{"text": "warm sun", "label": "hot"}\n'
                 '{"text": "cold snow", "label": "cold"}\n\n{"text": "  ", "label": "cold"}\n')
    with pytest.raises(ConceptSetError, match=r"1 missing or empty text\(s\) .*first: line 6 of c.jsonl"):
        ConceptSet.from_file(p, positive="hot")
    c = tmp_path / "c.csv"
    c.write_text("text,label\nhot day,hot\n,hot\ncold snow,cold\n")
    with pytest.raises(ConceptSetError, match=r"first: line 3 of c.csv"):
        ConceptSet.from_file(c, positive="hot")
    with pytest.raises(ConceptSetError, match=r"first: entry 2, counting from 1"):
        ConceptSet(("a b", " ", "c d", "e f"), (True, True, False, False))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_texts_that_look_like_missing_values_are_kept(tmp_path, suffix):
    texts = ["None", "NA", "null", "N/A", "nan", "fine text"]
    labels = ["p", "p", "p", "n", "n", "n"]
    p = tmp_path / f"c{suffix}"
    if suffix == ".jsonl":
        p.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in zip(texts, labels)))
    else:
        pd.DataFrame({"text": texts, "label": labels}).to_csv(p, sep="\t" if suffix == ".tsv" else ",", index=False)
    cs = ConceptSet.from_file(p, positive="p")
    assert list(cs.texts) == texts


def test_broken_jsonl_line_is_named_by_its_line_number(tmp_path):
    p = tmp_path / "c.jsonl"
    good = [json.dumps({"text": f"t{i}", "label": "p" if i % 2 else "n"}) for i in range(6)]
    p.write_text("\n".join(good[:3] + ['{"text": "broken", "label": '] + good[3:]) + "\n")
    with pytest.raises(ConceptSetError, match=r"c\.jsonl, line 4: not valid JSON"):
        ConceptSet.from_file(p, positive="p")


def test_size_messages_agree():
    """The first error names both limits, so adding one example per side does not meet a new one."""
    with pytest.raises(ConceptSetError, match=r"at least 2 examples per side, and 4 per side to be split"):
        ConceptSet.from_texts(["a"], ["b", "c"])
    cs = ConceptSet.from_texts(["a", "b", "c"], ["d", "e", "f"])
    with pytest.raises(ConceptSetError, match="at least 4 examples per side to split"):
        cs.split()


def test_concept_source_is_typed_and_round_trips(tmp_path):
    """Every loader records a ConceptSource; its dict (what meta.json keeps) reads back to the same
    source, older runs' untyped dicts read too, and each reloads the same concept set."""
    import json

    from neat_llm.concepts.conceptset import ConceptSource
    from neat_llm.concepts.demo import demo_concept
    from neat_llm.concepts.sources import load_concept_source

    p = tmp_path / "c.csv"
    _frame().to_csv(p, index=False)
    cs = ConceptSet.from_file(p, text="sentence", label="kind", positive="weather")
    demo = demo_concept()
    for c in (cs, cs.sample(3, seed=1), demo):
        src = c.source
        assert isinstance(src, ConceptSource)
        again = ConceptSource.from_dict(json.loads(json.dumps(src.to_dict())))
        assert again == src and load_concept_source(again).hash == c.hash
    assert cs.source.columns == {"text": "sentence", "label": "kind", "positive": "weather", "contrast": None}
    assert cs.sample(3, seed=1).source.sample == (3, 1)
    legacy = {"kind": "file", "path": str(p), "text": "sentence", "label": "kind", "positive": "weather",
              "contrast": None, "name": cs.name}
    assert load_concept_source(legacy).hash == cs.hash  # a run written before the type existed
    assert ConceptSource.from_dict({"kind": "dataset", "dataset": "toxigen", "path": None}).data == "toxigen"
    with pytest.raises(ConceptSetError, match="unknown concept source kind"):
        ConceptSource("url")
    with pytest.raises(ConceptSetError, match="unknown concept source field"):
        ConceptSource.from_dict({"kind": "demo", "colour": "red"})
    assert ConceptSource("dataset", data="toxigen").describe() == "toxigen"
