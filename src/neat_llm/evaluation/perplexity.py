"""Language-model likelihood of texts: per-text log-likelihoods, mean per-token log-likelihood,
and perplexity. Right padding is masked out, so batching never changes a result.

A text of T tokens has T - 1 predicted tokens (token t is predicted from tokens < t).

The ``*_along`` forms measure ``replicas`` conditions at once (``interventions.conditions_along_batch``):
each batch is repeated along the batch, and results come back with a leading replica axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..concepts.representations import logit_token_budget, repeat_rows, token_batches
from ..models.loaded import LoadedModel


@torch.inference_mode()
def text_logliks_along(model: LoadedModel, texts: Sequence[str], replicas: int,
                       batch_size: int = 16, starts: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-likelihood of every text's predicted tokens under each of ``replicas`` conditions
    along the batch, and how many there are: ``(sums [G, N] float64, counts [N] long)`` with
    sums[g, i] = sum_{t=1}^{T_i-1} log p_g(x_t | x_<t) and counts[i] = T_i - 1. ``starts``: count
    only tokens t >= starts[i] of text i (a continuation after a prompt of starts[i] tokens)."""
    texts = list(texts)
    if not texts:
        raise ValueError("no texts given")
    if starts is not None and len(starts) != len(texts):
        raise ValueError(f"{len(starts)} starts for {len(texts)} texts")
    G = replicas
    sums = torch.zeros(G, len(texts), dtype=torch.float64)
    counts = torch.zeros(len(texts), dtype=torch.long)
    # similar lengths share a batch, within a token budget shared by the replicas
    for ids in token_batches(model, texts, batch_size, logit_token_budget(model, G)):
        enc = model.encode([texts[i] for i in ids])
        logits = model.logits(repeat_rows(enc, G))  # [G*B, T, V]
        z = logits[:, :-1].float()  # [G*B, T-1, V]
        target = enc["input_ids"][:, 1:].repeat(G, 1)  # [G*B, T-1]
        ll = z.gather(-1, target[..., None]).squeeze(-1) - z.logsumexp(-1)  # log p(target), no [.., V] log-softmax kept
        ll = ll.reshape(G, len(ids), -1)  # [G, B, T-1]
        m = enc["attention_mask"][:, 1:].bool()  # right padding: target t is real iff mask[t] is set
        if starts is not None:  # target j is token j + 1: counted from the continuation's first token on
            first = torch.tensor([max(1, int(starts[i])) for i in ids])
            m = m & (torch.arange(1, m.shape[1] + 1)[None, :] >= first[:, None]).to(m.device)
        sums[:, ids] = ll.masked_fill(~m, 0.0).double().sum(-1).cpu()
        counts[ids] = m.sum(1).cpu()
    return sums, counts


def continuation_logliks_along(model: LoadedModel, prompts: Sequence[str], continuations: Sequence[str],
                               replicas: int, batch_size: int = 16) -> torch.Tensor:
    """Mean log-likelihood per token of each continuation given its prompt (the text is
    prompt + continuation; only the continuation's tokens are scored), per condition: [G, N]."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts for {len(continuations)} continuations")
    starts = [len(ids) for ids in model.tokenizer(list(prompts))["input_ids"]]
    sums, counts = text_logliks_along(model, [p + c for p, c in zip(prompts, continuations)], replicas, batch_size,
                                      starts)
    if (counts == 0).any():
        raise ValueError("a continuation has no token of its own")
    return sums / counts


def text_logliks(model: LoadedModel, texts: Sequence[str], batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-likelihood of every text's predicted tokens and how many there are.

    Returns ``(sums [N] float64, counts [N] long)`` with
    sums[i] = sum_{t=1}^{T_i-1} log p(x_t | x_<t) and counts[i] = T_i - 1.
    """
    sums, counts = text_logliks_along(model, texts, 1, batch_size)
    return sums[0], counts


def mean_token_logliks_along(model: LoadedModel, texts: Sequence[str], replicas: int,
                             batch_size: int = 16) -> torch.Tensor:
    """Per-text mean log-likelihood per predicted token under each replica's condition: [G, N]."""
    sums, counts = text_logliks_along(model, texts, replicas, batch_size)
    short = torch.nonzero(counts == 0).flatten()
    if len(short):
        raise ValueError(f"{len(short)} text(s) have a single token, so no token to predict "
                         f"(first: #{int(short[0])} {list(texts)[int(short[0])]!r})")
    return sums / counts


def perplexities_along(model: LoadedModel, texts: Sequence[str], replicas: int, batch_size: int = 16) -> list[float]:
    """``perplexity`` under each replica's condition."""
    sums, counts = text_logliks_along(model, texts, replicas, batch_size)
    n = int(counts.sum())
    if n == 0:
        raise ValueError("the texts have no token to predict (every text is a single token)")
    return [math.exp(-float(s) / n) for s in sums.sum(1)]


def mean_token_loglik(model: LoadedModel, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """Per-text mean log-likelihood per predicted token: [N] float64 (sums / counts).

    Raises ValueError for a text of a single token (nothing to predict)."""
    return mean_token_logliks_along(model, texts, 1, batch_size)[0]


def perplexity(model: LoadedModel, texts: Sequence[str], batch_size: int = 16) -> float:
    """exp(-(sum of log p over all predicted tokens of all texts) / (number of those tokens))."""
    return perplexities_along(model, texts, 1, batch_size)[0]
