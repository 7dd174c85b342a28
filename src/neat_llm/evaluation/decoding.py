"""Our decoding loop: many prompts continued under G conditions at once, with as many rows per
step as a token budget holds (continuous batching), every row's numbers those of its prompt
decoded alone.

A *job* is one prompt under all G conditions with all its samples: G x samples rows. A job is
admitted when a block of that many slots of the KV cache (``models/slot_cache.py``) is free: its
prompt is read once per condition (G rows of the prompt alone, no padding, every token but the
last), the G caches are copied to the block, one per sample, and the given continuations are
scored on the same prefill. Each step then feeds every running row one token: the prompt's last
token first, then the token it drew, with row r's step-t token drawn with its own uniform
u[prompt, sample, t]; each row attends to exactly its own keys, and ``rows_under`` tells the
conditions' hooks which condition each row is under. A row leaves the batch when it ends (a stop
token, kept, as ``generate`` keeps its end token; or the last step); the block's running rows are
packed to its front (a finished row's slot taken by a running one from behind it), and a block
whose rows have all ended takes the next prompt. So no step computes a finished row or a pad, and
the steps stay as full as the budget allows while prompts remain.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Collection, Sequence

import torch
from transformers import DynamicCache

from ..allocator import keep_freed_memory
from ..concepts.representations import repeat_rows
from ..interventions import rows_under
from ..models.loaded import LoadedModel
from ..models.slot_cache import SlotCache, SlotGroup

DECODE_TOKENS = 65_536  # the KV cache's budget in tokens (slots x the longest prompt plus its new tokens)


def decode_prompts(model: LoadedModel, prompts: Sequence[str], replicas: int, samples: int, u: torch.Tensor,
                   choose, stop: Collection[int], *, tokens: int = DECODE_TOKENS,
                   score: Sequence[Sequence[str]] = ()) -> tuple[list[list[list[int]]], torch.Tensor | None]:
    """Each prompt's ``samples`` continuations under each of the ``replicas`` conditions open along
    the batch (``conditions_along_batch``), up to ``u.shape[-1]`` tokens, drawn by ``choose(logits
    [R, V], uniforms [R]) -> tokens [R]`` with ``u`` [prompts, samples, steps]. Returns (the new
    tokens [G][prompt * samples + sample], and with ``score`` the mean log p per token of each given
    continuation after its prompt, [len(score), G, prompts], read on the prompt's own prefill)."""
    G, P, steps = replicas, len(prompts), u.shape[-1]
    keep_freed_memory(model.device)  # every step allocates and frees its logits and the sampler's chunks (tens of MB)
    encs = [model.encode([p]) for p in prompts]
    unit = G * samples
    capacity = max(e["input_ids"].shape[1] for e in encs) + steps
    blocks = max(1, min(P, tokens // (capacity * unit)))  # no more blocks than prompts
    cache = SlotCache(model.n_layers, blocks * unit, capacity)
    free = list(range(blocks - 1, -1, -1))  # the free blocks, the lowest last (taken first)
    waiting = deque(range(P))
    out: list[list[list[int]]] = [[[] for _ in range(P * samples)] for _ in range(G)]
    scored = torch.zeros(len(score), G, P, dtype=torch.float64) if score else None
    stop_t = torch.tensor(sorted(set(stop)), dtype=torch.long)
    dev = model.device
    # the running rows, ordered by slot: slot, prompt, sample, condition, cached tokens, next token, tokens drawn
    rows = {k: torch.zeros(0, dtype=torch.long) for k in ("slot", "prompt", "sample", "cond", "length", "next", "drawn")}
    g_of = torch.arange(unit) // samples
    s_of = torch.arange(unit) % samples
    while waiting or len(rows["slot"]):
        while waiting and free:  # admit jobs into the free blocks
            p, b = waiting.popleft(), free.pop()
            enc = repeat_rows(encs[p], G)
            n = enc["input_ids"].shape[1] - 1
            if n:
                pre = DynamicCache()
                model.forward({"input_ids": enc["input_ids"][:, :-1], "attention_mask": enc["attention_mask"][:, :-1]},
                              cache=pre, use_cache=True, **_last_logits_only(model))
                for j, conts in enumerate(score):
                    scored[j, :, p] = _continuation_logliks_on(model, enc, pre, [prompts[p]],
                                                               [conts[p]], G)[:, 0]
                cache.fill(b * unit, pre, samples)
            elif score:
                raise ValueError(f"prompt {p} is one token: scoring a continuation needs a prompt of two or more")
            new = {"slot": b * unit + torch.arange(unit), "prompt": torch.full((unit,), p), "sample": s_of,
                   "cond": g_of, "length": torch.full((unit,), n),
                   "next": torch.full((unit,), int(enc["input_ids"][0, -1])), "drawn": torch.zeros(unit, dtype=torch.long)}
            rows = _sorted({k: torch.cat([rows[k], new[k]]) for k in rows})
        slot, length = rows["slot"], rows["length"]
        groups = _groups(slot, length, unit)
        with rows_under(model, rows["cond"]), cache.step(model.hf, slot.to(dev), length.to(dev), groups):
            logits = model.forward({"input_ids": rows["next"][:, None].to(dev),
                                    "position_ids": length[:, None].to(dev)}, cache=cache, use_cache=True).logits[:, -1]
        chosen = choose(logits, u[rows["prompt"], rows["sample"], rows["drawn"]]).cpu()
        for g, p, s, t in zip(rows["cond"].tolist(), rows["prompt"].tolist(), rows["sample"].tolist(), chosen.tolist()):
            out[g][p * samples + s].append(t)
        rows["next"], rows["length"], rows["drawn"] = chosen, length + 1, rows["drawn"] + 1
        ended = torch.isin(chosen, stop_t) | (rows["drawn"] >= steps)
        if bool(ended.any()):
            rows = {k: v[~ended] for k, v in rows.items()}
            rows = _packed(rows, cache, unit, free)
    return out, scored


def _sorted(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    order = torch.argsort(rows["slot"])
    return {k: v[order] for k, v in rows.items()}


def _groups(slot: torch.Tensor, length: torch.Tensor, unit: int) -> list[SlotGroup]:
    """The rows (ordered by slot, each block's rows packed to its front) cut where the block
    changes: one group per running job, its rows in consecutive slots at one length."""
    block = (slot // unit).tolist()
    cuts = [0] + [i for i in range(1, len(block)) if block[i] != block[i - 1]] + [len(block)]
    return [SlotGroup(slice(a, b), int(slot[a]), int(length[a]) + 1) for a, b in zip(cuts, cuts[1:])]


def _packed(rows: dict[str, torch.Tensor], cache: SlotCache, unit: int, free: list[int]) -> dict[str, torch.Tensor]:
    """Each block's running rows moved to the front of the block (a row behind the first gap takes
    the gap's slot, its cached tokens copied); a block with none left is freed (``free``, lowest last)."""
    slot = rows["slot"].clone()
    block = slot // unit
    source, target = [], []
    for b in block.unique().tolist():
        mine = (block == b).nonzero()[:, 0]
        place = slot[mine] - b * unit  # each row's place in its block
        count = len(mine)
        gaps = sorted(set(range(count)) - set(place.tolist()))
        behind = mine[place >= count]
        for r, gap in zip(behind.tolist(), gaps):
            source.append(int(slot[r]))
            target.append(b * unit + gap)
            slot[r] = b * unit + gap
    if source:
        longest = int(rows["length"].max())
        cache.move(torch.tensor(source), torch.tensor(target), longest)
    running = set(block.tolist())
    for b in range(cache.n_slots // unit):
        if b not in running and b not in free:
            free.append(b)
    free.sort(reverse=True)
    return _sorted({**rows, "slot": slot})


def _continuation_logliks_on(model: LoadedModel, enc: dict[str, torch.Tensor], cache, prompts: list[str],
                             continuations: Sequence[str], replicas: int) -> torch.Tensor:
    """Mean log p per token of continuation i after prompt i, read on a copy of ``cache`` (the
    prompts' tokens but the last, prefilled; ``enc`` their rows): only the
    prompt's last token and the continuation's tokens are run, and the unembedding only there.
    The tokens scored are those of prompt + continuation after the prompt's own tokens, as
    ``perplexity.continuation_logliks_along`` scores them; where the joint text's tokens do not start
    with the prompt's (a token merged across the boundary), that item is scored the plain way.
    Returns [replicas, len(prompts)]."""
    from .perplexity import continuation_logliks_along

    tok = model.tokenizer
    own = tok(list(prompts))["input_ids"]
    joint = tok([p + c for p, c in zip(prompts, continuations)])["input_ids"]
    tails = [j[len(o):] for o, j in zip(own, joint)]
    plain = [i for i, (o, j, t) in enumerate(zip(own, joint, tails)) if j[:len(o)] != o or not t]
    G, B = replicas, len(prompts)
    L = max(len(t) for t in tails)
    ids = torch.full((B, L), int(tok.pad_token_id if tok.pad_token_id is not None else 0), dtype=torch.long)
    new_mask = torch.zeros(B, L, dtype=enc["attention_mask"].dtype)
    for i, t in enumerate(tails):  # the prompt's last token, then the continuation's tokens but the last
        feed = [own[i][-1]] + t[:-1]
        ids[i, :len(feed)] = torch.tensor(feed)
        new_mask[i, :len(feed)] = 1
    ids, new_mask = ids.repeat(G, 1).to(enc["input_ids"].device), new_mask.repeat(G, 1).to(enc["input_ids"].device)
    mask = torch.cat([enc["attention_mask"][:, :-1], new_mask], dim=1)
    positions = (enc["attention_mask"][:, :-1].long().sum(-1, keepdim=True) + torch.arange(L, device=ids.device)[None])
    logits = model.forward({"input_ids": ids, "attention_mask": mask, "position_ids": positions},
                           cache=copy.deepcopy(cache), use_cache=True).logits.float()  # [G*B, L, V]
    target = torch.zeros(B, L, dtype=torch.long)
    for i, t in enumerate(tails):
        target[i, :len(t)] = torch.tensor(t, dtype=torch.long)
    target = target.repeat(G, 1).to(logits.device)
    ll = logits.gather(-1, target[..., None]).squeeze(-1) - logits.logsumexp(-1)  # [G*B, L]
    ll = ll.masked_fill(new_mask == 0, 0.0).double().sum(-1) / new_mask.sum(-1).clamp(min=1)
    out = ll.reshape(G, B).cpu()
    if plain:  # the few items whose tokens cross the boundary: the plain reference
        out[:, plain] = continuation_logliks_along(model, [prompts[i] for i in plain],
                                                   [continuations[i] for i in plain], G).to(out.dtype)
    return out


def _last_logits_only(model: LoadedModel) -> dict:
    """``logits_to_keep=1`` where the family's forward takes it: a prefill needs no logits, and the
    unembedding of every prompt position costs a tenth of a small model's pass."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.hf.forward).parameters else {}
