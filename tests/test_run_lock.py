"""One writer per run folder: a second process gets a clear error at once, a killed writer's lock
file locks nothing, and a finished run is never replaced (the check is repeated before the write)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import neat_llm as nl
from neat_llm.runs import LOCK_FILE, PartialSweep, RunError, run_folder_lock

SRC = str(Path(nl.__file__).resolve().parents[1])


def hold_lock_in_another_process(folder: Path) -> subprocess.Popen:
    code = ("import sys, time\nfrom neat_llm.runs import run_folder_lock\n"
            f"with run_folder_lock({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_with_the_holders_pid_and_writes_nothing(tiny_llama, concept_set, tmp_path):
    folder = tmp_path / "r"
    holder = hold_lock_in_another_process(folder)
    try:
        with pytest.raises(RunError, match=f"another neat process \\(pid {holder.pid}\\)"):
            nl.find_concept_neurons(tiny_llama, concept_set, out=folder, progress=False)
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]  # nothing of ours was written
    finally:
        holder.kill()
        holder.wait()
    # killed without cleaning up: the lock file stays, but the kernel released its lock
    assert (folder / LOCK_FILE).exists()
    run = nl.find_concept_neurons(tiny_llama, concept_set, out=folder, progress=False)
    assert (folder / "meta.json").exists() and run.meta.n_neurons_scored > 0
    assert not (folder / LOCK_FILE).exists()  # removed when the writer finished


def test_lock_is_released_on_an_exception_and_reentrant_in_one_process(tmp_path):
    with pytest.raises(KeyError):
        with run_folder_lock(tmp_path / "a"):
            with run_folder_lock(tmp_path / "a"):  # a study holds its folder while find writes there
                assert (tmp_path / "a" / LOCK_FILE).read_text() == str(os.getpid())
            raise KeyError("boom")
    assert not (tmp_path / "a" / LOCK_FILE).exists()
    with run_folder_lock(tmp_path / "a"):  # free again
        pass


def test_a_run_finished_meanwhile_is_not_replaced(tiny_llama, concept_set, tmp_path, monkeypatch):
    """The finished-run check is repeated right before the run is written: a meta.json that appears
    during the sweep (a writer that ignored the lock) survives, and this run fails."""
    folder = tmp_path / "r"
    original = PartialSweep.save
    other = {"format": 1, "concept_name": "someone else's"}

    def save_and_race(self, layer, row, passes=None, per_probe=None):
        original(self, layer, row, passes, per_probe)
        (folder / "meta.json").write_text(json.dumps(other))

    monkeypatch.setattr(PartialSweep, "save", save_and_race)
    with pytest.raises(RunError, match="already holds a finished run"):
        nl.find_concept_neurons(tiny_llama, concept_set, out=folder, progress=False)
    assert json.loads((folder / "meta.json").read_text()) == other
