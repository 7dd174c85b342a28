"""The fluency cost of turning a neuron off, and the specificity-aware score built on it.

A neuron whose removal moves the concept score is not a concept neuron if its removal also hurts
language modelling of everything else (punctuation handling, massive activations). Its cost:

    cost(l, k) = mean over text sets T of | dNLL_T(l, k) |,
    dNLL_T(l, k) ~ (1 / n_tokens(T)) * sum_{x in T} sum_t dNLL(x)/da_{l,k}(x, t) * (v_{l,k}(x, t) - a_{l,k}(x, t))

the first-order estimate of the change of the mean negative log-likelihood per token of T when the
neuron takes its turned-off value v (0, its mean, alpha * a, or its transported value). The text sets are the fit
contrast texts of the concept and ``FLUENCY_TEXTS`` (plain English written for this package;
the perplexity check of the evaluation uses other texts). The absolute value ranks down neurons
whose removal changes the loss in either direction: the first-order sign is unreliable for the
large, generic neurons this is meant to catch. Cost: one forward and one backward pass per text,
for all neurons at once.

The specificity-aware score (``specificity`` = lambda):

    score(l, k) = effect(l, k) / gap_fit - lambda * cost(l, k)

with effect the scorer's own score (the drop of S) and gap_fit = mean S(P_fit) - mean S(N_fit), so
that lambda trades a share of the concept gap against nats per token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..concepts.representations import check_finite, token_batches
from ..hooks import capture_inputs, outputs_require_grad
from ..interventions import Intervention, Zero
from ..models.loaded import LoadedModel

FLUENCY_TEXTS: tuple[str, ...] = (
    "Could you send me the address of the restaurant before six?",
    "The river rose after three days of heavy rain in the hills.",
    "Most bicycles need their chains oiled a few times a year.",
    "I think the second chapter is the best part of the book.",
    "The committee will publish its report at the end of March.",
    "Water boils at a lower temperature high up in the mountains.",
    "We painted the spare room a pale shade of green.",
    "Her favourite song came on the radio during the drive home.",
    "The printer on the third floor is out of paper again.",
    "Add the onions to the pan and cook them until they are soft.",
    "The school concert starts at seven, so we should leave early.",
    "Many birds fly south when the days get shorter.",
    "He collects old maps and keeps them in flat drawers.",
    "The new bridge shortened the trip across the bay by twenty minutes.",
    "Thanks for the invitation; we would be glad to come.",
    "The doctor told him to drink more water and rest for a week.",
    "A light breeze moved the curtains in the open window.",
    "The store will be closed for inventory on the first Monday of the month.",
    "They spent the afternoon sorting photographs into albums.",
    "The museum guide explained how the old printing press worked.",
    "Please keep your ticket until the end of the journey.",
    "The football match was postponed because the pitch was flooded.",
    "She learned to play the piano when she was seven years old.",
    "Fresh herbs make a simple salad taste much better.",
    "The town hall clock has been running five minutes slow.",
    "My brother is moving to a smaller flat closer to his work.",
    "The garden looks different every season of the year.",
    "We watched the stars from the roof until it got too cold.",
    "The manual explains how to reset the router in three steps.",
    "On rainy days the children play board games in the hall.",
)

DEFAULT_SPECIFICITY = 10.0  # lambda; chosen on the grid of docs/results.md


def loss_effect_first_order(model: LoadedModel, texts: Sequence[str], intervention: Intervention | None = None,
                            batch_size: int = 8) -> torch.Tensor:
    """First-order change of the mean NLL per predicted token of ``texts`` when each neuron alone is
    turned off by ``intervention`` (default zero) at every position: [n_layers, d_ff].

    sum over texts and positions of dNLL/da * (v - a), divided by the number of predicted tokens
    (NLL summed over every text's tokens 1..T-1; right padding masked). One forward and one
    backward pass per text."""
    texts = list(texts)
    if not texts:
        raise ValueError("the fluency cost needs at least one text")
    iv = intervention or Zero()
    edits = [iv.block_affine(l, model.d_ff) for l in range(model.n_layers)]  # refuses dampening without one alpha
    L = model.n_layers
    total = torch.zeros(L, model.d_ff, dtype=torch.float64)
    n_tokens = 0
    sites = dict(enumerate(model.sites))
    emb = model.hf.get_input_embeddings()

    for rows in token_batches(model, texts, batch_size):
        enc = model.encode([texts[r] for r in rows])
        mask = enc["attention_mask"]
        with outputs_require_grad(emb), torch.enable_grad(), capture_inputs(sites) as acts:
            logits = model.logits(enc)  # [B, T, V]
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            ll = logp.gather(-1, enc["input_ids"][:, 1:, None]).squeeze(-1)  # [B, T-1]
            predicted = mask[:, 1:].float()
            nll = -(ll * predicted).sum()
            a = [acts[l][0] for l in range(L)]
            grads = model.gradients(nll, a, len(rows))
        n_tokens += int(predicted.sum())
        m = mask[..., None].to(a[0].dtype)
        for l in range(L):
            x = a[l].detach()
            delta = edits[l].to(x.device, x.dtype).delta(x)  # the change a -> a * scale + shift makes
            contrib = (delta * grads[l] * m).sum((0, 1))
            check_finite(contrib, f"the fluency cost of block {l}")
            total[l] += contrib.double().cpu()
    if n_tokens == 0:
        raise ValueError("the fluency texts have no token to predict (every text is a single token)")
    return (total / n_tokens).float()


def fluency_cost(model: LoadedModel, contrast_texts: Sequence[str], intervention: Intervention | None = None,
                 batch_size: int = 8) -> torch.Tensor:
    """cost(l, k) of the module docstring: the mean of |first-order dNLL| over the fit contrast
    texts and ``FLUENCY_TEXTS``: [n_layers, d_ff] (nats per token)."""
    sets = [list(contrast_texts), list(FLUENCY_TEXTS)] if contrast_texts else [list(FLUENCY_TEXTS)]
    return torch.stack([loss_effect_first_order(model, t, intervention, batch_size).abs() for t in sets]).mean(0)


def specificity_aware(effect: torch.Tensor, cost: torch.Tensor, gap_fit: float, specificity: float) -> torch.Tensor:
    """effect / gap_fit - specificity * cost, elementwise ([n_layers, d_ff]; NaN stays NaN)."""
    if not gap_fit > 0:
        raise ValueError(f"the concept score does not separate the fit texts (gap {gap_fit:.4g} <= 0); "
                         "a specificity-aware score needs a positive gap")
    if specificity < 0:
        raise ValueError(f"specificity must be >= 0, got {specificity}")
    return effect / gap_fit - specificity * cost
