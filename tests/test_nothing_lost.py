"""The second new-user trial's faults that lose data or apply a broken file: each refused with a
clear message before anything is written, or both results kept."""

from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

import neat_llm as nl
from conftest import concept_texts
from neat_llm.cli import app
from neat_llm.export import spec_from_run
from neat_llm.interventions import InterventionSpec, SpecError, turn_off
from neat_llm.models.loading import ModelLoadError
from neat_llm.runs import RunError


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory):
    pos, neg = concept_texts(8)
    return nl.find_concept_neurons(tiny_llama, nl.ConceptSet.from_texts(pos, neg, name="w"),
                                   out=tmp_path_factory.mktemp("r") / "run", progress=False)


# --- 1. find --out into a folder of the user's own files --------------------------------------------
def test_find_refuses_a_folder_of_the_users_own_files(tiny_llama, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "top.csv").write_text("my,own\n1,2\n")
    pos, neg = concept_texts(6)
    with pytest.raises(RunError, match="not a neat run folder"):
        nl.find_concept_neurons(tiny_llama, nl.ConceptSet.from_texts(pos, neg, name="w"), out=mine, progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["top.csv"]  # nothing written, not even the lock
    assert (mine / "top.csv").read_text() == "my,own\n1,2\n"
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine
    got = nl.find_concept_neurons(tiny_llama, nl.ConceptSet.from_texts(pos, neg, name="w"), out=empty, progress=False,
                                  layers=[0, 1, 2])
    assert (got.run_dir / "meta.json").is_file()


def test_cli_find_into_the_users_folder_exits_2(tiny_model_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("<p>mine</p>")
    res = CliRunner().invoke(app, ["find", "--model", str(tiny_model_dir), "--out", str(mine), "--layers", "0-1"])
    assert res.exit_code == 2, res.output
    assert "not a neat run folder" in res.output and "Traceback" not in res.output
    assert (mine / "report.html").read_text() == "<p>mine</p>"


# --- 2. evaluations of other settings are kept; an existing spec is not replaced --------------------
def test_an_evaluation_of_other_settings_is_kept_beside_the_new_one(run):
    a = {"mode": "zero", "seed": 0, "n_random": 2, "rows": [{"k": 10}]}
    b = {"mode": "zero", "seed": 0, "n_random": 1, "rows": [{"k": 5}]}
    assert run.save_evaluation(a) is None
    assert run.save_evaluation(a) is None  # the same settings again: replaced, nothing to keep
    kept = run.save_evaluation(b)
    assert kept is not None and json.loads(kept.read_text()) == a
    assert json.loads((run.run_dir / "evaluation.json").read_text()) == b
    assert run.save_evaluation(a).name == "evaluation-2.json"


def test_a_second_writer_of_an_evaluation_is_refused(run):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from neat_llm.runs import run_folder_lock\n"
        f"with run_folder_lock({str(run.run_dir)!r}):\n    print('held', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match="being written by another neat process"):
            run.save_evaluation({"rows": []})
    finally:
        holder.kill()
        holder.wait()


def test_export_refuses_an_existing_file_unless_forced(run, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text("my notes")
    res = CliRunner().invoke(app, ["export", str(run.run_dir), "--k", "3", "--out", str(path)])
    assert res.exit_code == 2 and "exists" in res.output and path.read_text() == "my notes"
    res = CliRunner().invoke(app, ["export", str(run.run_dir), "--k", "3", "--out", str(path), "--force"])
    assert res.exit_code == 0, res.output
    assert InterventionSpec.load(path).neurons[0].rank == 1


# --- 3. a load error is not a corrupt cache ------------------------------------------------------------
def test_a_missing_gpu_is_a_clear_error_that_touches_no_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("NEAT_LLM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        nl.load_model(device="cuda")
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ModelLoadError, match="dtype must be one of"):
        nl.load_model(dtype="float8")
    with pytest.raises(ModelLoadError, match="not a device name"):
        nl.load_model(device="gpu0")


# --- 5. the spec reader is strict and all-or-nothing ---------------------------------------------------
def _spec(run, mode="mean") -> dict:
    return spec_from_run(run, 4, mode).to_dict()


@pytest.mark.parametrize("change, match", [
    (lambda d: d["neurons"][0].__setitem__("index", 3.7), "whole number"),
    (lambda d: d["neurons"][0].__setitem__("index", True), "whole number"),
    (lambda d: d["neurons"][0].__setitem__("value", float("nan")), "finite"),
    (lambda d: d["neurons"][0].__setitem__("value", float("inf")), "finite"),
    (lambda d: d["neurons"][0].__setitem__("value", "abc"), "must be a number"),
    (lambda d: d["neurons"][0].__setitem__("hook", "blocks.0.mlp.hook_post" if d["neurons"][0]["layer"] else
                                            "blocks.1.mlp.hook_post"), "not block"),
    (lambda d: d["neurons"][0].__setitem__("colour", "red"), "unknown field"),
    (lambda d: d.__setitem__("comment", "x"), "unknown field"),
    (lambda d: d.__setitem__("version", "1"), "version '1'"),
    (lambda d: d["model"].__setitem__("n_layers", "3"), "whole number"),
])
def test_the_spec_reader_refuses_each_fault(run, change, match):
    d = _spec(run)
    change(d)
    with pytest.raises(SpecError, match=match):
        InterventionSpec.from_dict(d)


def test_the_spec_reader_refuses_nan_written_as_json(run, tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_spec(run)).replace('"value": ' + json.dumps(_spec(run)["neurons"][0]["value"]),
                                                   '"value": NaN', 1))
    with pytest.raises(SpecError, match="NaN"):
        InterventionSpec.load(path)


def test_a_module_of_another_block_is_refused_against_the_model(tiny_llama, run):
    d = _spec(run)
    n = d["neurons"][0]
    n["module"] = n["module"].replace(f".{n['layer']}.", f".{n['layer']}.") + "_x"
    spec = InterventionSpec.from_dict(d)
    with pytest.raises(SpecError, match="neuron site is"):
        with turn_off(tiny_llama, spec):
            pass


def _mutations(d: dict, rng: random.Random) -> dict:
    """One seeded malformation of a valid spec dict: a field dropped, retyped, or set out of range."""
    d = json.loads(json.dumps(d))
    junk = [None, "x", -1, 10 ** 9, 2.5, True, [], {}, float("nan"), float("inf")]
    where = rng.choice(["top", "model", "intervention", "neuron"])
    obj = {"top": d, "model": d["model"], "intervention": d["intervention"],
           "neuron": rng.choice(d["neurons"])}[where]
    key = rng.choice(sorted(obj))
    if rng.random() < 0.2:
        del obj[key]
    else:
        obj[key] = rng.choice(junk)
    return d


def test_fuzz_the_spec_reader_never_raises_anything_but_a_spec_error(tiny_llama, run):
    rng = random.Random(0)
    with torch.inference_mode():
        enc = tiny_llama.encode(["the rain came"])
        clean_logits = tiny_llama.hf(**enc, use_cache=False).logits
    refused = 0
    for mode in ("zero", "mean", "dampen", "transport"):
        base = spec_from_run(run, 4, mode, 0.5 if mode == "dampen" else None).to_dict()
        for _ in range(60):
            d = _mutations(base, rng)
            try:
                spec = InterventionSpec.from_dict(d)
            except SpecError:
                refused += 1
                continue
            # what is accepted applies whole or not at all, and leaves no hook behind
            try:
                with turn_off(tiny_llama, spec):
                    pass
            except (SpecError, ValueError):
                pass
            assert not any(s._forward_pre_hooks for s in tiny_llama.sites)
    with torch.inference_mode():
        torch.testing.assert_close(tiny_llama.hf(**enc, use_cache=False).logits, clean_logits)
    assert refused > 150  # nearly every malformation is caught by the reader itself


# --- 4, 9: labels and layer specs that would silently mean something else ------------------------
def test_labels_are_stripped_and_a_case_only_variant_is_refused(tmp_path):
    from neat_llm.concepts.conceptset import ConceptSetError

    f = tmp_path / "c.csv"
    f.write_text("text,label\na,insult\nb, insult\nc,insult \nd,kind\ne,kind\n")
    cs = nl.ConceptSet.from_file(f, positive="insult")
    assert cs.n_positive == 3 and cs.n_contrast == 2
    f.write_text("text,label\na,insult\nb,Insult\nc,INSULT \nd,kind\n")
    with pytest.raises(ConceptSetError, match="only by case"):
        nl.ConceptSet.from_file(f, positive="insult")


def test_an_open_start_layer_range_is_refused():
    from neat_llm.find import parse_layers

    with pytest.raises(ValueError, match="ambiguous"):
        parse_layers("-3", 30)
    assert parse_layers("0-3", 30) == [0, 1, 2, 3] and parse_layers("28-", 30) == [28, 29]


# --- 6. another model's tokenizer ------------------------------------------------------------------
def test_wrap_refuses_a_tokenizer_that_does_not_fit_the_embedding(tokenizer):
    from conftest import tiny_config

    from transformers import AutoModelForCausalLM

    cfg = tiny_config("llama")
    cfg.vocab_size = 200  # fewer rows than the tokenizer has tokens
    with pytest.raises(ModelLoadError, match="not this model's tokenizer"):
        nl.wrap(AutoModelForCausalLM.from_config(cfg), tokenizer)
    cfg.vocab_size = 2000  # a tokenizer that covers under half of the embedding
    with pytest.raises(ModelLoadError, match="another model's tokenizer"):
        nl.wrap(AutoModelForCausalLM.from_config(cfg), tokenizer)


# --- 8. truncation cuts the text, not the template --------------------------------------------------
def test_a_long_text_keeps_its_end_and_the_read_template(tiny_llama):
    long = " ".join(["the rain came over the town"] * 30) + " cake\n"
    with pytest.warns(UserWarning, match="from the start"):
        enc = tiny_llama.encode([long])
    ids = enc["input_ids"][0].tolist()
    assert ids[-len(tiny_llama.tokenizer(" cake\n")["input_ids"]):] == tiny_llama.tokenizer(" cake\n")["input_ids"]


# --- 11. errors in words ------------------------------------------------------------------------------
def test_os_errors_read_as_words_with_the_path_asked_for(run, tmp_path):
    import errno

    from neat_llm.cli_app import _said
    from neat_llm.files import write_text

    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as e:
        write_text(folder, "x")
    assert _said(e.value) == f"{folder}: it is a folder, not a file" and not list(folder.iterdir())
    full = _said(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.tmp")))
    assert "the disk is full" in full and "rerun the same command to resume" in full and "Errno" not in full
    res = CliRunner().invoke(app, ["export", str(run.run_dir), "--k", "3", "--out", str(folder), "--force"])
    assert res.exit_code == 2 and "it is a folder, not a file" in res.output and ".tmp" not in res.output


# --- 10. broken model files are one clear line ----------------------------------------------------------
def test_a_truncated_checkpoint_and_a_junk_gguf_are_clear_errors(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="could not load model") as e:
        nl.load_model(str(broken))
    assert "\n" not in str(e.value)
    monkeypatch.setenv("NEAT_LLM_CACHE", str(tmp_path / "cache"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(200))
    with pytest.raises(ModelLoadError, match="could not be read as a GGUF model file"):
        nl.load_model(str(junk))


def test_version_and_k_beside_a_spec(run, tmp_path):
    import neat_llm

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"neat-llm {neat_llm.__version__}"
    spec = tmp_path / "s.json"
    assert CliRunner().invoke(app, ["export", str(run.run_dir), "--k", "3", "--out", str(spec)]).exit_code == 0
    res = CliRunner().invoke(app, ["generate", "--spec", str(spec), "--k", "10", "hello"])
    assert res.exit_code == 2 and "drop --k" in res.output


# --- 11. words a CLI user can act on ------------------------------------------------------------------
def test_the_repeated_text_note_names_the_text_and_no_python_call(tiny_model_dir, tmp_path):
    pos, neg = concept_texts(6)
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps({"text": t, "label": y}) + "\n"
                         for t, y in [*((t, "p") for t in pos + pos[:2]), *((t, "n") for t in neg)]))
    res = CliRunner().invoke(app, ["find", "--model", str(tiny_model_dir), "--concept", str(f), "--positive", "p",
                                   "--out", str(tmp_path / "run"), "--layers", "0-1"])
    assert res.exit_code == 0, res.output
    assert f"repeats 2 text(s) (first: {pos[0]!r})" in " ".join(res.output.split())
    assert "note:" in res.output and "UserWarning" not in res.output
    assert "dedupe" not in res.output and "Python" not in res.output


# --- fuzz: the concept loaders ---------------------------------------------------------------------
def _malformed_concept_file(rng: random.Random, folder, i: int):
    """A concept file of a random type with random damage: missing or renamed columns, blank or
    non-text cells, labels in other spellings, broken lines, one-sided or tiny sets, junk bytes."""
    import pandas as pd

    damage = rng.random() < 0.6  # otherwise only texts that look like missing values, long or odd texts
    n = rng.randint(0, 14) if damage else rng.randint(4, 14)
    good = ["a cold day", "NA", "null", "x" * 300, "line\nbreak", "é ü 你好", "7", "the rain came", "a, b; c"]
    texts = [rng.choice(good) + f" {j}" if not damage or rng.random() < 0.9 else rng.choice(["", "   ", None])
             for j in range(n)]
    labels = [rng.choice("pn") if not damage or rng.random() < 0.85 else
              rng.choice([" p", "P", "", None, 1, 0, "p,n", True]) for _ in range(n)]
    labels[:2] = ["p", "n"][:n]
    cols = {"text" if not damage or rng.random() < 0.85 else rng.choice(["Text", "txt"]): texts,
            "label" if not damage or rng.random() < 0.85 else "lbl": labels}
    df = pd.DataFrame(cols) if n else pd.DataFrame(columns=list(cols))
    kind = rng.choice(["csv", "tsv", "jsonl", "json", "parquet"] * 4 + ["txt"] * damage)
    path = folder / f"f{i}.{kind}"
    if kind == "csv":
        df.to_csv(path, index=False)
    elif kind == "tsv":
        df.to_csv(path, sep="\t", index=False)
    elif kind == "jsonl":
        lines = [json.dumps({k: v[j] for k, v in cols.items()}) for j in range(n)]
        lines += rng.choice([[], [""], ["{broken"], ["[1, 2]"], ["\"a string\""]]) if damage else [""]
        rng.shuffle(lines)
        path.write_text("\n".join(lines) + "\n")
    elif kind == "json":
        path.write_text(rng.choice([df.to_json(), "[]", "{", "null", json.dumps({"text": "a"})]) if damage else
                        df.to_json(orient=rng.choice(["records", "columns"])))
    elif kind == "parquet":
        df.astype(str).to_parquet(path) if not damage or rng.random() < 0.8 else path.write_bytes(b"PAR1junk")
    else:
        path.write_text("text,label\na,p\n")
    if damage and rng.random() < 0.1:
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
    return path


def test_fuzz_the_concept_loaders_never_raise_anything_but_a_concept_error(tmp_path):
    from neat_llm.concepts.conceptset import MIN_PER_SIDE, ConceptSetError

    rng = random.Random(0)
    refused = accepted = 0
    for i in range(300):
        path = _malformed_concept_file(rng, tmp_path, i)
        contrast = rng.choice([None, "n", "n", ["n", "N"]])
        try:
            cs = nl.ConceptSet.from_file(path, positive=rng.choice(["p", "p", ["p", "P"], "1"]), contrast=contrast)
        except ConceptSetError as e:
            assert str(e) and "\n" not in str(e).strip()[:1]
            refused += 1
            continue
        accepted += 1  # what is accepted is a whole, valid concept set
        assert cs.n_positive >= MIN_PER_SIDE and cs.n_contrast >= MIN_PER_SIDE
        assert all(isinstance(t, str) and t.strip() for t in cs.texts)
    assert refused > 100 and accepted > 30 and accepted + refused == 300  # both paths exercised
