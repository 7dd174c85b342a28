"""The run folder: everything a finished run leaves, written atomically.

    scores.safetensors  scores [n_layers, d_ff] (NaN = not scored), concept_vector [d_model],
                        contrast_means [n_layers, d_ff], layer_auroc [n_layers]
    top.csv             rank, layer, neuron, score, top_tokens
    meta.json           model, data hash, parameters, seed, versions, passes, wall time
    .partial/           finished blocks of an interrupted sweep (removed when the run completes)

A folder is a finished run exactly when meta.json exists (it is written last).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .interventions import NeuronSelection

FORMAT = 1


class RunError(ValueError):
    """A run folder is missing, incomplete, or belongs to another run."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then rename over ``path``: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


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

    def ranking(self) -> torch.Tensor:
        """All scored neurons, best first: [n, 2] of (layer, neuron). Ties keep (layer, neuron) order."""
        flat = self.scores.flatten()
        ok = torch.nonzero(torch.isfinite(flat)).flatten()
        order = ok[torch.sort(flat[ok], descending=True, stable=True).indices]
        d_ff = self.scores.shape[1]
        return torch.stack([order // d_ff, order % d_ff], 1)

    def top(self, k: int) -> NeuronSelection:
        """The k best neurons, with the contrast means attached (for ``turn_off(..., mode="mean")``)."""
        r = self.ranking()[:k]
        return NeuronSelection(tuple((int(l), int(n)) for l, n in r), means=self.contrast_means,
                               scores=tuple(float(self.scores[l, n]) for l, n in r))

    def save(self) -> None:
        tensors = {"scores": self.scores.contiguous(), "concept_vector": self.concept_vector.contiguous(),
                   "contrast_means": self.contrast_means.contiguous(), "layer_auroc": self.layer_auroc.contiguous()}
        atomic_write(self.run_dir / "scores.safetensors", lambda p: save_file(tensors, str(p)))
        atomic_write(self.run_dir / "top.csv", lambda p: self.top_table.to_csv(p, index=False))
        write_text(self.run_dir / "meta.json", json.dumps(asdict(self.meta), indent=2))  # last: marks completion

    @classmethod
    def load(cls, run_dir: str | Path) -> "Run":
        import pandas as pd

        d = Path(run_dir)
        if not d.is_dir():
            raise RunError(f"no such run folder: {d}")
        if not (d / "meta.json").is_file():
            hint = " (an interrupted run: rerun the same `neat find --out` to resume)" if (d / ".partial").exists() else ""
            raise RunError(f"{d} is not a finished run: meta.json is missing{hint}")
        raw = json.loads((d / "meta.json").read_text())
        if raw.get("format") != FORMAT:
            raise RunError(f"{d} was written by an incompatible neat-llm (format {raw.get('format')})")
        t = load_file(str(d / "scores.safetensors"))
        return cls(d, RunMeta(**raw), t["scores"], t["concept_vector"], t["contrast_means"], t["layer_auroc"],
                   pd.read_csv(d / "top.csv"))


class PartialSweep:
    """Finished blocks of a sweep, so an interrupted run resumes without redoing them.

    Bound to a fingerprint (model, data, parameters); a folder holding another run's blocks is refused."""

    def __init__(self, run_dir: Path, fingerprint: dict):
        self.dir = run_dir / ".partial"
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

    def save(self, layer: int, row: torch.Tensor) -> None:
        atomic_write(self.dir / f"layer_{layer:03d}.safetensors", lambda p: save_file({"scores": row}, str(p)))

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
