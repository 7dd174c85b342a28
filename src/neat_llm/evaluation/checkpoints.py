"""Finished conditions of a long evaluation, kept on disk so an interrupted study resumes without
redoing them. One JSON file per condition in a folder, written atomically; a settings fingerprint
guards against reusing results computed under other settings, or by code that measured otherwise
(``MEASUREMENT_REVISION``).

``SharedConditions`` keeps them across studies as well: every study of the same prompts measures
the model as it is ("before") and its random K-sets again, about a sixth of a study's time each.
There a condition is named by what it does to the model (``Condition.content_key``), not by its
name in one study, in a folder named by the model's weights, the measure and its data."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..files import write_text

# Raise by one whenever a change alters what an evaluation measures for the same settings, so a
# resumed study never mixes conditions measured before and after it. 2: the shared-prefill sampler
# gives a left-padded prompt generate's positions (before, padded prompts were continued from
# shifted positions). 3: the decoding loop of 2026-12-06 reads each prompt alone (no padding beside
# other prompts) and runs rows in products of other sizes, whose last bits this CPU's BLAS rounds
# otherwise, so a near-tied draw can fall the other way.
MEASUREMENT_REVISION = 3


def _key(fingerprint: dict) -> str:
    stamped = {**fingerprint, "measurement_revision": MEASUREMENT_REVISION}
    return hashlib.sha256(json.dumps(stamped, sort_keys=True, default=str).encode()).hexdigest()


def shared_root() -> Path:
    """Where finished conditions are shared across studies: ``cache_root() / "conditions"``."""
    from ..models.loading import cache_root

    return cache_root() / "conditions"


class SharedConditions:
    """Finished conditions shared by every study that measures the same way: ``get(key)`` /
    ``put(key, value)`` by a condition's content key, in ``root / <hash of fingerprint>`` (default
    root: ``cache_root() / "conditions"``, i.e. ``$NEAT_LLM_CACHE/conditions``). ``fingerprint``
    must hold everything the measure's result depends on besides the condition: the weights, the
    measure, its prompts and texts, the seed, the sampling settings."""

    def __init__(self, fingerprint: dict, root: str | Path | None = None):
        self.folder = Path(root if root is not None else shared_root()) / _key(fingerprint)

    def _file(self, key: str) -> Path:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"a shared condition's key is a hex digest, got {key!r}")
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict | None:
        f = self._file(key)
        try:
            return json.loads(f.read_text()) if f.is_file() else None
        except (OSError, json.JSONDecodeError):  # unreadable: measured again (and rewritten)
            return None

    def put(self, key: str, value: dict) -> None:
        write_text(self._file(key), json.dumps(value))


class ConditionStore:
    """``get(name)`` returns a finished condition's dict (or None), ``put(name, value)`` keeps one.
    A folder holding another fingerprint is cleared first: its results belong to other settings.
    With ``shared``, ``lookup`` / ``keep`` also read and write the cross-study cache by a
    condition's content key; ``reused`` names the conditions taken from it."""

    def __init__(self, folder: str | Path, fingerprint: dict, shared: SharedConditions | None = None):
        self.folder = Path(folder)
        self.shared = shared
        self.reused: list[str] = []
        self.key = _key(fingerprint)
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

    def lookup(self, name: str, key: str | None) -> dict | None:
        """The finished condition ``name``: from this study's folder, else (with a content ``key``)
        from the shared cache, copied into the folder and recorded in ``reused``."""
        got = self.get(name)
        if got is None and self.shared is not None and key is not None:
            got = self.shared.get(key)
            if got is not None:
                self.put(name, got)
                self.reused.append(name)
        return got

    def keep(self, name: str, key: str | None, value: dict) -> None:
        """Keep a finished condition in this study's folder and (with ``key``) in the shared cache."""
        self.put(name, value)
        if self.shared is not None and key is not None:
            self.shared.put(key, value)

    def n_done(self) -> int:
        return sum(1 for _ in self.folder.glob("*.json"))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
