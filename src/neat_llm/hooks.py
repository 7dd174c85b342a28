"""PyTorch hook context managers. Every hook is removed in ``finally``, also on exceptions.

- ``capture_inputs`` / ``capture_outputs``: keep a module's input (first positional argument) or
  output (first element when it returns a tuple) per call.
- ``edit_inputs``: replace a module's input with ``fn(key, x)``.
- ``stop_after``: end the forward pass once a module has run (later blocks and the unembedding
  are skipped); the caller wraps the forward in ``run_until``.
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
def _registered(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_inputs(modules: Mapping[Hashable, nn.Module]) -> Iterator[dict[Hashable, list[torch.Tensor]]]:
    """Yield ``{key: [input of each call]}``; tensors are kept as given (detach them if needed)."""
    store: dict[Hashable, list[torch.Tensor]] = {k: [] for k in modules}
    handles = []
    try:
        for key, mod in modules.items():
            def hook(_m, args, _key=key):
                store[_key].append(args[0])
            handles.append(mod.register_forward_pre_hook(hook))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    with _registered(handles):
        yield store


@contextmanager
def capture_outputs(modules: Mapping[Hashable, nn.Module]) -> Iterator[dict[Hashable, list[torch.Tensor]]]:
    """Yield ``{key: [output of each call]}`` (first element of tuple outputs)."""
    store: dict[Hashable, list[torch.Tensor]] = {k: [] for k in modules}
    handles = []
    try:
        for key, mod in modules.items():
            def hook(_m, _args, out, _key=key):
                store[_key].append(_first(out))
            handles.append(mod.register_forward_hook(hook))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    with _registered(handles):
        yield store


@contextmanager
def capture_calls(modules: Mapping[Hashable, nn.Module]) -> Iterator[dict[Hashable, list[tuple[tuple, dict]]]]:
    """Yield ``{key: [(args, kwargs) of each call]}``: what it takes to call the module again."""
    store: dict[Hashable, list[tuple[tuple, dict]]] = {k: [] for k in modules}
    handles = []
    try:
        for key, mod in modules.items():
            def hook(_m, args, kwargs, _key=key):
                store[_key].append((args, dict(kwargs)))
            handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    with _registered(handles):
        yield store


@contextmanager
def edit_inputs(modules: Mapping[Hashable, nn.Module],
                fn: Callable[[Hashable, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace each module's first input ``x`` with ``fn(key, x)`` while the context is open."""
    handles = []
    try:
        for key, mod in modules.items():
            def hook(_m, args, _key=key):
                return (fn(_key, args[0]),) + tuple(args[1:])
            handles.append(mod.register_forward_pre_hook(hook))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    with _registered(handles):
        yield


@contextmanager
def stop_after(module: nn.Module) -> Iterator[None]:
    """Raise ``StopForward`` right after ``module`` runs; use with ``run_until``."""
    def hook(_m, _a, _o):
        raise StopForward
    handle = module.register_forward_hook(hook)
    with _registered([handle]):
        yield


def run_until(fn: Callable[[], object]) -> None:
    """Call ``fn`` and swallow the ``StopForward`` that ends it early."""
    try:
        fn()
    except StopForward:
        pass
