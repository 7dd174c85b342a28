"""Taking the result elsewhere: wrapping a model the user loaded, the intervention file (round trip,
schema, weights check), the edited model as a plain Hugging Face checkpoint (its logits equal
turn_off's for every family of the adapter table), and the Neuronpedia lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import neat_llm as nl
from conftest import FAMILY_KINDS, build_tiny
from neat_llm.cli import app
from neat_llm.export import WRITES_FORMAT, baked_model, export_checkpoint, neuronpedia_records, spec_from_run, writes_from_run
from neat_llm.interventions import InterventionSpec, NeuronWrites, SpecError, project_writes, turn_off
from neat_llm.interventions.spec import make_spec

TEXTS = ["the rain came over the town today", "a cake and bread stayed near the river"]
SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "intervention-spec.schema.json"


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory):
    from conftest import concept_texts

    pos, neg = concept_texts(12)
    return nl.find_concept_neurons(tiny_llama, nl.ConceptSet.from_texts(pos, neg, name="weather"),
                                   out=tmp_path_factory.mktemp("r") / "run", progress=False)


def _logits(model, hf=None):
    enc = model.encode(TEXTS)
    with torch.inference_mode():
        return (hf or model.hf)(**enc, use_cache=False).logits


# --- bring your own model ---------------------------------------------------------------------------
def test_wrap_gives_the_same_model_and_scores_as_load_model(tiny_model_dir, tmp_path):
    from conftest import concept_texts
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = nl.load_model(str(tiny_model_dir))
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    wrapped = nl.wrap(hf, AutoTokenizer.from_pretrained(tiny_model_dir))
    assert wrapped.family == loaded.family and wrapped.weights_hash == loaded.weights_hash
    assert not hf.training and not any(p.requires_grad for p in hf.parameters())
    pos, neg = concept_texts(8)
    cs = nl.ConceptSet.from_texts(pos, neg, name="w")
    a = nl.find_concept_neurons(loaded, cs, out=tmp_path / "a", progress=False)
    b = nl.find_concept_neurons(wrapped, cs, out=tmp_path / "b", progress=False)
    torch.testing.assert_close(a.scores, b.scores, equal_nan=True)
    with pytest.raises(TypeError, match="Hugging Face causal LM"):
        nl.wrap("not a model", None)


def test_wrap_refuses_an_unknown_family(tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    with pytest.raises(nl.UnsupportedModelError, match="bert"):
        nl.wrap(BertForMaskedLM(BertConfig(vocab_size=320, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                           intermediate_size=48)), tokenizer)


def test_a_missing_folder_name_is_not_sent_to_the_hub(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(nl.ModelLoadError, match=f"there is no folder 'mymodel' in {tmp_path}"):
        nl.load_model("mymodel")


# --- the intervention file ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["zero", "mean", "dampen", "transport"])
def test_spec_round_trip_applies_like_the_run(tiny_llama, run, tmp_path, mode):
    alpha = 0.3 if mode == "dampen" else None
    spec = spec_from_run(run, 7, mode, alpha)
    path = spec.save(tmp_path / "spec.json")
    again = InterventionSpec.load(path)
    assert again == spec and again.mode == mode and len(again.neurons) == 7
    n0 = again.neurons[0]
    assert n0.module == f"model.layers.{n0.layer}.mlp.down_proj" and n0.hook == f"blocks.{n0.layer}.mlp.hook_post"
    assert again.provenance["concept_hash"] == run.meta.concept_hash and again.provenance["method"] == "neat"
    with turn_off(tiny_llama, run.top(7), run.intervention(mode, alpha)):
        want = _logits(tiny_llama)
    with turn_off(tiny_llama, path):
        got = _logits(tiny_llama)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, _logits(tiny_llama))
    if mode == "mean":
        assert n0.value == pytest.approx(float(run.contrast_means[n0.layer, n0.index]))
    if mode == "dampen":
        assert all(n.value == 0.3 for n in again.neurons)
    if mode == "transport":  # beta is the value, omega beside it
        assert n0.value == pytest.approx(float(run.contrast_means[n0.layer, n0.index] - run.positive_means[n0.layer, n0.index]))
        assert n0.omega == 1.0 and again.settings == {"strength": 1.0, "kind": "mean"}


def test_spec_matches_its_json_schema(run, tmp_path):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed (make setup installs it)")
    schema = json.loads(SCHEMA.read_text())
    for mode in ("zero", "mean", "transport"):
        jsonschema.validate(spec_from_run(run, 5, mode).to_dict(), schema)
    bad = spec_from_run(run, 5).to_dict()
    bad["neurons"][0]["layer"] = "three"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_spec_refuses_another_model_and_broken_files(tiny_llama, tokenizer, run, tmp_path):
    path = spec_from_run(run, 5).save(tmp_path / "s.json")
    other = build_tiny("llama", tokenizer, seed=7)  # same shape, other weights
    with pytest.raises(SpecError, match="weights"):
        with turn_off(other, path):
            pass
    with pytest.raises(SpecError, match="not a neat-llm intervention file"):
        InterventionSpec.from_dict({"format": "other"})
    d = json.loads(path.read_text())
    d["version"] = 99
    with pytest.raises(SpecError, match="version 99"):
        InterventionSpec.from_dict(d)
    d = json.loads(path.read_text())
    d["neurons"][1] = dict(d["neurons"][0])
    with pytest.raises(SpecError, match="twice"):
        InterventionSpec.from_dict(d)
    with pytest.raises(SpecError, match="no intervention file"):
        InterventionSpec.load(tmp_path / "none.json")
    with pytest.raises(ValueError, match="carries its own mode"):
        with turn_off(tiny_llama, path, mode="mean"):
            pass


# --- the edited model as a checkpoint ------------------------------------------------------------------
MEAN_OK = {"llama", "gpt2", "gpt_neox"}


@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_baked_checkpoint_equals_turn_off_every_family(kind, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = build_tiny(kind, tokenizer)
    g = torch.Generator().manual_seed(3)
    neurons = tuple({(int(l), int(k)) for l, k in zip(torch.randint(0, model.n_layers, (9,), generator=g),
                                                      torch.randint(0, model.d_ff, (9,), generator=g))})
    means = torch.randn(model.n_layers, model.d_ff, generator=g)
    sel = nl.NeuronSelection(neurons, means=means, alphas=tuple(0.1 * (i % 10) for i in range(len(neurons))))
    transport = nl.Transport(1 + 0.3 * torch.randn(model.n_layers, model.d_ff, generator=g), means, 0.8, "linear")
    for mode in ("zero", "dampen", "mean", "transport"):
        iv = transport if mode == "transport" else nl.Intervention.of(mode, means)
        spec = make_spec(model.model_id, model.family, model.weights_hash, model.n_layers, model.d_ff, sel, iv)
        if mode in ("mean", "transport") and kind not in MEAN_OK:
            with pytest.raises(ValueError, match="no MLP bias"):
                baked_model(model, spec)
            continue
        folder = export_checkpoint(model, spec, tmp_path / f"{kind}-{mode}")
        baked = AutoModelForCausalLM.from_pretrained(folder).eval()
        with turn_off(model, sel, iv):
            want = _logits(model)
        torch.testing.assert_close(_logits(model, baked), want, atol=1e-5, rtol=1e-4)
        assert (folder / "model.safetensors").is_file() and (folder / "neat-export.json").is_file()
    assert model.weights_hash == spec.weights_hash  # the user's model is left as it was


@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_baked_neuron_writes_equal_the_hooks_every_family(kind, tokenizer, tmp_path):
    """The direction projected out of chosen neurons' rows of the down projection, as a plain
    checkpoint, computes what ``project_writes`` computes; refused by name where the family
    normalises what its MLP writes (Gemma 2/3: the edit is made after that norm, scaled by each
    position's rms, which no weight edit computes), before anything is written."""
    from transformers import AutoModelForCausalLM

    model = build_tiny(kind, tokenizer)
    g = torch.Generator().manual_seed(5)
    neurons = tuple({(int(l), int(k)) for l, k in zip(torch.randint(0, model.n_layers, (12,), generator=g),
                                                      torch.randint(0, model.d_ff, (12,), generator=g))})
    edit = NeuronWrites(neurons, torch.randn(model.hf.config.hidden_size, generator=g), 0.8)
    before = _logits(model)
    if kind in ("gemma2", "gemma3"):
        with pytest.raises(ValueError, match="no weight edit computes"):
            export_checkpoint(model, edit, tmp_path / kind)
        assert not (tmp_path / kind).exists() and not (tmp_path / f"{kind}.partial").exists()
        return
    folder = export_checkpoint(model, edit, tmp_path / kind, {"note": "test"})
    baked = AutoModelForCausalLM.from_pretrained(folder).eval()
    with project_writes(model, edit):
        want = _logits(model)
    assert (want - before).abs().max() > 1e-4  # the edit changes the model
    torch.testing.assert_close(_logits(model, baked), want, atol=1e-5, rtol=1e-4)
    record = json.loads((folder / "neat-export.json").read_text())
    assert record["format"] == WRITES_FORMAT and record["intervention"]["strength"] == 0.8
    assert [(n["layer"], n["index"]) for n in record["neurons"]] == list(edit.neurons)
    torch.testing.assert_close(torch.tensor(record["direction"]), edit.vector)
    assert record["provenance"] == {"note": "test"}
    torch.testing.assert_close(_logits(model), before)  # the user's model is left as it was


def test_writes_from_run_ranks_by_what_the_neurons_write(tiny_llama, run):
    w = writes_from_run(tiny_llama, run, (0, 1), 7, 0.5)
    u = run.concept_vector / run.concept_vector.norm()
    score = {(l, k): float((run.positive_means[l, k] - run.contrast_means[l, k]) * (tiny_llama.weight_out(l)[k] @ u))
             for l in (0, 1) for k in range(tiny_llama.d_ff)}
    assert set(w.neurons) == set(sorted(score, key=score.get, reverse=True)[:7]) and w.strength == 0.5
    with pytest.raises(ValueError, match="have"):
        writes_from_run(tiny_llama, run, (0, 1), 10 ** 6)
    with pytest.raises(ValueError, match="not a span"):
        writes_from_run(tiny_llama, run, (1, 0), 3)


def test_export_refuses_a_folder_that_holds_files(tiny_llama, run, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        export_checkpoint(tiny_llama, spec_from_run(run, 3), tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"


# --- neurons for sharing and the command line ---------------------------------------------------------
def test_neuronpedia_records_carry_the_evidence(run):
    recs = neuronpedia_records(run, 5)
    rows = run.rows(5)
    assert [(r["layerNumber"], r["index"]) for r in recs] == [(x.layer, x.neuron) for x in rows]
    assert recs[0]["layer"] == f"{rows[0].layer}-mlp" and recs[0]["score"] == pytest.approx(rows[0].score)
    a = recs[0]["activations"][0]
    assert len(a["tokens"]) == len(a["values"])
    assert a["values"][a["maxValueTokenIndex"]] == pytest.approx(a["maxValue"], abs=1e-3)  # values kept to 4 places


def test_cli_export_every_format_and_generate_from_a_spec(tiny_model_dir, tmp_path, monkeypatch):
    from conftest import concept_texts

    model = nl.load_model(str(tiny_model_dir))
    pos, neg = concept_texts(8)
    r = nl.find_concept_neurons(model, nl.ConceptSet.from_texts(pos, neg, name="w"), out=tmp_path / "run",
                                progress=False)
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(r.run_dir), "--k", "6", "--out", str(tmp_path / "s.json"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["neurons"] == 6
    res = runner.invoke(app, ["export", str(r.run_dir), "--k", "6", "--format", "hf", "--out", str(tmp_path / "ck"),
                              "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["max_logit_diff"] < 1e-4
    res = runner.invoke(app, ["export", str(r.run_dir), "--k", "4", "--format", "neuronpedia", "--out",
                              str(tmp_path / "n.jsonl")])
    assert res.exit_code == 0 and len((tmp_path / "n.jsonl").read_text().splitlines()) == 4
    res = runner.invoke(app, ["generate", "--spec", str(tmp_path / "s.json"), "the rain", "--model",
                              str(tiny_model_dir), "--max-new-tokens", "5", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["k"] == 6
    res = runner.invoke(app, ["export", str(r.run_dir), "--k", "5", "--format", "hf", "--writes", "0-1",
                              "--out", str(tmp_path / "wk"), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output.strip().splitlines()[-1])
    assert got["mode"] == "neuron-writes" and got["neurons"] == 5 and got["max_logit_diff"] < 1e-4
    for bad, why in ((["--format", "spec"], "only --format hf"), (["--format", "hf", "--mode", "zero"], "do not apply"),
                     (["--format", "hf", "--writes", "0-1,2-3"], "one span")):
        args = ["--writes", "0-1"] + bad if "--writes" not in bad else bad
        res = runner.invoke(app, ["export", str(r.run_dir), *args, "--out", str(tmp_path / "bad")])
        assert res.exit_code == 2 and why in res.output, res.output
        assert not (tmp_path / "bad").exists()
    res = runner.invoke(app, ["export", str(r.run_dir), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--format must be one of" in res.output
