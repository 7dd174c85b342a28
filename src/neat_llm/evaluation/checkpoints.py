"""Finished conditions of a long evaluation, kept on disk so an interrupted study resumes without
redoing them. One JSON file per condition in a folder, written atomically; a settings fingerprint
guards against reusing results computed under other settings."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..runs import write_text


class ConditionStore:
    """``get(name)`` returns a finished condition's dict (or None), ``put(name, value)`` keeps one.
    A folder holding another fingerprint is cleared first: its results belong to other settings."""

    def __init__(self, folder: str | Path, fingerprint: dict):
        self.folder = Path(folder)
        self.key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
        stamp = self.folder / "fingerprint"
        if self.folder.exists() and (not stamp.is_file() or stamp.read_text() != self.key):
            shutil.rmtree(self.folder)
        if not stamp.is_file():
            write_text(stamp, self.key)

    def _file(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def get(self, name: str) -> dict | None:
        f = self._file(name)
        return json.loads(f.read_text()) if f.is_file() else None

    def put(self, name: str, value: dict) -> dict:
        write_text(self._file(name), json.dumps(value))
        return value

    def n_done(self) -> int:
        return sum(1 for _ in self.folder.glob("*.json"))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def check_conditions(mode: str, n_random: int, selection_by_k, alpha: float | None = None) -> None:
    """What every study's conditions need: a known intervention, a random control, at least one K,
    and, for dampening without one alpha, every selection's own factors."""
    from ..interventions import MODES, Intervention

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "dampen":
        iv = Intervention("dampen", alpha=alpha)
        for sel in (selection_by_k or {}).values():
            iv.factors(sel)
    if n_random < 1:
        raise ValueError(f"n_random must be at least 1 (the random-neuron control), got {n_random}")
    if not selection_by_k:
        raise ValueError("selection_by_k is empty: give at least one K and its neuron selection")


def condition_intervention(mode: str, sel, means, alpha: float | None = None):
    """How one condition's neurons are turned off: mean ablation with the selection's own means
    (or ``means``), dampening by ``alpha`` or by the selection's own factors, or zero."""
    from ..interventions import Intervention

    if mode == "mean":
        return Intervention("mean", sel.means if sel.means is not None else means)
    return Intervention(mode, alpha=alpha)


def random_like(random_sets, top, mode: str, alpha: float | None = None):
    """Random K-sets made comparable with the top-K set ``top``: dampened by the top set's own
    factors (in rank order) when the top set is dampened by its own factors."""
    if mode == "dampen" and alpha is None:
        return [s.with_alphas(top.alphas) for s in random_sets]
    return list(random_sets)
