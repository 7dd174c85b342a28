"""The intervention file: a run's neurons and how they are turned off, as versioned JSON that
travels without the run (schema: docs/intervention-spec.schema.json). ``neat export RUN --out
spec.json`` writes one; ``turn_off(model, "spec.json")`` and ``neat generate --spec`` apply it after
checking that the model is the one the neurons were found in (its weights hash).

Per neuron: its block and index, the module whose input is the neuron site (e.g.
``model.layers.3.mlp.down_proj``), the TransformerLens hook name of the same activation
(``blocks.3.mlp.hook_post``), and the value its intervention needs (the mean activation for
``mean``, the factor for ``dampen``, 0 for ``zero``, beta and ``omega`` for ``transport``, whose
``strength`` and ``kind`` sit beside the mode).

Reading is strict: whole numbers are whole numbers (``3.7`` and ``true`` are not neuron 3 or 1),
values are finite numbers, a neuron's hook and module name its own block, unknown fields are
refused, and a file with any such fault is refused whole (``SpecError``), never applied in part.
"""

from __future__ import annotations

from collections.abc import Callable

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..models.adapters import FAMILIES, ModelFamily
from ..models.loaded import LoadedModel
from .selection import NeuronSelection
from .types import INTERVENTIONS, Intervention

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
    value: float  # mean: the mean activation it is set to; dampen: its factor; zero: 0; transport: beta
    score: float | None = None
    omega: float | None = None  # transport: the slope of its map (a -> (1 - t) a + t (omega a + value))

    def fields(self) -> dict:
        """What the file keeps of it (``omega`` only where the intervention has one)."""
        d = asdict(self)
        if d["omega"] is None:
            del d["omega"]
        return d


NEURON_FIELDS = {f.name: f.type for f in SpecNeuron.__dataclass_fields__.values()}
TOP_FIELDS = {"format", "version", "model", "intervention", "neurons", "provenance"}
MODEL_FIELDS = {"id", "family", "weights_hash", "n_layers", "d_ff"}


def _whole(x, what: str) -> int:
    """A whole number from JSON (3, not 3.7, "3" or true)."""
    if isinstance(x, bool) or not isinstance(x, int):
        raise SpecError(f"{what} must be a whole number, got {x!r}")
    return x


def _number(x, what: str) -> float:
    """A finite number from JSON (not NaN, Infinity, "abc" or true)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise SpecError(f"{what} must be a number, got {x!r}")
    if not math.isfinite(x):
        raise SpecError(f"{what} must be a finite number, got {x!r}")
    return float(x)


def _text(x, what: str) -> str:
    if not isinstance(x, str):
        raise SpecError(f"{what} must be a string, got {x!r}")
    return x


def _fields(d, allowed: set[str], required: set[str], what: str) -> dict:
    if not isinstance(d, dict):
        raise SpecError(f"{what} must be a JSON object, got {type(d).__name__}")
    extra, missing = sorted(set(d) - allowed), sorted(required - set(d))
    if extra:
        raise SpecError(f"{what} has unknown field(s) {', '.join(extra)} (known: {', '.join(sorted(allowed))})")
    if missing:
        raise SpecError(f"{what} is missing field(s) {', '.join(missing)}")
    return d


def _neuron(d, i: int) -> SpecNeuron:
    what = f"neuron {i + 1} of the file"
    d = _fields(d, set(NEURON_FIELDS), {"rank", "layer", "index", "module", "hook", "value"}, what)
    score = None if d.get("score") is None else _number(d["score"], f"{what}: score")
    omega = None if d.get("omega") is None else _number(d["omega"], f"{what}: omega")
    return SpecNeuron(_whole(d["rank"], f"{what}: rank"), _whole(d["layer"], f"{what}: layer"),
                      _whole(d["index"], f"{what}: index"), _text(d["module"], f"{what}: module"),
                      _text(d["hook"], f"{what}: hook"), _number(d["value"], f"{what}: value"), score, omega)


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
    settings: dict = field(default_factory=dict)  # the intervention's own settings (transport: strength, kind)

    def __post_init__(self) -> None:
        cls = INTERVENTIONS.get(self.mode)
        if cls is None:
            raise SpecError(f"mode must be one of {', '.join(INTERVENTIONS)}, got {self.mode!r}")
        for n in self.neurons:
            if not (0 <= n.layer < self.n_layers and 0 <= n.index < self.d_ff):
                raise SpecError(f"neuron ({n.layer}, {n.index}) is outside {self.n_layers} blocks of {self.d_ff}")
            for name in ("value", "omega"):
                v = getattr(n, name)
                why = None if v is None else cls.check_spec_value(name, v)
                if why:
                    raise SpecError(f"neuron ({n.layer}, {n.index}): {why}")
            if n.hook != hook_name(n.layer):
                raise SpecError(f"neuron ({n.layer}, {n.index}) names hook {n.hook!r}, which is not block {n.layer}'s "
                                f"({hook_name(n.layer)!r})")
            if f".{n.layer}." not in f".{n.module}.":
                raise SpecError(f"neuron ({n.layer}, {n.index}) names module {n.module!r}, which is not in block {n.layer}")
        if len({(n.layer, n.index) for n in self.neurons}) != len(self.neurons):
            raise SpecError("the file names a neuron twice")
        try:
            self.intervention()
        except ValueError as err:
            raise SpecError(f"the file's {self.mode} intervention cannot be made: {err}") from None

    # --- to and from disk ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": SPEC_FORMAT, "version": SPEC_VERSION,
                "model": {"id": self.model_id, "family": self.model_family, "weights_hash": self.weights_hash,
                          "n_layers": self.n_layers, "d_ff": self.d_ff},
                "intervention": {"mode": self.mode, **self.settings},
                "neurons": [n.fields() for n in self.neurons], "provenance": self.provenance}

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the file; an existing file is refused unless ``overwrite``."""
        from ..files import write_text

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; choose another --out or pass --force to replace it")
        write_text(path, json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "InterventionSpec":
        if not isinstance(d, dict) or d.get("format") != SPEC_FORMAT:
            raise SpecError(f"not a neat-llm intervention file (format {d.get('format') if isinstance(d, dict) else d!r})")
        version = d.get("version")
        if isinstance(version, bool) or version != SPEC_VERSION or not isinstance(version, int):
            raise SpecError(f"intervention file version {version!r} is not {SPEC_VERSION} (a whole number): written "
                            "by another neat-llm, or edited by hand")
        _fields(d, TOP_FIELDS, TOP_FIELDS - {"provenance"}, "the file")
        m = _fields(d["model"], MODEL_FIELDS, MODEL_FIELDS, "the file's model")
        iv = dict(_fields(d["intervention"], {"mode", "strength", "kind", "at"}, {"mode"}, "the file's intervention"))
        mode = _text(iv.pop("mode"), "the intervention's mode")
        if "strength" in iv:
            iv["strength"] = _number(iv["strength"], "the intervention's strength")
        if "kind" in iv:
            iv["kind"] = _text(iv["kind"], "the intervention's kind")
        if "at" in iv:
            iv["at"] = _text(iv["at"], "where the intervention was fitted")
        if not isinstance(d["neurons"], list):
            raise SpecError(f"the file's neurons must be a list, got {type(d['neurons']).__name__}")
        neurons = tuple(_neuron(n, i) for i, n in enumerate(d["neurons"]))
        prov = d.get("provenance") or {}
        if not isinstance(prov, dict):
            raise SpecError("the file's provenance must be a JSON object")
        n_layers, d_ff = _whole(m["n_layers"], "the model's n_layers"), _whole(m["d_ff"], "the model's d_ff")
        if n_layers < 1 or d_ff < 1:
            raise SpecError(f"the model's n_layers and d_ff must be >= 1, got {n_layers} and {d_ff}")
        return cls(_text(m["id"], "the model's id"), _text(m["family"], "the model's family"),
                   _text(m["weights_hash"], "the model's weights_hash"), n_layers, d_ff, mode, neurons, dict(prov), iv)

    @classmethod
    def load(cls, path: str | Path) -> "InterventionSpec":
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"no intervention file {path}")
        try:
            d = json.loads(path.read_text(), parse_constant=_no_constant)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SpecError(f"{path} is not JSON: {err}") from None
        except ValueError as err:
            raise SpecError(f"{path}: {err}") from None
        return cls.from_dict(d)

    # --- applying it -----------------------------------------------------------------------------
    def check_model(self, model: LoadedModel) -> None:
        """The neurons are only meaningful in the model they were found in: same weights."""
        self.check_against(model.model_id, model.family, model.n_layers, model.d_ff, lambda: model.weights_hash)

    def check_against(self, model_id: str, family: ModelFamily, n_layers: int, d_ff: int,
                      weights_hash: "Callable[[], str] | None") -> None:
        """``check_model`` for a model described by its parts (the interop bridges check a Hugging
        Face model held by another tool); ``weights_hash`` None skips the weights check."""
        if (n_layers, d_ff) != (self.n_layers, self.d_ff):
            raise SpecError(f"the file is for {self.n_layers} blocks of {self.d_ff} neurons ({self.model_id}); "
                            f"{model_id} has {n_layers} blocks of {d_ff}")
        got = weights_hash() if weights_hash is not None else self.weights_hash
        if got != self.weights_hash:
            raise SpecError(f"the file's neurons were found in {self.model_id} (weights {self.weights_hash[:12]}), "
                            f"not in {model_id} (weights {got[:12]}): another model or other weights")
        for n in self.neurons:
            want = site_module(family, n.layer)
            if n.module != want:
                raise SpecError(f"neuron ({n.layer}, {n.index}) names module {n.module!r}; in {model_id} "
                                f"block {n.layer}'s neuron site is {want!r}")

    def _ranked(self) -> list[SpecNeuron]:
        return sorted(self.neurons, key=lambda n: n.rank)

    def _made(self):
        ns = self._ranked()
        fields = [(n.layer, n.index, {"value": n.value, "omega": n.omega}) for n in ns]
        return INTERVENTIONS[self.mode].from_spec(fields, dict(self.settings), self.n_layers, self.d_ff)

    def selection(self) -> NeuronSelection:
        """The neurons in rank order, with their scores (and their own dampening factors)."""
        ns = self._ranked()
        _, alphas = self._made()
        return NeuronSelection(tuple((n.layer, n.index) for n in ns),
                               scores=tuple(float("nan") if n.score is None else n.score for n in ns), alphas=alphas)

    def intervention(self, selection: NeuronSelection | None = None) -> Intervention:
        """The intervention, with the values it needs."""
        return self._made()[0]

    def family(self) -> ModelFamily:
        for f in FAMILIES:
            if f.name == self.model_family:
                return f
        raise SpecError(f"unknown model family {self.model_family!r}")


def _no_constant(name: str):
    raise ValueError(f"the file holds {name}, which is not a JSON number")


def make_spec(model_id: str, family: ModelFamily, weights_hash: str, n_layers: int, d_ff: int,
              selection: NeuronSelection, intervention: Intervention, provenance: dict | None = None) -> InterventionSpec:
    """An intervention file for ``selection`` turned off by ``intervention``."""
    values = intervention.spec_values(selection)
    scores = selection.scores or (None,) * len(selection)
    neurons = tuple(SpecNeuron(i + 1, l, k, site_module(family, l), hook_name(l), float(v["value"]),
                               None if s is None or s != s else float(s), v.get("omega"))
                    for i, ((l, k), v, s) in enumerate(zip(selection.neurons, values, scores)))
    settings = {k: v for k, v in intervention.spec_settings().items() if k != "mode"}
    return InterventionSpec(model_id, family.name, weights_hash, n_layers, d_ff, intervention.name, neurons,
                            dict(provenance or {}), settings)
