"""What every study is made of, written once: the study folder (a folder of the user's own files is
refused before anything is written; one writer at a time), the neurons found once or the finished
run reused (``find_or_reuse``), the conditions measured with a resumable store and a progress bar
(``measure_conditions``: before, each top-K, each random K-set, drawn from ``neuron_pool``), and
the results written, the continuations first, the report last (``write_results``). The studies
(hate.py, bias.py, demonstrations.py) differ only in their data, their evaluation and what they
add to the report."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch

from ..concepts.conceptset import ConceptSet
from ..find import find_concept_neurons
from ..find_settings import FindSettings
from ..models.loaded import LoadedModel
from ..progress import progress_bar
from ..evaluation.checkpoints import ConditionStore, SharedConditions
from ..interventions import Condition, DirectionEdit, DirectionEdits, Intervention, NeuronWrites, random_writes, top_writers
from ..runs import Run, RunError, RunFiles, check_run_folder, run_folder_lock, write_text

R = TypeVar("R")


@contextmanager
def study_folder(out: Path) -> Iterator[Path]:
    """The study's folder, checked and locked: a folder of the user's own files is refused before
    anything is written, and a second writer gets an error, not a mixed folder."""
    check_run_folder(out)
    with run_folder_lock(out):
        yield out


def find_or_reuse(model: LoadedModel, concept: ConceptSet, method: str, out: Path, settings: FindSettings, *,
                  neurons: dict[int, list[int]] | None = None, probe_pairs=None, progress: bool = True,
                  ks: Sequence[int] = ()) -> Run:
    """The finished run in ``out`` when it was made from the same model, data and method (a rerun
    after an interruption goes straight to the evaluation); otherwise ``find_concept_neurons``
    (which itself resumes an interrupted sweep in ``out``). ``ks``: the sizes the study turns off;
    with the specific score the contrast probes are swept only where the top max(ks) can change
    (``exact_top``: the same top K, a fraction of the second sweep), unless the settings say otherwise."""
    if (out / RunFiles.META).is_file():
        run = Run.load(out)
        layer, score, lam = settings.reading_layer, settings.score, settings.specificity
        probe = "paired" if probe_pairs is not None else None
        pool = settings.activation_pool
        same = (run.meta.weights_hash == model.weights_hash, run.meta.concept_hash == concept.hash,
                run.meta.method == method, layer is None or run.meta.reading_layer == layer,
                run.meta.params.get("probe") == probe, score is None or run.meta.params.get("score") == score,
                lam is None or run.meta.params.get("specificity") == float(lam),
                pool is None or run.meta.params.get("scorer", {}).get("pool") == pool)
        if not all(same):
            what = [w for w, ok in zip(("model weights", "data", "method", "reading layer", "probe", "score",
                                        "specificity", "activation pool"), same) if not ok]
            raise RunError(f"{out} holds a finished run with other {', '.join(what)}; choose another --out")
        return run
    if ks and settings.exact_top is None and settings.max_ppl is None and settings.rule(method) == "specific":
        settings = FindSettings.of(settings, exact_top=max(max(ks), settings.top_k))
    return find_concept_neurons(model, concept, method, settings, out=out, neurons=neurons, probe_pairs=probe_pairs,
                                progress=progress)


def span_writes(vector: torch.Tensor, span: tuple[int, int], site: str, strength: float = 1.0) -> tuple[str, DirectionEdits]:
    """(its row's name, the edit): ``vector``'s direction edited out of what ``site`` ("mlp" or
    "attn") of every block of ``span`` writes, at ``strength`` (every neuron of the span: the
    ceiling of the K writers)."""
    a, b = span
    return f"{site}-writes-L{a}-{b}", DirectionEdits(tuple(DirectionEdit(l, vector, "project", strength, site=site)
                                                          for l in range(a, b + 1)))


def writes_row(k: int, span: tuple[int, int]) -> str:
    """The name of a neuron-write row: the K writers of blocks ``span`` (its random controls add
    "-random-<i>")."""
    return f"writes-K{k}-L{span[0]}-{span[1]}"


def span_write_effects(model: LoadedModel, run: Run, span: tuple[int, int], more: list[str], less: list[str],
                       what: str, progress: bool, starts: tuple[list[int], list[int]] | None = None) -> torch.Tensor:
    """Each neuron of blocks ``span`` [blocks, d_ff]: how much removing the run's direction from its
    writes lowers log p(more) - log p(less) over the pairs, to first order (``pair_write_effects``),
    with a progress bar named ``what``: the ``ranking`` of ``writer_conditions``."""
    from ..scoring.write_effects import pair_write_effects

    with progress_bar(what, 2 * len(more), progress) as tick:
        return pair_write_effects(model, more, less, run.concept_vector, range(span[0], span[1] + 1), on_texts=tick,
                                  starts=starts)


def writer_conditions(model: LoadedModel, run: Run, span: tuple[int, int], ks: list[int], n_random: int, seed: int,
                      strength: float = 1.0, ranking: torch.Tensor | None = None) -> dict[int, tuple[Condition, list[Condition]]]:
    """{K: (the run's concept direction out of what the K neurons of blocks ``span`` that write most
    of it write (``Run.writers``; with ``ranking`` [blocks of the span, d_ff], the K it ranks
    highest), ``n_random`` random K-sets of the span under the same edit)}."""
    a, b = span
    out = {}
    for k in sorted(ks):
        try:
            edit = run.writers(model, span, k, strength) if ranking is None else \
                NeuronWrites(top_writers(ranking, span, k), run.concept_vector, strength)
        except ValueError as err:
            raise ValueError(f"--writers {a}-{b}: {err}") from None
        name = writes_row(k, span)
        out[k] = (Condition(name, writes=edit),
                  [Condition(f"{name}-random-{i}", writes=e)
                   for i, e in enumerate(random_writes(edit, span, model.d_ff, n_random, seed))])
    return out


def neuron_pool(run: Run) -> list[tuple[int, int]] | None:
    """The neurons the run scored (the random control draws from these), or None for all of them."""
    ok = torch.isfinite(run.scores)
    if bool(ok.all()):
        return None
    return [(int(l), int(k)) for l, k in torch.nonzero(ok).tolist()]


@contextmanager
def condition_progress(what: str, n_conditions: int, done: int, enabled: bool):
    """A bar over the evaluation's conditions (before, each top-K, each random K-set)."""
    with progress_bar(f"{what} ({done} resumed)" if done else what, n_conditions, enabled) as adv:
        yield lambda _name: adv(1)


def measure_conditions(out: Path, partial: str, run: Run, iv: Intervention, ks: list[int], n_random: int, seed: int,
                       data: dict, what: str, progress: bool,
                       evaluate: Callable[[ConditionStore, Callable[[str], None]], R],
                       extra: int = 0, shared: dict | None = None) -> tuple[R, ConditionStore]:
    """Run ``evaluate(store, on_condition)`` over the study's conditions (before, each top-K, each
    random K-set) with finished conditions kept in ``out / partial``, bound to the run, the
    intervention, the sizes, the seed and the study's own ``data`` (a changed setting starts over);
    ``extra``: conditions beyond those (the direction-level ceiling). ``shared``: what the measure's
    result depends on besides the condition and the weights (its prompts, texts, sampling), to share
    finished conditions with other studies measuring the same way (``SharedConditions``); None: not
    shared."""
    fingerprint = {"run": run.meta.concept_hash, "weights": run.meta.weights_hash, "ks": list(ks),
                   "n_random": n_random, "seed": seed, **iv.settings(), "alpha": iv.alpha, **data}
    across = None
    if shared is not None and run.meta.weights_hash:
        across = SharedConditions({"weights": run.meta.weights_hash, "measure": what, "seed": seed, **shared})
    store = ConditionStore(out / partial, fingerprint, across)
    with condition_progress(what, 1 + len(ks) * (1 + n_random) + extra, store.n_done(), progress) as tick:
        return evaluate(store, tick), store


def write_results(out: Path, name: str, report, store: ConditionStore,
                  continuations: tuple[str, dict] | None = None) -> Path:
    """The study's files: its continuations (``(file name, payload)``), then its report with the
    folder it belongs to; then the finished conditions' store is cleared. Returns the report's path."""
    if continuations is not None:
        write_text(out / continuations[0], json.dumps(continuations[1]))
    path = out / name
    write_text(path, json.dumps({"run_dir": str(out), **report.to_dict()}, indent=2))
    store.clear()
    return path
