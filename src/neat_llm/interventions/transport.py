"""Fitting a ``Transport`` (AcT, Rodriguez et al. 2024): per neuron, the affine map a -> omega a + beta
that carries its activations on concept text onto its activations on contrast text.

- ``kind="mean"``: omega = 1, beta = mu_N - mu_P (means over every non-padding token of each side);
- ``kind="linear"``: least squares between matched quantiles of the two sides (the sorted-sample
  estimator of AcT, on ``n_quantiles`` quantiles so the two sides need not have equal token counts).
  A neuron whose concept-side quantiles do not vary gets the mean map.

Cost: one forward pass per text (all neurons at once). Activations are taken at every non-padding
token (``at="all"``), where the intervention is applied while the model writes, or only at each
text's last token (``at="last"``): where a concept read at the end of a text is read, e.g. the end
of a demonstration prompt, where the model is about to write (the means over all of a prompt's
tokens mostly measure the statements it shows, not the state it writes from)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..concepts.representations import token_batches
from ..hooks import capture_inputs
from ..models.loaded import LoadedModel
from .types import TRANSPORT_KINDS, Transport, check_fitted_at


@torch.inference_mode()
def _activations(model: LoadedModel, texts: Sequence[str], max_tokens: int, seed: int,
                 batch_size: int, at: str = "all") -> list[torch.Tensor]:
    """Per block, the activations at up to ``max_tokens`` non-padding tokens of ``texts`` (every
    token, or each text's last with ``at="last"``; a seeded sample when there are more):
    [n_layers] x [N, d_ff] (float32, CPU)."""
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(model.n_layers)]
    sites = dict(enumerate(model.sites))
    for rows in token_batches(model, texts, batch_size):
        enc = model.encode([texts[r] for r in rows])
        keep = enc["attention_mask"].bool()
        if at == "last":  # right padding: each row's last real token
            last = keep.long().sum(-1) - 1
            keep = torch.zeros_like(keep)
            keep[torch.arange(len(rows)), last] = True
        with capture_inputs(sites) as acts:
            model.run_through(model.n_layers - 1, enc)  # the unembedding is not needed
        for l in range(model.n_layers):
            per_layer[l].append(acts[l][0][keep].float().cpu())
    out = [torch.cat(a) for a in per_layer]
    n = out[0].shape[0]
    if n > max_tokens:
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_tokens]
        out = [a[pick] for a in out]
    return out


def quantile_map(pos: torch.Tensor, neg: torch.Tensor, n_quantiles: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The least-squares affine map from ``pos`` [N, d] onto ``neg`` [M, d], column by column,
    between their ``n_quantiles`` matched quantiles: (omega [d], beta [d]). A column whose
    ``pos`` quantiles do not vary gets the mean map (omega 1, beta = mean(neg) - mean(pos))."""
    q = torch.linspace(0, 1, n_quantiles)
    qp, qn = torch.quantile(pos.float(), q, dim=0).double(), torch.quantile(neg.float(), q, dim=0).double()
    cp, cn = qp - qp.mean(0), qn - qn.mean(0)
    var = (cp * cp).sum(0)
    ok = var > 1e-12 * (1 + qp.abs().max(0).values ** 2)
    omega = torch.where(ok, (cp * cn).sum(0) / torch.where(ok, var, torch.ones_like(var)), torch.ones_like(var))
    beta = torch.where(ok, qn.mean(0) - omega * qp.mean(0), neg.double().mean(0) - pos.double().mean(0))
    return omega.float(), beta.float()


def fit_transport(model: LoadedModel, concept_texts: Sequence[str], contrast_texts: Sequence[str], *,
                  kind: str = "mean", strength: float = 1.0, n_quantiles: int = 32, max_tokens: int = 8192,
                  seed: int = 0, batch_size: int = 16, at: str = "all") -> Transport:
    """The ``Transport`` of every neuron of ``model`` from ``concept_texts`` to ``contrast_texts``
    (fit texts only: the map is part of the method, never fitted on held-out data), from the
    activations at every token (``at="all"``) or at each text's last token (``"last"``)."""
    if kind not in TRANSPORT_KINDS:
        raise ValueError(f"transport kind must be one of {', '.join(TRANSPORT_KINDS)}, got {kind!r}")
    check_fitted_at(at)  # before any pass
    concept_texts, contrast_texts = list(concept_texts), list(contrast_texts)
    if not concept_texts or not contrast_texts:
        raise ValueError(f"transport needs concept and contrast texts ({len(concept_texts)} concept, "
                         f"{len(contrast_texts)} contrast given)")
    if n_quantiles < 2:
        raise ValueError(f"n_quantiles must be >= 2, got {n_quantiles}")
    pos = _activations(model, concept_texts, max_tokens, seed, batch_size, at)
    neg = _activations(model, contrast_texts, max_tokens, seed + 1, batch_size, at)
    omega = torch.ones(model.n_layers, model.d_ff)
    beta = torch.empty(model.n_layers, model.d_ff)
    for l in range(model.n_layers):
        if kind == "linear":
            omega[l], beta[l] = quantile_map(pos[l], neg[l], n_quantiles)
        else:
            beta[l] = (neg[l].double().mean(0) - pos[l].double().mean(0)).float()
    return Transport(omega, beta, float(strength), kind, at)
