"""A model spread by accelerate (``load_model(..., device_map=...)``): blocks whose weights live
elsewhere (offloaded to disk here, the one placement a CPU-only machine can test) run under
accelerate's own hooks, and ours must compose with them. The sweep, the reference and turning
neurons off must give the numbers of the same model loaded whole."""

import pytest
import torch

import neat_llm as nl
from conftest import concept_texts
from neat_llm.scoring import NeatScorer, ProbeSet, ReferenceScorer, ScoringTask


def spread_map(n_layers: int) -> dict:
    """Embedding, block 0, final norm and head on the CPU; every other block offloaded to disk."""
    dm = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dm.update({f"model.layers.{i}": "cpu" if i == 0 else "disk" for i in range(n_layers)})
    return dm


@pytest.fixture(scope="module")
def whole_and_spread(tiny_model_dir, tmp_path_factory):
    whole = nl.load_model(tiny_model_dir)
    spread = nl.load_model(tiny_model_dir, device_map=spread_map(whole.n_layers),
                           offload_folder=str(tmp_path_factory.mktemp("offload")))
    return whole, spread


def test_the_map_really_offloads(whole_and_spread):
    _, spread = whole_and_spread
    assert {"cpu", "disk"} <= set(spread.hf.hf_device_map.values())
    assert hasattr(spread.blocks[1], "_hf_hook")  # accelerate moves this block's weights in per call
    assert spread.blocks[1].mlp.down_proj.weight.device.type == "meta"


def test_sweep_and_reference_match_the_whole_model(whole_and_spread):
    whole, spread = whole_and_spread
    pos, neg = concept_texts(12)
    readouts = []
    for m in (whole, spread):
        run_texts = pos[:6] + neg[:6]
        tp = nl.concepts.representations.text_pass(m, run_texts)
        readouts.append(tp.residuals[:, 2])
    assert torch.allclose(readouts[0], readouts[1], atol=1e-5)
    vec = torch.nn.functional.normalize(readouts[0][:6].mean(0) - readouts[0][6:].mean(0), dim=0)
    readout = nl.concepts.vectors.ConceptReadout(2, vec)
    task = ScoringTask(readout, ProbeSet([pos[0]], [1.0]), layers=[0, 1, 2])
    s_whole = NeatScorer(tokens_per_batch=64).score(whole, task).scores
    s_spread = NeatScorer(tokens_per_batch=64).score(spread, task).scores
    ref = ReferenceScorer().score(spread, ScoringTask(readout, ProbeSet([pos[0]], [1.0]), layers=[1],
                                                      neurons={1: list(range(0, 48, 5))})).scores
    assert torch.allclose(s_spread, s_whole, atol=1e-5)
    assert torch.allclose(ref[1, ::5], s_whole[1, ::5], atol=1e-5)
    read = NeatScorer(tokens_per_batch=64, positions="read")
    assert torch.allclose(read.score(spread, task).scores, read.score(whole, task).scores, atol=1e-5)


def test_turn_off_on_a_spread_model(whole_and_spread):
    whole, spread = whole_and_spread
    neurons = [(1, 3), (2, 7), (1, 20)]
    outs = []
    for m in (whole, spread):
        enc = m.encode(["hello world, this is a tiny tokenizer"])
        with torch.inference_mode(), nl.turn_off(m, neurons):
            outs.append(m.hf(**enc).logits)
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
