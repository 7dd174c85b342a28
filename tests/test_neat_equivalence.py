"""The fast NEAT sweep gives the same numbers as the plain reference (one full forward, one hook,
per neuron), on tiny models of every adapter family."""

import pytest
import torch

from conftest import FAMILY_KINDS, build_tiny, close_scores as _close, concept_texts
from neat_llm.concepts.vectors import ConceptReadout
from neat_llm.interventions import Mean
from neat_llm.scoring import NeatScorer, ProbeSet, ReferenceScorer, ScoringTask


@pytest.mark.parametrize("kind", FAMILY_KINDS)
def test_fast_sweep_equals_reference_every_family(kind, tokenizer):
    m = build_tiny(kind, tokenizer)
    pos, neg = concept_texts(4)
    torch.manual_seed(1)
    readout = ConceptReadout(layer=1, vector=torch.nn.functional.normalize(torch.randn(m.d_model), dim=0))
    probes = ProbeSet([pos[0], pos[1] + " and more"], [0.5, 0.5])  # two lengths: no padding involved
    task = ScoringTask(readout, probes, layers=[0, 1, 2])
    fast = NeatScorer(tokens_per_batch=40).score(m, task)  # small batches: chunking is exercised
    ref = ReferenceScorer().score(m, task)
    _close(fast.scores, ref.scores)
    assert torch.all(fast.scores[2] == 0), "neurons after the reading layer must score exactly 0"
    assert fast.n_scored == 3 * m.d_ff


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2"])
def test_mean_ablation_and_contrastive_probes_agree(kind, tokenizer):
    m = build_tiny(kind, tokenizer)
    pos, neg = concept_texts(4)
    torch.manual_seed(2)
    readout = ConceptReadout(layer=2, vector=torch.nn.functional.normalize(torch.randn(m.d_model), dim=0))
    means = torch.randn(m.n_layers, m.d_ff) * 0.1
    probes = ProbeSet([pos[0], neg[0]], [1.0, -1.0])
    subset = {0: [0, 5, 17, 47], 2: [3, 9]}
    task = ScoringTask(readout, probes, layers=[0, 2], neurons=subset, intervention=Mean(means))
    fast = NeatScorer().score(m, task)
    ref = ReferenceScorer().score(m, task)
    _close(fast.scores, ref.scores)
    assert int(torch.isfinite(fast.scores).sum()) == 6


def test_pass_counts(tiny_llama):
    pos, _ = concept_texts(2)
    readout = ConceptReadout(layer=1, vector=torch.ones(tiny_llama.d_model) / tiny_llama.d_model ** 0.5)
    task = ScoringTask(readout, ProbeSet([pos[0], pos[1]], [0.5, 0.5]), layers=[0, 1, 2])
    fast = NeatScorer().score(tiny_llama, task)
    # one clean forward per probe text, one partial pass per neuron up to the reading layer per probe text
    assert fast.passes.forward == 2
    assert fast.passes.partial_forward == 2 * 2 * tiny_llama.d_ff
    ref = ReferenceScorer().score(tiny_llama, task)
    assert ref.passes.forward == 2 + 2 * 3 * tiny_llama.d_ff


def test_compiled_sweep_equals_reference(tokenizer):
    """NeatScorer(compile=True): the replayed blocks through torch.compile give the reference's numbers
    (a 4-block Llama, reading layer 3: three compiled block calls per neuron of block 0, and a
    remainder chunk, so a second replica count is compiled too)."""
    import transformers as tf
    from transformers import AutoModelForCausalLM

    from neat_llm.models import LoadedModel, family_for

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         initializer_range=0.2)
    cfg._attn_implementation = "sdpa"
    m = LoadedModel(hf=AutoModelForCausalLM.from_config(cfg), tokenizer=tokenizer, family=family_for("llama"),
                    model_id="tiny-llama-4")
    pos, _ = concept_texts(2)
    readout = ConceptReadout(layer=3, vector=torch.nn.functional.normalize(torch.randn(m.d_model), dim=0))
    task = ScoringTask(readout, ProbeSet([pos[0]], [1.0]), layers=[0, 1, 3])
    fast = NeatScorer(tokens_per_batch=200, compile=True).score(m, task)
    _close(fast.scores, ReferenceScorer().score(m, task).scores)
    assert fast.params["compile"] is True


def test_replicas_reach_the_linear_layers_as_one_matmul(tiny_llama):
    """Every linear layer in the sweep runs as one ``mm`` over the C*T rows: a replica batch in a
    layout whose batch dimensions cannot be flattened makes torch run ``bmm`` against C broadcast
    copies of the weight (2.5x slower on SmolLM2). Llama's SDPA attention uses no bmm either."""
    from torch.profiler import ProfilerActivity, profile

    pos, _ = concept_texts(2)
    readout = ConceptReadout(layer=2, vector=torch.nn.functional.normalize(torch.ones(tiny_llama.d_model), dim=0))
    task = ScoringTask(readout, ProbeSet([pos[0]], [1.0]), layers=[0, 1, 2])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        NeatScorer(tokens_per_batch=200).score(tiny_llama, task)
    names = {e.key for e in prof.key_averages()}
    assert "aten::mm" in names and "aten::bmm" not in names


@pytest.mark.parametrize("kind", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("positions", ["all", "read"])
def test_mean_pooled_readout_agrees_with_reference(kind, positions, tokenizer):
    """S averaged over the tokens (``pool="mean"``): the sweep reads every position of the reading
    block (all positions) or moves S by 1/T of the last position's change (read position)."""
    m = build_tiny(kind, tokenizer)
    pos, _ = concept_texts(4)
    torch.manual_seed(4)
    readout = ConceptReadout(layer=1, vector=torch.nn.functional.normalize(torch.randn(m.d_model), dim=0), pool="mean")
    task = ScoringTask(readout, ProbeSet([pos[0], pos[1] + " and more"], [0.5, 0.5]), layers=[0, 1, 2])
    fast = NeatScorer(tokens_per_batch=40, positions=positions).score(m, task)
    ref = ReferenceScorer(positions=positions).score(m, task)
    _close(fast.scores, ref.scores)
    last = ReferenceScorer(positions=positions).score(m, ScoringTask(
        ConceptReadout(1, readout.vector), task.probes, layers=[0, 1, 2]))
    assert (last.scores[:2] - ref.scores[:2]).abs().max() > 1e-3  # pooling changes the score
