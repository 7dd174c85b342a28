"""Turning neurons off in a running model: ``with turn_off(model, neurons): ...`` (one condition,
at every position, composable, works with ``model.generate``, always undone on exit), and
``conditions_along_batch`` (several conditions at once: every batch holds G equal blocks of rows,
block c under condition c; ``turn_off``, ``remove_direction`` and ``project_writes`` are its plain
one-condition references)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch

from ..hooks import edit_inputs, edit_outputs, edit_outputs_with_inputs
from ..models.loaded import LoadedModel
from .direction import DirectionEdit, DirectionEdits
from .spec import InterventionSpec
from .selection import NeuronSelection, as_selection
from .types import Intervention
from .values import Condition
from .writes import NeuronWrites

@contextmanager
def turn_off(model: LoadedModel, neurons: "NeuronSelection | Iterable[tuple[int, int]] | InterventionSpec | str | os.PathLike",
             mode: str | Intervention = "zero", means: torch.Tensor | None = None,
             alpha: float | None = None) -> Iterator[NeuronSelection]:
    """Turn the chosen neurons off at every position: set them to 0 (``mode="zero"``), to their
    mean activation over the contrast set (``mode="mean"``; ``means`` [n_layers, d_ff], or the
    selection's own), or multiply them by a factor (``mode="dampen"``; ``alpha`` for all, or the
    selection's own ``alphas``). ``mode`` may also be an ``Intervention``. ``neurons`` may also be an
    intervention file (``neat export``; a path or an ``InterventionSpec``), checked against the
    model's weights and applied with its own mode and values."""
    if isinstance(neurons, (str, os.PathLike, InterventionSpec)):  # an intervention file: its neurons and mode
        if mode != "zero" or means is not None or alpha is not None:
            raise ValueError("an intervention file carries its own mode and values; do not pass mode, means or alpha")
        spec = neurons if isinstance(neurons, InterventionSpec) else InterventionSpec.load(neurons)
        spec.check_model(model)
        neurons = spec.selection()
        mode = spec.intervention(neurons)
    sel = as_selection(neurons)
    if isinstance(mode, Intervention):
        iv = mode
    else:
        iv = Intervention.of(mode, means if means is not None else sel.means, alpha)
    layers = {l: (idx.to(model.device), e.to(model.device))
              for l, (idx, e) in iv.edits(sel, model.n_layers, model.d_ff).items()}

    def off(layer, x):
        x = x.clone()
        idx, e = layers[layer]
        x[..., idx] = e.apply(x[..., idx])
        return x

    with edit_inputs({l: model.sites[l] for l in layers}, off):
        yield sel


_ROWS: dict[int, torch.Tensor] = {}  # id(model) -> each row's condition, while ``rows_under`` is open


@contextmanager
def rows_under(model: LoadedModel, conditions: torch.Tensor) -> Iterator[None]:
    """Inside ``conditions_along_batch``: the passes made in this context hold one row per entry of
    ``conditions`` (a condition index [R] per row, any order and any count) instead of G equal
    blocks, e.g. a decoding step whose rows started and end at different times."""
    key = id(model)
    if key in _ROWS:
        raise RuntimeError("rows_under is already open for this model")
    _ROWS[key] = conditions.to(model.device).long()
    try:
        yield
    finally:
        del _ROWS[key]


@contextmanager
def conditions_along_batch(model: LoadedModel, conditions: Sequence[Condition]) -> Iterator[int]:
    """Turn neurons off per block of rows: every batch the model sees while the context is open
    must hold ``G = len(conditions)`` equal blocks of rows (condition-major: rows [c*B, (c+1)*B)
    are under ``conditions[c]``), unless ``rows_under`` names each row's condition; yields G. Each
    neuron activation becomes a * scale + shift with (1, 0) for neurons a condition leaves alone, so
    a block equals ``turn_off`` with its condition."""
    conditions = list(conditions)
    if not conditions:
        raise ValueError("no conditions given")
    G, d_ff = len(conditions), model.d_ff
    scale: dict[int, torch.Tensor] = {}
    shift: dict[int, torch.Tensor] = {}
    for c, cond in enumerate(conditions):
        for l, (idx, sc, sh) in cond.edits(model).items():
            if l not in scale:
                scale[l], shift[l] = torch.ones(G, d_ff), torch.zeros(G, d_ff)
            scale[l][c, idx], shift[l][c, idx] = sc, sh
    scale = {l: t.to(model.device) for l, t in scale.items()}
    shift = {l: t.to(model.device) for l, t in shift.items()}
    residual: dict[tuple[str, int], dict[int, DirectionEdit]] = {}  # (site, block) -> {condition: its edit there}
    for c, cond in enumerate(conditions):
        for e in (cond.residual.parts if cond.residual is not None else ()):
            residual.setdefault((e.site, e.layer), {})[c] = e
    writers = {where: model.writer(*where) for where in residual}
    writes: dict[int, dict[int, object]] = {}  # block -> {condition: its neuron-write edit there}
    for c, cond in enumerate(conditions):
        for l, bw in (cond.writes.prepared(model).items() if cond.writes is not None else ()):
            writes.setdefault(l, {})[c] = bw

    key = id(model)

    def blocks_of(x):
        return _blocks_of(x, G)

    def edit(layer, x):
        rows = _ROWS.get(key)
        if rows is not None:
            if len(rows) != x.shape[0]:
                raise RuntimeError(f"rows_under names {len(rows)} rows, the batch has {x.shape[0]}")
            at = (len(rows),) + (1,) * (x.dim() - 2) + (x.shape[-1],)
            return x * scale[layer][rows].view(at).to(x.dtype) + shift[layer][rows].view(at).to(x.dtype)
        y = blocks_of(x).reshape(G, -1, x.shape[-1])
        y = y * scale[layer][:, None].to(x.dtype) + shift[layer][:, None].to(x.dtype)
        return y.reshape(x.shape)

    def edit_residual(where, h):
        rows = _ROWS.get(key)
        if rows is not None:
            y = h.clone()
            for c, e in residual[where].items():
                r = _rows_of(c, rows)
                y[r] = e.apply(h[r])
            return y
        y = blocks_of(h).clone()
        for c, e in residual[where].items():
            y[c] = e.apply(y[c])
        return y.reshape(h.shape)

    with edit_inputs({l: model.sites[l] for l in scale}, edit), _writes_along_batch(model, writes, G), \
            edit_outputs(writers, edit_residual):
        yield G


def _blocks_of(x: torch.Tensor, G: int) -> torch.Tensor:
    """A batch of G equal condition blocks of rows: [G, B / G, ...]."""
    if x.shape[0] % G:
        raise RuntimeError(f"a batch of {x.shape[0]} rows cannot be split into {G} condition blocks")
    return x.reshape(G, x.shape[0] // G, *x.shape[1:])


def _rows_of(c: int, rows: torch.Tensor) -> torch.Tensor:
    """The rows under condition c where ``rows_under`` names them."""
    return (rows == c).nonzero()[:, 0]


@contextmanager
def _writes_along_batch(model: LoadedModel, writes: dict, G: int) -> Iterator[None]:
    """``conditions_along_batch``'s neuron-write edits, {block: {condition: BlockWrites}}: out of the
    down projection's output, or where the family normalises it, out of the norm's output (the part
    along u computed from the activations at the down projection, taken out after the norm)."""
    key = id(model)
    normed = {l: model.check_writes(l) for l, ws in writes.items() if next(iter(ws.values())).normed}
    pending: dict[int, list] = {}  # normed block -> [(its edit, its along over the whole batch)]

    def edit_writes(layer, x, h):
        rows = _ROWS.get(key)
        if layer in normed:  # h is kept; what to take out after the norm is computed here, from x
            got = []
            for c, bw in writes[layer].items():
                along = torch.zeros(x.shape[:-1], device=x.device)
                if rows is not None:
                    r = _rows_of(c, rows)
                    along[r] = bw.along(x[r])
                else:
                    _blocks_of(along, G)[c] = bw.along(_blocks_of(x, G)[c])
                got.append((bw, along))
            pending[layer] = got
            return h
        if rows is not None:
            y = h.clone()
            for c, bw in writes[layer].items():
                r = _rows_of(c, rows)
                y[r] = bw.apply(x[r], h[r])
            return y
        xs, y = _blocks_of(x, G), _blocks_of(h, G).clone()
        for c, bw in writes[layer].items():
            y[c] = bw.apply(xs[c], y[c])
        return y.reshape(h.shape)

    def edit_normed(layer, h, y):
        r = model.write_scale(layer, h)
        for bw, along in pending.pop(layer):
            y = bw.after_norm(along, r, y)
        return y

    with edit_outputs_with_inputs({l: model.sites[l] for l in writes}, edit_writes), \
            edit_outputs_with_inputs(normed, edit_normed):
        yield


@contextmanager
def remove_direction(model: LoadedModel, edit: "DirectionEdit | DirectionEdits") -> Iterator["DirectionEdit | DirectionEdits"]:
    """The residual stream edited along one direction at one block's output, or at what its MLP or
    attention writes (``site``), or along each block's own direction at several blocks and sites
    (``DirectionEdits``), at every position (``conditions_along_batch``'s plain one-condition
    reference for a direction condition)."""
    parts = {(e.site, e.layer): e for e in edit.parts}
    writers = {where: model.writer(*where) for where in parts}
    with edit_outputs(writers, lambda where, h: parts[where].apply(h)):
        yield edit


@contextmanager
def project_writes(model: LoadedModel, edit: NeuronWrites) -> Iterator[NeuronWrites]:
    """What the chosen neurons write loses its component along the edit's direction, at every
    position (``conditions_along_batch``'s plain one-condition reference for a neuron-write
    condition; the same as editing their rows of the down projection). Where the family normalises
    the MLP output (Gemma 2/3), their part along u is taken out of the norm's output instead."""
    blocks = edit.prepared(model)
    direct = {l: model.sites[l] for l, b in blocks.items() if not b.normed}
    normed = {l: model.check_writes(l) for l, b in blocks.items() if b.normed}
    along: dict[int, torch.Tensor] = {}

    def keep(l, x, h):  # normed blocks: h is kept, the part along u is taken out after the norm
        along[l] = blocks[l].along(x)
        return h

    def after_norm(l, h, y):
        return blocks[l].after_norm(along.pop(l), model.write_scale(l, h), y)

    with edit_outputs_with_inputs(direct, lambda l, x, h: blocks[l].apply(x, h)), \
            edit_outputs_with_inputs({l: model.sites[l] for l in normed}, keep), \
            edit_outputs_with_inputs(normed, after_norm):
        yield edit
