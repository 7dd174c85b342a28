"""Sampled continuations with fixed seeds, batched (left padding), so the same prompts and seeds
can be compared with and without neurons turned off: the random stream of each batch depends only
on (seed, batch index), and the global torch RNG is left as it was."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..concepts.representations import batches
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


@torch.inference_mode()
def sample_continuations(model: LoadedModel, prompts: Sequence[str], *, max_new_tokens: int = 20, seed: int = 0,
                         batch_size: int = 16, temperature: float = 1.0, top_p: float = 0.95,
                         top_k: int = 0) -> list[str]:
    """One sampled continuation per prompt (only the new text). Deterministic for fixed prompts,
    seed and batch size, whatever intervention is active."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts given")
    tok = model.tokenizer
    side = tok.padding_side
    out: list[str] = []
    try:
        tok.padding_side = "left"  # generation appends on the right; left padding keeps prompts adjacent to it
        for b, rows in enumerate(batches(len(prompts), batch_size)):
            enc = model.encode([prompts[i] for i in rows])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1_000_003 + b)
                gen = model.hf.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                        top_p=top_p, top_k=top_k, pad_token_id=tok.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
    finally:
        tok.padding_side = side
    return out
