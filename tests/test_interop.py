"""The neurons in the tools of the field, each against the real package: nnsight, pyvene and
TransformerLens give the logits ``neat_llm.turn_off`` gives on the same model (zero, mean, dampen,
transport), and a file from another model is refused before anything runs."""

from __future__ import annotations

import pytest
import torch

from conftest import build_tiny
from neat_llm.interventions import Dampen, InterventionSpec, Mean, NeuronSelection, SpecError, Transport, Zero, turn_off
from neat_llm.interventions.spec import make_spec

TEXTS = ["the rain came down on the hills", "a warm sun over the sea"]


@pytest.fixture(scope="module")
def model(tokenizer):
    m = build_tiny("llama", tokenizer, seed=3)
    m.hf.config._attn_implementation = "eager"  # TransformerLens forces eager attention: the same kernels on both sides
    return m


def _specs(model) -> dict[str, InterventionSpec]:
    g = torch.Generator().manual_seed(0)
    L, F = model.n_layers, model.d_ff
    neurons = tuple({(int(torch.randint(L, (1,), generator=g)), int(torch.randint(F, (1,), generator=g)))
                     for _ in range(12)})
    sel = NeuronSelection(neurons, scores=tuple(float(i) for i in range(len(neurons))))
    ivs = {"zero": Zero(), "mean": Mean(torch.randn(L, F, generator=g)), "dampen": Dampen(0.3),
           "transport": Transport(omega=torch.rand(L, F, generator=g) * 0.5, beta=torch.randn(L, F, generator=g),
                                  strength=0.8)}
    return {name: make_spec(model.model_id, model.family, model.weights_hash, L, F, sel, iv) for name, iv in ivs.items()}


def _reference(model, spec) -> tuple[torch.Tensor, torch.Tensor]:
    enc = model.encode(TEXTS)
    with torch.inference_mode():
        before = model.hf(**enc, use_cache=False).logits
        with turn_off(model, spec):
            after = model.hf(**enc, use_cache=False).logits
    assert (after - before).abs().max() > 1e-3  # the edit does something: equality below is not vacuous
    return enc, after


@pytest.fixture(scope="module")
def specs(model):
    return _specs(model)


MODES = ["zero", "mean", "dampen", "transport"]


# --- TransformerLens -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bridge(tokenizer):
    """A bridge around its own copy of the model (booting rewires the Hugging Face model in place)."""
    tl = pytest.importorskip("transformer_lens.model_bridge", reason="TransformerLens is in the interop extra")
    own = build_tiny("llama", tokenizer, seed=3)
    own.hf.config._attn_implementation = "eager"
    return tl.TransformerBridge.boot_transformers("tiny-llama", hf_model=own.hf, tokenizer=own.tokenizer, device="cpu")


@pytest.mark.parametrize("mode", MODES)
def test_transformer_lens_hooks_give_turn_offs_logits(model, specs, bridge, mode):
    from neat_llm.interop import fwd_hooks

    enc, want = _reference(model, specs[mode])
    hooks = fwd_hooks(specs[mode], bridge)
    assert {name for name, _ in hooks} <= {f"blocks.{l}.mlp.hook_post" for l in range(model.n_layers)}
    with torch.inference_mode():
        got = bridge.run_with_hooks(enc["input_ids"], attention_mask=enc["attention_mask"], fwd_hooks=hooks)
        plain = bridge(enc["input_ids"], attention_mask=enc["attention_mask"])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    with torch.inference_mode():  # the hooks are gone after the call
        torch.testing.assert_close(bridge(enc["input_ids"], attention_mask=enc["attention_mask"]), plain)


def test_transformer_lens_refuses_a_file_of_another_size_and_other_weights_before_booting(tokenizer, model, specs,
                                                                                          bridge):
    from neat_llm.interop import check_hf_model, fwd_hooks

    spec = specs["zero"]
    wrong = InterventionSpec(spec.model_id, spec.model_family, spec.weights_hash, spec.n_layers, spec.d_ff + 1,
                             spec.mode, spec.neurons)
    with pytest.raises(SpecError, match="blocks of"):
        fwd_hooks(wrong, bridge)
    other = build_tiny("llama", tokenizer, seed=4)  # the weights are checked on the model before it is booted
    with pytest.raises(SpecError, match="another model or other weights"):
        check_hf_model(spec, other.hf)


# --- nnsight ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm(model):
    nnsight = pytest.importorskip("nnsight", reason="nnsight is in the interop extra")
    return nnsight.TransformersModel(model.hf, tokenizer=model.tokenizer, task="text-generation")


@pytest.mark.parametrize("mode", MODES)
def test_nnsight_trace_gives_turn_offs_logits(model, specs, lm, mode):
    from neat_llm.interop import turn_off_in_trace

    enc, want = _reference(model, specs[mode])
    with torch.inference_mode(), lm.trace({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}):
        turn_off_in_trace(lm, specs[mode])
        got = lm.output.logits.save()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    with torch.inference_mode():  # nothing stays behind in the model
        torch.testing.assert_close(model.hf(**enc, use_cache=False).logits,
                                   _reference_before(model, enc))


def _reference_before(model, enc):
    with torch.inference_mode():
        return model.hf(**enc, use_cache=False).logits


def test_nnsight_generate_with_the_neurons_off_at_every_step(model, specs, lm):
    from neat_llm.interop import edits_for, turn_off_in_trace

    spec = specs["mean"]
    enc = model.encode(TEXTS[:1])
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
    with torch.inference_mode():
        plain = model.hf.generate(**enc, **kw)
        with turn_off(model, spec):
            want = model.hf.generate(**enc, **kw)
    assert not torch.equal(plain, want)  # the neurons change what is written: the check below means something
    edits = edits_for(lm, spec)  # checked once, outside the trace
    with torch.inference_mode(), lm.generate({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
                                             **kw) as tracer:
        for _ in tracer.iter[:6]:  # one forward per new token; nothing after an open-ended tracer.all() would run
            turn_off_in_trace(lm, edits)
        got = tracer.result.save()
    assert torch.equal(got, want)


def test_nnsight_refuses_a_file_of_another_size(tokenizer, specs, lm):
    from neat_llm.interop import edits_for

    spec = specs["zero"]
    wrong = InterventionSpec(spec.model_id, spec.model_family, spec.weights_hash, spec.n_layers + 1, spec.d_ff,
                             spec.mode, spec.neurons)
    with pytest.raises(SpecError, match="blocks of"):
        edits_for(lm, wrong)


# --- pyvene -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pv_model(tokenizer):
    pytest.importorskip("pyvene", reason="pyvene is in the interop extra")
    own = build_tiny("llama", tokenizer, seed=3)  # pyvene hooks the model it is given: its own copy
    return own


@pytest.mark.parametrize("mode", MODES)
def test_pyvene_model_gives_turn_offs_logits_and_survives_save_and_load(model, specs, pv_model, mode, tmp_path):
    import pyvene as pv

    from neat_llm.interop import intervenable_model

    enc, want = _reference(model, specs[mode])
    base = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    ivm = intervenable_model(specs[mode], pv_model.hf)
    with torch.inference_mode():
        _, got = ivm(base, unit_locations=None)
    torch.testing.assert_close(got.logits, want, atol=1e-4, rtol=0)
    ivm.save(str(tmp_path / "pv"))
    again = pv.IntervenableModel.load(str(tmp_path / "pv"), pv_model.hf)
    with torch.inference_mode():
        _, got2 = again(base, unit_locations=None)
    torch.testing.assert_close(got2.logits, want, atol=1e-4, rtol=0)
    for m in (ivm, again):
        m.disable_intervention_gradients()
    with torch.inference_mode():  # the model itself is left as it was
        torch.testing.assert_close(pv_model.hf(**enc, use_cache=False).logits, _reference_before(model, enc))


def test_pyvene_refuses_a_file_of_another_model(tokenizer, specs):
    pytest.importorskip("pyvene", reason="pyvene is in the interop extra")
    from neat_llm.interop import intervenable_model

    other = build_tiny("llama", tokenizer, seed=4)
    with pytest.raises(SpecError, match="another model or other weights"):
        intervenable_model(specs["zero"], other.hf)
