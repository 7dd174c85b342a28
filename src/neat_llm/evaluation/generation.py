"""Sampled continuations with fixed seeds, batched (left padding), so the same prompts and seeds
can be compared with and without neurons turned off: every (prompt, sample) draws its tokens with
its own seeded uniforms (inverse-CDF sampling), so the conditions share their randomness (common
random numbers: differences come from the intervention, not from the dice), a batch's make-up never
changes a continuation, and the global torch RNG is never touched."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..concepts.representations import batches, repeat_rows
from ..models.kv_cache import growing_cache
from ..models.loaded import LoadedModel


def prompt_prefixes(texts: Sequence[str], fraction: float = 0.5, min_words: int = 3, max_words: int = 10) -> list[str]:
    """The first ``fraction`` of each text's words (between ``min_words`` and ``max_words``; texts
    shorter than ``min_words + 1`` words are left out): prompts that lead into the text's content."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    out = []
    for t in texts:
        words = t.split()
        if len(words) < min_words + 1:
            continue
        n = min(max(min_words, round(len(words) * fraction)), max_words, len(words) - 1)
        out.append(" ".join(words[:n]))
    return out


class _InverseCdfSampler:
    """A logits processor that samples with given uniforms: row r at step t takes the token where
    the cumulative (temperature, top-k, top-p filtered) probability first reaches u[r, t], and
    leaves only that token open, so greedy decoding emits it. A row's tokens depend on its own
    uniforms and logits alone, never on which other rows share its batch."""

    def __init__(self, u: torch.Tensor, prompt_len: int, temperature: float, top_p: float, top_k: int):
        self.u, self.prompt_len = u, prompt_len
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """As a logits processor of ``generate``: only the chosen token left open."""
        t = input_ids.shape[1] - self.prompt_len
        chosen = self.choose(scores, self.u[:, t])
        return torch.full_like(scores, -torch.inf).scatter_(1, chosen[:, None], 0.0)

    def choose(self, scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The token each row takes, from its logits [R, V] and its uniforms for this step [R]."""
        u = u.to(scores.device)
        scores = scores.float()
        probs = torch.softmax(scores if self.temperature == 1.0 else scores / self.temperature, dim=-1)  # [R, V]
        V = probs.shape[-1]
        if self.top_k:  # the k most likely, renormalised, then the nucleus within them
            p, order = probs.topk(min(self.top_k, V), dim=-1)
            chosen = self._pick(p / p.sum(-1, keepdim=True), order, u)
        elif self.top_p >= 1.0:  # no filter: inverse CDF in vocabulary order, no sort needed
            chosen = self._pick(probs, torch.arange(V, device=probs.device).expand_as(probs), u)
        else:  # the nucleus among the tokens above a threshold (a full sort of the vocabulary costs ~7x more)
            chosen = torch.full((len(u),), -1, dtype=torch.long, device=probs.device)
            todo = torch.arange(len(u), device=probs.device)
            if self.BY_THRESHOLD:
                picked, inside = self._by_threshold(probs, u)
                chosen[inside] = picked[inside]
                todo = todo[~inside]
            if len(todo):
                pw, ow = probs[todo].sort(dim=-1, descending=True, stable=True)
                chosen[todo] = self._pick(pw, ow, u[todo])
        return chosen

    BY_THRESHOLD = True  # sort only the tokens above a threshold (False: the full sort, the plain reference)

    def _by_threshold(self, probs: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the token each row takes, whether that is the full sort's pick) for rows [r, V]. C is every
        token whose probability has one of the largest binary exponents, as few exponents as hold
        top_p of the mass: every token outside C is less likely than every token inside (a positive
        float's exponent grows with it, and equal floats share it), so the full stable sort starts
        with C in the order C's own stable sort gives (ties by token id), and its running sums over
        that prefix are the same numbers. Sorting C alone (a few thousand tokens where the vocabulary
        has 49,152) then gives the full sort's pick wherever C's own running mass reaches top_p
        (checked: rows where the binned sums misjudged it are left to the full sort)."""
        r, V = probs.shape
        dev = probs.device
        exponent = (probs.contiguous().view(torch.int32) >> 23).long()  # [r, V]: 0..127 for p in [0, 1]
        per_bin = torch.zeros(r, 128, dtype=torch.float64, device=dev).scatter_add_(1, exponent, probs.double())
        above = per_bin.flip(1).cumsum(1)  # mass of the exponents >= 127 - j
        lowest = 127 - (above < self.top_p).sum(1, keepdim=True).clamp(max=127)  # the smallest exponent kept
        rows, ids = (exponent >= lowest).nonzero(as_tuple=True)  # C, row-major: each row's tokens in id order
        m = torch.bincount(rows, minlength=r)
        width = int(m.max())
        start = m.cumsum(0) - m
        p = probs.new_zeros(r, width)
        order = torch.zeros(r, width, dtype=torch.long, device=dev)
        at = torch.arange(len(rows), device=dev) - start[rows]
        p[rows, at] = probs[rows, ids]
        order[rows, at] = ids
        p, perm = p.sort(dim=-1, descending=True, stable=True)
        order = order.gather(1, perm)
        inside = p.cumsum(-1)[:, -1] >= self.top_p
        return self._pick(p, order, u), inside

    def _pick(self, p: torch.Tensor, order: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The token where the cumulative kept probability first reaches u (of the kept mass);
        ``p`` in the order given (most likely first when a nucleus is cut): [R]."""
        if self.top_p < 1.0:
            p = p * ((p.cumsum(-1) - p) < self.top_p)  # the smallest head reaching top_p
        cdf = p.cumsum(-1)
        j = torch.searchsorted(cdf, u[:, None].to(cdf.dtype) * cdf[:, -1:]).clamp(max=cdf.shape[-1] - 1)
        return order.gather(1, j)[:, 0]


_NEWLINES: dict[int, list[int]] = {}


def newline_tokens(tokenizer) -> list[int]:
    """Every token id whose text holds a line break (a continuation that should end at its line's
    end stops on any of them)."""
    key = id(tokenizer)
    if key not in _NEWLINES:
        vocab = tokenizer.get_vocab()
        ids = sorted(vocab.values())
        texts = tokenizer.batch_decode([[i] for i in ids])
        _NEWLINES[key] = [i for i, t in zip(ids, texts) if "\n" in t]
    return _NEWLINES[key]


def first_line(text: str) -> str:
    """The text up to its first line break (a demonstration's next item)."""
    return text.split("\n", 1)[0]


def _prefilled(model: LoadedModel, prompts: list[str], replicas: int, samples: int, cache=None,
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


def _continuation_logliks_on(model: LoadedModel, enc: dict[str, torch.Tensor], cache, prompts: list[str],
                             continuations: Sequence[str], replicas: int) -> torch.Tensor:
    """Mean log p per token of continuation i after prompt i, read on a copy of ``cache`` (the
    prompts' tokens but the last, prefilled by ``_prefilled``; ``enc`` their rows): only the
    prompt's last token and the continuation's tokens are run, and the unembedding only there.
    The tokens scored are those of prompt + continuation after the prompt's own tokens, as
    ``perplexity.continuation_logliks_along`` scores them; where the joint text's tokens do not start
    with the prompt's (a token merged across the boundary), that item is scored the plain way.
    Returns [replicas, len(prompts)]."""
    import copy

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


def _decode(model: LoadedModel, enc: dict[str, torch.Tensor], cache, sampler: "_InverseCdfSampler", u: torch.Tensor,
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


def sample_continuations(model: LoadedModel, prompts: Sequence[str], *, max_new_tokens: int = 20, seed: int = 0,
                         batch_size: int = 16, temperature: float = 1.0, top_p: float = 0.95,
                         top_k: int = 0, samples: int = 1) -> list[str]:
    """``samples`` sampled continuations per prompt (only the new text; prompt-major: prompt i's
    sample s is at i * samples + s). Deterministic for fixed prompts, seed and sampling settings,
    whatever the batch size or intervention: every (prompt, sample) has its own seeded uniforms."""
    return sample_continuations_along(model, prompts, 1, max_new_tokens=max_new_tokens, seed=seed,
                                      batch_size=batch_size, temperature=temperature, top_p=top_p, top_k=top_k,
                                      samples=samples)[0]


@torch.inference_mode()
def sample_continuations_along(model: LoadedModel, prompts: Sequence[str], replicas: int, *, max_new_tokens: int = 20,
                               seed: int = 0, batch_size: int = 16, temperature: float = 1.0, top_p: float = 0.95,
                               top_k: int = 0, samples: int = 1, stop_at_newline: bool = False,
                               share_prefill: bool = False) -> list[list[str]]:
    """``sample_continuations`` under each of ``replicas`` conditions along the batch
    (``interventions.conditions_along_batch``), with the same uniforms for every condition, so the
    conditions differ only by what they turned off: [G][n_prompts * samples]. ``stop_at_newline``:
    a continuation ends at its line's end (the line break is not kept), and a batch stops once
    every row has ended. ``share_prefill``: each prompt is read once per condition and its KV cache
    copied to its samples (a batch holds whole prompts), about ``samples`` times less prefill; the
    same continuations as without it (tested), up to float rounding of the batched prefill."""
    return sample_and_score_along(model, prompts, replicas, max_new_tokens=max_new_tokens, seed=seed,
                                  batch_size=batch_size, temperature=temperature, top_p=top_p, top_k=top_k,
                                  samples=samples, stop_at_newline=stop_at_newline, share_prefill=share_prefill)[0]


@torch.inference_mode()
def sample_and_score_along(model: LoadedModel, prompts: Sequence[str], replicas: int, *, max_new_tokens: int = 20,
                           seed: int = 0, batch_size: int = 16, temperature: float = 1.0, top_p: float = 0.95,
                           top_k: int = 0, samples: int = 1, stop_at_newline: bool = False, share_prefill: bool = False,
                           score: Sequence[Sequence[str]] = ()) -> tuple[list[list[str]], torch.Tensor | None]:
    """``sample_continuations_along``, and with ``score`` (sets of given continuations, one per prompt
    each, e.g. a held-out hateful and a neutral next statement) their mean log p per token after
    each prompt under each condition, read on the same shared prefill (the prompt is not run again):
    ``(continuations [G][n_prompts * samples], logliks [len(score), G, n_prompts] or None)``. The
    logliks equal ``perplexity.continuation_logliks_along``'s (tested); ``score`` needs ``share_prefill``."""
    from transformers import GenerationConfig, LogitsProcessorList

    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    score = [list(c) for c in score]
    if score and not share_prefill:
        raise ValueError("scoring given continuations reads the shared prefill: pass share_prefill=True")
    if any(len(c) != len(prompts) for c in score):
        raise ValueError(f"every set of continuations to score needs one per prompt ({len(prompts)})")
    if samples < 1 or max_new_tokens < 1 or temperature <= 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"bad sampling settings: samples={samples}, max_new_tokens={max_new_tokens}, "
                         f"temperature={temperature}, top_p={top_p}, top_k={top_k}")
    G = replicas
    jobs = [(i, s) for i in range(len(prompts)) for s in range(samples)]
    gen_rng = torch.Generator().manual_seed(int(seed))
    u = torch.rand(len(prompts), samples, max_new_tokens, generator=gen_rng, dtype=torch.float64)
    tok = model.tokenizer
    side = tok.padding_side
    eos = model.hf.generation_config.eos_token_id
    stop = set([eos] if isinstance(eos, int) else list(eos or []))  # where a continuation ends
    if stop_at_newline:
        stop |= set(newline_tokens(tok))
        eos = sorted(stop)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tok.pad_token_id, eos_token_id=eos,
                              bos_token_id=model.hf.generation_config.bos_token_id)
    out: list[list[str]] = [[""] * len(jobs) for _ in range(G)]
    scored = torch.zeros(len(score), G, len(prompts), dtype=torch.float64) if score else None
    per = max(1, batch_size // samples)  # share_prefill: whole prompts per batch
    groups = ([list(range(p * samples, min(len(prompts), p + per) * samples)) for p in range(0, len(prompts), per)]
              if share_prefill else [list(r) for r in batches(len(jobs), batch_size)])
    try:
        tok.padding_side = "left"  # generation appends on the right; left padding keeps prompts adjacent to it
        for rows in groups:
            ur = torch.stack([u[jobs[r]] for r in rows]).repeat(G, 1)  # [G*B, max_new_tokens]
            if share_prefill:
                first, last = jobs[rows[0]][0], jobs[rows[-1]][0] + 1
                enc, cache, got = _prefilled(model, prompts[first:last], G, samples,
                                             score=[c[first:last] for c in score])
                if got is not None:
                    scored[:, :, first:last] = got
            else:
                enc, cache = repeat_rows(model.encode([prompts[jobs[r][0]] for r in rows]), G), None
            width = enc["input_ids"].shape[1]
            sampler = _InverseCdfSampler(ur, width, temperature, top_p, top_k)
            if share_prefill:  # our loop: finished jobs leave the batch
                text = tok.batch_decode(_decode(model, enc, cache, sampler, ur, G, stop), skip_special_tokens=True)
            else:  # the plain reference: transformers' generate, every sample prefilling its prompt
                gen = model.generate_ids(enc, generation_config=config, logits_processor=LogitsProcessorList([sampler]))
                text = tok.batch_decode(gen[:, width:], skip_special_tokens=True)
            if stop_at_newline:
                text = [first_line(t) for t in text]
            for g in range(G):
                for j, r in enumerate(rows):
                    out[g][r] = text[g * len(rows) + j]
    finally:
        tok.padding_side = side
    return out, scored
