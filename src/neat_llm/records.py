"""Typed records read back from JSON: the keys a dataclass knows, the rest (written by an older or
newer version) left out, so a results file typed when computed is typed again when read. A number
an older file does not hold yet reads as NaN (shown as "–"), not as an error."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, fields


def known(cls, d: Mapping, skip: tuple[str, ...] = (), missing_numbers: bool = False) -> dict:
    """The items of ``d`` that are fields of the dataclass ``cls`` (minus ``skip``); with
    ``missing_numbers``, every required ``float`` field ``d`` lacks is NaN."""
    names = {f.name for f in fields(cls)} - set(skip)
    out = {k: v for k, v in d.items() if k in names}
    if missing_numbers:
        for f in fields(cls):
            if f.name in names and f.name not in out and f.type == "float" and f.default is MISSING:
                out[f.name] = math.nan
    return out


def with_changes(cls, base=None, what: str = "setting", **changes):
    """``base`` (default: ``cls()``) with ``changes``, made again so its checks run; a name ``cls``
    does not know is an error that lists the ones it does."""
    names = [f.name for f in fields(cls)]
    bad = sorted(set(changes) - set(names))
    if bad:
        raise TypeError(f"unknown {what}(s) {', '.join(bad)}; known: {', '.join(sorted(names))}")
    base = base if base is not None else cls()
    return cls(**{**{n: getattr(base, n) for n in names}, **changes})


def split_known(cls, options: Mapping) -> tuple[dict, dict]:
    """``options`` split into (fields of ``cls``, the rest)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in options.items() if k in names}, {k: v for k, v in options.items() if k not in names}


class Changeable:
    """A frozen settings dataclass changed by name: ``Settings.of(base, field=value)`` (base:
    the defaults when None), checked again. ``WHAT`` names the settings in errors."""

    WHAT = "setting"

    @classmethod
    def of(cls, base=None, **changes):
        return with_changes(cls, base, cls.WHAT, **changes)
