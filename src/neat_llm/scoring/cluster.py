"""NEAT-cluster: turn off whole clusters of neurons first, then score single neurons only inside the
best clusters.

1. Cluster each block's neurons with k-means: on their activation profiles over the fit texts
   (``basis="activation"``: each neuron's mean activation per text, standardised) or on their
   unit output weight vectors (``basis="weights"``).
2. cluster score = sum_x w_x [S(x) - S(x | the whole cluster off)]: one partial pass per cluster
   and probe text.
3. Keep the ``keep`` best clusters of all blocks; score their neurons exactly as NEAT does.
   Neurons of the other clusters are not scored (NaN); blocks after the reading layer score 0.

Cost: (clusters + neurons inside kept clusters) * b partial passes (+ m forward passes for the
activation profiles) instead of n * b.
"""

from __future__ import annotations

import torch

from ..concepts.representations import neuron_profiles
from ..models.loaded import LoadedModel
from .base import Scorer, ScoringTask
from .neat import NeatScorer, ProbeCache, group_effects


def cluster_neurons(features: torch.Tensor, n_clusters: int, seed: int) -> torch.Tensor:
    """features [d_ff, f] -> cluster label of each neuron [d_ff] (k-means, seeded)."""
    from sklearn.cluster import KMeans

    k = max(1, min(n_clusters, features.shape[0]))
    x = features.double().numpy()
    return torch.from_numpy(KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)).long()


class ClusterScorer(Scorer):
    name = "neat-cluster"
    probe_based = takes_positions = scores_an_effect = takes_token_budget = True

    def __init__(self, n_clusters: int = 32, keep: int = 16, basis: str = "activation", tokens_per_batch: int = 4096,
                 positions: str = "read"):
        if basis not in ("activation", "weights"):
            raise ValueError(f"basis must be 'activation' or 'weights', got {basis!r}")
        self.n_clusters, self.keep, self.basis, self.tokens_per_batch = n_clusters, keep, basis, tokens_per_batch
        # the kept clusters' neurons are turned off at ``positions`` when scored exactly (NeatScorer checks the value)
        self.verifier = NeatScorer(tokens_per_batch, positions=positions)
        self.last_clusters: dict[int, torch.Tensor] = {}
        self.last_cluster_scores: list[tuple[float, int, int]] = []

    @property
    def positions(self) -> str:
        """Where the neurons scored exactly are turned off (the verifier's positions)."""
        return self.verifier.positions

    def params(self) -> dict:
        return {"n_clusters": self.n_clusters, "keep": self.keep, "basis": self.basis,
                "tokens_per_batch": self.tokens_per_batch, "positions": self.verifier.positions}

    def _features(self, model: LoadedModel, task: ScoringTask, layers: list[int]) -> dict[int, torch.Tensor]:
        if self.basis == "weights":
            return {l: torch.nn.functional.normalize(model.weight_out(l).float().cpu(), dim=1) for l in layers}
        pos, neg = task.fit_texts(self.name)
        prof = neuron_profiles(model, pos + neg, layers)  # [m, len(layers), d_ff]
        out = {}
        for i, l in enumerate(layers):
            f = prof[:, i].T  # [d_ff, m]
            out[l] = (f - f.mean(1, keepdim=True)) / f.std(1, keepdim=True).clamp_min(1e-6)
        return out

    def _score(self, model: LoadedModel, task: ScoringTask, scores: torch.Tensor) -> None:
        top = task.readout.layer
        for l in task.layers:
            if l > top:
                scores[l, task.neurons_of(l, model.d_ff)] = 0.0
        layers = sorted(l for l in task.layers if l <= top)
        if not layers:
            return
        feats = self._features(model, task, layers)
        caches = [ProbeCache(model, t, top, task.readout.vector, task.readout.pool) for t in task.probes.texts]
        ranked: list[tuple[float, int, int]] = []  # (cluster score, layer, cluster id)
        self.last_clusters = {}
        for l in layers:
            allowed = torch.tensor(task.neurons_of(l, model.d_ff), dtype=torch.long)
            labels = torch.full((model.d_ff,), -1, dtype=torch.long)
            labels[allowed] = cluster_neurons(feats[l][allowed], self.n_clusters, task.seed)
            self.last_clusters[l] = labels
            n_c = int(labels.max()) + 1
            masks = torch.stack([(labels == c).float() for c in range(n_c)])  # [n_c, d_ff]
            off = task.edit_off(l, model.d_ff).to(model.block_device(l), model.dtype)
            total = torch.zeros(n_c)
            for cache, w in zip(caches, task.probes.weights):
                total += w * group_effects(model, cache, l, top, masks, off, self.tokens_per_batch)
            ranked += [(float(total[c]), l, c) for c in range(n_c)]
        ranked.sort(key=lambda r: -r[0])
        self.last_cluster_scores = ranked
        chosen: dict[int, list[int]] = {}
        for _, l, c in ranked[:self.keep]:
            chosen.setdefault(l, []).extend(torch.nonzero(self.last_clusters[l] == c).flatten().tolist())
        verify = ScoringTask(**{**task.__dict__, "layers": sorted(chosen), "neurons": chosen, "done": {},
                                "on_layer_done": None})
        self.verifier._score(model, verify, scores)
