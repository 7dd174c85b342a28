"""Position-restricted NEAT: turn a neuron off at the read position t* (the last token) only.

score_read(l, k) = sum_x w_x [ S(x) - S(x | do(a_{l,k}(t*) = v_k)) ]

Turning neuron k off at t* only leaves the residual stream at every position t < t* unchanged, so
in every later block only position t* has to be recomputed, attending over the clean keys and
values of the earlier positions. The clean run is split in two with the model's own KV cache:
one forward over positions < t* fills a ``transformers`` ``DynamicCache``; a second, one-token
forward at t* records each block's call (rotary tables, mask, cache position ...), input, output
and neuron activations. A replica batch then goes through blocks l+1..l* as [C, 1, d] with a copy
of the prefix cache (its keys/values broadcast to C rows): the same HF attention, one query.

Where a family's blocks cannot be replayed through the cache (the one-token replay does not give
back the clean S), or the text has one token, the sweep falls back to re-running every position
with the edit at t* only (same numbers, the all-position cost).

Cost: per neuron and probe text, one one-token pass through blocks l+1..l* (counted as a partial
forward), plus one clean forward per probe text (split into the prefix and the last token).
"""

from __future__ import annotations

import copy
import warnings

import torch

from ..interventions.types import BlockEdit
from ..hooks import capture_calls, capture_inputs, capture_outputs, edit_inputs, run_until, stop_after
from ..models.loaded import LoadedModel
from .blocks import call_block, replica_drop


def _is_cache(x) -> bool:
    from transformers.cache_utils import Cache

    return isinstance(x, Cache)


class ReadPositionCache:
    """A probe text's clean run split at the read position, for blocks 0..l*.

    prefix: the DynamicCache after positions 0..T-2 (None when the KV path is not used);
    calls[l]: (args, kwargs) of block l in the one-token call at t*; block_in[l], block_out[l]:
    [1, 1, d]; acts[l]: [1, 1, d_ff] (all at t*); s_clean: S of the clean text.
    ``kv``: True when the one-token replay through the cache reproduces the clean S (checked here)."""

    def __init__(self, model: LoadedModel, text: str, readout_layer: int, vector: torch.Tensor,
                 full_block_out: torch.Tensor, s_clean: float, kv: bool = True, pool: str = "last"):
        from transformers import DynamicCache

        self.vector = vector.to(full_block_out.device, model.dtype)
        self.s_clean = s_clean
        self.pool = pool
        self.n_tokens = int(full_block_out.shape[1])
        self.kv = False
        enc = model.encode([text])
        T = int(enc["input_ids"].shape[1])
        if not kv or T < 2:
            return
        top = readout_layer
        blocks = {l: model.blocks[l] for l in range(top + 1)}
        sites = {l: model.sites[l] for l in range(top + 1)}
        try:
            with torch.inference_mode():
                cache = DynamicCache(config=model.hf.config)
                with stop_after(model.blocks[top]):
                    run_until(lambda: model.forward({"input_ids": enc["input_ids"][:, :-1],
                                                     "attention_mask": enc["attention_mask"][:, :-1]}, cache=cache,
                                                    use_cache=True))
                self.prefix = copy.deepcopy(cache)  # the one-token call below appends to ``cache``
                with capture_calls(blocks) as calls, capture_outputs(blocks) as outs, capture_inputs(sites) as acts, \
                        stop_after(model.blocks[top]):
                    run_until(lambda: model.forward({"input_ids": enc["input_ids"][:, -1:],
                                                     "attention_mask": enc["attention_mask"]}, cache=cache, use_cache=True))
        except (TypeError, ValueError, RuntimeError, AttributeError) as err:  # a family without a usable cache path
            warnings.warn(f"{model.model_id}: the one-token KV-cache replay failed ({err}); position-restricted "
                          "scores re-run every position instead", stacklevel=3)
            return
        if any(len(calls[l]) != 1 for l in blocks):
            return
        self.calls = {l: calls[l][0] for l in blocks}
        self.block_out = {l: outs[l][0] for l in blocks}
        self.acts = {l: acts[l][0] for l in blocks}
        args, kwargs = self.calls[0]
        self.block_in = {l: (self.calls[l][0][0] if self.calls[l][0] else self.calls[l][1]["hidden_states"])
                         for l in blocks}
        # the replay must give back the clean forward's last position, else this family cannot use it
        want = full_block_out[0, -1].float()
        got = self.block_out[top][0, -1].float()
        tol = 1e-4 if model.dtype in (torch.float32, torch.float64) else 2e-2
        if not torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max())):
            warnings.warn(f"{model.model_id}: the one-token KV-cache replay differs from the full forward by "
                          f"{float((got - want).abs().max()):.3g}; position-restricted scores re-run every position "
                          "instead", stacklevel=3)
            return
        self.kv = True

    def replay_call(self, layer: int, C: int, cache) -> tuple[tuple, dict]:
        """Block ``layer``'s recorded call with its cache argument replaced by ``cache``."""
        args, kwargs = self.calls[layer]
        args = tuple(cache if _is_cache(a) else a for a in args)
        kwargs = {k: (cache if _is_cache(v) else v) for k, v in kwargs.items()}
        return args, kwargs

    def replica_cache(self, layers: range, C: int):
        """A copy of the prefix cache whose layers in ``layers`` hold the clean keys/values broadcast
        to C rows ([C, heads, T-1, head_dim] views, no copy); the original stays untouched."""
        rep = copy.copy(self.prefix)
        rep.layers = list(self.prefix.layers)
        for j in layers:
            lay = copy.copy(self.prefix.layers[j])
            if getattr(lay, "keys", None) is not None and lay.keys.numel():
                lay.keys = lay.keys.expand(C, *lay.keys.shape[1:])
                lay.values = lay.values.expand(C, *lay.values.shape[1:])
            rep.layers[j] = lay
        return rep


def read_block_effect(model: LoadedModel, rc: ReadPositionCache, l: int, top: int, ks: torch.Tensor,
                      off: BlockEdit) -> torch.Tensor:
    """S_clean - S_off [C] for neurons ``ks`` [C] of block ``l`` turned off at t* only, through the
    KV-cache path: C one-token replicas through blocks l..top."""

    C = len(ks)
    cache = rc.replica_cache(range(l, top + 1), C)
    if model.family.mlp_output_direct:
        shift = off.at(ks).delta(rc.acts[l][0, -1, ks])  # [C]
        h = rc.block_out[l] + shift[:, None, None] * model.weight_out(l)[ks][:, None, :]  # [C, 1, d]
    else:
        rows = torch.arange(C, device=ks.device)

        e = off.at(ks)
        e = BlockEdit(e.scale[:, None], e.shift[:, None])

        def edit(_key, x):  # x: [C, 1, d_ff]
            x = x.clone()
            x[rows, :, ks] = e.apply(x[rows, :, ks])
            return x

        with edit_inputs({l: model.sites[l]}, edit):
            h = call_block(model, l, rc.block_in[l].expand(C, -1, -1), rc.replay_call(l, C, cache))
    for j in range(l + 1, top + 1):
        h = call_block(model, j, h, rc.replay_call(j, C, cache))
    s_off = h[:, -1].float() @ rc.vector.to(h.device).float()
    if rc.pool == "mean":  # only the last of the T positions changed: S moves by 1/T of its change there
        s_last = rc.block_out[top][0, -1].float() @ rc.vector.to(h.device).float()
        s_off = rc.s_clean + (s_off - s_last) / rc.n_tokens
    return replica_drop(model, rc.s_clean, s_off, l)
