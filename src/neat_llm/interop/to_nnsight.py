"""The neurons in nnsight: one call, inside a ``trace`` (or each step of a ``generate`` under
``tracer.all()``), that edits the input of every touched block's down projection (our neuron site).

    lm = nnsight.TransformersModel(hf, tokenizer=tok, task="text-generation")
    with lm.trace("some text"):
        turn_off_in_trace(lm, "spec.json")
        logits = lm.output.logits.save()

Generating, the edit goes in every step's forward (one per new token; pin the length with
``min_new_tokens``: nnsight runs nothing after a step loop the model does not finish):

    edits = edits_for(lm, "spec.json")  # checked once, outside the trace
    with lm.generate(ids, max_new_tokens=20, min_new_tokens=20) as tracer:
        for _ in tracer.iter[:20]:
            turn_off_in_trace(lm, edits)
        out = tracer.result.save()

Checked against the Hugging Face model inside ``lm`` (family, size, weights) before anything is
applied (call ``edits_for`` once and pass its edits when tracing many times, e.g. each step of
a generation: the check hashes the weights)."""

from __future__ import annotations

import os

from ..interventions.spec import InterventionSpec
from .edits import checked_edits, module_at

def _hf_model_of(lm):
    for name in ("_module", "_model"):
        hf = getattr(lm, name, None)
        if hf is not None and hasattr(hf, "config"):
            return hf
    raise TypeError(f"expected an nnsight LanguageModel (or NNsight wrapping a Hugging Face model), got "
                    f"{type(lm).__name__}")


def edits_for(lm, spec: "InterventionSpec | str | os.PathLike", check_weights: bool = True) -> list:
    """The file's edits, checked against the model inside ``lm``; call it before the trace to fail
    outside it (an error inside a trace surfaces wrapped in nnsight's own)."""
    return checked_edits(spec, _hf_model_of(lm), check_weights)


def turn_off_in_trace(lm, spec: "InterventionSpec | str | os.PathLike | list", check_weights: bool = True) -> None:
    """Inside ``with lm.trace(...)``: the file's neurons become ``a * scale + shift`` at every
    position. ``spec`` may also be the list ``edits_for`` returned."""
    edits = spec if isinstance(spec, list) else edits_for(lm, spec, check_weights)
    for e in edits:
        site = module_at(lm, e.module)
        x = site.input
        e.apply_(x)
