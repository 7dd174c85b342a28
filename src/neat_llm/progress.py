"""Progress behind one tiny interface, silent when disabled: a rich bar on stderr where stderr is a
terminal; elsewhere (a log file, a pipe, CI) plain lines, since a bar there shows only once it has
finished."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator

PLAIN_EVERY_S = 30.0  # without a terminal: at most one line this often (and one when done)


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))  # h:mm:ss


@contextmanager
def _plain_lines(description: str, total: float, stream) -> Iterator[Callable[[float], None]]:
    """``advance(n)`` that writes "description: done/total (pct%), elapsed h:mm:ss, eta h:mm:ss"
    at most every ``PLAIN_EVERY_S`` seconds, and a last line when the work ends (also on an error)."""
    start = time.monotonic()
    state = {"done": 0.0, "said": start}

    def line() -> str:
        done, elapsed = state["done"], time.monotonic() - start
        pct = f" ({100.0 * done / total:.0f}%)" if total else ""
        eta = f", eta {_clock(elapsed * (total - done) / done)}" if 0 < done < total else ""
        return f"{description}: {done:g}/{total:g}{pct}, elapsed {_clock(elapsed)}{eta}"

    def say() -> None:
        state["said"] = time.monotonic()
        print(line(), file=stream, flush=True)

    def advance(n: float) -> None:
        state["done"] += n
        if time.monotonic() - state["said"] >= PLAIN_EVERY_S:
            say()

    try:
        yield advance
    finally:
        say()


@contextmanager
def progress_bar(description: str, total: float, enabled: bool = True) -> Iterator[Callable[[float], None]]:
    """Yield ``advance(n)``; shows a bar with rate and time left when ``enabled`` (plain lines where
    stderr is not a terminal)."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        with _plain_lines(description, total, sys.stderr) as advance:
            yield advance
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False) as p:
        task = p.add_task(description, total=total)
        yield lambda n: p.advance(task, n)
