"""Writers chosen by what their writes do to a measured preference, to first order: which neurons'
writes along the concept direction make a model prefer one sentence of a minimal pair over the
other (the behavioural ranking of ``NeuronWrites``).

Removing the direction u = v / |v| from what neuron k of block l writes (``NeuronWrites``, strength
t) changes that block's MLP output by -t a_k(x, p) c_k u at every position p, with c_k = w_k . u its
write along u. The summed log-likelihood L(x) of a text then changes, to first order, by

    dL_k(x) ~= -t c_k sum_p a_k(x, p) (dL/dh_l(x, p) . u),        h_l = block l's MLP output,

and the preference of a pair, D = L(more) - L(less), by -t effect_k with

    effect(k) = c_k mean over pairs [ sum_p a_k (dL/dh_l . u) ](more) - [ ... ](less).

Where the family normalises the MLP output h before adding it (Gemma 2/3: y = s * h / rms(h)), the
edit takes t a_k c_k / rms(h) u out of y, c_k = w_k . (s * u) (``LoadedModel.write_directions``), and
the gradient is dL/dy_l . u, each position weighted by 1 / rms(h). So the neurons with the largest
effect are those whose writes along u hold the preference up most:
removing (t = 1) or reversing (t = 2) their writes lowers D most. One forward and one backward pass
per sentence scores every neuron of the blocks at once. ``interventions.rank_writers`` ranks the
same neurons by what they write on concept text beyond contrast text instead (activations times
write), which does not look at the preference at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..concepts.representations import check_finite, token_batches
from ..hooks import capture_inputs, capture_outputs, outputs_require_grad
from ..models.loaded import LoadedModel


def text_write_effects(model: LoadedModel, texts: Sequence[str], vector: torch.Tensor, layers: Sequence[int],
                       batch_size: int = 16, on_texts=None, starts: Sequence[int] | None = None) -> torch.Tensor:
    """Per text, sum_p a_k(x, p) (dL(x)/dh_l(x, p) . u) for every neuron k of ``layers`` (L: the
    text's summed log-likelihood, every token after the first; with ``starts``, only tokens
    t >= starts[i] of text i: a continuation after a prompt of that many tokens, as
    ``perplexity.text_logliks_along`` counts them): [len(texts), len(layers), d_ff].
    ``on_texts(n)``: called as each batch of n texts is done (progress)."""
    if starts is not None and len(starts) != len(texts):
        raise ValueError(f"{len(starts)} starts for {len(texts)} texts")
    layers = list(layers)
    u = {l: model.write_directions(l, vector)[1] for l in layers}  # (checks each block)
    norms = {l: n for l in layers if (n := model.check_writes(l)) is not None}  # where the MLP output is normalised
    sites = {l: model.sites[l] for l in layers}
    out = torch.zeros(len(texts), len(layers), model.d_ff, dtype=torch.float64)
    emb = model.hf.get_input_embeddings()
    for rows in token_batches(model, texts, batch_size):
        enc = model.encode([texts[r] for r in rows])
        mask = enc["attention_mask"]
        with outputs_require_grad(emb), torch.enable_grad(), capture_inputs(sites) as acts, \
                capture_outputs(sites) as outs, capture_outputs(norms) as normed:
            logits = model.logits(enc)[:, :-1].float()
            target = enc["input_ids"][:, 1:]
            counted = mask[:, 1:]
            if starts is not None:  # target j is token j + 1: counted from the continuation's first token on
                first = torch.tensor([max(1, int(starts[r])) for r in rows], device=mask.device)
                counted = counted * (torch.arange(1, mask.shape[1], device=mask.device)[None, :] >= first[:, None])
            ll = (logits.gather(-1, target[..., None]).squeeze(-1) - logits.logsumexp(-1)) * counted
            h = [(normed if l in norms else outs)[l][0] for l in layers]  # what the edit changes
            grads = model.gradients(ll.sum(), h, len(rows))  # texts are independent: per-text gradients
        m = mask.float()
        for i, l in enumerate(layers):
            along = (grads[i].float() @ u[l].to(grads[i].device)) * m  # [B, T]
            if l in norms:  # y = s * h / rms(h): the edit is scaled by 1 / rms(h) at each position
                along = along * model.write_scale(l, outs[l][0].detach())
            got = torch.einsum("btk,bt->bk", acts[l][0].detach().float(), along)
            check_finite(got, f"the write effects of block {l}")
            out[rows, i] = got.double().cpu()
        if on_texts:
            on_texts(len(rows))
    return out


def pair_write_effects(model: LoadedModel, more: Sequence[str], less: Sequence[str], vector: torch.Tensor,
                       layers: Sequence[int], batch_size: int = 16, on_texts=None,
                       starts: tuple[Sequence[int], Sequence[int]] | None = None) -> torch.Tensor:
    """effect(k) of the module docstring for every neuron of ``layers``: how much removing the
    direction of ``vector`` from neuron k's writes (strength 1) lowers log p(more) - log p(less),
    averaged over the pairs, to first order: [len(layers), d_ff] float32. ``starts``: (for the
    'more' texts, for the 'less' ones) the tokens of a shared prompt not counted (continuations)."""
    if len(more) != len(less) or not more:
        raise ValueError(f"pairs need as many 'more' as 'less' sentences, at least one; got {len(more)} and {len(less)}")
    layers = list(layers)
    e = text_write_effects(model, list(more) + list(less), vector, layers, batch_size, on_texts,
                           None if starts is None else list(starts[0]) + list(starts[1]))
    n = len(more)
    c = torch.stack([model.write_along(l, vector) for l in layers])  # [L, d_ff]
    return (c.double() * (e[:n] - e[n:]).mean(0)).float()


__all__ = ["pair_write_effects", "text_write_effects"]
