"""One arm of an evaluation: a ``Condition`` (a name, the neurons turned off and how, and, for the
direction-level ceiling, an edit of the residual stream)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.loaded import LoadedModel
from .direction import DirectionEdit, DirectionEdits
from .selection import NeuronSelection
from .types import Intervention, Zero


@dataclass(frozen=True)
class Condition:
    """One arm of an evaluation: ``name``, the neurons turned off (none: the model as it is) and
    how. Checked when made: a dampened selection has its factors, mean ablation its means."""

    name: str
    selection: NeuronSelection = NeuronSelection(())
    intervention: Intervention = field(default_factory=Zero)
    residual: DirectionEdit | DirectionEdits | None = None  # the residual stream edited along a direction (no neurons)

    def __post_init__(self) -> None:
        self.intervention.check(self.selection)

    def edits(self, model: LoadedModel) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """{layer: (neuron indices, scale, shift)}: neuron a -> a * scale + shift."""
        try:
            got = self.intervention.edits(self.selection, model.n_layers, model.d_ff)
        except ValueError as err:
            raise ValueError(f"condition {self.name!r}: {err}") from None
        return {l: (idx, e.scale, e.shift) for l, (idx, e) in got.items()}
