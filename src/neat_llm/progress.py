"""Progress bars (rich, on stderr) behind one tiny interface, silent when disabled."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def progress_bar(description: str, total: float, enabled: bool = True) -> Iterator[Callable[[float], None]]:
    """Yield ``advance(n)``; shows a bar with rate and time left when ``enabled``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True), transient=False) as p:
        task = p.add_task(description, total=total)
        yield lambda n: p.advance(task, n)
