"""Taking a run's neurons elsewhere (``neat export``):

- ``spec``: the intervention file (``interventions/spec.py``; schema in
  docs/intervention-spec.schema.json), applied with ``turn_off(model, "spec.json")``;
- ``hf``: the edited model as a plain Hugging Face checkpoint (safetensors) that anyone loads with
  ``AutoModelForCausalLM.from_pretrained(DIR)``, no neat-llm needed. The intervention is baked into
  the down projection: neuron k's output vector (column k of ``nn.Linear``'s weight, row k of GPT-2's
  ``Conv1D``) is multiplied by the intervention's scale (0 for ``zero`` and ``mean``, the factor for
  ``dampen``, (1 - t) + t omega for ``transport``); an intervention that adds a constant (``mean``,
  ``transport``) also adds W[:, k] * shift_k to the down projection's bias. Llama
  checkpoints get that bias through ``mlp_bias=True`` (the gate and up projections' new biases are
  zero); families whose MLP has no bias option (Mistral, Qwen 2/3, Phi-3, Gemma 1/2/3) cannot hold a
  constant in a standard checkpoint, so mean ablation and transport are refused there with the way out
  (``--mode zero`` / ``dampen``, or the intervention file). With ``--writes a-b`` the checkpoint
  carries instead the run's concept direction u projected out of the output vectors of the ``--k``
  neurons of blocks a-b that write most of it (``NeuronWrites``: w_k <- w_k - t (w_k . u) u, every
  family whose MLP output is added as it is; no bias needed);
- ``neuronpedia``: one JSON line per neuron (layer, index, score, mean activation on the positives
  and the contrast texts, top-activating texts with per-token activations), the shape of
  Neuronpedia's activation exports, so a neuron's evidence can be browsed outside the report.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from pathlib import Path

import torch

from .interventions import InterventionSpec, NeuronWrites, project_writes, turn_off
from .interventions.spec import make_spec
from .models.adapters import FAMILIES, get_module
from .models.loaded import LoadedModel
from .runs import Run, RunFiles

FORMATS = ("spec", "hf", "neuronpedia")
BIAS_VIA_CONFIG = {"llama": "mlp_bias"}  # model_type -> the config switch that gives the MLP biases
HAS_MLP_BIAS = ("gpt2", "gpt_neox")
WRITES_FORMAT = "neat-llm/neuron-writes"  # neat-export.json of a checkpoint with a NeuronWrites baked in


def spec_from_run(run: Run, k: int, mode: str | None = None, alpha: float | None = None,
                  strength: float | None = None, min_stability: float | None = None) -> InterventionSpec:
    """The run's top-``k`` neurons as an intervention file, turned off by ``mode`` (default: the
    run's own, as ``neat generate`` and the studies use it); with ``min_stability`` only those of
    them that stay (``Run.top``)."""
    from . import __version__

    iv = run.intervention(mode, alpha, strength)
    sel = run.top(k, min_stability)
    if not len(sel):
        raise ValueError(f"none of the top {k} neurons stays in the top {k} in >= {min_stability:g} of the resamples "
                         "of the probes: lower min_stability or raise k")
    family = next((f for f in FAMILIES if f.name == run.meta.model_family), None)
    if family is None:
        raise ValueError(f"the run's model family {run.meta.model_family!r} is not in the adapter table")
    provenance = {"run_dir": str(run.run_dir), "concept_name": run.meta.concept_name,
                  "concept_hash": run.meta.concept_hash, "method": run.meta.method, "k": k,
                  **({"min_stability": min_stability, "kept": len(sel)} if min_stability is not None else {}),
                  "reading_layer": run.meta.reading_layer, "params": run.meta.params, "seed": run.meta.seed,
                  "intervention": iv.describe(), "neat_llm": __version__,
                  "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    return make_spec(run.meta.model_id, family, run.meta.weights_hash, run.meta.n_layers, run.meta.d_ff, sel, iv,
                     provenance)


def writes_from_run(model: LoadedModel, run: Run, span: tuple[int, int], k: int,
                    strength: float | None = None) -> NeuronWrites:
    """The run's concept direction removed (at ``strength``, default 1) from what the ``k`` neurons
    of blocks ``span`` that write most of it write (``Run.writers``), after checking that ``model``
    is the one the run was made with."""
    if (model.n_layers, model.d_ff) != (run.meta.n_layers, run.meta.d_ff) or model.weights_hash != run.meta.weights_hash:
        raise ValueError(f"the run's neurons were found in {run.meta.model_id} (weights {run.meta.weights_hash[:12]}), "
                         f"not in {model.model_id}")
    return run.writers(model, span, k, 1.0 if strength is None else strength)


def writes_record(model: LoadedModel, writes: NeuronWrites, provenance: dict | None = None) -> dict:
    """What a checkpoint with ``writes`` baked in records of it (``neat-export.json``)."""
    return {"format": WRITES_FORMAT, "version": 1,
            "model": {"id": model.model_id, "family": model.family.name, "weights_hash": model.weights_hash,
                      "n_layers": model.n_layers, "d_ff": model.d_ff},
            "intervention": {"mode": "neuron-writes", "strength": writes.strength, "describe": writes.describe()},
            "neurons": [{"rank": i + 1, "layer": l, "index": k} for i, (l, k) in enumerate(writes.neurons)],
            "direction": [float(x) for x in writes.vector.tolist()], "provenance": dict(provenance or {})}


# --- the edited model as a checkpoint -------------------------------------------------------------
def baked_model(model: LoadedModel, spec: "InterventionSpec | NeuronWrites"):
    """A copy of ``model.hf`` whose down-projection weights (and biases, for ``mean``) carry the
    intervention, or a ``NeuronWrites`` (its rows edited, ``NeuronWrites.bake``); ``model`` itself
    is left as it was."""
    if isinstance(spec, NeuronWrites):
        hf = copy.deepcopy(model.hf)
        with torch.no_grad():
            spec.bake(model, hf)
        return hf
    spec.check_model(model)
    cfg = model.hf.config
    iv = spec.intervention()
    needs_bias = iv.adds_constant
    model_type = cfg.model_type
    if needs_bias and model_type not in HAS_MLP_BIAS and model_type not in BIAS_VIA_CONFIG:
        raise ValueError(f"{iv.name} adds a constant to a neuron, which the down projection must add as a bias; "
                         f"{model_type} checkpoints have no MLP bias to hold it. Export with --mode zero or dampen, "
                         "or keep the intervention file and apply it with turn_off")
    if needs_bias and model_type in BIAS_VIA_CONFIG and not getattr(cfg, BIAS_VIA_CONFIG[model_type], False):
        from transformers import AutoModelForCausalLM

        new_cfg = copy.deepcopy(cfg)
        setattr(new_cfg, BIAS_VIA_CONFIG[model_type], True)
        hf = AutoModelForCausalLM.from_config(new_cfg, torch_dtype=model.dtype)
        missing, unexpected = hf.load_state_dict(model.hf.state_dict(), strict=False)
        if unexpected or any(not n.endswith(".bias") or ".mlp." not in n for n in missing):
            raise RuntimeError(f"cannot add MLP biases to this {model_type} checkpoint (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
        with torch.no_grad():
            for n in missing:  # the new biases start at zero: the model computes what it computed before
                get_module(hf, n.rsplit(".", 1)[0]).bias.zero_()
    else:
        hf = copy.deepcopy(model.hf)
    hf.to(model.device)
    family = model.family
    sel = spec.selection()
    with torch.no_grad():  # a -> a * scale + shift: the output column times scale, plus shift x column in the bias
        for layer, (idx, edit) in iv.edits(sel, spec.n_layers, spec.d_ff).items():
            site = get_module(hf, f"{family.blocks}.{layer}.{family.site}")
            for k, scale, shift in zip(idx.tolist(), edit.scale.tolist(), edit.shift.tolist()):
                col = site.weight[:, k] if family.down_layout == "linear" else site.weight[k, :]
                if needs_bias:
                    site.bias.add_(col * shift)
                col.mul_(scale) if scale != 0 else col.zero_()
    return hf


def export_checkpoint(model: LoadedModel, spec: "InterventionSpec | NeuronWrites", out: str | Path,
                      provenance: dict | None = None) -> Path:
    """Write the baked model, its tokenizer and ``neat-export.json`` (what was baked in) to ``out``:
    an intervention file's neurons, or a ``NeuronWrites`` (with ``provenance`` in its record)."""
    from .files import write_text

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder for the checkpoint")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    record = writes_record(model, spec, provenance) if isinstance(spec, NeuronWrites) else spec.to_dict()
    hf = baked_model(model, spec)
    hf.save_pretrained(tmp, safe_serialization=True)
    model.tokenizer.save_pretrained(tmp)
    write_text(tmp / "neat-export.json", json.dumps({**record, "baked_into": "down-projection weights"}, indent=2))
    umask = os.umask(0)
    os.umask(umask)
    for f in tmp.iterdir():  # one mode for every file (save_pretrained writes the weights 0600 through a temp file)
        if f.is_file():
            f.chmod(0o666 & ~umask)
    if out.exists():
        out.rmdir()
    tmp.rename(out)  # a folder appears complete or not at all
    return out


# --- neurons for sharing ----------------------------------------------------------------------------
def neuronpedia_records(run: Run, k: int, min_stability: float | None = None) -> list[dict]:
    """One record per top-``k`` neuron (with ``min_stability``: per one of them that stays): layer,
    index, score, mean activations, and the top-activating texts the run kept (examples.json) with
    per-token activations."""
    path = run.run_dir / RunFiles.EXAMPLES
    examples = {}
    if path.is_file():
        for n in json.loads(path.read_text()).get("neurons", []):
            examples[(int(n["layer"]), int(n["neuron"]))] = n
    out = []
    for row in run.rows(k, min_stability):
        ex = examples.get((row.layer, row.neuron), {})
        acts = [{"tokens": e["tokens"], "values": e["acts"], "maxValue": e["max"],
                 "maxValueTokenIndex": int(e["max_pos"]) - int(e.get("offset", 0)), "side": e["side"]}
                for e in ex.get("examples", [])]
        out.append({"modelId": run.meta.model_id, "layer": f"{row.layer}-mlp", "index": row.neuron,
                    "layerNumber": row.layer, "score": row.score, "rank": row.rank,
                    "meanActivationPositive": row.mean_positive, "meanActivationContrast": row.mean_contrast,
                    "concept": run.meta.concept_name, "method": run.meta.method,
                    "hookName": f"blocks.{row.layer}.mlp.hook_post", "activations": acts})
    return out


def write_neuronpedia(run: Run, k: int, out: str | Path, *, overwrite: bool = False,
                      min_stability: float | None = None) -> Path:
    from .files import write_text

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --force to replace it")
    write_text(out, "".join(json.dumps(r, allow_nan=False) + "\n"
                            for r in _finite_records(neuronpedia_records(run, k, min_stability))))
    return out


def _finite_records(records: list[dict]) -> list[dict]:
    """NaN (a number the run lacks) becomes null: JSON readers elsewhere reject NaN."""
    def clean(v):
        if isinstance(v, float) and v != v:
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return [clean(r) for r in records]


def _applied(model: LoadedModel, edit: "InterventionSpec | NeuronWrites"):
    """The hooks that compute what the baked checkpoint should."""
    if isinstance(edit, NeuronWrites):
        return project_writes(model, edit)
    sel = edit.selection()
    return turn_off(model, sel, edit.intervention(sel))


def check_baked(model: LoadedModel, spec: "InterventionSpec | NeuronWrites", folder: str | Path,
                texts: list[str]) -> float:
    """Largest |logit difference| between the checkpoint in ``folder`` and ``turn_off(model, spec)``
    (for a ``NeuronWrites``: ``project_writes(model, spec)``)
    on ``texts`` (a self-check after export; ``model`` was checked against the spec's weights when
    the checkpoint was baked, so the neurons are applied without hashing the weights again)."""
    from transformers import AutoModelForCausalLM

    baked = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=model.dtype).to(model.device).eval()
    enc = model.encode(texts)
    with torch.inference_mode():
        with _applied(model, spec):
            want = model.logits(enc)
        got = baked(**enc, use_cache=False).logits
    return float((got - want).abs().max())


__all__ = ["FORMATS", "WRITES_FORMAT", "baked_model", "check_baked", "export_checkpoint", "neuronpedia_records",
           "spec_from_run", "write_neuronpedia", "writes_from_run", "writes_record"]
