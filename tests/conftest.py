"""Tiny randomly initialised models of every adapter family, a tokenizer trained in memory, and a
small concept set written for the tests. Everything builds in milliseconds, with no downloads."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

WEATHER = ["rain", "storm", "wind", "snow", "thunder", "cloud", "fog", "hail"]
FOOD = ["bread", "cake", "soup", "rice", "apple", "cheese", "pasta", "honey"]
VERBS = ["came", "fell", "moved", "stayed", "grew", "went"]
PLACES = ["over the town", "near the river", "by the hills", "in the valley", "on the coast"]


def concept_texts(n_per_side: int = 24, seed: int = 0) -> tuple[list[str], list[str]]:
    """Positives mention weather, contrast texts mention food; same templates otherwise."""
    rng = random.Random(seed)
    combos = list(itertools.product(VERBS, PLACES))
    rng.shuffle(combos)

    def make(words):
        return [f"the {rng.choice(words)} {v} {p} today" if i % 2 else f"a {rng.choice(words)} and {rng.choice(words)} {v} {p}"
                for i, (v, p) in enumerate(combos[:n_per_side])]

    return make(WEATHER), make(FOOD)


@pytest.fixture(scope="session")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    pos, neg = concept_texts(40)
    corpus = pos + neg + ["hello world, this is a tiny tokenizer for tests"] * 3
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(autouse=True)
def _own_shared_conditions(tmp_path, monkeypatch):
    """Each test shares finished conditions only with itself (never with another test or the user's cache)."""
    monkeypatch.setattr("neat_llm.evaluation.checkpoints.shared_root", lambda: tmp_path / "shared-conditions")


# Tiny models run on one thread: a 2-thread pool on 2 shared cores makes tiny matmuls thousands of
# times slower. The real-model tests switch back to every core (test_real_models.py).
torch.set_num_threads(1)

VOCAB = 320
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
              max_position_embeddings=64, initializer_range=0.2)


def close_scores(a: torch.Tensor, b: torch.Tensor) -> None:
    """Two score tables agree: NaN in the same places, finite entries to float tolerance (relative
    to the largest score, which must not be ~0, or the comparison would prove nothing)."""
    assert torch.equal(torch.isnan(a), torch.isnan(b))
    fa, fb = a[~torch.isnan(a)], b[~torch.isnan(b)]
    scale = fb.abs().max().item()
    assert scale > 1e-4, "scores are all ~0: the test would prove nothing"
    torch.testing.assert_close(fa, fb, atol=2e-5 * scale + 1e-6, rtol=1e-4)


def tiny_config(kind: str):
    import transformers as tf

    if kind == "llama":
        return tf.LlamaConfig(**COMMON, num_key_value_heads=2)
    if kind == "mistral":
        return tf.MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=None)
    if kind == "qwen2":
        return tf.Qwen2Config(**COMMON, num_key_value_heads=2)
    if kind == "qwen3":
        return tf.Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=8)
    if kind == "phi3":
        return tf.Phi3Config(**COMMON, num_key_value_heads=2, pad_token_id=1)
    if kind == "gemma":
        return tf.GemmaConfig(**COMMON, num_key_value_heads=2, head_dim=8)
    if kind == "gemma2":
        return tf.Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=8, sliding_window=4)
    if kind == "gemma3":
        return tf.Gemma3TextConfig(**COMMON, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                   layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    if kind == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_inner=48, n_layer=3, n_head=4, n_positions=64,
                             initializer_range=0.2)
    if kind == "gpt_neox":
        return tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                num_attention_heads=4, max_position_embeddings=64, initializer_range=0.2)
    raise KeyError(kind)


FAMILY_KINDS = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3", "gpt2", "gpt_neox"]


def build_tiny(kind: str, tokenizer, seed: int = 0):
    from transformers import AutoModelForCausalLM

    from neat_llm.models import LoadedModel, family_for
    from neat_llm.models.loading import check_sites

    torch.manual_seed(seed)
    cfg = tiny_config(kind)
    cfg._attn_implementation = "sdpa" if kind not in ("gemma2",) else "eager"
    hf = AutoModelForCausalLM.from_config(cfg)
    m = LoadedModel(hf=hf, tokenizer=tokenizer, family=family_for(cfg.model_type), model_id=f"tiny-{kind}")
    check_sites(m)
    return m


@pytest.fixture(scope="session")
def tiny_llama(tokenizer):
    return build_tiny("llama", tokenizer)


@pytest.fixture
def concept_set():
    from neat_llm import ConceptSet

    pos, neg = concept_texts(24)
    return ConceptSet.from_texts(pos, neg, name="weather")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny Llama saved like a hub checkout (config, safetensors, tokenizer)."""
    d = tmp_path_factory.mktemp("tiny-llama")
    m = build_tiny("llama", tokenizer, seed=1)
    m.hf.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d
