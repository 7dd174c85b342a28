"""Integrated gradients and log-probability increase on the label readout, against direct computations."""

import pytest
import torch

from conftest import build_tiny, concept_texts
from neat_llm.concepts.label_readout import LabelReadout
from neat_llm.concepts.vectors import ConceptReadout
from neat_llm.interventions import turn_off
from neat_llm.scoring import IntegratedGradientsScorer, LogprobIncreaseScorer, ProbeSet, ScoringTask

LABEL = LabelReadout(template="{text} ? answer:", positive_word="x", negative_word="y")  # single bytes: one token each


def s_tok(model, text):
    enc = model.encode([LABEL.prompt(text)])
    with torch.inference_mode():
        return LABEL.from_logits(model, model.hf(**enc).logits[0, -1]).item()


def _task(model, pos, neg, layers):
    readout = ConceptReadout(0, torch.zeros(model.d_model))  # unused by label-readout scorers
    return ScoringTask(readout, ProbeSet([pos[0]], [1.0]), layers=layers, positives=pos, contrast=neg)


# Not Gemma 2/3: their RMSNorm after the MLP makes S_tok(alpha * a) flat in alpha except next to 0,
# so a 64-step Riemann sum misses the integral (see the scorer docstring).
@pytest.mark.parametrize("kind", ["llama", "gpt2", "gpt_neox"])
def test_integrated_gradients_complete(kind, tokenizer):
    m = build_tiny(kind, tokenizer)
    pos, neg = concept_texts(2)
    ig = IntegratedGradientsScorer(steps=64, label=LABEL)
    got = ig.score(m, _task(m, pos, neg, [0, 2]))
    assert got.passes.forward == 2 * 2 * 64 and got.passes.backward == 2 * 2 * 64
    for l in (0, 2):
        want = sum(s_tok(m, t) - _s_tok_block_off(m, t, l) for t in pos) / len(pos)
        total = got.scores[l].sum().item()
        assert abs(want) > 1e-3
        assert total == pytest.approx(want, rel=0.03, abs=1e-3)


def _s_tok_block_off(m, text, layer):
    with turn_off(m, [(layer, k) for k in range(m.d_ff)]):
        return s_tok(m, text)


def test_logprob_increase_equals_direct_readout(tiny_llama):
    m = tiny_llama
    pos, neg = concept_texts(3)
    got = LogprobIncreaseScorer(label=LABEL).score(m, _task(m, pos, neg, [0, 1, 2]))
    assert got.passes.forward == len(pos) and got.passes.backward == 0
    yes, no = LABEL.token_ids(m)
    for l, k in [(0, 4), (1, 20), (2, 47)]:
        want = 0.0
        for t in pos:
            enc = m.encode([LABEL.prompt(t)])
            with torch.inference_mode():
                out = m.hf(**enc, output_hidden_states=True)
                from neat_llm.hooks import capture_inputs
                with capture_inputs({0: m.sites[l]}) as acts:
                    m.hf(**enc)
            h = out.hidden_states[l + 1][0, -1]  # residual after block l (hidden_states[0] = embeddings)
            if l == m.n_layers - 1:  # HF applies the final norm to the last hidden state; undo by recapture
                from neat_llm.hooks import capture_outputs
                with torch.inference_mode(), capture_outputs({0: m.blocks[l]}) as o:
                    m.hf(**enc)
                h = o[0][0][0, -1]
            a = acts[0][0][0, -1, k]
            w = m.sites[l].weight[:, k]  # nn.Linear down projection: column k is the neuron's output vector
            with torch.inference_mode():
                def read(v):
                    z = m.hf.lm_head(m.hf.model.norm(v))
                    return (z[yes] - z[no]).item()
                want += read(h + a * w) - read(h)
        want /= len(pos)
        assert got.scores[l, k].item() == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_label_words_must_be_single_tokens(tiny_llama):
    with pytest.raises(ValueError, match="single-token"):
        LabelReadout(positive_word=" thunderstorm-warning-xyz").token_ids(tiny_llama)
