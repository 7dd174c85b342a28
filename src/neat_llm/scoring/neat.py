"""NEAT: score every neuron with one (partial) pass per probe text, O(n) in the number of neurons.

score(l, k) = sum_{x in X*} w_x [ S(x) - S(x | do(a_{l,k} = v_k)) ]   (v_k = 0 or the neuron's mean)

How it is computed (same numbers as ``reference.ReferenceScorer``, to float tolerance):
1. One forward per probe text caches, for every block up to the reading layer l*, the block's
   input, its call arguments (masks, rotary embeddings ...) and its output, and the neuron
   activations. The forward stops after block l*: no later blocks, no unembedding.
2. For block l, C neurons are turned off at once: the probe is replicated C times along the batch,
   replica c with neuron k_c off at every position. Where the MLP output enters the residual
   stream unnormalised (Llama, GPT-2, NeoX ...), block l need not run again: its output changes by
   exactly (v_k - a_k) * W_out[:, k]. Otherwise block l re-runs with a per-replica mask.
3. Only blocks l+1..l* run on the replicas; S is read at the last token of block l*'s output.
Neurons of blocks after l* score exactly 0.

Cost: per neuron and probe text, one pass through blocks l+1..l* (counted as one partial forward),
plus one forward per probe text for the cache. Batches hold a multiple of 64 replicas where they
can (``ROW_BLOCK``): a block of 64 neurons or more whose size is not one pads its last batch, and the
padding is counted (no such block in the embedded models).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..allocator import keep_freed_memory
from ..concepts.representations import check_finite
from ..interventions.types import BlockEdit
from ..hooks import (capture_calls, capture_inputs, capture_outputs, edit_inputs, last_position_only, run_until,
                     stop_after)
from ..models.adapters import get_module
from ..models.loaded import LoadedModel
from .base import Scorer, ScoringTask
from .blocks import call_block, replica_drop
from .positions import ReadPositionCache, read_block_effect


class ProbeCache:
    """Everything one probe text's clean forward leaves behind, for blocks 0..l*.

    block_in[l], block_out[l]: [1, T, d_model]; acts[l]: [1, T, d_ff]; calls[l]: (args, kwargs) the
    model passed to block l; s_clean: S of the unmodified text, read at the last token
    (``pool="last"``) or averaged over the tokens (``pool="mean"``)."""

    def __init__(self, model: LoadedModel, text: str, readout_layer: int, vector: torch.Tensor, pool: str = "last"):
        if pool not in ("last", "mean"):
            raise ValueError(f"pool must be 'last' or 'mean', got {pool!r}")
        self.pool = pool
        enc = model.encode([text])
        blocks = {l: model.blocks[l] for l in range(readout_layer + 1)}
        sites = {l: model.sites[l] for l in range(readout_layer + 1)}
        with torch.inference_mode(), capture_calls(blocks) as calls, capture_outputs(blocks) as outs, \
                capture_inputs(sites) as acts, stop_after(model.blocks[readout_layer]):
            run_until(lambda: model.forward(enc))
        self.calls = {l: calls[l][0] for l in blocks}
        self.block_out = {l: outs[l][0] for l in blocks}
        self.acts = {l: acts[l][0] for l in blocks}
        self.n_tokens = int(enc["input_ids"].shape[1])
        self.vector = vector.to(self.block_out[readout_layer].device, model.dtype)  # where the reading block runs
        self.s_clean = float(read_s(self.block_out[readout_layer], self.vector, pool)[0])
        check_finite(self.block_out[readout_layer], "the clean forward of a probe text")

    def block_input(self, layer: int) -> torch.Tensor:
        args, kwargs = self.calls[layer]
        return args[0] if args else kwargs["hidden_states"]


def read_s(h: torch.Tensor, vector: torch.Tensor, pool: str) -> torch.Tensor:
    """S of each row of h [C, T, d]: the last position's residual (``"last"``) or the mean over the
    positions (``"mean"``; a probe is one unpadded text) projected on ``vector``: [C] float32."""
    x = h[:, -1] if pool == "last" else h.float().mean(1)
    return x.float() @ vector.to(h.device).float()


def call_block_last(model: LoadedModel, j: int, h: torch.Tensor, call: tuple[tuple, dict]) -> torch.Tensor:
    """Block ``j`` on h [C, T, d] where only the last position of the output is read: its MLP runs
    on the last position alone (a pre-hook slices its input to [C, 1, d]; the residual add then
    broadcasts, so positions < T-1 of the returned tensor are not the block's output and must not
    be used). The MLP is ~3/4 of a block's FLOPs. Attention still runs on every position."""
    mlp = get_module(model.blocks[j], model.family.site.rsplit(".", 1)[0])
    with last_position_only(mlp):
        return call_block(model, j, h, call)


def finish_replicas(model: LoadedModel, cache: ProbeCache, l: int, top: int, h: torch.Tensor,
                    compiled: bool = False) -> torch.Tensor:
    """Run replicas h [C, T, d] (the output of block ``l``) through blocks l+1..top, read S (at the
    last token or averaged over the tokens, as the cache's ``pool``) and return S_clean - S_off: [C].
    Counts one partial forward per replica. When S is read at the last token, block ``top``
    computes its MLP at the last position only (``call_block_last``); the blocks before it go
    through ``call_block`` (compiled with ``compiled``).

    ``h`` is made contiguous first: a replica batch built by broadcasting can come out in a
    position-major layout, and a linear layer on a [C, T, d] input whose batch dimensions cannot be
    flattened without a copy runs as a batched matmul against C broadcast copies of the weight
    (``aten::bmm``, ~2.5x slower than one ``mm`` here)."""
    h = h.contiguous()
    for j in range(l + 1, top + 1):
        if j == top and h.shape[1] > 1 and cache.pool == "last":
            h = call_block_last(model, j, h, cache.calls[j])
        else:
            h = call_block(model, j, h, cache.calls[j], compiled)
    return replica_drop(model, cache.s_clean, read_s(h, cache.vector, cache.pool), l)


class NeatScorer(Scorer):
    """NEAT (batched exact ablation sweep). ``tokens_per_batch`` bounds C * T, the replica batch.

    ``positions``: ``"all"`` turns a neuron off at every position (the method's default);
    ``"read"`` only at the read position (the last token), replayed through the model's KV cache
    (see ``positions.py``): about T times cheaper, a different (position-restricted) score.
    ``compile``: run the replayed blocks through ``torch.compile`` (all-position sweep; one compile
    per process, tens of seconds on a CPU, so it pays off on full sweeps only)."""

    name = "neat"
    probe_based = takes_positions = scores_an_effect = takes_token_budget = True
    shardable = True

    def __init__(self, tokens_per_batch: int = 4096, positions: str = "all", kv_cache: bool = True,
                 compile: bool = False):
        if positions not in ("all", "read"):
            raise ValueError(f"positions must be 'all' or 'read', got {positions!r}")
        self.tokens_per_batch = tokens_per_batch
        self.positions = positions
        self.kv_cache = kv_cache
        self.compile = compile

    def params(self) -> dict:
        out = {"tokens_per_batch": self.tokens_per_batch, "positions": self.positions}
        if self.positions == "read" and not self.kv_cache:
            out["kv_cache"] = False
        if self.compile:
            out["compile"] = True
        return out

    def pending(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor,
                per_probe: torch.Tensor | None = None) -> dict[int, list[int]]:
        """The blocks up to the reading layer not done yet; blocks after it score exactly 0 (no pass)."""
        top = task.readout.layer
        for l in task.layers:
            if l > top:  # cannot reach the reading layer
                scores[l, task.neurons_of(l, model.d_ff)] = 0.0
                if per_probe is not None:
                    per_probe[:, l, task.neurons_of(l, model.d_ff)] = 0.0
        return super().pending(model, replace(task, layers=[l for l in task.layers if l <= top]), scores, per_probe)

    # the most one-token replicas a batch of the KV-cache replay holds: a batch of 512 runs as fast per
    # replica as one of a whole block (1,536 on SmolLM2, measured), and a block swept in part (exact_top,
    # padded to the whole sweep's batch sizes) pays at most one batch of 512, not of the whole block
    KV_REPLICAS = 512

    def replicas_per_batch(self, n_tokens: int, kv: bool | None = None) -> int:
        """C: how many neurons of a block one batch turns off (replicas of a probe of ``n_tokens``
        tokens; one token each when the read position is replayed through the KV cache)."""
        kv = self.positions == "read" and self.kv_cache if kv is None else kv
        c = min(self.tokens_per_batch, self.KV_REPLICAS) if kv else self.tokens_per_batch // n_tokens
        return c - c % ROW_BLOCK if c >= ROW_BLOCK else max(1, c)

    def batch_unit(self, model: LoadedModel, task: ScoringTask) -> int:
        """The lcm of every probe's C: a work unit cut at a multiple of it runs the sweep's own batches."""
        unit = 1
        for text in task.probes.texts:
            unit = math.lcm(unit, self.replicas_per_batch(int(model.encode([text])["input_ids"].shape[1])))
        return unit

    gives_per_probe = True

    @torch.inference_mode()
    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor,
               per_probe: torch.Tensor | None = None) -> None:
        top = task.readout.layer
        d_ff = model.d_ff
        todo = self.pending(model, task, scores, per_probe)
        if task.on_progress:  # blocks after the reading layer and resumed blocks: no pass
            task.on_progress(task.n_selected(model.n_layers, d_ff) - sum(len(v) for v in todo.values()))
        pending = sorted(todo)
        if not pending:
            return
        keep_freed_memory(model.device)
        caches = [ProbeCache(model, t, top, task.readout.vector, task.readout.pool) for t in task.probes.texts]
        if self.positions == "read":
            for c, t in zip(caches, task.probes.texts):
                c.read = ReadPositionCache(model, t, top, task.readout.vector, c.block_out[top], c.s_clean,
                                           kv=self.kv_cache, pool=task.readout.pool)
        for l in pending:
            idx = task.neurons_of(l, d_ff)
            row = torch.full((d_ff,), float("nan"))
            each = torch.full((len(caches), d_ff), float("nan"))  # each probe text's own effect
            if idx:
                row[idx] = 0.0
                off = task.edit_off(l, d_ff).to(model.block_device(l), model.dtype)
                for p, (cache, w) in enumerate(zip(caches, task.probes.weights)):
                    each[p, idx] = self._block_effect(model, cache, l, top, idx, off, task)
                    row[idx] += w * each[p, idx]
            scores[l] = row
            if per_probe is not None:
                per_probe[:, l] = each
            if task.on_layer_done:
                task.on_layer_done(l, row.clone(), each)

    def _block_effect(self, model, cache: ProbeCache, l: int, top: int, idx: list[int], off: BlockEdit,
                      task) -> torch.Tensor:
        """S_clean - S_off for each neuron in ``idx`` of block ``l`` on one probe text: [len(idx)].
        Each neuron runs in a batch of the size the whole sweep gives it (``batches``)."""
        read = self.positions == "read"
        kv = read and cache.read.kv
        chunk = self.replicas_per_batch(cache.n_tokens, kv)
        out = torch.empty(len(idx))
        w_out = model.weight_out(l)  # [d_ff, d]
        # read position only: every position but the last keeps its clean value
        at = slice(-1, None) if read else slice(None)
        for where, size in batches(idx, task.whole_sweep_of(l, model.d_ff), chunk):
            n = len(where)
            ks = torch.tensor([idx[i] for i in where] + [idx[where[-1]]] * (size - n), device=off.scale.device)
            C = len(ks)
            if kv:
                got = read_block_effect(model, cache.read, l, top, ks, off)
            else:
                if model.family.mlp_output_direct:
                    e = off.at(ks)
                    shift = BlockEdit(e.scale[:, None], e.shift[:, None]).delta(cache.acts[l][0][at, ks].T)  # [C, T or 1]
                    delta = shift[:, :, None] * w_out[ks][:, None, :]  # [C, T or 1, d]
                    if read:
                        h = cache.block_out[l].expand(C, -1, -1).clone()
                        h[:, -1:] += delta
                    else:
                        h = cache.block_out[l] + delta  # [C, T, d]
                else:
                    h = self._rerun_block(model, cache, l, ks, off, at)
                got = finish_replicas(model, cache, l, top, h, self.compile)
            out[torch.tensor(where)] = got[:n]
            if task.on_progress:
                task.on_progress(n / len(task.probes.texts))
        return out

    @staticmethod
    def _rerun_block(model, cache: ProbeCache, l: int, ks: torch.Tensor, off: BlockEdit,
                     at: slice = slice(None)) -> torch.Tensor:
        C = len(ks)
        rows = torch.arange(C, device=ks.device)
        e = off.at(ks)
        e = BlockEdit(e.scale[:, None], e.shift[:, None])

        def edit(_key, x):  # x: [C, T, d_ff]; replica c gets neuron ks[c] turned off at positions ``at``
            x = x.clone()
            x[rows, at, ks] = e.apply(x[rows, at, ks])
            return x

        h_in = cache.block_input(l).expand(C, -1, -1).contiguous()  # see finish_replicas on layouts
        with edit_inputs({l: model.sites[l]}, edit):
            return call_block(model, l, h_in, cache.calls[l])


# Batches of a multiple of 64 replicas leave no rows to a matrix kernel's edge tiles, which round
# otherwise: a neuron's effect then depends on its batch's size alone, not on the other neurons in the
# batch or its place there (measured on SmolLM2, every position and the KV-cache replay), so a sweep
# over part of a block padded to the whole sweep's batch sizes gives its numbers bit for bit.
ROW_BLOCK = 64


def batches(idx: list[int], whole: list[int], chunk: int) -> list[tuple[list[int], int]]:
    """The batches that give each neuron of ``idx`` the batch size a sweep of ``whole`` (chunks of
    ``chunk`` neurons in its order, the last one smaller, rounded up to a multiple of ``ROW_BLOCK``
    when ``chunk`` is one) gives it: (positions in ``idx``, batch size); a batch holding fewer
    neurons than its size is padded. With ``idx == whole``: the whole sweep's own batches."""
    where = {k: i for i, k in enumerate(whole)}
    missing = [k for k in idx if k not in where]
    if missing:
        raise ValueError(f"neurons {missing[:5]} are not among the whole sweep's neurons of their block")
    cut = len(whole) - len(whole) % chunk  # neurons from here on run in the whole sweep's last, smaller batch
    full = [i for i, k in enumerate(idx) if where[k] < cut]
    tail = [i for i, k in enumerate(idx) if where[k] >= cut]
    out = [(full[s:s + chunk], chunk) for s in range(0, len(full), chunk)]
    rest = len(whole) - cut
    if chunk % ROW_BLOCK == 0 and len(whole) >= ROW_BLOCK:  # (a block under 64 neurons: one batch, as it is)
        rest = min(chunk, -(-rest // ROW_BLOCK) * ROW_BLOCK)
    return out + ([(tail, rest)] if tail else [])


@torch.inference_mode()
def group_effects(model: LoadedModel, cache: ProbeCache, l: int, top: int, masks: torch.Tensor, off: BlockEdit,
                  tokens_per_batch: int = 4096) -> torch.Tensor:
    """S_clean - S_off on one probe text when each group of neurons of block ``l`` is turned off
    together: masks [G, d_ff] (1 = off), ``off`` [d_ff] what they become. Returns [G].
    One partial pass per group; the same two paths (fused shift / block re-run) as single neurons."""
    T = cache.n_tokens
    chunk = max(1, tokens_per_batch // T)
    masks = masks.to(model.block_device(l), model.dtype)
    out = torch.empty(len(masks))
    for s in range(0, len(masks), chunk):
        M = masks[s:s + chunk]  # [C, d_ff]
        C = len(M)
        if model.family.mlp_output_direct:
            shift = off.delta(cache.acts[l][0])  # [T, d_ff]
            h = cache.block_out[l] + (M[:, None, :] * shift[None]) @ model.weight_out(l)  # [C, T, d]
        else:
            def edit(_key, x, M=M):
                keep = M[:, None, :].bool()
                return torch.where(keep, off.apply(x), x)

            with edit_inputs({l: model.sites[l]}, edit):
                h = call_block(model, l, cache.block_input(l).expand(C, -1, -1), cache.calls[l])
        out[s:s + C] = finish_replicas(model, cache, l, top, h)
    return out
