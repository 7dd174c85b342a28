"""The condition engine under every evaluation (removal, hate, bias): the conditions "before",
"concept-kK" (the top-K turned off) and "random-kK-sI" (random K-sets of the same size), made and
checked in one place, run by one loop that takes a measure.

A measure computes its numbers under G conditions at once: the engine opens
``interventions.conditions_along_batch`` for a group of conditions and the measure repeats each of
its batches G times along the batch (the ``*_along`` functions), so the texts, the neutral texts and
the generation prompts run once per group instead of once per condition. Finished conditions are
read from / written to a ``ConditionStore`` (resume after an interruption; with its shared cache,
conditions another study already measured the same way are taken from there), and every finished
condition is reported to ``on_condition`` (progress).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Generic, Protocol, TypeVar

import numpy as np
import torch

from ..interventions import Condition, Intervention, NeuronSelection, NeuronWrites, conditions_along_batch
from ..models.loaded import LoadedModel
from .checkpoints import ConditionStore

R = TypeVar("R")
BEFORE = "before"
CONDITIONS_PER_BATCH = 8  # conditions measured together (each batch repeated this many times)


def concept_name(k: int) -> str:
    return f"concept-k{k}"


def random_name(k: int, i: int) -> str:
    return f"random-k{k}-s{i}"


# --- random K-sets ------------------------------------------------------------------------------
def pool_layers(model: LoadedModel, layers_pool: Sequence[int] | None) -> list[int]:
    """The blocks random neurons are drawn from (every block when None), checked."""
    if layers_pool is None:
        return list(range(model.n_layers))
    layers = sorted({int(l) for l in layers_pool})
    if not layers:
        raise ValueError("layers_pool is empty")
    bad = [l for l in layers if not 0 <= l < model.n_layers]
    if bad:
        raise ValueError(f"layers_pool blocks {bad} out of range: the model has blocks 0..{model.n_layers - 1}")
    return layers


def random_selections(model: LoadedModel, k: int, n: int, seed: int = 0, layers_pool: Sequence[int] | None = None,
                      means: torch.Tensor | None = None,
                      neuron_pool: Sequence[tuple[int, int]] | None = None) -> list[NeuronSelection]:
    """``n`` sets of ``k`` distinct neurons, drawn uniformly from every neuron of the model (or of the
    blocks ``layers_pool``, or from the neurons ``neuron_pool``). Seeded by (seed, k): the sets for
    one K do not depend on the other Ks."""
    if neuron_pool is not None:
        pool = sorted({(int(l), int(n_)) for l, n_ in neuron_pool})
        if not 0 <= k <= len(pool):
            raise ValueError(f"K={k} is larger than the {len(pool)} neurons of the pool")
        rng = np.random.default_rng([seed, k])
        return [NeuronSelection(tuple(pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)), means=means)
                for _ in range(n)]
    layers = pool_layers(model, layers_pool)
    size = len(layers) * model.d_ff
    if not 0 <= k <= size:
        raise ValueError(f"K={k} is larger than the {size} neurons to draw from "
                         f"({len(layers)} blocks of {model.d_ff})" if k > 0 else f"K must be >= 0, got {k}")
    rng = np.random.default_rng([seed, k])
    out = []
    for _ in range(n):
        flat = rng.choice(size, size=k, replace=False)
        out.append(NeuronSelection(tuple((layers[int(i) // model.d_ff], int(i) % model.d_ff) for i in flat), means=means))
    return out


# --- the conditions of a study ------------------------------------------------------------------
def study_conditions(model: LoadedModel, selection_by_k: Mapping[int, NeuronSelection], intervention: Intervention, *,
                     n_random: int, seed: int = 0, layers_pool: Sequence[int] | None = None,
                     neuron_pool: Sequence[tuple[int, int]] | None = None,
                     random_ks: Sequence[int] | None = None) -> dict[int, tuple[Condition, list[Condition]]]:
    """{K: (the top-K condition, its ``n_random`` random K-set conditions)}, checked before any pass.

    Random K-sets are drawn from ``neuron_pool`` (else the blocks ``layers_pool``, else the whole
    model), seeded by (seed, K). They are turned off the way the top-K set is (the same
    ``intervention``: mean ablation with the same mean activations, transport with each neuron's own
    map; a top set dampened by its own factors lends them, in rank order). ``random_ks``: the Ks
    that get random sets (default all)."""
    if n_random < 1:
        raise ValueError(f"n_random must be at least 1 (the random-neuron control), got {n_random}")
    if not selection_by_k:
        raise ValueError("selection_by_k is empty: give at least one K and its neuron selection")
    layers = pool_layers(model, layers_pool)
    pool_size = len(neuron_pool) if neuron_pool is not None else len(layers) * model.d_ff
    for k, sel in selection_by_k.items():
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"K must be a non-negative int, got {k!r}")
        if k > pool_size:
            raise ValueError(f"K={k} is larger than the {pool_size} neurons of the pool" if neuron_pool is not None else
                             f"K={k} is larger than the {pool_size} neurons of the model"
                             + (f" in blocks {layers}" if layers_pool is not None else "")
                             + f" ({len(layers)} blocks of {model.d_ff})")
        if len(sel) != k or len(set(sel.neurons)) != k:
            raise ValueError(f"the selection for K={k} has {len(set(sel.neurons))} distinct neurons, not {k} "
                             "(did the run score fewer neurons than K?)")
    means = intervention.means
    if means is None:
        means = next((s.means for s in selection_by_k.values() if s.means is not None), None)
    out = {}
    for k in sorted(selection_by_k):
        sel = selection_by_k[k]
        top = Condition(concept_name(int(k)), sel, intervention.for_selection(sel))
        rand = []
        if random_ks is None or k in random_ks:
            for i, s in enumerate(random_selections(model, int(k), n_random, seed, layers_pool, means, neuron_pool)):
                rand.append(Condition(random_name(int(k), i), intervention.random_selection(sel, s), intervention))
        out[int(k)] = (top, rand)
    return out


def given_conditions(conditions: Mapping[int, tuple[Condition, Sequence[Condition]]],
                      n_random: int) -> tuple[dict[int, tuple[Condition, list[Condition]]], tuple[str, dict]]:
    """A study's own conditions checked: every top condition a neuron-write edit of K neurons with
    ``n_random`` controls of its size, names distinct; and (mode, settings) for the report."""
    if not conditions:
        raise ValueError("conditions is empty: give at least one K and its condition")
    out, names = {}, {BEFORE}
    for k, (top, rand) in sorted(conditions.items()):
        rand = list(rand)
        for c in (top, *rand):
            if not isinstance(c.writes, NeuronWrites) or len(c.writes) != k:
                raise ValueError(f"condition {c.name!r} for K={k} must be a neuron-write edit of {k} neurons")
            if c.name in names:
                raise ValueError(f"two conditions are named {c.name!r}")
            names.add(c.name)
        if len(rand) != n_random:
            raise ValueError(f"K={k} has {len(rand)} random controls, not n_random={n_random}")
        out[int(k)] = (top, rand)
    first = next(iter(out.values()))[0].writes
    return out, ("writes", writes_settings(first))


def writes_settings(edit) -> dict:
    """A neuron-write study's intervention, as bias.json records it (its sizes are the rows' K)."""
    return {"mode": "writes", **{k: v for k, v in edit.settings().items() if k in ("site", "strength", "vector_norm")}}


# --- the engine ---------------------------------------------------------------------------------
class Measure(Protocol, Generic[R]):
    """What an evaluation measures under each condition."""

    def measure(self, model: LoadedModel, replicas: int) -> list[R]:
        """The results under the ``replicas`` conditions active along the batch, in their order."""
        ...

    def to_json(self, result: R) -> dict: ...

    def from_json(self, data: dict) -> R: ...


def run_conditions(model: LoadedModel, conditions: Sequence[Condition], measure: Measure[R], *,
                   store: ConditionStore | None = None, per_batch: int = CONDITIONS_PER_BATCH,
                   on_condition: Callable[[str], None] | None = None) -> dict[str, R]:
    """{condition name: result}: finished conditions from ``store``, the others measured
    ``per_batch`` at a time along the batch (each kept in ``store`` as soon as its group is done)."""
    if per_batch < 1:
        raise ValueError(f"per_batch must be >= 1, got {per_batch}")
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    for c in conditions:  # every neuron in range before any pass
        c.edits(model)
    out: dict[str, R] = {}
    todo = []
    shared = store is not None and store.shared is not None
    keys = {c.name: c.content_key(model) if shared else None for c in conditions}
    for c in conditions:
        got = store.lookup(c.name, keys[c.name]) if store is not None else None
        if got is None:
            todo.append(c)
            continue
        out[c.name] = measure.from_json(got)
        if on_condition:
            on_condition(c.name)
    for s in range(0, len(todo), per_batch):
        group = todo[s:s + per_batch]
        with conditions_along_batch(model, group):
            results = measure.measure(model, len(group))
        if len(results) != len(group):
            raise RuntimeError(f"the measure returned {len(results)} results for {len(group)} conditions")
        for c, r in zip(group, results):
            if store is not None:
                store.keep(c.name, keys[c.name], measure.to_json(r))
            out[c.name] = r
            if on_condition:
                on_condition(c.name)
    return {n: out[n] for n in names}
