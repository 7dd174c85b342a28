"""Hook context managers clean up; the adapter table and model loading fail clearly."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import build_tiny
from neat_llm.concepts.representations import NonFiniteError, text_pass
from neat_llm.hooks import StopForward, capture_calls, capture_inputs, capture_outputs, edit_inputs, run_until, stop_after
from neat_llm.models import (ContextLengthError, LoadedModel, ModelLoadError, UnsupportedModelError, family_for,
                             load_model)
from neat_llm.models.loading import check_sites


def _no_hooks(modules):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in modules)


def _forward(model, text="the rain came over the town"):
    with torch.inference_mode():
        return model.hf(**model.encode([text]), use_cache=False).logits


# --- hooks ------------------------------------------------------------------------------------------
def _contexts(model):
    sites = dict(enumerate(model.sites))
    blocks = dict(enumerate(model.blocks))
    return {
        "capture_inputs": lambda: capture_inputs(sites),
        "capture_outputs": lambda: capture_outputs(blocks),
        "capture_calls": lambda: capture_calls(blocks),
        "edit_inputs": lambda: edit_inputs(sites, lambda k, x: x * 0),
        "stop_after": lambda: stop_after(model.blocks[1]),
    }


@pytest.mark.parametrize("name", ["capture_inputs", "capture_outputs", "capture_calls", "edit_inputs", "stop_after"])
def test_hooks_removed_on_exception(tiny_llama, name):
    mods = list(tiny_llama.sites) + list(tiny_llama.blocks)
    assert _no_hooks(mods)
    ctx = _contexts(tiny_llama)[name]
    with pytest.raises(KeyError, match="inside"):
        with ctx():
            assert not _no_hooks(mods)
            if name != "stop_after":
                _forward(tiny_llama)
            raise KeyError("inside")
    assert _no_hooks(mods)
    # and after a normal exit
    with ctx():
        pass
    assert _no_hooks(mods)


def test_hooks_removed_when_registration_fails(tiny_llama):
    site = tiny_llama.sites[0]
    for cm in (capture_inputs, capture_outputs, capture_calls):
        with pytest.raises(AttributeError):
            with cm({0: site, 1: object()}):
                pass
        assert _no_hooks([site])
    with pytest.raises(AttributeError):
        with edit_inputs({0: site, 1: object()}, lambda k, x: x):
            pass
    assert _no_hooks([site])


def test_capture_hooks_record_what_they_say(tiny_llama):
    m = tiny_llama
    enc = m.encode(["the rain came over the town"])
    with torch.inference_mode(), capture_inputs(dict(enumerate(m.sites))) as ins, \
            capture_outputs(dict(enumerate(m.blocks))) as outs, capture_calls({1: m.blocks[1]}) as calls:
        logits = m.hf(**enc, use_cache=False).logits
    assert all(len(v) == 1 for v in ins.values()) and all(len(v) == 1 for v in outs.values())
    assert ins[0][0].shape == (1, enc["input_ids"].shape[1], m.d_ff)
    assert outs[2][0].shape == (1, enc["input_ids"].shape[1], m.d_model)
    # the captured call reproduces the block's output
    args, kwargs = calls[1][0]
    with torch.inference_mode():
        again = m.blocks[1](*args, **kwargs)
    again = again[0] if isinstance(again, tuple) else again
    torch.testing.assert_close(again, outs[1][0], atol=1e-6, rtol=0)
    # edit_inputs really replaces the input
    with edit_inputs({2: m.sites[2]}, lambda k, x: torch.zeros_like(x)), torch.inference_mode(), \
            capture_inputs({2: m.sites[2]}) as seen:
        changed = m.hf(**enc, use_cache=False).logits
    assert torch.all(seen[2][0] == 0) and not torch.equal(changed, logits)


def test_stop_after_skips_later_blocks(tiny_llama):
    m = tiny_llama
    enc = m.encode(["the rain came over the town"])
    with capture_outputs(dict(enumerate(m.blocks))) as outs, capture_outputs({"lm": m.hf.lm_head}) as head:
        with stop_after(m.blocks[0]), torch.inference_mode():
            run_until(lambda: m.hf(**enc, use_cache=False))
    assert len(outs[0]) == 1 and outs[1] == [] and outs[2] == [] and head["lm"] == []
    assert _no_hooks(m.blocks)
    with pytest.raises(StopForward):  # without run_until the StopForward escapes
        with stop_after(m.blocks[2]), torch.inference_mode():
            m.hf(**enc, use_cache=False)
    assert _no_hooks(m.blocks)
    assert _forward(m).shape[-1] == m.hf.config.vocab_size


# --- adapters ---------------------------------------------------------------------------------------
def test_unknown_family_says_how_to_add():
    with pytest.raises(UnsupportedModelError) as err:
        family_for("bert")
    msg = str(err.value)
    assert "'bert' is not supported" in msg
    assert "llama" in msg and "gpt2" in msg  # the supported ones are listed
    assert "neat_llm.models.adapters.FAMILIES" in msg and "ModelFamily" in msg


@pytest.fixture
def fresh_gpt2(tokenizer):
    return build_tiny("gpt2", tokenizer)


@pytest.mark.parametrize("change, words", [
    ({"site": "mlp.nonexistent"}, ["'mlp.nonexistent'", "stopped at 'nonexistent'", "adapter table"]),
    ({"blocks": "transformer.blocks"}, ["'transformer.blocks'", "stopped at 'blocks'", "adapter table"]),
    ({"site": "mlp"}, ["'mlp'", "down projection", "adapter table"]),
    ({"blocks": "transformer"}, ["'transformer'", "not a non-empty list of blocks"]),
])
def test_wrong_paths_give_clear_errors(fresh_gpt2, change, words):
    hf = fresh_gpt2.hf
    fresh_gpt2._count_hook.remove()
    fam = dataclasses.replace(fresh_gpt2.family, **change)
    with pytest.raises(UnsupportedModelError) as err:
        LoadedModel(hf=hf, tokenizer=fresh_gpt2.tokenizer, family=fam, model_id="bad")
    for w in words:
        assert w in str(err.value)
    assert not hf._forward_pre_hooks, "a failed LoadedModel must not leave its counting hook behind"


def test_wrong_but_existing_site_caught_by_check_sites(tokenizer):
    m = build_tiny("llama", tokenizer)
    m._count_hook.remove()
    fam = dataclasses.replace(m.family, site="mlp.up_proj")  # a Linear, but not the down projection
    bad = LoadedModel(hf=m.hf, tokenizer=tokenizer, family=fam, model_id="bad")
    with pytest.raises(UnsupportedModelError, match="must be the MLP down projection"):
        check_sites(bad)
    assert _no_hooks(bad.sites) and _no_hooks(bad.blocks)


# --- LoadedModel ------------------------------------------------------------------------------------
def test_encode_long_text_warns_and_truncates(tiny_llama):
    long = " ".join(["the rain came over the town"] * 30)
    n = len(tiny_llama.tokenizer(long)["input_ids"])
    assert n > tiny_llama.max_length == 64
    with pytest.warns(UserWarning, match="longer than the model's context of 64 tokens.*truncating"):
        enc = tiny_llama.encode(["rain", long])
    assert enc["input_ids"].shape == (2, 64)
    assert enc["attention_mask"].sum(1).tolist() == [len(tiny_llama.tokenizer("rain")["input_ids"]), 64]
    with pytest.raises(ContextLengthError, match="longer than the model's context"):
        tiny_llama.encode(["rain", long], strict=True)
    with pytest.raises(ContextLengthError):
        text_pass(tiny_llama, [long], strict=True)


def test_encode_short_texts_no_warning(tiny_llama):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc = tiny_llama.encode("the rain")  # a single string is accepted
    assert enc["input_ids"].shape[0] == 1
    with pytest.raises(ValueError, match="zero tokens"):
        tiny_llama.encode(["rain", ""])


def test_nan_weights_raise_nonfinite(fresh_gpt2):
    assert torch.isfinite(text_pass(fresh_gpt2, ["the rain came"]).residuals).all()
    with torch.no_grad():
        fresh_gpt2.sites[1].weight[3, :] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN/inf"):
        text_pass(fresh_gpt2, ["the rain came", "a cake"])
    with pytest.raises(NonFiniteError):
        text_pass(fresh_gpt2, ["the rain came"], neuron_stats=True)


# --- loading ----------------------------------------------------------------------------------------
def test_load_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load_model(tmp_path / "does-not-exist")
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        load_model(tmp_path / "model.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="folder without config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_model(tmp_path / "empty")


def test_load_unsupported_architecture(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=16).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="'bert' is not supported"):
        load_model(tmp_path)


def test_load_folder_and_stable_hash(tiny_model_dir, tokenizer):
    a = load_model(tiny_model_dir)
    b = load_model(str(tiny_model_dir))
    assert (a.n_layers, a.d_ff, a.d_model) == (3, 48, 32)
    assert a.family.name == "llama" and a.model_id == str(tiny_model_dir)
    assert a.dtype == torch.float32 and a.device.type == "cpu"
    assert a.weights_hash == b.weights_hash
    assert len(a.weights_hash) == 32
    # the same weights as the model that was saved, and different from another seed
    saved = build_tiny("llama", tokenizer, seed=1)
    assert saved.weights_hash == a.weights_hash
    assert build_tiny("llama", tokenizer, seed=0).weights_hash != a.weights_hash
    assert a.counter.forward == 0  # the adapter check is not counted
    torch.testing.assert_close(_forward(a), _forward(saved), atol=1e-5, rtol=0)
    assert a.counter.forward == 1


def test_text_passes_keep_a_token_budget(tiny_llama):
    """One long text among short ones runs alone instead of padding every text to its length; the
    results are those of one text at a time."""
    from neat_llm.concepts.representations import text_pass, token_batches

    short = [f"the cat sat {i}" for i in range(11)]
    long = " ".join(["rain falls on the hill"] * 5)
    texts = short[:5] + [long] + short[5:]
    n_long = len(tiny_llama.tokenizer(long)["input_ids"])
    n_short = max(len(tiny_llama.tokenizer(t)["input_ids"]) for t in short)
    assert 3 * n_short < n_long < tiny_llama.max_length
    budget = 2 * n_long
    groups = token_batches(tiny_llama, texts, batch_size=16, tokens_per_batch=budget)
    assert sorted(i for g in groups for i in g) == list(range(12)) and [5] in groups
    shapes = []
    original = tiny_llama.encode

    def spy(batch, **kw):
        enc = original(batch, **kw)
        shapes.append(tuple(enc["input_ids"].shape))
        return enc

    tiny_llama.encode = spy
    try:
        batched = text_pass(tiny_llama, texts, batch_size=16, tokens_per_batch=budget)
    finally:
        del tiny_llama.encode
    assert all(b * t <= budget for b, t in shapes) and (1, n_long) in shapes
    assert max(t for b, t in shapes if b > 1) < n_long  # no short text was padded to the long one
    one = text_pass(tiny_llama, texts, batch_size=1)
    torch.testing.assert_close(batched.residuals, one.residuals, rtol=1e-4, atol=1e-4)
    assert torch.equal(batched.lengths, one.lengths)


def test_slot_cache_writes_each_row_at_its_own_length_and_attends_to_exactly_its_keys(tiny_llama):
    """models/slot_cache: two prefills of different lengths filled into slots (each row repeated for
    its samples; only the written places compared: the slots start uncleared), a step that writes
    every row's key at its own length, rows moved between slots;
    the slot attention of a step equals the family's attention over each row's keys alone."""
    from transformers import DynamicCache

    from neat_llm.models.slot_cache import SlotCache, SlotGroup

    hf = tiny_llama.hf
    enc = [tiny_llama.encode([t]) for t in ("the rain came over the hills", "a cake")]
    cache = SlotCache(tiny_llama.n_layers, slots=8, capacity=16)
    pres = []
    with torch.inference_mode():
        for i, e in enumerate(enc):  # prompt i in slots 4i.. (two rows each, one per "sample")
            pre = DynamicCache()
            hf(**e, cache=pre, use_cache=True)
            cache.fill(4 * i, pre, repeats=2)
            pres.append(pre)
        n = [e["input_ids"].shape[1] for e in enc]
        k0 = cache.layers[0].keys
        assert torch.equal(k0[0, :, :n[0]], pres[0].layers[0].keys[0]) and torch.equal(k0[1, :, :n[0]], k0[0, :, :n[0]])
        assert torch.equal(k0[5, :, :n[1]], pres[1].layers[0].keys[0])
        slots, lengths = torch.tensor([0, 1, 4, 5]), torch.tensor([n[0], n[0], n[1], n[1]])
        nxt = torch.tensor([[7], [9], [7], [11]])
        groups = [SlotGroup(slice(0, 2), 0, n[0] + 1), SlotGroup(slice(2, 4), 4, n[1] + 1)]
        with cache.step(hf, slots, lengths, groups):
            got = hf(input_ids=nxt, position_ids=lengths[:, None], cache=cache, use_cache=True).logits[:, -1]
        for r, (i, s) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):  # each row alone: prompt, then its token
            ids = torch.cat([enc[i]["input_ids"][0], nxt[r]])[None]
            alone = hf(input_ids=ids).logits[0, -1]
            torch.testing.assert_close(got[r], alone, atol=1e-5, rtol=1e-5)
        assert hf.config._attn_implementation != "neat_slots"  # switched back after the step
        assert torch.equal(cache.layers[0].keys[1, :, :n[0]], k0[0, :, :n[0]])  # the prompt's keys untouched
        row1 = cache.layers[0].keys[1, :, :n[0] + 1].clone()
        cache.move(torch.tensor([1]), torch.tensor([2]), n[0] + 1)
        assert torch.equal(cache.layers[0].keys[2, :, :n[0] + 1], row1)
        with pytest.raises(RuntimeError, match="inside SlotCache.step"):
            cache.layers[0].update(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))
        with pytest.raises(ValueError, match="capacity"):
            with cache.step(hf, slots, torch.full((4,), 16), groups):
                pass
