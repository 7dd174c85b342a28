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

    HEAD = 1024  # most likely tokens sorted first; the full sort only for rows whose nucleus is wider

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1] - self.prompt_len
        u = self.u[:, t].to(scores.device)  # [R]
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # [R, V]
        V = probs.shape[-1]
        if self.top_k:  # the k most likely, renormalised, then the nucleus within them
            p, order = probs.topk(min(self.top_k, V), dim=-1)
            chosen = self._pick(p / p.sum(-1, keepdim=True), order, u)
        elif self.top_p >= 1.0:  # no filter: inverse CDF in vocabulary order, no sort needed
            chosen = self._pick(probs, torch.arange(V, device=probs.device).expand_as(probs), u)
        else:  # the nucleus lies in the head when the head's mass reaches top_p (a full sort costs ~50x more)
            p, order = probs.topk(min(self.HEAD, V), dim=-1)
            chosen = torch.empty(len(u), dtype=torch.long, device=probs.device)
            wide = p.sum(-1) < self.top_p
            if (~wide).any():
                chosen[~wide] = self._pick(p[~wide], order[~wide], u[~wide])
            if wide.any():
                pw, ow = probs[wide].sort(dim=-1, descending=True)
                chosen[wide] = self._pick(pw, ow, u[wide])
        return torch.full_like(scores, -torch.inf).scatter_(1, chosen[:, None], 0.0)

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


def _prefilled(model: LoadedModel, prompts: list[str], replicas: int, samples: int):
    """The prompts encoded once per condition (left padding), every token but the last read into a
    KV cache, then cache and ids repeated for each prompt's samples (condition-major, prompt-major,
    sample-minor: the rows ``sample_continuations_along`` generates)."""
    from transformers import DynamicCache

    enc = repeat_rows(model.encode(prompts), replicas)
    cache = DynamicCache(config=model.hf.config)
    mask = enc["attention_mask"][:, :-1]
    # positions as generate gives them (counted over the real tokens): without them a left-padded
    # prompt's tokens sit as many positions late as it has padding, and the tokens generate then
    # appends (placed by the mask) see the prompt at the wrong distance
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    model.forward({"input_ids": enc["input_ids"][:, :-1], "attention_mask": mask, "position_ids": positions},
                  cache=cache, use_cache=True)
    cache.batch_repeat_interleave(samples)
    return {k: v.repeat_interleave(samples, 0) for k, v in enc.items()}, cache


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
    from transformers import GenerationConfig, LogitsProcessorList

    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
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
    if stop_at_newline:
        eos = sorted(set([eos] if isinstance(eos, int) else list(eos or [])) | set(newline_tokens(tok)))
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tok.pad_token_id, eos_token_id=eos,
                              bos_token_id=model.hf.generation_config.bos_token_id)
    out: list[list[str]] = [[""] * len(jobs) for _ in range(G)]
    per = max(1, batch_size // samples)  # share_prefill: whole prompts per batch
    groups = ([list(range(p * samples, min(len(prompts), p + per) * samples)) for p in range(0, len(prompts), per)]
              if share_prefill else [list(r) for r in batches(len(jobs), batch_size)])
    try:
        tok.padding_side = "left"  # generation appends on the right; left padding keeps prompts adjacent to it
        for rows in groups:
            ur = torch.stack([u[jobs[r]] for r in rows]).repeat(G, 1)  # [G*B, max_new_tokens]
            if share_prefill:
                enc, cache = _prefilled(model, [prompts[i] for i in range(jobs[rows[0]][0], jobs[rows[-1]][0] + 1)], G,
                                        samples)
            else:
                enc, cache = repeat_rows(model.encode([prompts[jobs[r][0]] for r in rows]), G), None
            width = enc["input_ids"].shape[1]
            sampler = _InverseCdfSampler(ur, width, temperature, top_p, top_k)
            gen = model.generate_ids(enc, generation_config=config, logits_processor=LogitsProcessorList([sampler]),
                                     **({"cache": cache} if cache is not None else {}))
            text = tok.batch_decode(gen[:, width:], skip_special_tokens=True)
            if stop_at_newline:
                text = [first_line(t) for t in text]
            for g in range(G):
                for j, r in enumerate(rows):
                    out[g][r] = text[g * len(rows) + j]
    finally:
        tok.padding_side = side
    return out
