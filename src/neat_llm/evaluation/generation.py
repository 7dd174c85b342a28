"""Sampled continuations with fixed seeds, batched (left padding), so the same prompts and seeds
can be compared with and without neurons turned off: every (prompt, sample) draws its tokens with
its own seeded uniforms (inverse-CDF sampling), so the conditions share their randomness (common
random numbers: differences come from the intervention, not from the dice), a batch's make-up never
changes a continuation, and the global torch RNG is never touched."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..concepts.representations import batches, repeat_rows
from ..models.loaded import LoadedModel
from .decoding import DECODE_TOKENS, decode_prompts


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

    CHUNK = 64  # rows sampled together: a chunk's [rows, vocabulary] passes stay in the CPU's caches

    def choose(self, scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The token each row takes, from its logits [R, V] and its uniforms for this step [R]."""
        u = u.to(scores.device)
        if len(scores) > self.CHUNK:  # row by row the same tokens, chunk by chunk less memory traffic
            return torch.cat([self.choose(scores[i:i + self.CHUNK], u[i:i + self.CHUNK])
                              for i in range(0, len(scores), self.CHUNK)])
        scores = scores.float()
        probs = torch.softmax(scores if self.temperature == 1.0 else scores / self.temperature, dim=-1,
                              out=self._workspace(*scores.shape, scores.device)[0])  # [R, V]
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
        _, bins, kept = self._workspace(r, V, dev)
        torch.bitwise_right_shift(probs.contiguous().view(torch.int32), 23, out=bins)  # [r, V]: 0..127 for p in [0, 1]
        bins += (torch.arange(r, dtype=torch.int32, device=dev) * 128)[:, None]  # row i's exponents at 128 i ..
        per_bin = probs.new_zeros(r * 128).index_add_(0, bins.view(-1), probs.view(-1)).view(r, 128)
        above = per_bin.double().flip(1).cumsum(1)  # mass of the exponents >= 127 - j
        lowest = 127 - (above < self.top_p).sum(1, keepdim=True).clamp(max=127)  # the smallest exponent kept
        least = (lowest.to(torch.int32) << 23).view(torch.float32)  # the smallest float of that exponent (0.0 for 0)
        rows, ids = torch.ge(probs, least, out=kept).nonzero(as_tuple=True)  # C (exponent >= lowest), row-major:
        # each row's tokens in id order
        m = torch.bincount(rows, minlength=r)
        at = torch.arange(len(rows), device=dev) - (m.cumsum(0) - m)[rows]  # each token's place in its row's C
        chosen = torch.zeros(r, dtype=torch.long, device=dev)
        inside = torch.zeros(r, dtype=torch.bool, device=dev)
        for tier in self._width_tiers(m):  # rows sorted at the width of their own tier, not the widest row's
            width = int(m[tier].max())
            here = torch.zeros(r, dtype=torch.bool, device=dev)
            here[tier] = True
            take = here[rows]
            slot = torch.full((r,), -1, dtype=torch.long, device=dev)
            slot[tier] = torch.arange(len(tier), device=dev)
            p = probs.new_zeros(len(tier), width)
            order = torch.zeros(len(tier), width, dtype=torch.long, device=dev)
            p[slot[rows[take]], at[take]] = probs[rows[take], ids[take]]
            order[slot[rows[take]], at[take]] = ids[take]
            p, perm = p.sort(dim=-1, descending=True, stable=True)
            order = order.gather(1, perm)
            inside[tier] = p.cumsum(-1)[:, -1] >= self.top_p
            chosen[tier] = self._pick(p, order, u[tier])
        return chosen, inside

    def _workspace(self, r: int, V: int, dev) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[r, V] buffers (probabilities, exponent bins, kept tokens) kept from chunk to chunk: fresh
        ones, tens of MB each, were handed back to the system when freed and paged in again by the
        next chunk, which made a decoding run's sampling cost about twice its arithmetic."""
        ws = getattr(self, "_buffers", None)
        if ws is None or ws[0].shape[0] < r or ws[0].shape[1] != V or ws[0].device != torch.device(dev):
            n = max(r, self.CHUNK)
            ws = self._buffers = (torch.empty(n, V, device=dev), torch.empty(n, V, dtype=torch.int32, device=dev),
                                  torch.empty(n, V, dtype=torch.bool, device=dev))
        return ws[0][:r], ws[1][:r], ws[2][:r]

    @staticmethod
    def _width_tiers(m: torch.Tensor) -> list[torch.Tensor]:
        """The rows in tiers of C's width (up to 64, 512, 4,096 tokens, wider), the empty tiers left out."""
        edges = [0, 64, 512, 4096, int(m.max()) + 1]
        return [t for a, b in zip(edges, edges[1:]) if len(t := ((m > a) & (m <= b)).nonzero()[:, 0])]

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
                               share_prefill: bool = False, decode_tokens: int = DECODE_TOKENS) -> list[list[str]]:
    """``sample_continuations`` under each of ``replicas`` conditions along the batch
    (``interventions.conditions_along_batch``), with the same uniforms for every condition, so the
    conditions differ only by what they turned off: [G][n_prompts * samples]. ``stop_at_newline``:
    a continuation ends at its line's end (the line break is not kept), and a batch stops once
    every row has ended. ``share_prefill``: our decoding loop (``decoding.decode_prompts``): each
    prompt read once per condition and its KV cache copied to its samples, finished rows leaving the
    batch and new prompts taking their place within ``decode_tokens`` of KV cache (``batch_size``
    is then unused); every continuation is the one each prompt gets generated alone (tested).
    Without it, transformers' ``generate`` on ``batch_size`` (prompt, sample) jobs at a time, left
    padded: the plain reference."""
    return sample_and_score_along(model, prompts, replicas, max_new_tokens=max_new_tokens, seed=seed,
                                  batch_size=batch_size, temperature=temperature, top_p=top_p, top_k=top_k,
                                  samples=samples, stop_at_newline=stop_at_newline, share_prefill=share_prefill,
                                  decode_tokens=decode_tokens)[0]


@torch.inference_mode()
def sample_and_score_along(model: LoadedModel, prompts: Sequence[str], replicas: int, *, max_new_tokens: int = 20,
                           seed: int = 0, batch_size: int = 16, temperature: float = 1.0, top_p: float = 0.95,
                           top_k: int = 0, samples: int = 1, stop_at_newline: bool = False, share_prefill: bool = False,
                           score: Sequence[Sequence[str]] = (), decode_tokens: int = DECODE_TOKENS
                           ) -> tuple[list[list[str]], torch.Tensor | None]:
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
    if share_prefill:  # our decoding loop (decoding.py): a prompt read once per condition, finished rows leave
        sampler = _InverseCdfSampler(u, 0, temperature, top_p, top_k)
        tokens, scored = decode_prompts(model, prompts, G, samples, u, sampler.choose, stop, tokens=decode_tokens,
                                        score=score)
        texts = [tok.batch_decode(t, skip_special_tokens=True) for t in tokens]
        return [[first_line(t) for t in ts] if stop_at_newline else ts for ts in texts], scored
    out: list[list[str]] = [[""] * len(jobs) for _ in range(G)]
    try:  # the plain reference: transformers' generate, every sample prefilling its prompt
        tok.padding_side = "left"  # generation appends on the right; left padding keeps prompts adjacent to it
        for rows in batches(len(jobs), batch_size):
            rows = list(rows)
            ur = torch.stack([u[jobs[r]] for r in rows]).repeat(G, 1)  # [G*B, max_new_tokens]
            enc = repeat_rows(model.encode([prompts[jobs[r][0]] for r in rows]), G)
            width = enc["input_ids"].shape[1]
            sampler = _InverseCdfSampler(ur, width, temperature, top_p, top_k)
            gen = model.generate_ids(enc, generation_config=config, logits_processor=LogitsProcessorList([sampler]))
            text = tok.batch_decode(gen[:, width:], skip_special_tokens=True)
            if stop_at_newline:
                text = [first_line(t) for t in text]
            for g in range(G):
                for j, r in enumerate(rows):
                    out[g][r] = text[g * len(rows) + j]
    finally:
        tok.padding_side = side
    return out, None

