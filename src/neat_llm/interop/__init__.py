"""The neurons in the tools of the field (``pip install "neat-llm[interop]"``): an intervention
file (``neat export``, or ``neat_llm.export.spec_from_run``) applied inside an nnsight trace, as a
pyvene ``IntervenableModel`` saved and loaded with pyvene's own calls, or as TransformerLens
``fwd_hooks``. Each gives the logits ``neat_llm.turn_off`` gives on the same model, and checks the
file against the model first. The libraries are imported only when a bridge is used."""

from .edits import LayerEdit, check_hf_model, layer_edits
from .to_nnsight import edits_for, turn_off_in_trace
from .to_transformer_lens import fwd_hooks


def intervenable_model(spec, hf_model, *, check_weights: bool = True):
    """A pyvene ``IntervenableModel`` that turns the file's neurons off (see ``to_pyvene``; pyvene
    is imported here, on first use, as it takes ~15 s)."""
    from .to_pyvene import intervenable_model as build

    return build(spec, hf_model, check_weights=check_weights)


__all__ = ["LayerEdit", "check_hf_model", "edits_for", "fwd_hooks", "intervenable_model", "layer_edits",
           "turn_off_in_trace"]
