"""An edit of the residual stream along one direction, at one block's output, every position: the
direction-level ceiling of a neuron intervention (what removing the concept direction itself does,
beside what turning its neurons off does).

- ``project``: h -> h - (h . u) u, u = v / |v|: the direction removed;
- ``subtract``: h -> h - v: the concept vector subtracted (a constant shift).

``DirectionEdits`` edits several blocks at once, each along its own direction (the concept direction
read at every block of a span removed at each of them, so later blocks cannot write it back from
what the earlier ones kept).
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

    @property
    def parts(self) -> tuple["DirectionEdit", ...]:
        """The single-block edits it is made of (itself), as ``DirectionEdits.parts``."""
        return (self,)


@dataclass(frozen=True)
class DirectionEdits:
    """Several blocks' outputs, each edited along its own direction (``edits``: one per block, in
    block order; all of one kind)."""

    edits: tuple[DirectionEdit, ...]

    def __post_init__(self) -> None:
        edits = tuple(sorted(self.edits, key=lambda e: e.layer))
        if not edits or not all(isinstance(e, DirectionEdit) for e in edits):
            raise ValueError("DirectionEdits needs at least one DirectionEdit")
        layers = [e.layer for e in edits]
        if len(set(layers)) != len(layers):
            raise ValueError(f"DirectionEdits edits each block once, got blocks {layers}")
        if len({e.kind for e in edits}) != 1:
            raise ValueError("DirectionEdits' edits are all of one kind (project or subtract)")
        object.__setattr__(self, "edits", edits)

    @property
    def parts(self) -> tuple[DirectionEdit, ...]:
        return self.edits

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(e.layer for e in self.edits)

    @property
    def kind(self) -> str:
        return self.edits[0].kind

    def describe(self) -> str:
        what = "concept direction removed" if self.kind == "project" else "concept vector subtracted"
        return f"{what} from the outputs of blocks {_span(self.layers)} (each block's own), every position"

    def settings(self) -> dict:
        return {"layers": list(self.layers), "kind": self.kind,
                "vector_norms": [float(e.vector.norm()) for e in self.edits]}


def _span(layers: tuple[int, ...]) -> str:
    if len(layers) > 2 and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(map(str, layers))
