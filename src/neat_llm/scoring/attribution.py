"""Attribution patching (gradient x activation): a first-order estimate of the NEAT score.

score(l, k) = mean_{x in P_fit} sum_t a_{l,k}(x, t) * dS(x)/da_{l,k}(x, t)

This is the linear estimate of S(x) - S(x | do(a_{l,k} = 0)) at every position (the same sign as
NEAT: positive = turning the neuron off lowers S). Cost: m forward + m backward passes, for all
neurons at once, with the forward stopped after the reading layer.
"""

from __future__ import annotations

import torch

from ..concepts.representations import check_finite, token_batches
from ..hooks import capture_inputs, capture_outputs, outputs_require_grad, run_until, stop_after
from ..models.loaded import LoadedModel
from .base import Scorer, ScoringTask


def gradient_x_activation(model: LoadedModel, texts: list[str], layer: int, vector: torch.Tensor,
                          batch_size: int = 8, pool: str = "last") -> torch.Tensor:
    """sum_t a * dS/da for every neuron of blocks 0..layer, averaged over ``texts``: [layer + 1, d_ff].

    The embedding output is made to require grad, so every neuron activation is a non-leaf node of
    one graph and ``autograd.grad`` gives total derivatives (through all later blocks)."""
    total = torch.zeros(layer + 1, model.d_ff, dtype=torch.float64)
    sites = {l: model.sites[l] for l in range(layer + 1)}
    emb = model.hf.get_input_embeddings()
    vec = vector.to(model.device).float()

    for rows in token_batches(model, texts, batch_size):
        enc = model.encode([texts[r] for r in rows])
        mask = enc["attention_mask"]
        last = mask.sum(1) - 1
        with outputs_require_grad(emb), torch.enable_grad(), capture_inputs(sites) as acts, \
                capture_outputs({0: model.blocks[layer]}) as outs, stop_after(model.blocks[layer]):
            run_until(lambda: model.forward(enc))
            h = outs[0][0]
            if pool == "last":
                s = h[torch.arange(len(rows)), last].float() @ vec  # [B]: S of each text
            else:  # the mean over each text's own tokens
                mm = mask[..., None].float()
                s = ((h.float() * mm).sum(1) / mm.sum(1)) @ vec
            a = [acts[l][0] for l in range(layer + 1)]
            grads = model.gradients(s.sum(), a, len(rows))  # texts are independent: per-text gradients
        m = mask[..., None].float()
        for l in range(layer + 1):
            contrib = (a[l].detach().float() * grads[l].float() * m).sum(1)  # [B, d_ff]
            check_finite(contrib, f"the attribution of block {l}")
            total[l] += contrib.sum(0).double().cpu()
    return (total / len(texts)).float()


class AttributionPatchingScorer(Scorer):
    """Attribution patching / gradient x activation over the fit positives (see module docstring)."""

    name = "attribution-patching"
    scores_an_effect = True

    def __init__(self, batch_size: int = 8):
        self.batch_size = batch_size

    def params(self) -> dict:
        return {"batch_size": self.batch_size}

    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor) -> None:
        pos = task.readout.apply(task.fit_texts(self.name)[0])
        top = task.readout.layer
        est = gradient_x_activation(model, pos, top, task.readout.vector, self.batch_size, task.readout.pool)
        for l in task.layers:
            idx = task.neurons_of(l, model.d_ff)
            scores[l, idx] = est[l, idx] if l <= top else 0.0
            if task.on_progress:
                task.on_progress(len(idx))
