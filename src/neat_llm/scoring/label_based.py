"""Baselines that read the label readout S_tok (see concepts/label_readout.py) instead of S.

- ``integrated-gradients`` (Knowledge Neurons, Dai et al. 2022):
  score(l, k) = mean_{x in P_fit} sum_t a_{l,k}(x,t) * (1/steps) sum_i dS_tok(alpha_i * a_l)/da_{l,k}(x,t),
  alpha_i = (i + 1/2)/steps, the whole block's activations scaled at every position. Per block the
  scores of all neurons sum to S_tok(x) - S_tok(x | block l's neurons all 0) (completeness, up to
  the Riemann error). Cost: m * L * steps forward and backward passes.
  Caveat: in Gemma 2/3 the MLP output is RMS-normalised before it enters the residual stream, so
  scaling a whole block by alpha changes nothing until alpha is next to 0; the path integral is
  then concentrated at 0 and a 20-step Riemann sum underestimates it badly.
- ``logprob-increase`` (Yu & Ananiadou 2024): with h_l the residual after block l at the last
  position, score(l, k) = mean_{x in P_fit} [ S_tok(h_l + a_{l,k} W_out[:, k]) - S_tok(h_l) ], both read
  directly through the final norm and unembedding. Cost: m forward passes.
"""

from __future__ import annotations

import torch

from ..concepts.label_readout import LabelReadout
from ..concepts.representations import check_finite
from ..hooks import capture_inputs, capture_outputs, edit_inputs
from ..models.loaded import LoadedModel
from .base import Scorer, ScoringTask


class IntegratedGradientsScorer(Scorer):
    name = "integrated-gradients"
    reads_label = True

    def __init__(self, steps: int = 20, label: LabelReadout | None = None, max_texts: int | None = None):
        self.steps = steps
        self.label = label or LabelReadout()
        self.max_texts = max_texts  # cap on the fit positives used (the cost is m * L * steps)

    def params(self) -> dict:
        return {"steps": self.steps, "max_texts": self.max_texts, "template": self.label.template,
                "concept": self.label.concept,
                "positive_word": self.label.positive_word, "negative_word": self.label.negative_word}

    def layer_attribution(self, model: LoadedModel, text: str, layer: int) -> torch.Tensor:
        """IG of every neuron of ``layer`` on one text: [d_ff]."""
        enc = model.encode([self.label.prompt(text)] * self.steps)
        alpha = (torch.arange(self.steps, dtype=model.dtype, device=model.device) + 0.5) / self.steps
        held: dict[str, torch.Tensor] = {}

        def scale(_key, x):
            held["a"] = x.detach()[0]  # [T, d_ff]: the clean activation (every copy is the same text)
            held["scaled"] = (alpha[:, None, None] * x.detach()).requires_grad_(True)
            return held["scaled"]

        with torch.enable_grad(), edit_inputs({layer: model.sites[layer]}, scale):
            logits = model.logits(enc)[:, -1]
            s = self.label.from_logits(model, logits)  # [steps]
            (g,) = model.gradients(s.sum(), held["scaled"], self.steps)  # [steps, T, d_ff]
        ig = (held["a"].float() * g.float().mean(0)).sum(0)
        check_finite(ig, f"integrated gradients of block {layer}")
        return ig

    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor) -> None:
        pos, _ = task.fit_texts(self.name)
        if self.max_texts is not None and len(pos) > self.max_texts:
            import random

            pos = random.Random(task.seed).sample(list(pos), self.max_texts)
        for l in task.layers:
            idx = task.neurons_of(l, model.d_ff)
            total = torch.zeros(model.d_ff)
            for t in pos:
                total += self.layer_attribution(model, t, l).cpu()
            scores[l, idx] = (total / len(pos))[idx]
            if task.on_progress:
                task.on_progress(len(idx))


class LogprobIncreaseScorer(Scorer):
    name = "logprob-increase"
    reads_label = True

    def __init__(self, label: LabelReadout | None = None):
        self.label = label or LabelReadout()

    def params(self) -> dict:
        return {"template": self.label.template, "concept": self.label.concept,
                "positive_word": self.label.positive_word, "negative_word": self.label.negative_word}

    @torch.inference_mode()
    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor) -> None:
        pos, _ = task.fit_texts(self.name)
        layers = sorted(task.layers)
        total = torch.zeros(len(layers), model.d_ff, dtype=torch.float64)
        for t in pos:
            enc = model.encode([self.label.prompt(t)])
            with capture_outputs({l: model.blocks[l] for l in layers}) as outs, \
                    capture_inputs({l: model.sites[l] for l in layers}) as acts:
                model.forward(enc)
            for i, l in enumerate(layers):
                h = outs[l][0][0, -1]  # [d]
                a = acts[l][0][0, -1]  # [d_ff]
                moved = h[None, :] + a[:, None] * model.weight_out(l)  # [d_ff, d]
                delta = self.label.from_residual(model, moved) - self.label.from_residual(model, h)
                check_finite(delta, f"the log-probability increase of block {l}")
                total[i] += delta.double().cpu()
        for i, l in enumerate(layers):
            idx = task.neurons_of(l, model.d_ff)
            scores[l, idx] = (total[i] / len(pos)).float()[idx]
            if task.on_progress:
                task.on_progress(len(idx))
