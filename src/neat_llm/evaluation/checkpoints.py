"""Finished conditions of a long evaluation, kept on disk so an interrupted study resumes without
redoing them. One JSON file per condition in a folder, written atomically; a settings fingerprint
guards against reusing results computed under other settings, or by code that measured otherwise
(``MEASUREMENT_REVISION``)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..files import write_text

# Raise by one whenever a change alters what an evaluation measures for the same settings, so a
# resumed study never mixes conditions measured before and after it. 2: the shared-prefill sampler
# gives a left-padded prompt generate's positions (before, padded prompts were continued from
# shifted positions).
MEASUREMENT_REVISION = 2


class ConditionStore:
    """``get(name)`` returns a finished condition's dict (or None), ``put(name, value)`` keeps one.
    A folder holding another fingerprint is cleared first: its results belong to other settings."""

    def __init__(self, folder: str | Path, fingerprint: dict):
        self.folder = Path(folder)
        stamped = {**fingerprint, "measurement_revision": MEASUREMENT_REVISION}
        self.key = hashlib.sha256(json.dumps(stamped, sort_keys=True, default=str).encode()).hexdigest()
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
