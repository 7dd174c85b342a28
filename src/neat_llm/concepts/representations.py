"""One pass over a set of texts: residual stream after every block (pooled per text) and,
optionally, per-neuron statistics (mean activation over tokens, top-activating tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..hooks import capture_inputs, capture_outputs
from ..models.loaded import LoadedModel


class NonFiniteError(FloatingPointError):
    """NaN or inf appeared in the model's activations."""


def check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        n = int((~torch.isfinite(x)).sum())
        raise NonFiniteError(f"{n} NaN/inf values in {what}; the model or its dtype is numerically broken "
                             "for this input (try --dtype float32)")


@dataclass
class TextPass:
    """residuals: [N, L, d_model] (pool of block outputs); lengths: [N] tokens per text.
    neuron_sum: [L, d_ff] summed activations over all tokens; n_tokens: tokens summed.
    top_values / top_text / top_pos: [L, d_ff, k] the k largest activations of each neuron and
    where they occurred (text index, token position)."""

    residuals: torch.Tensor
    lengths: torch.Tensor
    neuron_sum: torch.Tensor | None = None
    n_tokens: int = 0
    top_values: torch.Tensor | None = None
    top_text: torch.Tensor | None = None
    top_pos: torch.Tensor | None = None


def batches(n: int, size: int):
    for s in range(0, n, size):
        yield range(s, min(n, s + size))


def repeat_rows(enc: dict[str, torch.Tensor], replicas: int) -> dict[str, torch.Tensor]:
    """An encoded batch repeated along the batch, replica-major (rows [r*B, (r+1)*B) are copy r):
    the layout ``interventions.conditions_along_batch`` reads, one condition per copy."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if replicas == 1:
        return enc
    return {k: v.repeat(replicas, *[1] * (v.dim() - 1)) for k, v in enc.items()}


def pool_tokens(h: torch.Tensor, mask: torch.Tensor, pool: str) -> torch.Tensor:
    """h [B, ..., T, d] pooled over the non-padding tokens of mask [B, T] (right padding):
    ``last`` = the last real token, ``mean`` = their mean -> [B, ..., d]."""
    if h.dim() not in (3, 4):
        raise ValueError(f"expected h of shape [B, T, d] or [B, L, T, d], got {tuple(h.shape)}")
    if pool == "last":
        rows, last = torch.arange(h.shape[0]), mask.sum(1) - 1
        return h[rows, last] if h.dim() == 3 else h[rows, :, last]
    m = mask.reshape(mask.shape[0], *[1] * (h.dim() - 3), mask.shape[1], 1).to(h.dtype)
    return (h * m).sum(-2) / m.sum(-2)


TEXT_TOKENS_PER_BATCH = 8192  # padded tokens per batch of a text pass (batch size x its longest text)
LOGITS_PER_BATCH = 2 ** 28  # float32 logits a pass that keeps them may hold at once (1 GiB)


def logit_token_budget(model: LoadedModel, replicas: int = 1) -> int:
    """Padded tokens per condition in a pass whose logits are kept ([tokens, vocab] floats): the
    text budget, smaller for a large vocabulary (Gemma's 262,144 tokens), shared by the replicas."""
    vocab = int(getattr(model.hf.config, "vocab_size", 0) or 0) or 1
    return max(1, min(TEXT_TOKENS_PER_BATCH, LOGITS_PER_BATCH // vocab) // replicas)


def token_batches(model: LoadedModel, texts: Sequence[str], batch_size: int,
                  tokens_per_batch: int = TEXT_TOKENS_PER_BATCH) -> list[list[int]]:
    """The texts' indices in batches of similar token length, each holding at most ``batch_size``
    texts and at most ``tokens_per_batch`` padded tokens (a text longer than that runs alone), so
    one long text never pads a whole batch to its length."""
    if batch_size < 1 or tokens_per_batch < 1:
        raise ValueError(f"batch_size and tokens_per_batch must be >= 1, got {batch_size}, {tokens_per_batch}")
    lengths = [min(len(ids), model.max_length) for ids in model.tokenizer(list(texts))["input_ids"]]
    out: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in sorted(range(len(texts)), key=lambda i: lengths[i]):
        if cur and (len(cur) == batch_size or (len(cur) + 1) * max(longest, lengths[i]) > tokens_per_batch):
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, lengths[i])
    if cur:
        out.append(cur)
    return out


@torch.inference_mode()
def text_pass(model: LoadedModel, texts: list[str], *, pool: str = "last", batch_size: int = 16,
              neuron_stats: bool = False, top_k: int = 8, strict: bool = False,
              on_batch: Callable[[int], None] | None = None,
              tokens_per_batch: int = TEXT_TOKENS_PER_BATCH) -> TextPass:
    """Run every text once (right-padded batches of similar length, at most ``batch_size`` texts and
    ``tokens_per_batch`` padded tokens each; padding never changes a result).

    pool: ``"last"`` = the last non-padding token, ``"mean"`` = mean over non-padding tokens.
    """
    if pool not in ("last", "mean"):
        raise ValueError(f"pool must be 'last' or 'mean', got {pool!r}")
    L, d_ff = model.n_layers, model.d_ff
    residuals = torch.empty(len(texts), L, model.d_model)
    lengths = torch.empty(len(texts), dtype=torch.long)
    out = TextPass(residuals, lengths)
    if neuron_stats:
        out.neuron_sum = torch.zeros(L, d_ff, dtype=torch.float64)
        out.top_values = torch.full((L, d_ff, top_k), -torch.inf)
        out.top_text = torch.full((L, d_ff, top_k), -1, dtype=torch.long)
        out.top_pos = torch.full((L, d_ff, top_k), -1, dtype=torch.long)
    blocks = dict(enumerate(model.blocks))
    sites = dict(enumerate(model.sites)) if neuron_stats else {}
    for ids in token_batches(model, texts, batch_size, tokens_per_batch):
        enc = model.encode([texts[i] for i in ids], strict=strict)
        mask = enc["attention_mask"].bool()  # [B, T]
        with capture_outputs(blocks) as res, capture_inputs(sites) as acts:
            model.forward(enc)
        h = torch.stack([res[l][0] for l in range(L)], 1).float()  # [B, L, T, d]
        check_finite(h, "the residual stream")
        residuals[ids] = pool_tokens(h, mask, pool).cpu()  # [B, L, d]
        lengths[ids] = mask.sum(1).cpu()
        if neuron_stats:
            _update_neuron_stats(out, acts, mask, torch.tensor(ids), top_k)
        if on_batch:
            on_batch(len(ids))
    return out


def _update_neuron_stats(out: TextPass, acts, mask: torch.Tensor, ids: torch.Tensor, k: int) -> None:
    B, T = mask.shape
    flat_mask = mask.reshape(-1).cpu()
    text_of = ids[:, None].expand(B, T).reshape(-1)
    pos_of = torch.arange(T)[None, :].expand(B, T).reshape(-1)
    out.n_tokens += int(flat_mask.sum())
    for l, calls in acts.items():
        a = calls[0].float().reshape(B * T, -1).cpu()  # [B*T, d_ff]
        check_finite(a, f"the neuron activations of block {l}")
        out.neuron_sum[l] += a[flat_mask].sum(0).double()
        a = a.masked_fill(~flat_mask[:, None], -torch.inf)
        kk = min(k, a.shape[0])
        vals, where = a.topk(kk, dim=0)  # [kk, d_ff]
        cand_v = torch.cat([out.top_values[l], vals.T], 1)  # [d_ff, k+kk]
        cand_t = torch.cat([out.top_text[l], text_of[where].T], 1)
        cand_p = torch.cat([out.top_pos[l], pos_of[where].T], 1)
        best_v, best_i = cand_v.topk(k, dim=1)
        out.top_values[l] = best_v
        out.top_text[l] = cand_t.gather(1, best_i)
        out.top_pos[l] = cand_p.gather(1, best_i)


@torch.inference_mode()
def neuron_profiles(model: LoadedModel, texts: list[str], layers: list[int], *, pool: str = "mean",
                    batch_size: int = 16) -> torch.Tensor:
    """Each text's neuron activations, pooled over its tokens: [N, len(layers), d_ff].

    pool: ``"mean"`` over non-padding tokens, ``"max"`` (the largest over non-padding tokens), or
    ``"last"`` (the last non-padding token)."""
    if pool not in ("last", "mean", "max"):
        raise ValueError(f"pool must be 'last', 'mean' or 'max', got {pool!r}")
    out = torch.empty(len(texts), len(layers), model.d_ff)
    sites = {i: model.sites[l] for i, l in enumerate(layers)}
    for rows in token_batches(model, texts, batch_size):
        enc = model.encode([texts[r] for r in rows])
        mask = enc["attention_mask"].bool()
        with capture_inputs(sites) as acts:
            model.forward(enc)
        for i in sites:
            a = acts[i][0].float()  # [B, T, d_ff]
            check_finite(a, f"the neuron activations of block {layers[i]}")
            if pool == "last":
                v = a[torch.arange(len(rows)), mask.sum(1) - 1]
            elif pool == "max":
                v = a.masked_fill(~mask[..., None], -torch.inf).amax(1)
            else:
                m = mask[..., None].to(a.dtype)
                v = (a * m).sum(1) / m.sum(1)
            out[list(rows), i] = v.cpu()
    return out


@torch.inference_mode()
def residuals_along(model: LoadedModel, texts: Sequence[str], layer: int, replicas: int, *, pool: str = "last",
                    batch_size: int = 16) -> torch.Tensor:
    """The residual stream after block ``layer``, pooled per text, under each of ``replicas``
    conditions along the batch (``interventions.conditions_along_batch``): [G, N, d_model]. With one
    replica it equals ``text_pass(...).residuals[:, layer]``; the passes end after block ``layer``."""
    if pool not in ("last", "mean"):
        raise ValueError(f"pool must be 'last' or 'mean', got {pool!r}")
    texts, G = list(texts), replicas
    out = torch.empty(G, len(texts), model.d_model)
    for ids in token_batches(model, texts, batch_size, max(1, TEXT_TOKENS_PER_BATCH // G)):
        enc = model.encode([texts[i] for i in ids])
        mask = enc["attention_mask"].bool()
        h = model.run_through(layer, repeat_rows(enc, G)).float()  # [G*B, T, d]
        check_finite(h, "the residual stream")
        pooled = pool_tokens(h, mask.repeat(G, 1), pool)  # [G*B, d]
        out[:, ids] = pooled.reshape(G, len(ids), -1).cpu()
    return out
