"""Turning neurons off: ``with turn_off(model, neurons): ...``.

What a chosen neuron becomes is an ``Intervention`` value (the pyvene idea of interventions as
types): ``zero`` (a -> 0), ``mean`` (a -> its mean activation over the contrast texts) or
``dampen`` (a -> alpha * a, one alpha per neuron or one for all; alpha = 0 is ``zero``, alpha = 1
leaves the neuron alone). Contexts compose (nest them, or add selections with ``+``), work with
``model.generate`` (every forward, cached decoding included, sees the neurons changed), and are
always undone on exit.

A ``Condition`` is one arm of an evaluation (a name, a neuron set and its intervention).
``conditions_along_batch`` runs several at once: every batch holds G equal blocks of rows, block c
under condition c, so one pass over the texts measures G conditions (``turn_off`` is its plain
one-condition reference).
"""

from .apply import conditions_along_batch, turn_off
from .spec import InterventionSpec, SpecError
from .values import MODES, Condition, Intervention, NeuronSelection, as_selection

__all__ = ["MODES", "Condition", "Intervention", "InterventionSpec", "NeuronSelection", "SpecError", "as_selection",
           "conditions_along_batch", "turn_off"]
