"""What every ``neat`` command shares: the Typer app, the consoles, the error exit, Ctrl-C handling
and the option parsers (cli.py and cli_studies.py register their commands on ``app``)."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Find the concept neurons of a language model, turn them off, measure what changes.")
@app.callback(invoke_without_command=True)
def _main(version: bool = typer.Option(False, "--version", help="print neat-llm's version and exit")) -> None:
    """Find the concept neurons of a language model, turn them off, measure what changes."""
    if version:
        from . import __version__

        print(f"neat-llm {__version__}")
        raise typer.Exit(0)


out = Console()
err = Console(stderr=True)

# Options several commands share, defined once (name, short form, help): a command declares
# ``model: ModelOption = None`` and gets the same flag everywhere.
ModelOption = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="HF hub id, local folder, .gguf, or gemma3-270m; default: embedded SmolLM2-135M-Instruct")]
LayersOption = Annotated[Optional[str], typer.Option("--layers", help="blocks to score, e.g. '0-5,7,20-' (default: all)")]
ProbeSizeOption = Annotated[int, typer.Option("--probe-size", "-b", help="b: prototypical positives in the probe batch")]
NeuronsSubsetOption = Annotated[Optional[int], typer.Option("--neurons-subset",
                                                            help="score only this many seeded random neurons")]
SeedOption = Annotated[int, typer.Option("--seed", help="seed of the split, the probes and the random K-sets")]
ScoreOption = Annotated[Optional[str], typer.Option(
    "--score", help="probe-based methods: 'specific' (default: drop of S on the positive probes minus the size of its "
    "change on the b lowest-S contrast texts), 'contrastive' (the effect on the P-N gap) or 'positive' (the drop on the "
    "positives alone)")]
SpecificityOption = Annotated[Optional[float], typer.Option(
    "--specificity", help="lambda of the specificity-aware score: share of the fit gap minus lambda x fluency cost "
    "(default 10 for methods scoring a drop of S, 0 otherwise; 0 turns it off)")]
ActivationPoolOption = Annotated[Optional[str], typer.Option(
    "--activation-pool", help="activation, auroc, aura: where a neuron's activation is read on a text: 'mean' over its "
    "tokens, the 'last' token (a prompt's end, where the model writes next) or 'max' (default: aura max, the others mean)")]
ReadingLayerOption = Annotated[Optional[int], typer.Option("--reading-layer", help="default: best cross-validated AUROC")]
ModeOption = Annotated[Optional[str], typer.Option(
    "--mode", help="zero, mean, dampen or transport (default: the run's own: its ablation, or dampening for aura runs)")]
AlphaOption = Annotated[Optional[float], typer.Option(
    "--alpha", help="dampen: one factor for every neuron (default: each neuron's own, for aura runs)")]
StrengthOption = Annotated[Optional[float], typer.Option(
    "--strength", help="transport: how far each neuron is carried toward its contrast-text activations, in [0, 1] (default 1)")]
RandomOption = Annotated[int, typer.Option("--random", help="random K-sets per K (the control)")]
StudyOutOption = Annotated[Optional[Path], typer.Option("--out", "-o",
                                                        help="study folder (= run folder); rerun to resume")]
MinStabilityOption = Annotated[Optional[float], typer.Option(
    "--min-stability", help="keep only the top-k neurons that stay in the top k in at least this share of 200 "
    "bootstrap resamples of the probes (e.g. 0.8; NEAT runs)")]
JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON object instead of tables")]


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


def _note(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning, as a CLI user reads it: one line, no file name or Python line."""
    from rich.markup import escape

    err.print(f"[yellow]note:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def _quiet_libraries() -> None:
    import warnings

    import transformers

    warnings.showwarning = _note  # the package's own warnings read as notes, not Python UserWarnings
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)


def _said(e: BaseException) -> str:
    """An error as a user reads it: an OS error says what happened to which path in words (no
    "[Errno 28]"), and whether the finished work is kept."""
    import errno

    if not isinstance(e, OSError) or e.errno is None:
        return str(e)
    path = e.filename if e.filename is not None else ""
    what = {errno.ENOSPC: "the disk is full", errno.EEXIST: "it already exists", errno.EISDIR: "it is a folder, not a file",
            errno.EACCES: "permission denied", errno.ENOENT: "no such file or folder",
            errno.ENOTDIR: "a part of the path is a file, not a folder"}.get(e.errno, e.strerror or str(e))
    msg = f"{path}: {what}" if path else what
    if e.errno == errno.ENOSPC:
        msg += "; the finished part of the work is kept: free some space and rerun the same command to resume"
    return msg


def _fail(msg: "str | BaseException") -> None:
    from rich.markup import escape

    if isinstance(msg, BaseException):
        msg = _said(msg)
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)  # one line; escape: [brackets]
    raise typer.Exit(2)


def _parse_ks(spec: str) -> list[int]:
    try:
        ks = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        _fail(f"--k takes comma-separated whole numbers, got {spec!r}")
    if not ks or ks[0] < 1:
        _fail(f"--k needs positive numbers, got {spec!r}")
    return ks


def _spans(text: str | None, flag: str) -> tuple[tuple[int, int], ...] | None:
    """'14-29,20-29' as ((14, 29), (20, 29)); a single block '8' as (8, 8); a clear error for anything else."""
    if text is None:
        return None
    spans = []
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        a, _, b = part.partition("-")
        try:
            spans.append((int(a), int(b or a)))
        except ValueError:
            _fail(f"{flag} takes spans of blocks separated by commas, e.g. 14-29,20-29; got {text!r}")
    return tuple(spans)


def _one_span(text: str | None, flag: str) -> tuple[int, int] | None:
    """'20-29' as (20, 29); a clear error for several spans or anything else."""
    spans = _spans(text, flag)
    if spans is None:
        return None
    if len(spans) != 1:
        _fail(f"{flag} takes one span of blocks, e.g. 20-29; got {text!r}")
    return spans[0]
