"""An edit of the residual stream along one direction, at one block's output, every position: the
direction-level ceiling of a neuron intervention (what removing the concept direction itself does,
beside what turning its neurons off does).

- ``project``: h -> h - t (h . u) u, u = v / |v|: the direction removed (t = 1), shrunk (t < 1)
  or reversed (t = 2: a reflection, the component along u the opposite of what it was);
- ``subtract``: h -> h - t v: the concept vector subtracted (a constant shift),

at ``strength`` t in (0, 2] (1: the whole of it; less trades effect for fluency; up to 2 pushes the
other way, as far as the component was on the concept's side), on what
``site`` names: the block's output ("block", the residual stream after the block), or only what the
block's MLP ("mlp") or its attention ("attn") adds to the residual stream: which writer puts the
direction there.

``DirectionEdits`` edits several blocks at once, each along its own direction (the concept direction
read at every block of a span removed at each of them, so later blocks cannot write it back from
what the earlier ones kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DIRECTION_KINDS = ("project", "subtract")
DIRECTION_SITES = ("block", "mlp", "attn")


MAX_DIRECTION_STRENGTH = 2.0  # a reflection: the component along the direction reversed, not scaled past it


def check_direction_strength(value, name: str) -> None:
    """A direction edit's strength: a number in (0, 2] (``name`` says whose, in the error)."""
    if isinstance(value, bool) or not 0.0 < float(value) <= MAX_DIRECTION_STRENGTH:
        raise ValueError(f"{name} must be in (0, {MAX_DIRECTION_STRENGTH:g}], got {value!r} "
                         "(1 removes the component along the direction, 2 reverses it)")


@dataclass(frozen=True)
class DirectionEdit:
    """Block ``layer``'s output h [..., d_model] (or what its MLP or attention writes: ``site``)
    edited along ``vector`` [d_model] (``kind``, at ``strength``)."""

    layer: int
    vector: torch.Tensor
    kind: str = "project"
    strength: float = 1.0
    site: str = "block"

    def __post_init__(self) -> None:
        if self.kind not in DIRECTION_KINDS:
            raise ValueError(f"a direction edit is one of {', '.join(DIRECTION_KINDS)}, got {self.kind!r}")
        if self.site not in DIRECTION_SITES:
            raise ValueError(f"a direction edit's site is one of {', '.join(DIRECTION_SITES)}, got {self.site!r}")
        v = torch.as_tensor(self.vector).float().flatten()
        if not torch.isfinite(v).all() or float(v.norm()) == 0.0:
            raise ValueError("a direction edit needs a finite, non-zero vector")
        check_direction_strength(self.strength, "a direction edit's strength")
        object.__setattr__(self, "vector", v)
        object.__setattr__(self, "strength", float(self.strength))

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        v = self.vector.to(h.device)
        t = self.strength
        if self.kind == "subtract":
            return (h.float() - t * v).to(h.dtype)
        u = v / v.norm()
        hf = h.float()
        return (hf - (t * (hf @ u))[..., None] * u).to(h.dtype)

    def describe(self) -> str:
        return f"{_what(self.kind, self.strength)} from {_where(self.site, str(self.layer))}, every position"

    def settings(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, "vector_norm": float(self.vector.norm()),
                "strength": self.strength, "site": self.site}

    @property
    def parts(self) -> tuple["DirectionEdit", ...]:
        """The single-block edits it is made of (itself), as ``DirectionEdits.parts``."""
        return (self,)


@dataclass(frozen=True)
class DirectionEdits:
    """Several blocks' outputs (or writers), each edited along its own direction (``edits``: one per
    block and site, in block order; all of one kind and strength)."""

    edits: tuple[DirectionEdit, ...]

    def __post_init__(self) -> None:
        if not self.edits or not all(isinstance(e, DirectionEdit) for e in self.edits):
            raise ValueError("DirectionEdits needs at least one DirectionEdit")
        edits = tuple(sorted(self.edits, key=lambda e: (e.layer, DIRECTION_SITES.index(e.site))))
        where = [(e.layer, e.site) for e in edits]
        if len(set(where)) != len(where):
            raise ValueError(f"DirectionEdits edits each block's site once, got {where}")
        if len({(e.kind, e.strength) for e in edits}) != 1:
            raise ValueError("DirectionEdits' edits are all of one kind (project or subtract) and one strength")
        object.__setattr__(self, "edits", edits)

    @property
    def parts(self) -> tuple[DirectionEdit, ...]:
        return self.edits

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({e.layer for e in self.edits}))

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(s for s in DIRECTION_SITES if any(e.site == s for e in self.edits))

    @property
    def kind(self) -> str:
        return self.edits[0].kind

    @property
    def strength(self) -> float:
        return self.edits[0].strength

    def describe(self) -> str:
        blocks = {s: tuple(e.layer for e in self.edits if e.site == s) for s in self.sites}
        where = " and ".join(_where(s, _span(b), plural=len(b) > 1) for s, b in blocks.items())
        return f"{_what(self.kind, self.strength)} from {where} (each block's own), every position"

    def settings(self) -> dict:
        return {"layers": list(self.layers), "kind": self.kind, "sites": list(self.sites),
                "vector_norms": [float(e.vector.norm()) for e in self.edits], "strength": self.strength}


def _what(kind: str, strength: float) -> str:
    what = "concept direction removed" if kind == "project" else "concept vector subtracted"
    return what if strength == 1.0 else f"{what} at strength {strength:g}"


def _where(site: str, blocks: str, plural: bool = False) -> str:
    """Which output an edit changes, in words."""
    s = "s" if plural else ""
    if site == "block":
        return f"the output{s} of block{s} {blocks}" if plural else f"block {blocks}'s output"
    return f"what the {'MLP' if site == 'mlp' else 'attention'}{s} of block{s} {blocks} write{'' if plural else 's'}"


def _span(layers: tuple[int, ...]) -> str:
    if len(layers) > 2 and list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(map(str, layers))
