"""Pass counts are made in one place (the model's hook, ``call_block``, ``replica_drop``,
``LoadedModel.gradients``) and equal the calls counted by hand here."""

from __future__ import annotations

import pytest
import torch

from conftest import concept_texts
from neat_llm.concepts.vectors import ConceptReadout
from neat_llm.models.loaded import PassCounter

TEXTS = ["the rain came over the town today", "a cake and bread stayed near the river", "the snow fell by the hills"]


class HandCount:
    """Counts the model's forward calls by hand: sequences started vs continued on a filled cache."""

    def __init__(self, model):
        self.model, self.forward, self.decode, self.calls = model, 0, 0, 0

    def __enter__(self):
        def hook(_m, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            cache = kwargs.get("past_key_values", kwargs.get("cache"))
            self.calls += 1
            if cache is not None and cache.get_seq_length() > 0:
                self.decode += ids.shape[0]
            else:
                self.forward += ids.shape[0]

        self.handle = self.model.hf.register_forward_pre_hook(hook, with_kwargs=True)
        self.before = self.model.counter.snapshot()
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        self.spent = self.model.counter.since(self.before)


def test_sentence_logliks_count_one_forward_per_sentence(tiny_llama):
    from neat_llm.evaluation.bias import sentence_logliks

    with HandCount(tiny_llama) as h:
        sentence_logliks(tiny_llama, TEXTS, batch_size=2)
    assert h.spent.forward == h.forward == 3  # it reported 6: the hook and a hand-written addition
    assert h.spent.as_dict() == {**PassCounter().as_dict(), "forward": 3}


def test_sampling_counts_one_forward_per_prompt_and_its_decoding_steps(tiny_llama):
    from neat_llm.evaluation.generation import sample_continuations

    prompts = [f"the rain came over {w}" for w in ("town", "river", "hills", "valley", "coast")] * 2 + ["a cake", "the"]
    with HandCount(tiny_llama) as h:
        sample_continuations(tiny_llama, prompts, max_new_tokens=4, batch_size=5)
    assert h.spent.forward == h.forward == 12  # it reported 24 for 12 prompts
    assert h.spent.decode == h.decode and 0 < h.decode <= 12 * 3  # at most max_new_tokens - 1 steps each


def test_hate_measures_count_each_text_once(tiny_llama):
    from neat_llm.evaluation.hate import HateData, hate_measures
    from neat_llm.concepts.label_readout import LabelReadout

    class Judge:
        def rates(self, texts):
            return {"hate_rate": 0.0, "toxic_rate": 0.0}

    pos, neg = concept_texts(4)
    data = HateData(tuple(pos), tuple(neg), ("the rain came", "a cake and"))
    neutral = ["the cloud moved over the town today", "a honey and rice went on the coast"]
    readout = LabelReadout(template="{text} ?", concept="weather", positive_word="x", negative_word="y")
    with HandCount(tiny_llama) as h:
        hate_measures(tiny_llama, data, Judge(), max_new_tokens=3, readout=readout, neutral_texts=neutral)
    # log-likelihoods of hateful and neutral texts, the label readout of both, the prompts, perplexity
    assert h.spent.forward == h.forward == 4 + 4 + 8 + 2 + 2


def test_read_position_cache_is_one_forward_and_one_decoding_step(tiny_llama):
    from neat_llm.scoring import NeatScorer, ProbeSet, ScoringTask

    pos, _ = concept_texts(2)
    readout = ConceptReadout(1, torch.ones(tiny_llama.d_model) / tiny_llama.d_model ** 0.5)
    task = ScoringTask(readout, ProbeSet(pos[:2], [0.5, 0.5]), layers=[0, 1, 2])
    with HandCount(tiny_llama) as h:
        r = NeatScorer(positions="read").score(tiny_llama, task)
    # per probe: the clean forward, the prefix of the split run (a forward), its last token (a step)
    assert r.passes.forward == h.forward == 2 * 2 and r.passes.decode == h.decode == 2
    assert r.passes.partial_forward == 2 * 2 * tiny_llama.d_ff  # one replica per neuron of blocks 0-1, per probe
    # the read-position replay runs blocks l+1..1 for block-0 neurons (Llama: block l is not re-run)
    assert r.passes.block_forward == 2 * tiny_llama.d_ff


@pytest.mark.parametrize("what", ["fluency", "attribution", "integrated-gradients"])
def test_backward_passes_are_the_sequences_differentiated(tiny_llama, what):
    from neat_llm.concepts.label_readout import LabelReadout
    from neat_llm.scoring import AttributionPatchingScorer, IntegratedGradientsScorer, ProbeSet, ScoringTask
    from neat_llm.scoring.fluency import loss_effect_first_order

    pos, neg = concept_texts(3)
    before = tiny_llama.counter.snapshot()
    if what == "fluency":
        loss_effect_first_order(tiny_llama, pos + neg, batch_size=4)
        want = 6
    else:
        readout = ConceptReadout(1, torch.ones(tiny_llama.d_model) / tiny_llama.d_model ** 0.5)
        task = ScoringTask(readout, ProbeSet(pos[:1], [1.0]), layers=[0, 1], positives=pos, contrast=neg)
        if what == "attribution":
            AttributionPatchingScorer(batch_size=2).score(tiny_llama, task)
            want = 3
        else:
            label = LabelReadout(template="{text} ?", concept="weather", positive_word="x", negative_word="y")
            IntegratedGradientsScorer(steps=4, label=label).score(tiny_llama, task)
            want = 4 * 3 * 2  # steps x texts x layers
    assert tiny_llama.counter.since(before).backward == want


def test_paused_counter_counts_nothing(tiny_llama):
    before = tiny_llama.counter.snapshot()
    with tiny_llama.counter.paused():
        with torch.inference_mode():
            tiny_llama.hf(**tiny_llama.encode(TEXTS), use_cache=False)
    assert tiny_llama.counter.since(before).as_dict() == PassCounter().as_dict()


def test_a_pass_ended_at_the_reading_layer_counts_as_partial(tiny_llama):
    from neat_llm.concepts.representations import residuals_along, text_pass

    with HandCount(tiny_llama) as h:
        got = residuals_along(tiny_llama, TEXTS, 1, 2, batch_size=2)
    assert h.spent.as_dict() == {**PassCounter().as_dict(), "partial_forward": 3 * 2}  # 3 texts, 2 replicas
    want = text_pass(tiny_llama, TEXTS).residuals[:, 1]
    torch.testing.assert_close(got[0], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        tiny_llama.run_through(tiny_llama.n_layers, tiny_llama.encode(TEXTS))


def test_passes_that_keep_logits_batch_fewer_tokens_for_a_large_vocabulary(tiny_llama, monkeypatch):
    """Logits are [tokens, vocab] floats: the token budget shrinks with the vocabulary (Gemma's
    262,144 tokens would otherwise hold 8.6 GB of logits for 8 conditions) and is shared by replicas."""
    from neat_llm.concepts import representations as rep

    assert rep.logit_token_budget(tiny_llama, 1) == rep.TEXT_TOKENS_PER_BATCH  # a small vocabulary: the text budget
    assert rep.logit_token_budget(tiny_llama, 8) == rep.TEXT_TOKENS_PER_BATCH // 8
    monkeypatch.setattr(tiny_llama.hf.config, "vocab_size", 262_144)
    assert rep.logit_token_budget(tiny_llama, 1) == rep.LOGITS_PER_BATCH // 262_144 == 1024
    assert rep.logit_token_budget(tiny_llama, 8) * 8 * 262_144 * 4 <= 2 ** 30  # at most 1 GiB of float32 logits
