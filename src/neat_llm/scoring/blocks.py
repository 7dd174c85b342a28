"""Running one block of a model on C replicas of a probe, counted: every sweep's block calls go
through ``call_block`` and every replica's drop of S through ``replica_drop`` (the one place each
is counted, see ``models.loaded.PassCounter``)."""

from __future__ import annotations

import torch

from ..concepts.representations import check_finite
from ..models.loaded import LoadedModel


def run_block(block: torch.nn.Module, h: torch.Tensor, call: tuple[tuple, dict]) -> torch.Tensor:
    """Run ``block`` on hidden states ``h`` [C, T, d] with the arguments the model gave it
    (batch-1 masks and rotary tables broadcast over the C replicas). Not counted: see ``call_block``."""
    args, kwargs = call
    if args:
        out = block(h, *args[1:], **kwargs)
    else:
        out = block(**{**kwargs, "hidden_states": h})
    return out[0] if isinstance(out, (tuple, list)) else out


def call_block(model: LoadedModel, j: int, h: torch.Tensor, call: tuple[tuple, dict],
               compiled: bool = False) -> torch.Tensor:
    """Block ``j`` of ``model`` on the replicas h [C, T, d] (``run_block``, or its compiled form),
    counted as C block forwards: the one place the sweeps' block calls are counted."""
    model.counter.add("block_forward", h.shape[0])
    return (compiled_run_block() if compiled else run_block)(model.blocks[j], h, call)


def replica_drop(model: LoadedModel, s_clean: float, s_off: torch.Tensor, layer: int) -> torch.Tensor:
    """S_clean - S_off [C] of C replicas whose partial pass ended at the reading layer, counted as C
    partial forwards: the one place partial passes are counted."""
    check_finite(s_off, f"the ablated forward of block {layer}")
    model.counter.add("partial_forward", s_off.shape[0])
    return (s_clean - s_off).cpu()


_COMPILED: dict[str, object] = {}


def compiled_run_block():
    """``run_block`` through ``torch.compile`` (inductor fuses the norms, rotary, gating and
    residual adds around the matmuls). Compiled once per process: with nn.Module inlining the
    blocks' weights are graph inputs, so every block of a model (and every model of the same
    family and shapes) reuses one graph; a new replica count C recompiles once."""
    if "run_block" not in _COMPILED:
        _COMPILED["run_block"] = torch.compile(run_block, dynamic=False)
    return _COMPILED["run_block"]
