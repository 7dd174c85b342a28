"""What both studies share: find the neurons once (or reuse the finished run in the study folder),
the pool of neurons the random control draws from, and the evaluation's progress bar."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from ..concepts.conceptset import ConceptSet
from ..find import find_concept_neurons
from ..find_settings import FindSettings
from ..models.loaded import LoadedModel
from ..progress import progress_bar
from ..runs import Run, RunError, RunFiles


def find_or_reuse(model: LoadedModel, concept: ConceptSet, method: str, out: Path, settings: FindSettings, *,
                  neurons: dict[int, list[int]] | None = None, probe_pairs=None, progress: bool = True) -> Run:
    """The finished run in ``out`` when it was made from the same model, data and method (a rerun
    after an interruption goes straight to the evaluation); otherwise ``find_concept_neurons``
    (which itself resumes an interrupted sweep in ``out``)."""
    if (out / RunFiles.META).is_file():
        run = Run.load(out)
        layer, score = settings.reading_layer, settings.score
        probe = "paired" if probe_pairs is not None else None
        same = (run.meta.weights_hash == model.weights_hash, run.meta.concept_hash == concept.hash,
                run.meta.method == method, layer is None or run.meta.reading_layer == layer,
                run.meta.params.get("probe") == probe, score is None or run.meta.params.get("score") == score)
        if not all(same):
            what = [w for w, ok in zip(("model weights", "data", "method", "reading layer", "probe", "score"), same)
                    if not ok]
            raise RunError(f"{out} holds a finished run with other {', '.join(what)}; choose another --out")
        return run
    return find_concept_neurons(model, concept, method, settings, out=out, neurons=neurons, probe_pairs=probe_pairs,
                                progress=progress)


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
