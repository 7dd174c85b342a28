"""An edit of the residual stream along one direction, at one block's output, every position: the
direction-level ceiling of a neuron intervention (what removing the concept direction itself does,
beside what turning its neurons off does).

- ``project``: h -> h - (h . u) u, u = v / |v|: the direction removed;
- ``subtract``: h -> h - v: the concept vector subtracted (a constant shift).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DIRECTION_KINDS = ("project", "subtract")


@dataclass(frozen=True)
class DirectionEdit:
    """Block ``layer``'s output h [..., d_model] edited along ``vector`` [d_model] (``kind``)."""

    layer: int
    vector: torch.Tensor
    kind: str = "project"

    def __post_init__(self) -> None:
        if self.kind not in DIRECTION_KINDS:
            raise ValueError(f"a direction edit is one of {', '.join(DIRECTION_KINDS)}, got {self.kind!r}")
        v = torch.as_tensor(self.vector).float().flatten()
        if not torch.isfinite(v).all() or float(v.norm()) == 0.0:
            raise ValueError("a direction edit needs a finite, non-zero vector")
        object.__setattr__(self, "vector", v)

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        v = self.vector.to(h.device)
        if self.kind == "subtract":
            return (h.float() - v).to(h.dtype)
        u = v / v.norm()
        hf = h.float()
        return (hf - (hf @ u)[..., None] * u).to(h.dtype)

    def describe(self) -> str:
        what = "concept direction removed" if self.kind == "project" else "concept vector subtracted"
        return f"{what} from block {self.layer}'s output, every position"

    def settings(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, "vector_norm": float(self.vector.norm())}
