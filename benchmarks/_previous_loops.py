"""The sampling paths this project ran before its decoding loop of 2026-12-06
(``neat_llm.evaluation.decoding``), kept here, unchanged, so ``bench_generation.py`` can time
them beside it in one run. Not part of the library.

- ``prefilled``: the prompts of a batch encoded once per condition (left padding), every token but
  the last read into a KV cache, then cache and ids repeated for each prompt's samples; the
  "shared prefill" both earlier paths start from.
- ``decode_jobs``: the loop of 2026-12-01: a (prompt, sample) job leaves the batch once it has
  ended under every condition (so the condition blocks stay equal), on a KV cache that grows in
  place (``GrowingLayer``), batches of whole prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from neat_llm.concepts.representations import repeat_rows
from neat_llm.evaluation.decoding import _continuation_logliks_on, _last_logits_only


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer with room for ``GROW`` more tokens after each reallocation;
    ``keys``/``values`` are views of the filled part ([B, H, n, D]). Reassigning them (as
    ``batch_select_indices``, ``batch_repeat_interleave`` and ``crop`` do) stores the given
    tensors as the new buffers, full to their length."""

    GROW = 64

    def __init__(self, **kwargs):
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._n = 0
        super().__init__(**kwargs)

    @property
    def keys(self):
        return self._k if self._k is None or self._k.dim() != 4 else self._k[..., :self._n, :]

    @keys.setter
    def keys(self, t):
        self._k = t
        self._n = t.shape[-2] if t is not None and t.dim() == 4 else 0

    @property
    def values(self):
        return self._v if self._v is None or self._v.dim() != 4 else self._v[..., :self._n, :]

    @values.setter
    def values(self, t):
        self._v = t

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, new = self._n, key_states.shape[-2]
        k = self._k
        if k is None or k.dim() != 4 or n + new > k.shape[-2] or k.shape[0] != key_states.shape[0]:
            b, h, _, d = key_states.shape
            grown_k = key_states.new_empty(b, h, n + new + self.GROW, d)
            grown_v = value_states.new_empty(b, h, n + new + self.GROW, value_states.shape[-1])
            if n:
                grown_k[..., :n, :] = self._k[..., :n, :]
                grown_v[..., :n, :] = self._v[..., :n, :]
            self._k, self._v = grown_k, grown_v
        self._k[..., n:n + new, :] = key_states
        self._v[..., n:n + new, :] = value_states
        self._n = n + new
        return self.keys, self.values


    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices``, spare room included (no reallocation at the next step)."""
        if self._k is not None and self._k.dim() == 4:
            self._k, self._v = self._k[indices], self._v[indices]


def growing_cache(config) -> DynamicCache:
    """transformers' cache for ``config`` with every plain full-attention layer a ``GrowingLayer``
    (sliding-window and other special layers stay as transformers builds them)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def prefilled(model, prompts: list[str], replicas: int, samples: int, cache=None,
               score: Sequence[Sequence[str]] = ()):
    """The prompts encoded once per condition (left padding), every token but the last read into a
    KV cache, then cache and ids repeated for each prompt's samples (condition-major, prompt-major,
    sample-minor: the rows ``sample_continuations_along`` generates). ``score``: sets of given
    continuations (one per prompt each) scored on the same prefill before it is repeated
    (``_continuation_logliks_on``): [len(score), replicas, len(prompts)] mean log p per token."""
    enc = repeat_rows(model.encode(prompts), replicas)
    cache = growing_cache(model.hf.config) if cache is None else cache
    mask = enc["attention_mask"][:, :-1]
    # positions as generate gives them (counted over the real tokens): without them a left-padded
    # prompt's tokens sit as many positions late as it has padding, and the tokens generate then
    # appends (placed by the mask) see the prompt at the wrong distance
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    model.forward({"input_ids": enc["input_ids"][:, :-1], "attention_mask": mask, "position_ids": positions},
                  cache=cache, use_cache=True, **_last_logits_only(model))
    scored = torch.stack([_continuation_logliks_on(model, enc, cache, prompts, conts, replicas) for conts in score]) \
        if score else None
    cache.batch_repeat_interleave(samples)
    return {k: v.repeat_interleave(samples, 0) for k, v in enc.items()}, cache, scored


def decode_jobs(model, enc: dict[str, torch.Tensor], cache, sampler, u: torch.Tensor,
            replicas: int, stop: Sequence[int]) -> list[list[int]]:
    """Our own decoding loop: ``enc``'s rows (``replicas`` equal condition blocks, left padded)
    continued on ``cache`` (every token but each row's last already read), one token per step,
    row r's step t drawn with ``u[r, t]``. A row ends on a token in ``stop`` (kept, as ``generate``
    keeps its end token); a (prompt, sample) job leaves the batch once its rows under every
    condition have ended, so the blocks stay equal (``conditions_along_batch``) while finished work
    stops costing decoding steps. Returns each row's new tokens."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    G, steps = replicas, u.shape[1]
    rows = torch.arange(ids.shape[0], device=ids.device)  # the original row of each row still in the batch
    ended = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    new: list[list[int]] = [[] for _ in range(ids.shape[0])]
    stop_t = torch.tensor(sorted(set(stop)), dtype=torch.long, device=ids.device)
    step = ids[:, -1:]
    for t in range(steps):
        positions = mask.long().sum(-1, keepdim=True) - 1  # where generate places the token read now
        logits = model.forward({"input_ids": step, "attention_mask": mask, "position_ids": positions},
                               cache=cache, use_cache=True).logits[:, -1]
        chosen = sampler.choose(logits, u[rows, t])
        live = ~ended[rows]
        for r, tok in zip(rows[live].tolist(), chosen[live].tolist()):
            new[r].append(tok)
        ended[rows[live & torch.isin(chosen, stop_t)]] = True
        jobs_left = (~ended[rows]).view(G, -1).any(0)  # [B]: a job runs while any condition's row runs
        if not bool(jobs_left.any()) or t == steps - 1:
            break
        step = chosen[:, None]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        if not bool(jobs_left.all()):
            keep = jobs_left.repeat(G).nonzero()[:, 0]
            cache.batch_select_indices(keep)
            rows, mask, step = rows[keep], mask[keep], step[keep]
    return new
