"""The plain reference for NEAT: for every neuron and probe text, one full forward of the model
with one hook that turns that neuron off at every position. Slow (O(n) full forwards) and
obviously right; the fast sweep must agree with it to float tolerance."""

from __future__ import annotations

import torch

from ..hooks import capture_outputs, edit_inputs
from ..models.loaded import LoadedModel
from .base import Scorer, ScoringTask


def concept_score_of(model: LoadedModel, text: str, layer: int, vector: torch.Tensor,
                     off: tuple[int, int, float] | tuple[int, int, float, float] | None = None, positions: str = "all",
                     pool: str = "last") -> float:
    """S(text), optionally with neuron (layer, k) set to value v: off=(l, k, v), or changed to
    a * scale + shift: off=(l, k, scale, shift), at every position
    (``positions="all"``) or at the read position, the last token, only (``"read"``). S reads the
    residual after block ``layer`` at the last token (``pool="last"``) or its mean over the tokens."""
    enc = model.encode([text])
    edits = {}
    if off is not None:
        edits = {off[0]: model.sites[off[0]]}

    def set_value(_key, x):
        x = x.clone()
        at = (slice(None), slice(-1, None)) if positions == "read" else (Ellipsis,)
        scale, shift = (0.0, off[2]) if len(off) == 3 else off[2:]
        x[(*at, off[1])] = x[(*at, off[1])] * scale + shift
        return x

    with torch.inference_mode(), capture_outputs({layer: model.blocks[layer]}) as outs, \
            edit_inputs(edits, set_value):
        model.forward(enc)
    h = outs[layer][0][0]  # [T, d]
    x = h[-1] if pool == "last" else h.float().mean(0)
    return float(x.float() @ vector.to(model.device).float())


class ReferenceScorer(Scorer):
    """score(l, k) = sum_x w_x [S(x) - S(x | do(a_{l,k} = v_k))], each term one full forward.
    ``positions="read"``: the neuron is turned off at the last token only.
    Cost: (n + 1) full forwards per probe text."""

    name = "reference"
    probe_based = scores_an_effect = True

    def __init__(self, positions: str = "all"):
        if positions not in ("all", "read"):
            raise ValueError(f"positions must be 'all' or 'read', got {positions!r}")
        self.positions = positions

    def params(self) -> dict:
        return {"positions": self.positions}

    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor) -> None:
        r = task.readout
        clean = [concept_score_of(model, t, r.layer, r.vector, pool=r.pool) for t in task.probes.texts]
        for l in task.layers:
            e = task.edit_off(l, model.d_ff)
            for k in task.neurons_of(l, model.d_ff):
                total = 0.0
                for t, w, s0 in zip(task.probes.texts, task.probes.weights, clean):
                    total += w * (s0 - concept_score_of(model, t, r.layer, r.vector, (l, k, float(e.scale[k]), float(e.shift[k])),
                                                          self.positions, r.pool))
                scores[l, k] = total
                if task.on_progress:
                    task.on_progress(1)
