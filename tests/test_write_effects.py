"""Writers ranked by what their writes do to a pair's preference (scoring/write_effects.py): the
first-order estimate against the exact change of a small edit, and the bias study that ranks its
writers by it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neat_llm.evaluation.bias import _start, sentence_logliks
from neat_llm.interventions import NeuronWrites, project_writes, top_writers
from neat_llm.scoring.write_effects import pair_write_effects

DATA = Path(__file__).parent / "fixtures" / "study"


@pytest.fixture(autouse=True)
def _data_and_cache(monkeypatch, tmp_path):
    """The studies read the small fixture files written for the tests (fictional groups), never the
    shared data sets, and keep their cache in the test's folder."""
    monkeypatch.setenv("NEAT_LLM_DATA", str(DATA))
    monkeypatch.setenv("NEAT_LLM_CACHE", str(tmp_path / "cache"))


MORE = ["the hill folk are lazy and rude", "river folk always steal bread", "coast folk cannot bake a cake"]
LESS = ["the hill folk are kind and busy", "river folk always share bread", "coast folk can bake a cake"]


def _preference(model, more, less) -> float:
    """Mean log p(more) - log p(less) over the pairs, each sentence read after the start token (as
    ``sentence_logliks`` reads it, the start token added there)."""
    return float((sentence_logliks(model, list(more)) - sentence_logliks(model, list(less))).mean())


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_the_estimate_is_the_exact_change_of_a_small_writes_edit(kind, tokenizer):
    """Removing a small share t of the direction from one neuron's writes lowers the mean preference
    by t times its effect, to first order: the estimate equals the exact finite difference (also
    where the MLP output is normalised before it is written, Gemma 3: the edit and the estimate are
    both made in the down projection's output)."""
    from conftest import build_tiny

    tiny_llama = build_tiny(kind, tokenizer)
    v = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(4))
    layers = [1, 2]
    start = _start(tiny_llama)
    effect = pair_write_effects(tiny_llama, [start + t for t in MORE], [start + t for t in LESS], v, layers)
    assert effect.shape == (2, tiny_llama.d_ff)
    d0 = _preference(tiny_llama, MORE, LESS)
    t = 1e-2
    checked = 0
    for i, l in enumerate(layers):
        for k in torch.argsort(effect[i].abs(), descending=True)[:3].tolist():
            with project_writes(tiny_llama, NeuronWrites(((l, k),), v, strength=t)):
                exact = _preference(tiny_llama, MORE, LESS) - d0
            assert exact == pytest.approx(-t * float(effect[i, k]), rel=0.05, abs=1e-6)
            checked += abs(exact) > 1e-5
    assert checked >= 4  # the comparison was made on neurons that move the preference
    with pytest.raises(ValueError, match="as many"):
        pair_write_effects(tiny_llama, MORE, LESS[:2], v, layers)


def test_top_writers_takes_the_largest_scores_of_the_span():
    score = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.5, 3.0]])
    assert top_writers(score, (4, 5), 3) == ((4, 1), (5, 2), (5, 0))  # ties by position
    with pytest.raises(ValueError, match="2 blocks"):
        top_writers(score, (4, 6), 1)
    with pytest.raises(ValueError, match="7 writer neurons"):
        top_writers(score, (4, 5), 7)


def test_a_bias_study_ranks_its_writers_by_their_effect_on_the_fit_pairs(tiny_llama, tmp_path):
    from neat_llm.studies import bias_study

    kw = dict(data="crows-pairs", ks=[4], n_random=1, min_pairs=2, method="activation", writers=(1, 2),
              progress=False)
    study = bias_study(tiny_llama, out=tmp_path / "e", writer_rank="effect", **kw)
    rep, run = study.report, study.run
    start = _start(tiny_llama)
    want = top_writers(pair_write_effects(tiny_llama, [start + t for t in study.fit.more],
                                          [start + t for t in study.fit.less], run.concept_vector, [1, 2]), (1, 2), 4)
    edit = NeuronWrites(want, run.concept_vector)
    with project_writes(tiny_llama, edit):
        from neat_llm.evaluation.bias import pair_preferences

        np.testing.assert_allclose(rep.items.prefs["writes-K4-L1-2"], pair_preferences(tiny_llama, study.eval))
    assert rep.settings.writer_rank == "effect"
    assert json.loads((tmp_path / "e" / "bias.json").read_text())["settings"]["writer_rank"] == "effect"
    contrast = bias_study(tiny_llama, out=tmp_path / "c", **kw)
    assert contrast.report.settings.writer_rank == "contrast"
    assert set(run.writers(tiny_llama, (1, 2), 4).neurons) != set(want)  # the two rankings choose differently
    with pytest.raises(ValueError, match="writer_rank"):
        bias_study(tiny_llama, out=tmp_path / "x", writer_rank="loudest", **kw)


def test_cli_bias_by_default_edits_what_the_second_half_s_writers_write(tiny_model_dir, tokenizer, tmp_path):
    """``neat bias`` with no design flags: the direction out of what the writers of the second half
    of the blocks write, ranked by their effect on the fit pairs, K = 500 or half the span, found
    with auroc; Gemma 3, which normalises its MLP writes, falls back to activation rows (the edit,
    made after that norm, is not the default there)."""
    from typer.testing import CliRunner

    from conftest import build_tiny
    from neat_llm.cli import app
    from neat_llm.runs import Run

    args = ["bias", "--data", "crows-pairs", "--random", "1", "--min-pairs", "2"]
    res = CliRunner().invoke(app, args + ["--model", str(tiny_model_dir), "--out", str(tmp_path / "b"), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    run = Run.load(tmp_path / "b")
    n, d_ff = run.meta.n_layers, run.meta.d_ff
    k = min(500, (n - n // 2) * d_ff // 2)
    assert got["mode"] == "writes" and got["settings"]["writer_rank"] == "effect" and run.meta.method == "auroc"
    assert got["items"]["conditions"] == {str(k): [f"writes-K{k}-L{n // 2}-{n - 1}", [f"writes-K{k}-L{n // 2}-{n - 1}-random-0"]]}
    d = tmp_path / "gemma3"
    m = build_tiny("gemma3", tokenizer, seed=1)
    m.hf.save_pretrained(d)
    tokenizer.save_pretrained(d)
    res = CliRunner().invoke(app, args + ["--model", str(d), "--k", "3", "--out", str(tmp_path / "g"), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["mode"] != "writes" and got["method"] == "neat" and "normalise what their MLPs write" in res.output


def test_with_starts_only_the_continuations_count(tiny_llama):
    """``starts``: the estimate is the exact change of the continuations' summed log-likelihood (the
    prompt's own tokens not counted), as ``text_logliks_along`` counts it."""
    from neat_llm.evaluation.perplexity import text_logliks_along

    v = torch.randn(tiny_llama.d_model, generator=torch.Generator().manual_seed(6))
    prompts = ["- the hill folk bake\n-", "- river folk sail\n- coast folk fish\n-"]
    more = [p + " the town stayed dry\n" for p in prompts]
    less = [p + " a cake\n" for p in prompts]
    starts = [len(ids) for ids in tiny_llama.tokenizer(prompts)["input_ids"]]
    effect = pair_write_effects(tiny_llama, more, less, v, [2], starts=(starts, starts))
    from neat_llm.scoring.write_effects import text_write_effects

    assert not torch.allclose(text_write_effects(tiny_llama, more, v, [2], starts=starts),
                              text_write_effects(tiny_llama, more, v, [2]))  # the prompts' tokens no longer count

    def pref():
        return float((text_logliks_along(tiny_llama, more, 1, starts=starts)[0][0]
                      - text_logliks_along(tiny_llama, less, 1, starts=starts)[0][0]).mean())

    d0, t = pref(), 1e-2
    for k in torch.argsort(effect[0].abs(), descending=True)[:3].tolist():
        with project_writes(tiny_llama, NeuronWrites(((2, k),), v, strength=t)):
            exact = pref() - d0
        assert exact == pytest.approx(-t * float(effect[0, k]), rel=0.05, abs=1e-6)
    with pytest.raises(ValueError, match="starts for"):
        pair_write_effects(tiny_llama, more, less, v, [2], starts=(starts[:1], starts))

