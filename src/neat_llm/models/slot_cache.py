"""A KV cache of fixed slots for a decoding loop whose rows start, end and stand at different
lengths (continuous batching), and the attention that reads it without padding.

Every row of a step owns a slot of ``[slots, kv_heads, capacity, head_dim]`` per layer, its keys
and values at positions 0..n-1 (nothing padded). A step writes each row's new key and value at its
own length. Its attention runs, for each *group* (rows in consecutive slots at the same length),
the family's own attention function (``sdpa``, ``eager``, ... whatever the model was loaded with,
softcapping and sliding windows included) on exactly those rows' keys, with no mask: the numbers
each prompt gets decoded alone, whichever other rows share the step (tested against ``generate``
on every family). A loop fills the slots from an ordinary prefill cache (``SlotCache.fill``),
moves rows (``move``: a finished row's slot refilled by a running one) and steps inside
``SlotCache.step``, which switches the model's attention to this one for that call only.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

ATTENTION = "neat_slots"  # the name the slot attention is registered under in transformers' AttentionInterface


@dataclass(frozen=True)
class SlotGroup:
    """Rows ``rows`` (a slice of the step's batch) in slots ``first_slot``.., each with ``n`` keys
    (this step's included)."""

    rows: slice
    first_slot: int
    n: int


class SlotLayer(DynamicLayer):
    """One layer's keys and values by slot; ``update`` writes a step's new ones at each row's
    length (the cache's current step) and returns the whole buffers (the attention reads groups)."""

    def __init__(self, owner: "SlotCache"):
        super().__init__()
        self.owner = owner

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        step = self.owner.current
        if step is None or key_states.shape[-2] != 1:
            raise RuntimeError("a SlotCache is read one token per row, inside SlotCache.step")
        slots, at = step
        self.owner.allocate(self, key_states, value_states)
        self.keys[slots, :, at] = key_states[:, :, 0]
        self.values[slots, :, at] = value_states[:, :, 0]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.owner.longest


class SlotCache(DynamicCache):
    """``slots`` rows of up to ``capacity`` tokens per layer (allocated at the first ``fill``)."""

    def __init__(self, n_layers: int, slots: int, capacity: int):
        super().__init__()
        self.n_slots, self.capacity = int(slots), int(capacity)
        self.layers = [SlotLayer(self) for _ in range(n_layers)]
        self.current: tuple[torch.Tensor, torch.Tensor] | None = None
        self.groups: Sequence[SlotGroup] = ()
        self.longest = 0

    def fill(self, first_slot: int, prefill: DynamicCache, repeats: int) -> None:
        """Slots ``first_slot``.. take the rows of ``prefill`` (a cache of n tokens per row), each
        row ``repeats`` times in a row (a prompt's prefill under each condition, copied for its samples)."""
        for mine, theirs in zip(self.layers, prefill.layers, strict=True):
            k, v = theirs.keys, theirs.values
            self.allocate(mine, k, v)
            rows, n = k.shape[0], k.shape[-2]
            if first_slot + rows * repeats > self.n_slots or n >= self.capacity:
                raise ValueError(f"{rows * repeats} rows of {n} tokens do not fit slots {first_slot}.. "
                                 f"of {self.n_slots} x {self.capacity}")
            for buf, src in ((mine.keys, k), (mine.values, v)):
                dst = buf[first_slot:first_slot + rows * repeats, :, :n]
                dst.view(rows, repeats, *dst.shape[1:]).copy_(src[:, None])
        self.longest = max(self.longest, prefill.get_seq_length())

    def allocate(self, layer: SlotLayer, k: torch.Tensor, v: torch.Tensor) -> None:
        """``layer``'s buffers, shaped after keys ``k`` and values ``v`` [rows, heads, n, dim], once,
        not cleared: a slot's tokens are read only where they were written (``fill``, ``update``,
        ``move``), and clearing a budget's worth of slots (gigabytes) cost a tenth of a decoding run."""
        if not layer.is_initialized:
            layer.keys = k.new_empty(self.n_slots, k.shape[1], self.capacity, k.shape[-1])
            layer.values = v.new_empty(self.n_slots, v.shape[1], self.capacity, v.shape[-1])
            layer.is_initialized, layer.device = True, k.device

    def move(self, source: torch.Tensor, target: torch.Tensor, n: int) -> None:
        """Rows in slots ``source`` to slots ``target`` (disjoint sets), their first ``n`` tokens."""
        if len(source):
            for layer in (l for l in self.layers if l.is_initialized):
                for buf in (layer.keys, layer.values):
                    buf[target, :, :n] = buf[source, :, :n]

    @contextmanager
    def step(self, model, slots: torch.Tensor, lengths: torch.Tensor, groups: Sequence[SlotGroup]) -> Iterator[None]:
        """Inside: one forward pass of one new token per row reads and writes this cache; row r
        sits in slot ``slots[r]`` with ``lengths[r]`` tokens already cached, and ``groups`` cover
        the rows in order. ``model`` (the Hugging Face model) attends with the slot attention."""
        if int(lengths.max()) >= self.capacity:
            raise ValueError(f"a row would pass the cache's capacity of {self.capacity} tokens")
        self.current, self.groups = (slots, lengths), tuple(groups)
        self.longest = max(self.longest, int(lengths.max()) + 1)
        config = model.config
        before = config._attn_implementation
        _ACTIVE.append((self, before))
        config._attn_implementation = ATTENTION
        try:
            yield
        finally:
            config._attn_implementation = before
            _ACTIVE.pop()
            self.current, self.groups = None, ()


_ACTIVE: list[tuple[SlotCache, str]] = []  # the cache of the step under way and the model's own attention


def _family_attention(module, implementation: str):
    """The attention function the module runs under ``implementation`` (its own eager one by default)."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager)


def slot_attention(module, query, key, value, attention_mask, **kwargs):
    """The registered attention: per group, the family's own attention over exactly its rows' keys."""
    if not _ACTIVE:
        raise RuntimeError(f"the {ATTENTION!r} attention runs only inside SlotCache.step")
    cache, implementation = _ACTIVE[-1]
    inner = _family_attention(module, implementation)
    window = kwargs.get("sliding_window") or None
    outs = []
    for g in cache.groups:
        lo = max(0, g.n - window) if window else 0
        s = slice(g.first_slot, g.first_slot + (g.rows.stop - g.rows.start))
        out, _ = inner(module, query[g.rows], key[s, :, lo:g.n], value[s, :, lo:g.n], None, **kwargs)
        outs.append(out)
    return torch.cat(outs, 0), None


AttentionInterface.register(ATTENTION, slot_attention)
