"""What every ``neat`` command shares: the Typer app, the consoles, the error exit, Ctrl-C handling
and the option parsers (cli.py and cli_studies.py register their commands on ``app``)."""

from __future__ import annotations

import functools
import logging
import sys

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Find the concept neurons of a language model, turn them off, measure what changes.")
out = Console()
err = Console(stderr=True)


def resumable(command):
    """Ctrl-C in a long command says how to go on: the finished part is kept, the same command resumes."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            folder = kwargs.get("out_dir")
            err.print("interrupted. " + (f"The finished work is kept in {folder}: rerun the same command to resume."
                                         if folder is not None else
                                         "The finished work is kept in the run folder under runs/: rerun the same "
                                         "command with --out set to that folder to resume."), highlight=False,
                      soft_wrap=True)
            raise typer.Exit(130) from None
    return run


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)


def _fail(msg: str) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False)  # escape: messages may hold [brackets]
    raise typer.Exit(2)


def _parse_ks(spec: str) -> list[int]:
    try:
        ks = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        _fail(f"--k takes comma-separated whole numbers, got {spec!r}")
    if not ks or ks[0] < 1:
        _fail(f"--k needs positive numbers, got {spec!r}")
    return ks
