"""An intervention file as the per-block edits other tools apply: for each block, the neuron
indices and their affine map a -> a * scale + shift (every intervention here is one: zero, mean,
dampen, transport). The nnsight, pyvene and TransformerLens bridges are written once against it,
and check the file against the Hugging Face model they are handed before anything is applied."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..interventions.spec import InterventionSpec, SpecError, hook_name, site_module
from ..interventions.types import BlockEdit
from ..models.adapters import UnsupportedModelError, family_for
from ..models.loaded import weights_hash_of


@dataclass(frozen=True)
class LayerEdit:
    """Block ``layer``'s edit: neurons ``index`` [n] become ``a * scale + shift`` ([n] each), at the
    input of the block's down projection (``module``; TransformerLens: ``hook``)."""

    layer: int
    module: str
    hook: str
    index: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor

    def apply_(self, x: torch.Tensor) -> torch.Tensor:
        """Edit ``x`` [..., d_ff] in place (and return it)."""
        idx = self.index.to(x.device)
        x[..., idx] = BlockEdit(self.scale, self.shift).to(x.device).apply(x[..., idx])
        return x

    def applied(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of ``x`` with the edit (for tools that replace a value rather than edit it)."""
        return self.apply_(x.clone())


def as_spec(spec: "InterventionSpec | str | os.PathLike") -> InterventionSpec:
    return spec if isinstance(spec, InterventionSpec) else InterventionSpec.load(spec)


def layer_edits(spec: "InterventionSpec | str | os.PathLike") -> list[LayerEdit]:
    """The file's edits, one per block it touches, in block order."""
    spec = as_spec(spec)
    family = spec.family()
    edits = spec.intervention().edits(spec.selection(), spec.n_layers, spec.d_ff)
    return [LayerEdit(l, site_module(family, l), hook_name(l), idx, e.scale.float(), e.shift.float())
            for l, (idx, e) in sorted(edits.items())]


def module_at(root, path: str):
    """The submodule at a dotted path (``model.layers.3.mlp.down_proj``), indexing module lists."""
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def check_hf_model(spec: InterventionSpec, hf_model: torch.nn.Module, *, check_weights: bool = True) -> None:
    """The file's neurons mean something only in the model they were found in: same family, same
    blocks and neurons, and (``check_weights``) the same weights, by the hash the file records
    (``InterventionSpec.check_against``, the check ``turn_off`` makes)."""
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    try:
        family = family_for(model_type)
    except UnsupportedModelError as err:
        raise SpecError(f"the model handed over is not one neat-llm knows ({err})") from None
    if family.name != spec.model_family:
        raise SpecError(f"the file is for a {spec.model_family} model ({spec.model_id}); this one is {family.name} "
                        f"({model_type})")
    try:
        blocks = module_at(hf_model, family.blocks)
        site = module_at(blocks[0], family.site)
        d_ff = site.in_features if family.down_layout == "linear" else site.weight.shape[0]
    except (AttributeError, IndexError, TypeError) as err:
        raise SpecError(f"cannot find the neuron site {family.blocks}.0.{family.site} in the model: {err}") from None
    spec.check_against("this model", family, len(blocks), d_ff,
                       (lambda: weights_hash_of(hf_model)) if check_weights else None)


def checked_edits(spec: "InterventionSpec | str | os.PathLike", hf_model: torch.nn.Module,
                  check_weights: bool = True) -> list[LayerEdit]:
    spec = as_spec(spec)
    check_hf_model(spec, hf_model, check_weights=check_weights)
    return layer_edits(spec)
