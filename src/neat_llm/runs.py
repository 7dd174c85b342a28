"""The run folder: everything a finished run leaves, written atomically.

    scores.safetensors  scores [n_layers, d_ff] (NaN = not scored), concept_vector [d_model],
                        contrast_means [n_layers, d_ff], layer_auroc [n_layers]; where the run has
                        them: positive_means [n_layers, d_ff] (mean activation over the fit
                        positives' tokens), effect [n_layers, d_ff] (the scorer's own score before
                        the specificity-aware penalty), effect_positive / effect_contrast
                        [n_layers, d_ff] (the drop of S on the b positive / b contrast probes, measured
                        for the top rows; NaN elsewhere), fluency_cost
                        [n_layers, d_ff] (nats per token, see scoring/fluency.py), alpha
                        [n_layers, d_ff] (each neuron's own dampening factor, e.g. AurA's)
    top.csv             rank, layer, neuron, score, effect, effect_positive, effect_contrast,
                        mean_positive, mean_contrast, fluency_cost, top_tokens (see NeuronRow)
    meta.json           model, data hash, parameters, seed, versions, passes, wall time
    transport.safetensors  (optional) a fitted transport map: omega, beta [n_layers, d_ff]
    .partial/           finished blocks of an interrupted sweep (removed when the run completes)

A folder is a finished run exactly when meta.json exists (it is written last).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .files import atomic_write, write_text
from .concepts.conceptset import ConceptSet
from .concepts.vectors import ConceptReadout
from .interventions import Intervention, NeuronSelection, NeuronStats, NeuronWrites, Transport
from .interventions.writes import rank_writers
from .scoring.effects import ProbeEffects, Stability, bootstrap

FORMAT = 1


class RunError(ValueError):
    """A run folder is missing, incomplete, or belongs to another run."""


STABILITY_K = 100  # the top-K whose membership the bootstrap reports (the default K turned off)
STABILITY_RESAMPLES = 200


def check_min_stability(value: float) -> float:
    """A share of resamples: a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"min_stability is a share of resamples and must be in (0, 1], got {value!r}")
    return float(value)


class RunFiles:
    """Every file a run folder holds, named once (the report, the studies and the CLI use these)."""

    META = "meta.json"  # written last: a folder is a finished run exactly when it exists
    SCORES = "scores.safetensors"
    TOP = "top.csv"
    EXAMPLES = "examples.json"
    TRANSPORT = "transport.safetensors"
    PROBE_EFFECTS = "probe_effects.safetensors"  # each probe text's own effect (scoring/effects.py)
    EVALUATION = "evaluation.json"
    HATE = "hate.json"
    HATE_CONTINUATIONS = "hate_continuations.json"
    BIAS = "bias.json"
    REPORT = "report.html"
    LOCK = ".lock"
    PARTIAL = ".partial"
    HATE_PARTIAL = ".hate-partial"
    BIAS_PARTIAL = ".bias-partial"
    FOLDS = "folds.json"  # a cross-fitted study's folder: its folds (each a study folder fold-<i>/)

    @staticmethod
    def behaviour(tag: str) -> str:
        return f"behaviour-{tag}.json"

    @staticmethod
    def behaviour_continuations(tag: str) -> str:
        return f"behaviour-{tag}-continuations.json"

    @staticmethod
    def behaviour_partial(tag: str) -> str:
        return f".behaviour-partial-{tag}"


LOCK_FILE = RunFiles.LOCK
TRANSPORT_FILE = RunFiles.TRANSPORT


def _safetensors_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})
_held: dict[str, int] = {}  # run folders this process holds: resolved path -> nesting depth
_held_guard = threading.Lock()


@contextmanager
def run_folder_lock(run_dir: str | Path):
    """One writer per run folder: an advisory lock (``flock``) on ``RUN/.lock`` for as long as the
    block runs, released on exit, on an exception and by the kernel when the process dies (a stale
    lock file left by a killed process locks nothing). The file holds the writer's pid for the error
    message. Re-entrant within one process (a study holds its folder while ``find`` writes its run
    there). Another process writing to the folder: ``RunError`` at once, nothing written."""
    d = Path(run_dir)
    key = str(d.resolve())
    with _held_guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    created = not d.exists()
    d.mkdir(parents=True, exist_ok=True)
    path = d / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise RunError(f"{d} is being written by another neat process (pid {pid}); wait for it to finish or "
                           "choose another --out") from None
        try:  # the holder before us may have removed the file after we opened it: lock the file that is there
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    with _held_guard:
        _held[key] = 1
    try:
        yield
    finally:
        with _held_guard:
            del _held[key]
        try:
            os.unlink(path)  # while still locked: a waiting process then sees another inode and retries
        except FileNotFoundError:
            pass
        os.close(fd)  # releases the lock
        if created:
            try:
                d.rmdir()  # the folder it made for a run that failed before writing anything
            except OSError:
                pass  # not empty: it holds the run (or a resumable part of it)


RUN_MARKS = (RunFiles.META, RunFiles.PARTIAL, RunFiles.HATE_PARTIAL, RunFiles.BIAS_PARTIAL, RunFiles.FOLDS)  # what only a neat run folder holds


def check_run_folder(run_dir: str | Path) -> None:
    """A folder a run may be written into: new, empty, or a neat run folder (finished, or interrupted
    and resumable). A folder of the user's own files is refused before anything is written, so no
    ``top.csv`` or ``report.html`` of theirs is ever replaced."""
    d = Path(run_dir)
    if d.exists() and not d.is_dir():
        raise RunError(f"{d} is a file, not a folder; choose a new --out")
    if not d.is_dir() or any((d / m).exists() for m in RUN_MARKS):
        return
    own = sorted(p.name for p in d.iterdir() if p.name != LOCK_FILE)
    if own:
        shown = ", ".join(own[:4]) + (f" and {len(own) - 4} more" if len(own) > 4 else "")
        raise RunError(f"{d} is not a neat run folder and is not empty (it holds {shown}); choose a new --out, "
                       "nothing was written")


@dataclass
class RunMeta:
    """What a run was and what it cost. ``passes``: {stage: {forward, partial_forward, ...}};
    ``seconds``: {stage: wall seconds}."""

    model_id: str
    model_family: str
    weights_hash: str
    n_layers: int
    d_ff: int
    concept_name: str
    concept_hash: str
    n_fit: dict
    n_eval: dict
    method: str
    params: dict
    seed: int
    reading_layer: int
    eval_auroc: float
    n_neurons_scored: int
    passes: dict
    seconds: dict
    versions: dict
    probe_texts: list
    created: str
    format: int = FORMAT
    extra: dict = field(default_factory=dict)

    @property
    def forward_passes(self) -> int:
        return sum(p.get("forward", 0) + p.get("partial_forward", 0) for p in self.passes.values())

    @property
    def backward_passes(self) -> int:
        return sum(p.get("backward", 0) for p in self.passes.values())


@dataclass(frozen=True)
class NeuronRow:
    """One ranked neuron with what shows whether it is specific: its mean activation on the fit
    positives and contrast texts, the drop of S its removal causes on the positive and on the
    contrast probes (a generic neuron moves both), its fluency cost (nats per token). NaN where
    the run does not have the number."""

    rank: int
    layer: int
    neuron: int
    score: float
    effect: float
    effect_positive: float
    effect_contrast: float
    mean_positive: float
    mean_contrast: float
    fluency_cost: float
    alpha: float
    top_tokens: str
    score_lo: float = float("nan")  # the score's bootstrap interval over probes (STABILITY_RESAMPLES resamples)
    score_hi: float = float("nan")
    stability: float = float("nan")  # share of resamples in which the neuron is in the top STABILITY_K

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and v != v else v) for k, v in self.__dict__.items()}


@dataclass
class Run:
    """A finished run. scores [n_layers, d_ff]; top: the top-K table (pandas DataFrame)."""

    run_dir: Path
    meta: RunMeta
    scores: torch.Tensor
    concept_vector: torch.Tensor
    contrast_means: torch.Tensor
    layer_auroc: torch.Tensor
    top_table: "object"
    positive_means: torch.Tensor | None = None
    effect: torch.Tensor | None = None
    effect_positive: torch.Tensor | None = None
    effect_contrast: torch.Tensor | None = None
    fluency_cost: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    probe_effects: ProbeEffects | None = None  # each probe's own effect, where the sweep gave them (NEAT)
    _stability: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # (k, n, seed) -> Stability

    OPTIONAL = ("positive_means", "effect", "effect_positive", "effect_contrast", "fluency_cost", "alpha")

    def stability(self, k: int = STABILITY_K, n: int = STABILITY_RESAMPLES, seed: int = 0) -> Stability | None:
        """How much of the ranking survives other probes: the probes resampled with replacement
        ``n`` times; each neuron's score interval and its share of resamples in the top ``k``. None
        when the run has no per-probe effects (methods other than NEAT, sharded sweeps)."""
        if self.probe_effects is None:
            return None
        if (k, n, seed) not in self._stability:
            self._stability[(k, n, seed)] = bootstrap(self.probe_effects, k, n, seed)
        return self._stability[(k, n, seed)]

    def ranking(self) -> torch.Tensor:
        """All scored neurons, best first: [n, 2] of (layer, neuron). Ties keep (layer, neuron) order."""
        flat = self.scores.flatten()
        ok = torch.nonzero(torch.isfinite(flat)).flatten()
        order = ok[torch.sort(flat[ok], descending=True, stable=True).indices]
        d_ff = self.scores.shape[1]
        return torch.stack([order // d_ff, order % d_ff], 1)

    def top(self, k: int, min_stability: float | None = None) -> NeuronSelection:
        """The k best neurons, with the contrast means attached (for ``turn_off(..., mode="mean")``)
        and, where the run has them, each neuron's own dampening factor (``mode="dampen"``).

        ``min_stability``: keep only those of the k that stay, i.e. are in the top k in at least
        that share of the bootstrap resamples of the probes (``stability(k)``); the selection then
        holds k or fewer neurons, in rank order."""
        n = int(torch.isfinite(self.scores).sum())
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k (neurons to take from the top) must be a whole number >= 0, got {k!r}")
        if k > n:
            raise ValueError(f"k={k} is more than the {n} neurons this run scored")
        proven = self._proven()
        if proven is not None and k > proven:
            raise ValueError(f"k={k}: this run proved only its top {proven} (find --exact-top {proven}: below it the "
                             f"scores are upper bounds); find again with --exact-top {k} or without it")
        r = self.ranking()[:k]
        if min_stability is not None:
            r = r[self._stays(k, min_stability, r)]
        return NeuronSelection(tuple((int(l), int(n)) for l, n in r), means=self.contrast_means,
                               scores=tuple(float(self.scores[l, n]) for l, n in r),
                               alphas=None if self.alpha is None else tuple(float(self.alpha[l, n]) for l, n in r))

    def _stays(self, k: int, min_stability: float, r: torch.Tensor) -> torch.Tensor:
        """Which of the ranked neurons ``r`` [k, 2] stay in the top k in at least ``min_stability``
        of the resamples: a bool mask [k]."""
        check_min_stability(min_stability)
        if k == 0:
            return torch.zeros(0, dtype=torch.bool)
        st = self.stability(k)
        if st is None:
            raise ValueError(f"this run ({self.meta.method if self.meta else 'unknown method'}) has no per-probe "
                             f"effects ({RunFiles.PROBE_EFFECTS} is missing), so no stability to filter on: "
                             "min_stability needs a NEAT run swept in one process (not --ray)")
        return st.in_top[r[:, 0], r[:, 1]] >= min_stability

    def rows(self, k: int, min_stability: float | None = None) -> list[NeuronRow]:
        """The top k neurons as ``NeuronRow``s (top tokens for the rows top.csv holds); with
        ``min_stability`` only those that stay (``top``), each with its rank among the k and its
        share of resamples in the top k (else in the top ``STABILITY_K``)."""
        rank = {nk: i + 1 for i, nk in enumerate(self.top(k).neurons)}
        sel = self.top(k, min_stability)
        tokens = {}
        if self.top_table is not None and "top_tokens" in self.top_table:
            for r in self.top_table.itertuples():
                tokens[(int(r.layer), int(r.neuron))] = r.top_tokens if isinstance(r.top_tokens, str) else ""

        def at(t: torch.Tensor | None, l: int, n: int) -> float:
            return float("nan") if t is None else float(t[l, n])

        st = self.stability(k if min_stability is not None and k > 0 else STABILITY_K)
        lo, hi, share = (st.lo, st.hi, st.in_top) if st is not None else (None, None, None)

        return [NeuronRow(rank=rank[(l, n)], layer=l, neuron=n, score=float(self.scores[l, n]),
                          effect=at(self.effect if self.effect is not None else self.scores, l, n),
                          effect_positive=at(self.effect_positive, l, n), effect_contrast=at(self.effect_contrast, l, n),
                          mean_positive=at(self.positive_means, l, n), mean_contrast=at(self.contrast_means, l, n),
                          fluency_cost=at(self.fluency_cost, l, n), alpha=at(self.alpha, l, n),
                          top_tokens=tokens.get((l, n), ""), score_lo=at(lo, l, n), score_hi=at(hi, l, n),
                          stability=at(share, l, n))
                for l, n in sel.neurons]

    # --- what an evaluation needs from the run -----------------------------------------------------
    def readout(self) -> ConceptReadout:
        """The concept readout the run used (reading layer, vector, pooling, read template)."""
        p = self.meta.params
        return ConceptReadout(self.meta.reading_layer, self.concept_vector, p.get("vector", "diff-means"),
                              p.get("pool", "last"), p.get("read_template", "{text}"))

    def intervention(self, mode: str | None = None, alpha: float | None = None,
                     strength: float | None = None) -> Intervention:
        """How the run's neurons are turned off: ``mode`` (zero, mean, dampen, transport) if given,
        else the run's own: dampening with each neuron's factor for runs that define one (AurA), else
        its ablation. ``transport`` is the mean map from the run's positive to its contrast means
        (``strength`` t), unless the folder holds a fitted one (``transport.safetensors``)."""
        if mode is None:
            mode = "dampen" if alpha is not None or self.alpha is not None else self.meta.params.get("ablation", "zero")
        iv = Intervention.of(mode, alpha=alpha, strength=strength, stats=self.neuron_stats())
        if iv.uses_selection_factors and self.alpha is None:
            raise ValueError(f"{iv.name} needs --alpha: the {self.meta.method} run has no per-neuron factors")
        return iv

    def writers(self, model, span: tuple[int, int], k: int, strength: float = 1.0) -> NeuronWrites:
        """The run's concept direction removed (at ``strength``) from what the ``k`` neurons of blocks
        ``span`` of ``model`` (a ``LoadedModel``) that write most of it write (``rank_writers`` on
        the run's fit-split means)."""
        if self.positive_means is None:
            raise ValueError("the run keeps no positive means (an older run): find again to rank neurons by what they write")
        neurons = rank_writers(model, self.positive_means, self.contrast_means, self.concept_vector, span, k)
        return NeuronWrites(neurons, self.concept_vector, strength)

    def neuron_stats(self) -> NeuronStats:
        """What the run knows of every neuron for an intervention: its means, a fitted transport."""
        return NeuronStats(self.contrast_means, self.positive_means, self.transport())

    def transport(self) -> Transport | None:
        """The transport fitted for this run (``save_transport``), if the folder holds one."""
        f = self.run_dir / TRANSPORT_FILE
        if not f.is_file():
            return None
        t = load_file(str(f))
        meta = _safetensors_meta(f)
        return Transport(t["omega"], t["beta"], float(meta.get("strength", 1.0)), meta.get("kind", "mean"),
                         meta.get("at", "all"))

    def save_transport(self, transport: Transport) -> None:
        """Keep a fitted transport in the run folder (``run.intervention("transport")`` then uses it)."""
        meta = {"strength": str(transport.strength), "kind": transport.kind, "at": transport.at}
        atomic_write(self.run_dir / TRANSPORT_FILE, lambda p: save_file(
            {"omega": transport.omega.float().contiguous(), "beta": transport.beta.float().contiguous()}, str(p),
            metadata=meta))

    def eval_set(self, concept: ConceptSet) -> ConceptSet:
        """The held-out eval part of ``concept`` exactly as the run split it (same data, fraction, seed)."""
        if concept.hash != self.meta.concept_hash:
            raise RunError(f"concept set {concept.name!r} is not the data of run {self.run_dir} "
                           f"(hash {concept.hash[:12]} != {self.meta.concept_hash[:12]})")
        return concept.split(eval_fraction=self.meta.params["eval_fraction"], seed=self.meta.seed).eval

    def _proven(self) -> int | None:
        """K of an exact_top run (its ranking holds below that only upper bounds); None otherwise."""
        return (self.meta.extra.get("exact_top") or {}).get("k") if self.meta is not None else None

    @property
    def n_ranked(self) -> int:
        """How many of the top neurons ``top`` can give: those scored, at most the proven top K."""
        n = int(torch.isfinite(self.scores).sum())
        proven = self._proven()
        return n if proven is None else min(n, int(proven))

    @property
    def n_positive(self) -> int:
        """How many neurons score above what a neuron carrying nothing scores (the method's
        ``chance_score``: 0, or 0.5 for an AUROC). For the methods scoring a drop of S, beyond them a
        top-K set holds neurons whose removal does not lower S by more than the score asks (with the
        specific rule, more than it moves the contrast texts; with a specificity penalty, more than
        their fluency cost): filler, ranked by how little they cost rather than by what they carry."""
        from .scoring import chance_score

        chance = chance_score(self.meta.method)
        return int((torch.nan_to_num(self.scores, nan=chance) > chance).sum())

    def fit_set(self, concept: ConceptSet) -> ConceptSet:
        """The fit part of ``concept`` exactly as the run split it (what a choice of K may look at)."""
        self.eval_set(concept)  # the same data check
        return concept.split(eval_fraction=self.meta.params["eval_fraction"], seed=self.meta.seed).fit

    def selections(self, ks) -> dict[int, NeuronSelection]:
        """{K: the run's top-K neurons} (with contrast means, for mean ablation) for every K of ``ks``."""
        n = int(torch.isfinite(self.scores).sum())
        too_many = [k for k in ks if k > n]
        if too_many:
            raise ValueError(f"K={too_many[0]} is more than the {n} neurons the run scored")
        return {int(k): self.top(int(k)) for k in ks}

    # --- what was measured on the run, typed (None where the folder holds none) ------------------
    def evaluation(self) -> "RemovalReport | None":
        """evaluation.json (``neat evaluate``, or ``neat find --max-ppl``'s chosen K)."""
        from .evaluation.removal import RemovalReport

        d = self._json(RunFiles.EVALUATION)
        return None if d is None else RemovalReport.from_dict(d)

    def hate_report(self) -> "HateReport | None":
        """hate.json (``neat hate``), with the continuations when hate_continuations.json is there."""
        from .evaluation.hate import HateReport

        d = self._json(RunFiles.HATE)
        conts = self._json(RunFiles.HATE_CONTINUATIONS) or {}
        conts = {k: v for k, v in conts.items() if k not in ("prompts", "samples_per_prompt")}
        return None if d is None else HateReport.from_dict(d, conts)

    def bias_report(self) -> "BiasReport | None":
        """bias.json (``neat bias``)."""
        from .evaluation.bias import BiasReport

        d = self._json(RunFiles.BIAS)
        return None if d is None else BiasReport.from_dict(d)

    EVALUATION = RunFiles.EVALUATION
    EVALUATION_KEYS = ("mode", "seed", "n_random", "layers_pool")  # with the Ks: what makes two evaluations differ

    def save_evaluation(self, obj: dict) -> Path | None:
        """Write ``obj`` (a removal report's dict) as evaluation.json, holding the folder's lock (a
        second writer is refused). An evaluation.json of other settings (other Ks, mode, seed, random
        sets) is kept beside it as evaluation-N.json, never replaced; returns that path, if any."""
        with run_folder_lock(self.run_dir):
            path, kept = self.run_dir / self.EVALUATION, None
            old = self._json(self.EVALUATION) if path.is_file() else None
            if old is not None and _evaluation_key(old) != _evaluation_key(obj):
                n = 1
                while (self.run_dir / f"evaluation-{n}.json").exists():
                    n += 1
                kept = self.run_dir / f"evaluation-{n}.json"
                os.replace(path, kept)
            write_text(path, json.dumps(obj, indent=2))
            return kept

    def _json(self, name: str) -> dict | None:
        f = self.run_dir / name
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError as err:
            raise RunError(f"{f} is not valid JSON ({err})") from None

    def save(self) -> None:
        if (self.run_dir / RunFiles.META).exists():  # checked again right before the run is written
            raise RunError(f"{self.run_dir} already holds a finished run; choose another --out")
        tensors = {"scores": self.scores.contiguous(), "concept_vector": self.concept_vector.contiguous(),
                   "contrast_means": self.contrast_means.contiguous(), "layer_auroc": self.layer_auroc.contiguous()}
        tensors.update({name: getattr(self, name).float().contiguous() for name in self.OPTIONAL
                        if getattr(self, name) is not None})
        atomic_write(self.run_dir / RunFiles.SCORES, lambda p: save_file(tensors, str(p)))
        if self.probe_effects is not None:
            self.probe_effects.save(self.run_dir / RunFiles.PROBE_EFFECTS)
        atomic_write(self.run_dir / RunFiles.TOP, lambda p: self.top_table.to_csv(p, index=False))
        write_text(self.run_dir / RunFiles.META, json.dumps(asdict(self.meta), indent=2))  # last: marks completion

    @classmethod
    def load(cls, run_dir: str | Path) -> "Run":
        import pandas as pd

        d = Path(run_dir)
        if not d.is_dir():
            raise RunError(f"no such run folder: {d}")
        if not (d / RunFiles.META).is_file() and (d / RunFiles.FOLDS).is_file():
            raise RunError(f"{d} is a cross-fitted study (neat bias --folds): its pooled results are {d / RunFiles.BIAS}; "
                           f"each fold is a run folder of its own ({d / 'fold-0'}, ...)")
        if not (d / RunFiles.META).is_file():
            hint = " (an interrupted run: rerun the same `neat find --out` to resume)" if (d / RunFiles.PARTIAL).exists() else ""
            raise RunError(f"{d} is not a finished run: meta.json is missing{hint}")
        raw = json.loads((d / RunFiles.META).read_text())
        if raw.get("format") != FORMAT:
            raise RunError(f"{d} was written by an incompatible neat-llm (format {raw.get('format')})")
        t = load_file(str(d / RunFiles.SCORES))
        pe = d / RunFiles.PROBE_EFFECTS
        return cls(d, RunMeta(**raw), t["scores"], t["concept_vector"], t["contrast_means"], t["layer_auroc"],
                   pd.read_csv(d / RunFiles.TOP), **{name: t.get(name) for name in cls.OPTIONAL},
                   probe_effects=ProbeEffects.load(pe) if pe.is_file() else None)


def _evaluation_key(d: dict) -> tuple:
    ks = sorted(int(r.get("k", -1)) for r in d.get("rows", []) if isinstance(r, dict))
    return (tuple(ks), *(json.dumps(d.get(k), sort_keys=True) for k in Run.EVALUATION_KEYS))


class PartialSweep:
    """Finished blocks of a sweep, so an interrupted run resumes without redoing them.

    Bound to a fingerprint (model, data, parameters); a folder holding another run's blocks is refused."""

    def __init__(self, run_dir: Path, fingerprint: dict, name: str | None = None):
        """``name``: one of several sweeps of the run (``.partial/<name>/``); a folder holding an
        interrupted run's blocks under the other layout is refused like other settings."""
        self.dir = run_dir / ".partial" / name if name else run_dir / ".partial"
        root = run_dir / ".partial"
        other = (root / "fingerprint.json").is_file() if name else any(
            p.is_dir() and (p / "fingerprint.json").is_file() for p in root.glob("*"))
        if other:
            raise RunError(f"{run_dir} holds an interrupted run with other settings (another probe layout); "
                           "use another --out or delete the folder")
        fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))  # as it reads back (int keys -> str)
        self.fingerprint = fingerprint
        fp_file = self.dir / "fingerprint.json"
        if fp_file.is_file():
            old = json.loads(fp_file.read_text())
            if old != fingerprint:
                changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                raise RunError(f"{run_dir} holds an interrupted run with other settings ({', '.join(changed)}); "
                               "use another --out or delete the folder")
        else:
            write_text(fp_file, json.dumps(fingerprint, indent=2, sort_keys=True))

    def done(self) -> dict[int, torch.Tensor]:
        out = {}
        for p in sorted(self.dir.glob("layer_*.safetensors")):
            try:
                out[int(p.stem.split("_")[1])] = load_file(str(p))["scores"]
            except Exception:  # a damaged file is simply recomputed
                p.unlink(missing_ok=True)
        return out

    def done_per_probe(self) -> dict[int, torch.Tensor]:
        """The finished blocks' per-probe effects [n_probes, d_ff], where they were kept."""
        out = {}
        for p in sorted(self.dir.glob("layer_*.safetensors")):
            try:
                got = load_file(str(p))
            except Exception:  # a damaged file: done() drops it and the block is recomputed
                continue
            if "per_probe" in got:
                out[int(p.stem.split("_")[1])] = got["per_probe"]
        return out

    def save(self, layer: int, row: torch.Tensor, passes: dict | None = None,
             per_probe: torch.Tensor | None = None) -> None:
        """Keep a finished block's scores (and each probe text's own effects), and the passes it
        cost (so a resumed run's meta.json counts the work of every process, not only the last one's)."""
        meta = {"passes": json.dumps(passes or {})}
        tensors = {"scores": row.contiguous()}
        if per_probe is not None:
            tensors["per_probe"] = per_probe.contiguous()
        atomic_write(self.dir / f"layer_{layer:03d}.safetensors", lambda p: save_file(tensors, str(p), metadata=meta))

    def stored_passes(self) -> dict[str, int] | None:
        """The passes of every finished block stored here, summed; None when no block is stored."""
        from safetensors import safe_open

        files = sorted(self.dir.glob("layer_*.safetensors"))
        if not files:
            return None
        total: dict[str, int] = {}
        for p in files:
            try:
                with safe_open(str(p), "pt") as f:
                    got = json.loads((f.metadata() or {}).get("passes", "{}"))
            except Exception:  # a damaged file: its block is recomputed (done() drops it)
                continue
            for k, v in got.items():
                total[k] = total.get(k, 0) + int(v)
        return total

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def clear_all(run_dir: Path) -> None:
        """Remove every sweep's finished blocks of ``run_dir`` (the run is complete)."""
        shutil.rmtree(Path(run_dir) / ".partial", ignore_errors=True)
