"""The intervention file: a run's neurons and how they are turned off, as versioned JSON that
travels without the run (schema: docs/intervention-spec.schema.json). ``neat export RUN --out
spec.json`` writes one; ``turn_off(model, "spec.json")`` and ``neat generate --spec`` apply it after
checking that the model is the one the neurons were found in (its weights hash).

Per neuron: its block and index, the module whose input is the neuron site (e.g.
``model.layers.3.mlp.down_proj``), the TransformerLens hook name of the same activation
(``blocks.3.mlp.hook_post``), and the value its intervention needs (the mean activation for
``mean``, the factor for ``dampen``, 0 for ``zero``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..models.adapters import FAMILIES, ModelFamily
from ..models.loaded import LoadedModel
from .values import MODES, Intervention, NeuronSelection

SPEC_FORMAT = "neat-llm/intervention"
SPEC_VERSION = 1


class SpecError(ValueError):
    """An intervention file that cannot be read, or that belongs to another model."""


def site_module(family: ModelFamily, layer: int) -> str:
    """The module whose input is block ``layer``'s neuron site."""
    return f"{family.blocks}.{layer}.{family.site}"


def hook_name(layer: int) -> str:
    """TransformerLens's name for the same activation (the MLP's post-activation)."""
    return f"blocks.{layer}.mlp.hook_post"


@dataclass(frozen=True)
class SpecNeuron:
    rank: int
    layer: int
    index: int
    module: str
    hook: str
    value: float  # mean: the mean activation it is set to; dampen: its factor; zero: 0
    score: float | None = None


@dataclass(frozen=True)
class InterventionSpec:
    model_id: str
    model_family: str
    weights_hash: str
    n_layers: int
    d_ff: int
    mode: str
    neurons: tuple[SpecNeuron, ...]
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SpecError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for n in self.neurons:
            if not (0 <= n.layer < self.n_layers and 0 <= n.index < self.d_ff):
                raise SpecError(f"neuron ({n.layer}, {n.index}) is outside {self.n_layers} blocks of {self.d_ff}")
            if self.mode == "dampen" and not 0.0 <= n.value <= 1.0:
                raise SpecError(f"dampening factor {n.value} of neuron ({n.layer}, {n.index}) is outside [0, 1]")
        if len({(n.layer, n.index) for n in self.neurons}) != len(self.neurons):
            raise SpecError("the file names a neuron twice")

    # --- to and from disk ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": SPEC_FORMAT, "version": SPEC_VERSION,
                "model": {"id": self.model_id, "family": self.model_family, "weights_hash": self.weights_hash,
                          "n_layers": self.n_layers, "d_ff": self.d_ff},
                "intervention": {"mode": self.mode},
                "neurons": [asdict(n) for n in self.neurons], "provenance": self.provenance}

    def save(self, path: str | Path) -> Path:
        from ..files import write_text

        path = Path(path)
        write_text(path, json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "InterventionSpec":
        if not isinstance(d, dict) or d.get("format") != SPEC_FORMAT:
            raise SpecError(f"not a neat-llm intervention file (format {d.get('format') if isinstance(d, dict) else d!r})")
        if d.get("version") != SPEC_VERSION:
            raise SpecError(f"intervention file version {d.get('version')} is not {SPEC_VERSION}: "
                            "written by another neat-llm")
        try:
            m, iv = d["model"], d["intervention"]
            neurons = tuple(SpecNeuron(**n) for n in d["neurons"])
            return cls(str(m["id"]), str(m["family"]), str(m["weights_hash"]), int(m["n_layers"]), int(m["d_ff"]),
                       str(iv["mode"]), neurons, dict(d.get("provenance") or {}))
        except (KeyError, TypeError) as err:
            raise SpecError(f"intervention file is missing or misnames a field: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> "InterventionSpec":
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"no intervention file {path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise SpecError(f"{path} is not JSON: {err}") from None
        return cls.from_dict(d)

    # --- applying it -----------------------------------------------------------------------------
    def check_model(self, model: LoadedModel) -> None:
        """The neurons are only meaningful in the model they were found in: same weights."""
        if (model.n_layers, model.d_ff) != (self.n_layers, self.d_ff):
            raise SpecError(f"the file is for {self.n_layers} blocks of {self.d_ff} neurons ({self.model_id}); "
                            f"{model.model_id} has {model.n_layers} blocks of {model.d_ff}")
        if model.weights_hash != self.weights_hash:
            raise SpecError(f"the file's neurons were found in {self.model_id} (weights {self.weights_hash[:12]}), "
                            f"not in {model.model_id} (weights {model.weights_hash[:12]}): another model or other "
                            "weights")

    def selection(self) -> NeuronSelection:
        """The neurons in rank order, with what their intervention needs (means, factors)."""
        ns = sorted(self.neurons, key=lambda n: n.rank)
        means = None
        if self.mode == "mean":
            means = torch.zeros(self.n_layers, self.d_ff)
            for n in ns:
                means[n.layer, n.index] = n.value
        return NeuronSelection(tuple((n.layer, n.index) for n in ns), means=means,
                               scores=tuple(float("nan") if n.score is None else n.score for n in ns),
                               alphas=tuple(n.value for n in ns) if self.mode == "dampen" else None)

    def intervention(self, selection: NeuronSelection | None = None) -> Intervention:
        """The mode, with the mean values it needs (from ``selection`` when already made)."""
        if self.mode != "mean":
            return Intervention(self.mode)
        return Intervention("mean", (selection or self.selection()).means)

    def family(self) -> ModelFamily:
        for f in FAMILIES:
            if f.name == self.model_family:
                return f
        raise SpecError(f"unknown model family {self.model_family!r}")


def make_spec(model_id: str, family: ModelFamily, weights_hash: str, n_layers: int, d_ff: int,
              selection: NeuronSelection, intervention: Intervention, provenance: dict | None = None) -> InterventionSpec:
    """An intervention file for ``selection`` turned off by ``intervention``."""
    if intervention.mode == "mean":
        values = [float(intervention.means[l, k]) for l, k in selection.neurons]
    elif intervention.mode == "dampen":
        values = intervention.factors(selection)
    else:
        values = [0.0] * len(selection)
    scores = selection.scores or (None,) * len(selection)
    neurons = tuple(SpecNeuron(i + 1, l, k, site_module(family, l), hook_name(l), float(v),
                               None if s is None or s != s else float(s))
                    for i, ((l, k), v, s) in enumerate(zip(selection.neurons, values, scores)))
    return InterventionSpec(model_id, family.name, weights_hash, n_layers, d_ff, intervention.mode, neurons,
                            dict(provenance or {}))
