"""PyTorch hook context managers. Every hook is removed in ``finally``, also on exceptions.

- ``capture_inputs`` / ``capture_outputs``: keep a module's input (first positional argument) or
  output (first element when it returns a tuple) per call.
- ``edit_inputs``: replace a module's input with ``fn(key, x)``.
- ``edit_outputs`` / ``edit_outputs_with_inputs``: replace a module's output with ``fn(key, h)`` or
  ``fn(key, x, h)`` (``x`` its first input: what the output is made of).
- ``stop_after``: end the forward pass once a module has run (later blocks and the unembedding
  are skipped); the caller wraps the forward in ``run_until``.
- ``outputs_require_grad``: a module's output requires grad (gradients through a frozen model).
- ``last_position_only``: a module sees only the last position of its input.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early."""


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


@contextmanager
def _hooked(modules: Mapping[Hashable, nn.Module], register: Callable[[Hashable, nn.Module], object]) -> Iterator[None]:
    """Register one hook per module with ``register(key, module) -> handle``; remove them all on
    exit, on an exception inside the context, and when a later registration fails."""
    handles = []
    try:
        for key, mod in modules.items():
            handles.append(register(key, mod))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_inputs(modules: Mapping[Hashable, nn.Module]) -> Iterator[dict[Hashable, list[torch.Tensor]]]:
    """Yield ``{key: [input of each call]}``; tensors are kept as given (detach them if needed)."""
    store: dict[Hashable, list[torch.Tensor]] = {k: [] for k in modules}

    def register(key, mod):
        return mod.register_forward_pre_hook(lambda _m, args: store[key].append(args[0]))

    with _hooked(modules, register):
        yield store


@contextmanager
def capture_outputs(modules: Mapping[Hashable, nn.Module]) -> Iterator[dict[Hashable, list[torch.Tensor]]]:
    """Yield ``{key: [output of each call]}`` (first element of tuple outputs)."""
    store: dict[Hashable, list[torch.Tensor]] = {k: [] for k in modules}

    def register(key, mod):
        return mod.register_forward_hook(lambda _m, _args, out: store[key].append(_first(out)))

    with _hooked(modules, register):
        yield store


@contextmanager
def capture_calls(modules: Mapping[Hashable, nn.Module]) -> Iterator[dict[Hashable, list[tuple[tuple, dict]]]]:
    """Yield ``{key: [(args, kwargs) of each call]}``: what it takes to call the module again."""
    store: dict[Hashable, list[tuple[tuple, dict]]] = {k: [] for k in modules}

    def register(key, mod):
        return mod.register_forward_pre_hook(lambda _m, args, kwargs: store[key].append((args, dict(kwargs))),
                                             with_kwargs=True)

    with _hooked(modules, register):
        yield store


@contextmanager
def edit_inputs(modules: Mapping[Hashable, nn.Module],
                fn: Callable[[Hashable, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace each module's first input ``x`` with ``fn(key, x)`` while the context is open."""
    def register(key, mod):
        return mod.register_forward_pre_hook(lambda _m, args: (fn(key, args[0]),) + tuple(args[1:]))

    with _hooked(modules, register):
        yield


@contextmanager
def edit_outputs(modules: Mapping[Hashable, nn.Module],
                 fn: Callable[[Hashable, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace each module's output ``h`` (the first element of a tuple output) with ``fn(key, h)``
    while the context is open."""
    def register(key, mod):
        def hook(_m, _args, out):
            if isinstance(out, tuple):
                return (fn(key, out[0]),) + out[1:]
            return fn(key, out)

        return mod.register_forward_hook(hook)

    with _hooked(modules, register):
        yield


@contextmanager
def edit_outputs_with_inputs(modules: Mapping[Hashable, nn.Module],
                             fn: Callable[[Hashable, torch.Tensor, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace each module's output ``h`` (the first element of a tuple output) with ``fn(key, x, h)``,
    ``x`` the module's first input as it ran (after any input edit), while the context is open."""
    def register(key, mod):
        def hook(_m, args, out):
            if isinstance(out, tuple):
                return (fn(key, args[0], out[0]),) + out[1:]
            return fn(key, args[0], out)

        return mod.register_forward_hook(hook)

    with _hooked(modules, register):
        yield


@contextmanager
def outputs_require_grad(module: nn.Module) -> Iterator[None]:
    """The module's output requires grad (the embedding's, so every later activation is a non-leaf
    node of one graph and ``autograd.grad`` gives total derivatives)."""
    def hook(_m, _args, out):
        return out.requires_grad_(True)

    with _hooked({0: module}, lambda _k, mod: mod.register_forward_hook(hook)):
        yield


@contextmanager
def last_position_only(module: nn.Module) -> Iterator[None]:
    """The module sees only the last position of its first input ([B, 1, ...])."""
    with _hooked({0: module}, lambda _k, mod: mod.register_forward_pre_hook(
            lambda _m, args: (args[0][:, -1:].contiguous(),) + tuple(args[1:]))):
        yield


@contextmanager
def stop_after(module: nn.Module) -> Iterator[None]:
    """Raise ``StopForward`` right after ``module`` runs; use with ``run_until``."""
    def hook(_m, _a, _o):
        raise StopForward

    with _hooked({0: module}, lambda _k, mod: mod.register_forward_hook(hook)):
        yield


def run_until(fn: Callable[[], object]) -> None:
    """Call ``fn`` and swallow the ``StopForward`` that ends it early."""
    try:
        fn()
    except StopForward:
        pass
