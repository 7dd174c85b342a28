"""Output that reads well anywhere: the ranking at 80 columns cuts no number."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import neat_llm as nl
from conftest import concept_texts
from neat_llm.cli import app
from neat_llm.cli_app import out


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory):
    pos, neg = concept_texts(8)
    return nl.find_concept_neurons(tiny_llama, nl.ConceptSet.from_texts(pos, neg, name="w"),
                                   out=tmp_path_factory.mktemp("r") / "run", progress=False)


@pytest.mark.parametrize("width", [80, 100])
def test_show_at_a_narrow_terminal_cuts_no_number(run, width, monkeypatch):
    monkeypatch.setattr(out, "_width", width)
    res = CliRunner().invoke(app, ["show", str(run.run_dir), "--k", "10"])
    assert res.exit_code == 0, res.output
    lines = [l for l in res.output.splitlines() if l.strip()[:1] in "│┃" and any(c.isdigit() for c in l)]
    rows = [l.split("│")[1:8] for l in lines if l.count("│") >= 8]  # rank .. ΔS N, the stability included
    rows = [c for c in rows if c[0].strip()]  # not the lines the tokens column folds onto
    assert len(rows) >= 10
    for cells in rows:
        assert not any("…" in c for c in cells), cells
    assert all(len(l) <= width for l in res.output.splitlines())
    assert "stays" in res.output and all(0 <= float(c[4]) <= 1 for c in rows)  # the share of resamples in the top 100
    assert [c.strip() for c in rows[0][:3]] == ["1", str(run.rows(1)[0].layer), str(run.rows(1)[0].neuron)]
    wide = CliRunner().invoke(app, ["show", str(run.run_dir), "--k", "3", "--wide"])
    assert "act P" in wide.output and "cost" in wide.output and "score 95%" in wide.output


def test_top_tokens_are_the_texts_own_never_the_read_template(run, tiny_llama):
    from neat_llm.find import own_token_counts

    texts = ["the rain came", "a cake"]
    counts = own_token_counts(tiny_llama, texts, "{text}\n")
    assert counts == [len(tiny_llama.tokenizer(t)["input_ids"]) for t in texts]
    assert own_token_counts(tiny_llama, texts, "Text: {text}\nIs it?") == [
        len(tiny_llama.tokenizer("Text: " + t)["input_ids"]) for t in texts]
    tokens = [t for t in run.top_table["top_tokens"] if isinstance(t, str)]
    assert tokens and not any("\\n" in t for t in tokens)  # the template's newline never shows as a token


def test_progress_without_a_terminal_is_plain_lines_as_it_goes(monkeypatch, capsys):
    """Where stderr is a log file or a pipe, a rich bar shows only when it has finished; long work
    there writes plain "what: done/total (pct%), elapsed, eta" lines as it goes, and a last one when
    it ends, also when it ends in an error."""
    from neat_llm import progress

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    with progress.progress_bar("sweep", 4) as advance:
        advance(1)
        advance(2)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("sweep: 1/4 (25%), elapsed 0:00:0") and ", eta " in lines[0]
    assert lines[1].startswith("sweep: 3/4 (75%)") and lines[-1].startswith("sweep: 3/4 (75%)")
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 3600.0)
    with pytest.raises(RuntimeError), progress.progress_bar("eval", 2) as advance:
        advance(1)
        raise RuntimeError("stop")
    assert capsys.readouterr().err.strip().splitlines() == ["eval: 1/2 (50%), elapsed 0:00:00, eta 0:00:00"]
    with progress.progress_bar("quiet", 2, enabled=False) as advance:
        advance(2)
    assert capsys.readouterr().err == ""
