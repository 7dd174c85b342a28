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
