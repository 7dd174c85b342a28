"""Turning neurons off: ``with turn_off(model, neurons): ...``.

What a chosen neuron becomes is an ``Intervention`` type (the pyvene idea of interventions as
types): ``Zero`` (a -> 0), ``Mean`` (a -> its mean activation over the contrast texts), ``Dampen``
(a -> alpha * a, one alpha per neuron or one for all; alpha = 0 is ``Zero``, alpha = 1 leaves the
neuron alone) or ``Transport`` (a -> (1 - t) a + t (omega a + beta), a per-neuron map from
concept-text activations to contrast-text activations, fitted by ``fit_transport``). Each is a
per-neuron affine map and owns its edit, its file record and its baking rule. Contexts compose (nest them, or add selections with ``+``), work with
``model.generate`` (every forward, cached decoding included, sees the neurons changed), and are
always undone on exit.

A ``Condition`` is one arm of an evaluation (a name, a neuron set and its intervention).
``conditions_along_batch`` runs several at once: every batch holds G equal blocks of rows, block c
under condition c, so one pass over the texts measures G conditions (``turn_off`` is its plain
one-condition reference). ``NeuronWrites`` edits what chosen neurons write instead of what they
read: the concept direction removed from their rows of the down projection (``project_writes``).
"""

from .apply import conditions_along_batch, project_writes, remove_direction, rows_under, turn_off
from .direction import DirectionEdit, DirectionEdits
from .spec import InterventionSpec, SpecError
from .transport import fit_transport
from .selection import NeuronSelection, as_selection
from .types import (INTERVENTIONS, MODES, TRANSPORT_AT, BlockEdit, Dampen, Intervention, Mean, NeuronStats, Transport,
                    Zero, check_choice, check_transport_at)
from .values import Condition
from .writes import NeuronWrites, random_writes, top_writers

__all__ = ["INTERVENTIONS", "MODES", "TRANSPORT_AT", "BlockEdit", "Condition", "Dampen", "DirectionEdit", "DirectionEdits", "remove_direction", "Intervention", "InterventionSpec", "Mean",
           "NeuronSelection", "NeuronStats", "NeuronWrites", "project_writes", "SpecError", "Transport", "Zero", "as_selection", "check_choice", "check_transport_at",
           "conditions_along_batch", "rows_under", "random_writes", "top_writers",
           "fit_transport", "turn_off"]
