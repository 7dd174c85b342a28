"""Interventions as types: each class's edit is its definition, Transport fits and applies as AcT
does, the sweep scores under any of them as the plain reference does, and no module outside
interventions/ branches on a mode name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import neat_llm as nl
from conftest import build_tiny, close_scores, concept_texts
from neat_llm.concepts.vectors import ConceptReadout
from neat_llm.hooks import capture_inputs
from neat_llm.interventions import (INTERVENTIONS, Dampen, Intervention, Mean, NeuronSelection, NeuronStats, Transport,
                                    Zero, check_choice, fit_transport, turn_off)
from neat_llm.interventions.transport import quantile_map
from neat_llm.scoring import NeatScorer, ProbeSet, ReferenceScorer, ScoringTask

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the rain came over the town today", "a cake and bread stayed"]


def _transport(model, seed=0, strength=0.6, kind="linear") -> Transport:
    g = torch.Generator().manual_seed(seed)
    return Transport(1 + 0.5 * torch.randn(model.n_layers, model.d_ff, generator=g),
                     torch.randn(model.n_layers, model.d_ff, generator=g), strength, kind)


def _acts(model, texts=TEXTS):
    with torch.inference_mode(), capture_inputs(dict(enumerate(model.sites))) as acts:
        model.hf(**model.encode(texts), use_cache=False)
    return {l: v[0].clone() for l, v in acts.items()}


def test_every_type_edits_as_defined(tiny_llama):
    model = tiny_llama
    means = torch.randn(model.n_layers, model.d_ff, generator=torch.Generator().manual_seed(1))
    tr = _transport(model)
    sel = NeuronSelection(((0, 3), (1, 7), (2, 5)), alphas=(0.2, 0.5, 0.9))
    own = dict(zip(sel.neurons, sel.alphas))
    want = {"zero": lambda l, k, a: torch.zeros_like(a), "mean": lambda l, k, a: means[l, k].expand_as(a),
            "dampen": lambda l, k, a: own[(l, k)] * a,
            "transport": lambda l, k, a: (1 - 0.6) * a + 0.6 * (tr.omega[l, k] * a + tr.beta[l, k])}
    ivs = {"zero": Zero(), "mean": Mean(means), "dampen": Dampen(), "transport": tr}
    assert set(ivs) == set(INTERVENTIONS)  # a new intervention must be added to this test
    for name, iv in ivs.items():
        # a capture registered before turn_off sees each site's input unedited, the inner one edited
        with capture_inputs(dict(enumerate(model.sites))) as pre:
            with turn_off(model, sel, iv):
                got = _acts(model)
        clean = {l: v[0] for l, v in pre.items()}
        for l, k in sel.neurons:
            torch.testing.assert_close(got[l][..., k], want[name](l, k, clean[l][..., k]), atol=1e-6, rtol=1e-5)
        untouched = torch.ones(model.d_ff, dtype=torch.bool)
        untouched[[k for l, k in sel.neurons if l == 0]] = False
        assert torch.equal(got[0][..., untouched], clean[0][..., untouched])


def test_transport_at_strength_zero_leaves_the_model_as_it_is_and_one_is_the_full_map(tiny_llama):
    model = tiny_llama
    sel = NeuronSelection(((0, 1), (2, 4)))
    enc = model.encode(TEXTS)
    with torch.inference_mode():
        clean = model.hf(**enc, use_cache=False).logits
        with turn_off(model, sel, _transport(model, strength=0.0)):
            same = model.hf(**enc, use_cache=False).logits
        with turn_off(model, sel, _transport(model, strength=1.0)):
            moved = model.hf(**enc, use_cache=False).logits
    torch.testing.assert_close(same, clean)
    assert not torch.allclose(moved, clean)


def test_quantile_map_recovers_an_exact_affine_relation():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(500, 6, generator=g)
    omega, beta = quantile_map(pos, 2.5 * pos - 1.0, n_quantiles=16)
    torch.testing.assert_close(omega, torch.full((6,), 2.5), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(beta, torch.full((6,), -1.0), atol=1e-4, rtol=1e-4)
    const = torch.zeros(50, 2)  # a neuron that never varies on the concept side: the mean map
    omega, beta = quantile_map(const, torch.full((40, 2), 3.0))
    assert torch.equal(omega, torch.ones(2)) and torch.allclose(beta, torch.full((2,), 3.0))


def test_fit_transport_mean_is_the_difference_of_token_means(tiny_llama):
    pos, neg = concept_texts(4)
    tr = fit_transport(tiny_llama, pos, neg, kind="mean")
    enc_p, enc_n = tiny_llama.encode(pos), tiny_llama.encode(neg)
    ap, an = _acts(tiny_llama, pos), _acts(tiny_llama, neg)
    for l in range(tiny_llama.n_layers):
        mp = ap[l][enc_p["attention_mask"].bool()].double().mean(0)
        mn = an[l][enc_n["attention_mask"].bool()].double().mean(0)
        torch.testing.assert_close(tr.beta[l], (mn - mp).float(), atol=1e-5, rtol=1e-4)
    assert torch.equal(tr.omega, torch.ones_like(tr.omega)) and tr.kind == "mean"
    lin = fit_transport(tiny_llama, pos, neg, kind="linear", n_quantiles=8)
    assert lin.kind == "linear" and not torch.equal(lin.omega, torch.ones_like(lin.omega))
    with pytest.raises(ValueError, match="kind"):
        fit_transport(tiny_llama, pos, neg, kind="cubic")
    with pytest.raises(ValueError, match="concept and contrast texts"):
        fit_transport(tiny_llama, pos, [])
    # at="last": the difference of the means at each text's last token (one text at a time, no padding)
    last = fit_transport(tiny_llama, pos, neg, kind="mean", at="last")
    for l in range(tiny_llama.n_layers):
        mp = torch.stack([_acts(tiny_llama, [t])[l][0, -1] for t in pos]).double().mean(0)
        mn = torch.stack([_acts(tiny_llama, [t])[l][0, -1] for t in neg]).double().mean(0)
        torch.testing.assert_close(last.beta[l], (mn - mp).float(), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(last.beta, tr.beta, atol=1e-3)
    with pytest.raises(ValueError, match="fitted at all or last"):
        fit_transport(tiny_llama, pos, neg, at="first")


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_sweep_under_transport_and_dampening_equals_the_reference(kind, tokenizer):
    m = build_tiny(kind, tokenizer)
    pos, _ = concept_texts(4)
    torch.manual_seed(3)
    readout = ConceptReadout(layer=1, vector=torch.nn.functional.normalize(torch.randn(m.d_model), dim=0))
    probes = ProbeSet([pos[0], pos[1] + " and more"], [0.5, 0.5])
    subset = {0: [0, 5, 17, 47], 1: [3, 9]}
    for iv in (_transport(m), Dampen(0.3)):
        task = ScoringTask(readout, probes, layers=[0, 1], neurons=subset, intervention=iv)
        fast, ref = NeatScorer(tokens_per_batch=40).score(m, task), ReferenceScorer().score(m, task)
        close_scores(fast.scores, ref.scores)
        assert torch.isfinite(fast.scores).sum() == 6 and fast.scores[torch.isfinite(fast.scores)].abs().sum() > 0
    with pytest.raises(ValueError, match="one alpha"):
        NeatScorer().score(m, ScoringTask(readout, probes, layers=[0], intervention=Dampen()))


def test_made_by_name_and_checked(tiny_llama):
    means = torch.zeros(tiny_llama.n_layers, tiny_llama.d_ff)
    stats = NeuronStats(contrast_means=means + 1, positive_means=means + 3)
    tr = Intervention.of("transport", stats=stats, strength=0.5)
    assert isinstance(tr, Transport) and tr.strength == 0.5 and torch.equal(tr.beta, means - 2)
    assert isinstance(Intervention.of("mean", means), Mean) and Intervention.of("dampen", alpha=0.3) == Dampen(0.3)
    assert Intervention.of(Zero()) == Zero()
    for bad, match in [(dict(mode="half"), "mode must be one of"), (dict(mode="zero", alpha=0.3), "alpha is a dampening factor"),
                       (dict(mode="dampen", strength=0.3), "strength is transport's strength"),
                       (dict(mode="transport", strength=1.5), r"strength must be in \[0, 1\]")]:
        with pytest.raises(ValueError, match=match):
            check_choice(bad["mode"], bad.get("alpha"), bad.get("strength"))
    with pytest.raises(ValueError, match="no positive means"):
        Intervention.of("transport", stats=NeuronStats(contrast_means=means))
    with pytest.raises(ValueError, match="finite"):
        Transport(torch.ones(2, 3), torch.full((2, 3), float("nan")))


def test_run_transport_from_its_means_and_a_stored_fit(run_and_model):
    run, model = run_and_model
    tr = run.intervention("transport")
    torch.testing.assert_close(tr.beta, run.contrast_means - run.positive_means)
    assert tr.describe() == "transport (mean, strength=1)"
    pos, neg = concept_texts(4)
    fitted = fit_transport(model, pos, neg, kind="linear", strength=0.4, n_quantiles=8)
    run.save_transport(fitted)
    again = nl.Run.load(run.run_dir).intervention("transport")
    assert again.kind == "linear" and again.strength == pytest.approx(0.4) and torch.equal(again.omega, fitted.omega)
    assert nl.Run.load(run.run_dir).intervention("transport", strength=0.9).strength == 0.9
    last = fit_transport(model, pos, neg, at="last")  # where it was fitted travels with it: folder, spec, strength
    assert last.at == "last" and last.describe() == "transport (mean at last tokens, strength=1)"
    assert last.settings()["at"] == "last" and "at" not in fitted.settings()  # the default unsaid (old records equal)
    run.save_transport(last)
    again = nl.Run.load(run.run_dir).intervention("transport", strength=0.5)
    assert again.at == "last" and again.strength == 0.5 and torch.equal(again.beta, last.beta)
    from neat_llm.interventions.spec import InterventionSpec, make_spec

    spec = make_spec(model.model_id, model.family, model.weights_hash, model.n_layers, model.d_ff, run.top(5), last)
    back = InterventionSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).intervention()
    assert back.at == "last" and back.describe() == last.describe()
    assert all(back.beta[l, k] == last.beta[l, k] for l, k in run.top(5).neurons)


@pytest.fixture
def run_and_model(tiny_llama, tmp_path):
    pos, neg = concept_texts(12)
    run = nl.find_concept_neurons(tiny_llama, nl.ConceptSet.from_texts(pos, neg, name="weather"),
                                  out=tmp_path / "run", progress=False)
    return run, tiny_llama


def test_no_module_outside_interventions_branches_on_a_mode_name():
    pkg = ROOT / "src" / "neat_llm"
    hits = [f"{p.relative_to(ROOT)}:{i + 1}" for p in pkg.rglob("*.py") if "interventions" not in p.parts
            for i, line in enumerate(p.read_text().splitlines()) if re.search(r"\bmode\s*[!=]=", line)]
    assert not hits, f"mode branches outside interventions/: {hits}"
