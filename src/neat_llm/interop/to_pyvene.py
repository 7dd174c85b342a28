"""The neurons in pyvene: an ``IntervenableModel`` with one ``NeuronAffine`` intervention per
touched block, at the input of its down projection (our neuron site), at every position. It saves
and loads with pyvene's own calls (the indices and maps travel as the intervention's buffers):

    pv_model = intervenable_model("spec.json", hf)
    _, out = pv_model({"input_ids": ids, "attention_mask": mask}, unit_locations=None)
    pv_model.save("folder")
    again = pyvene.IntervenableModel.load("folder", hf)

The file is checked against ``hf`` (family, size, weights) before the model is built. Importing
this module imports pyvene (slow: ~15 s), so ``neat_llm.interop`` imports it only when used."""

from __future__ import annotations

import os

import pyvene as pv
import torch

from ..interventions.spec import InterventionSpec
from ..interventions.types import BlockEdit
from .edits import checked_edits


class NeuronAffine(pv.SourcelessIntervention, pv.TrainableIntervention):
    """Neurons ``index`` of the representation become ``a * scale + shift``, at every position. A
    trainable intervention only so pyvene saves its buffers; ``disable_intervention_gradients``
    is called on the model built here, and the buffers are not parameters."""

    def __init__(self, index=None, scale=None, shift=None, **kwargs):
        super().__init__(**{**kwargs, "keep_last_dim": True})
        self.register_buffer("index", torch.as_tensor([] if index is None else index, dtype=torch.long))
        self.register_buffer("scale", torch.as_tensor([] if scale is None else scale, dtype=torch.float32))
        self.register_buffer("shift", torch.as_tensor([] if shift is None else shift, dtype=torch.float32))

    def forward(self, base, source=None, subspaces=None):
        out = base.clone()
        idx = self.index.to(out.device)
        out[..., idx] = BlockEdit(self.scale, self.shift).to(out.device).apply(out[..., idx])
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("index", "scale", "shift"):  # a loaded file sizes the buffers (they start empty)
            if prefix + name in state_dict:
                setattr(self, name, state_dict[prefix + name].clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def __str__(self) -> str:
        return f"NeuronAffine({len(self.index)} neurons)"


def intervenable_model(spec: "InterventionSpec | str | os.PathLike", hf_model: torch.nn.Module, *,
                       check_weights: bool = True) -> "pv.IntervenableModel":
    """A pyvene ``IntervenableModel`` of ``hf_model`` that turns the file's neurons off."""
    edits = checked_edits(spec, hf_model, check_weights)
    reps = [pv.RepresentationConfig(layer=e.layer, component=f"{e.module}.input", unit="pos",
                                    intervention=NeuronAffine(index=e.index, scale=e.scale, shift=e.shift))
            for e in edits]
    model = pv.IntervenableModel(pv.IntervenableConfig(representations=reps), hf_model)
    model.disable_model_gradients()
    model.disable_intervention_gradients()
    return model
