"""One arm of an evaluation: a ``Condition`` (a name, the neurons turned off and how, and, for the
direction-level ceiling, an edit of the residual stream or of what some neurons write)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from ..models.loaded import LoadedModel
from .direction import DirectionEdit, DirectionEdits
from .selection import NeuronSelection
from .types import Intervention, Zero
from .writes import NeuronWrites


@dataclass(frozen=True)
class Condition:
    """One arm of an evaluation: ``name``, the neurons turned off (none: the model as it is) and
    how. Checked when made: a dampened selection has its factors, mean ablation its means."""

    name: str
    selection: NeuronSelection = NeuronSelection(())
    intervention: Intervention = field(default_factory=Zero)
    residual: DirectionEdit | DirectionEdits | None = None  # the residual stream edited along a direction (no neurons)
    writes: NeuronWrites | None = None  # what some neurons write, edited along a direction

    def __post_init__(self) -> None:
        self.intervention.check(self.selection)

    def edits(self, model: LoadedModel) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """{layer: (neuron indices, scale, shift)}: neuron a -> a * scale + shift."""
        try:
            got = self.intervention.edits(self.selection, model.n_layers, model.d_ff)
        except ValueError as err:
            raise ValueError(f"condition {self.name!r}: {err}") from None
        return {l: (idx, e.scale, e.shift) for l, (idx, e) in got.items()}

    def content_key(self, model: LoadedModel) -> str:
        """What the condition does to the model, as a hash, its name aside: per edited block the
        neuron indices (sorted) with their scale and shift, and the residual edit's blocks, sites, kind,
        strength and direction, and the neuron-write edit's neurons, strength and direction. Two conditions with one key measure the same (the cross-study cache)."""
        h = hashlib.sha256()
        for l, (idx, scale, shift) in sorted(self.edits(model).items()):
            order = torch.argsort(idx)
            h.update(f"block {l};".encode())
            for t in (idx[order].to(torch.int64), scale.float()[order], shift.float()[order]):
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        if self.residual is not None:
            for p in self.residual.parts:
                site = "" if p.site == "block" else f" {p.site}"  # block edits keep the keys they had
                h.update(f"residual {p.layer}{site} {p.kind} {p.strength!r};".encode())
                h.update(p.vector.detach().cpu().float().contiguous().numpy().tobytes())
        if self.writes is not None:  # only where present, so other conditions keep their keys
            h.update(f"writes {self.writes.strength!r};".encode())
            h.update(torch.tensor(self.writes.neurons, dtype=torch.int64).numpy().tobytes())
            h.update(self.writes.vector.detach().cpu().float().contiguous().numpy().tobytes())
        return h.hexdigest()
