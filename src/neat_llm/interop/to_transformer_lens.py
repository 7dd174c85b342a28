"""The neurons in TransformerLens: ``fwd_hooks`` for ``run_with_hooks`` / ``hooks()`` on a
``TransformerBridge`` (TransformerLens 4's hooked wrapper of a Hugging Face model), at
``blocks.{l}.mlp.hook_post`` (the MLP's post-activation: our neuron site, the down projection's
input). The hooks are plain functions, so they also suit any hooked model that names that
activation the same way.

    bridge = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok)
    logits = bridge.run_with_hooks(tokens, fwd_hooks=fwd_hooks("spec.json", bridge))

Checked against the bridge (family, blocks, neurons, hook names) before anything runs. The weights
cannot be hashed through a bridge (TransformerLens re-registers the model's parameters under its
own names and adds some), so check them on the Hugging Face model before booting it:
``check_hf_model(InterventionSpec.load("spec.json"), hf)``."""

from __future__ import annotations

import os
from typing import Callable

import torch

from ..interventions.spec import InterventionSpec, SpecError
from .edits import LayerEdit, checked_edits, layer_edits


def _hook(edit: LayerEdit) -> Callable:
    def hook(act: torch.Tensor, hook=None) -> torch.Tensor:
        return edit.applied(act)

    return hook


def fwd_hooks(spec: "InterventionSpec | str | os.PathLike", bridge=None) -> list[tuple[str, Callable]]:
    """``[(hook name, function), ...]`` that turn the file's neurons off; with ``bridge`` (a
    ``TransformerBridge``) the file is first checked against it: the model it wraps has the file's
    family, blocks and neurons, and it has every hook named."""
    if bridge is None:
        return [(e.hook, _hook(e)) for e in layer_edits(spec)]
    hf = getattr(bridge, "original_model", None)
    names = getattr(bridge, "hook_dict", None)
    if hf is None or names is None:
        raise TypeError(f"expected a TransformerLens TransformerBridge, got {type(bridge).__name__}")
    edits = checked_edits(spec, hf, check_weights=False)
    missing = [e.hook for e in edits if e.hook not in names]
    if missing:
        raise SpecError(f"the bridge has no hook {missing[0]!r} (TransformerLens names the MLP post-activation "
                        "blocks.{l}.mlp.hook_post; this architecture's adapter does not)")
    return [(e.hook, _hook(e)) for e in edits]
