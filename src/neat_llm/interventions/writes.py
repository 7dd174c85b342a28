"""An edit of what chosen neurons *write*, not of what they read: each neuron's contribution to the
residual stream loses its component along one direction, every position.

Neuron k of block l writes a_k w_k into the residual stream (w_k its row of the down projection,
``model.weight_out(l)``). ``NeuronWrites`` removes, at ``strength`` t in (0, 2], the part of those
writes along u = v / |v| (t = 1; t = 2 reverses it, a reflection of each output vector in the
plane orthogonal to u, so the neurons write the opposite of what they wrote along the concept):

    h_mlp -> h_mlp - t (sum_k a_k c_k) u,   c_k = w_k . u   (k over the chosen neurons of block l)

which is the weight edit w_k <- (I - t u u^T) w_k on the chosen rows only: the neurons keep firing
as they do and keep writing everything else; only what they add along the concept direction is
gone. It is the neuron-level version of the direction removed from what whole MLPs write
(``DirectionEdit(site="mlp")``; all of a block's neurons here equal that one, less a bias), so a
K-neuron set can be set beside that ceiling. Where the family normalises what its MLP writes
(Gemma 2/3: y = s * h / rms(h) enters the residual stream, h the down projection's output), the
neurons' part along u of y is (sum_k a_k c_k) / rms(h) with c_k = w_k . (s * u)
(``LoadedModel.write_directions``), and the edit takes it out of y after the norm:

    y -> y - t (sum_k a_k c_k) / rms(h) u

exactly what the chosen neurons add along u, at each position; it depends on rms(h), so no weight
edit computes it (``bake`` refuses there; the hooks make it). ``rank_writers`` picks the neurons that
write most of the direction; ``neat export --format hf --writes a-b`` bakes the edit into the down
projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.loaded import LoadedModel
from .direction import check_direction_strength


@dataclass(frozen=True)
class NeuronWrites:
    """What ``neurons`` [(block, neuron)] write, with its component along ``vector`` [d_model]
    removed at ``strength``."""

    neurons: tuple[tuple[int, int], ...]
    vector: torch.Tensor
    strength: float = 1.0

    SITE = "neuron-writes"  # what ``settings()`` records as the edit's site

    def __post_init__(self) -> None:
        neurons = tuple(sorted({(int(l), int(k)) for l, k in self.neurons}))
        if not neurons:
            raise ValueError("a neuron-write edit needs at least one neuron")
        if len(neurons) != len(tuple(self.neurons)):
            raise ValueError("a neuron-write edit lists each neuron once")
        if any(l < 0 or k < 0 for l, k in neurons):
            raise ValueError(f"neuron indices are >= 0, got {next((l, k) for l, k in neurons if l < 0 or k < 0)}")
        v = torch.as_tensor(self.vector).float().flatten()
        if not torch.isfinite(v).all() or float(v.norm()) == 0.0:
            raise ValueError("a neuron-write edit needs a finite, non-zero vector")
        check_direction_strength(self.strength, "a neuron-write edit's strength")
        object.__setattr__(self, "neurons", neurons)
        object.__setattr__(self, "vector", v)
        object.__setattr__(self, "strength", float(self.strength))

    def __len__(self) -> int:
        return len(self.neurons)

    @property
    def unit(self) -> torch.Tensor:
        return self.vector / self.vector.norm()

    def by_layer(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for l, k in self.neurons:
            out.setdefault(l, []).append(k)
        return out

    def prepared(self, model: LoadedModel) -> dict[int, "BlockWrites"]:
        """{block: what the edit does there}, on the block's device; refuses blocks or neurons out of
        range (and, by name, a family that normalises its MLP output through no known norm)."""
        out = {}
        for l, ks in self.by_layer().items():
            p, u = model.write_directions(l, self.vector)  # range and family checks
            if ks[-1] >= model.d_ff:
                raise ValueError(f"neuron ({l}, {ks[-1]}) is out of range: blocks have {model.d_ff} neurons")
            idx = torch.tensor(ks, dtype=torch.long, device=p.device)
            c = model.weight_out(l).detach()[idx].float().to(p.device) @ p
            out[l] = BlockWrites(idx, self.strength * c, u, model.check_writes(l) is not None)
        return out

    def bake(self, model: LoadedModel, hf) -> None:
        """Write the edit into ``hf``'s down-projection weights in place (``hf``: a model with
        ``model.hf``'s modules, e.g. its copy): each chosen neuron's output vector w_k becomes
        w_k - t (w_k . u) u. The biases are untouched (the edit depends on the activations only).
        Refused where the family normalises what its MLP writes: the removal after the norm depends
        on rms(h) at each position, which no weight edit computes."""
        from ..models.adapters import UnsupportedModelError, down_weight_columns, get_module

        blocks = self.prepared(model)  # the same checks as the hooks
        if any(b.normed for b in blocks.values()):
            raise UnsupportedModelError(
                f"{model.family.name} models normalise the mlp output before adding it to the residual stream: the "
                "neurons' part along the direction is taken out after that norm, scaled by 1 / rms of each position's "
                "MLP output, which no weight edit computes; the hooks of neat hate / neat bias --writers make it")
        for l, ks in self.by_layer().items():
            site = get_module(hf, f"{model.family.blocks}.{l}.{model.family.site}")
            rows = down_weight_columns(site.weight.data, model.family.down_layout)  # a view: edits land in the weight
            u = self.unit.to(rows.device)
            idx = torch.tensor(ks, dtype=torch.long, device=rows.device)
            w = rows[idx].float()
            rows[idx] = (w - self.strength * (w @ u)[:, None] * u).to(rows.dtype)

    def describe(self) -> str:
        blocks = sorted(self.by_layer())
        span = f"{blocks[0]}-{blocks[-1]}" if len(blocks) > 1 else str(blocks[0])
        at = "" if self.strength == 1.0 else f" at strength {self.strength:g}"
        return (f"concept direction removed{at} from what {len(self)} MLP neurons of block{'s' if len(blocks) > 1 else ''} "
                f"{span} write, every position")

    def settings(self) -> dict:
        return {"n_neurons": len(self), "blocks": sorted(self.by_layer()), "strength": self.strength,
                "vector_norm": float(self.vector.norm()), "site": self.SITE}


@dataclass(frozen=True)
class BlockWrites:
    """One block's part of a ``NeuronWrites``: h -> h - ((x[..., idx] @ coef) u), ``coef`` = t c,
    x the activations and h the down projection's output. ``normed`` (the family normalises h
    before adding it): h is kept and the norm's output y -> y - along r u (``after_norm``), r the
    norm's 1 / rms(h) (``LoadedModel.write_scale``)."""

    idx: torch.Tensor
    coef: torch.Tensor
    unit: torch.Tensor
    normed: bool = False

    def along(self, x: torch.Tensor) -> torch.Tensor:
        """sum_k a_k t c_k at each position: [..., T] float32."""
        return x[..., self.idx].float() @ self.coef

    def apply(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.normed:
            raise RuntimeError("a block whose MLP output is normalised is edited after the norm (after_norm)")
        return (h.float() - self.along(x)[..., None] * self.unit).to(h.dtype)

    def after_norm(self, along: torch.Tensor, r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The norm's output y with the neurons' part along u taken out: ``along`` from the activations
        (``along``), r the norm's 1 / rms of its input at each position (``LoadedModel.write_scale``)."""
        return (y.float() - (along * r)[..., None] * self.unit).to(y.dtype)


def rank_writers(model: LoadedModel, positive_means: torch.Tensor, contrast_means: torch.Tensor,
                 vector: torch.Tensor, span: tuple[int, int], k: int) -> tuple[tuple[int, int], ...]:
    """The ``k`` neurons of blocks ``span`` (a, b) that write most of ``vector``'s direction u on
    concept text beyond contrast text: ranked by (mean activation on the positives - on the contrast,
    [n_layers, d_ff]) x (the neuron's write along u, ``weight_out`` . u), largest first (ties by
    position); a neuron's share of the concept-minus-contrast gap along u that the span's MLPs add to
    the residual stream."""
    a, b = span
    if not 0 <= a <= b < model.n_layers:
        raise ValueError(f"blocks {a}-{b} are not a span of the model's blocks 0..{model.n_layers - 1}")
    n = (b - a + 1) * model.d_ff
    if not 0 < k <= n:
        raise ValueError(f"{k} writer neurons asked for; blocks {a}-{b} have {n}")
    score = torch.stack([(positive_means[l] - contrast_means[l]).float().cpu()
                         * model.write_along(l, vector) for l in range(a, b + 1)])
    return top_writers(score, span, k)


def top_writers(score: torch.Tensor, span: tuple[int, int], k: int) -> tuple[tuple[int, int], ...]:
    """The ``k`` neurons with the largest ``score`` [blocks of ``span``, d_ff] (ties by position)."""
    a, b = span
    if score.shape[0] != b - a + 1:
        raise ValueError(f"a score of {score.shape[0]} blocks for the span {a}-{b}")
    if not 0 < k <= score.numel():
        raise ValueError(f"{k} writer neurons asked for; blocks {a}-{b} have {score.numel()}")
    d_ff = score.shape[1]
    top = torch.argsort(score.flatten(), descending=True, stable=True)[:k]
    return tuple((a + int(i) // d_ff, int(i) % d_ff) for i in top)


def random_writes(edit: NeuronWrites, span: tuple[int, int], d_ff: int, n: int, seed: int) -> list[NeuronWrites]:
    """``n`` edits like ``edit`` (its direction and strength) on random neuron sets of its size drawn
    from blocks ``span`` (a, b) of ``d_ff`` neurons each, seeded by (``seed``, the size, the span):
    the random control of a neuron-write row."""
    import numpy as np

    a, b = span
    pool, k = (b - a + 1) * d_ff, len(edit)
    if k > pool:
        raise ValueError(f"{k} random writers asked for; blocks {a}-{b} have {pool}")
    rng = np.random.default_rng([seed, k, a, b])
    return [NeuronWrites(tuple((a + int(i) // d_ff, int(i) % d_ff) for i in rng.choice(pool, size=k, replace=False)),
                         edit.vector, edit.strength) for _ in range(n)]
