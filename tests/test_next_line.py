"""The next-line scorer (the first-order behavioural readout): its split of a text, its estimate
against the exact change of the next line's likelihood, and its score through ``find``."""

from __future__ import annotations

import pytest
import torch

from conftest import concept_texts
from neat_llm import ConceptSet, NeuronSelection, turn_off
from neat_llm.evaluation.perplexity import continuation_logliks_along
from neat_llm.interventions import Dampen, Zero
from neat_llm.scoring.next_line import NextLineScorer, next_line_effects, next_line_split


def _prompts(texts: list[str], per: int = 3) -> list[str]:
    """Demonstration-style prompts: ``per`` lines of the given texts, ending where the model writes."""
    return ["".join(f"- {t}\n" for t in texts[i:i + per]) + "-" for i in range(0, len(texts) - per + 1, per)]


def test_the_last_line_is_what_is_predicted():
    assert next_line_split("- a b\n- c d\n- e f\n-") == ("- a b\n- c d\n-", " e f\n")
    assert next_line_split("one line\nanother line\n") == ("one line\n", "another line\n")
    with pytest.raises(ValueError, match="two or more lines"):
        next_line_split("a single statement")
    with pytest.raises(ValueError, match="two or more lines"):
        next_line_split("- a b\n-\n-")  # the last line is empty


def _exact_b(model, texts: list[str]) -> torch.Tensor:
    ctx, nxt = zip(*(next_line_split(t) for t in texts))
    return continuation_logliks_along(model, list(ctx), list(nxt), 1)[0].float()


def test_the_estimate_is_the_exact_change_for_a_small_edit(tiny_llama):
    """Dampening a neuron by 1 - eps changes B by eps times the estimate, to first order: the
    linear estimate of a tiny edit equals the exact finite difference."""
    pos, _ = concept_texts(9)
    texts = _prompts(pos)
    eps = 1e-3
    iv = Dampen(1.0 - eps)
    est = next_line_effects(tiny_llama, texts, [0, 2], lambda l: iv.block_affine(l, tiny_llama.d_ff))
    b0 = _exact_b(tiny_llama, texts).mean()
    checked = 0
    for i, l in enumerate([0, 2]):
        for k in torch.argsort(est[i].abs(), descending=True)[:3].tolist():
            with turn_off(tiny_llama, NeuronSelection(((l, k),)), iv):
                exact = float(_exact_b(tiny_llama, texts).mean() - b0)
            assert exact == pytest.approx(float(est[i, k]), rel=0.05, abs=1e-7)
            checked += abs(exact) > 1e-6
    assert checked >= 4  # the comparison was made on neurons that move B


def test_the_scorer_scores_the_drop_on_concept_texts_minus_that_on_contrast_texts(tiny_llama):
    from neat_llm import find_concept_neurons
    from neat_llm.find_settings import FindSettings

    pos, neg = concept_texts(24)
    concept = ConceptSet.from_texts(_prompts(pos, 2), _prompts(neg, 2), name="next-line-test")
    run = find_concept_neurons(tiny_llama, concept, "next-line", FindSettings(seed=0, read_template="{text}"),
                               progress=False)
    fit = run.fit_set(concept)
    zero = lambda l: Zero().block_affine(l, tiny_llama.d_ff)  # noqa: E731
    layers = list(range(tiny_llama.n_layers))
    want = -next_line_effects(tiny_llama, fit.positives, layers, zero) + next_line_effects(tiny_llama, fit.contrast,
                                                                                          layers, zero)
    assert torch.allclose(run.scores, want, atol=1e-6)
    assert run.meta.method == "next-line" and run.meta.passes["scoring"]["backward"] == len(fit.positives) + \
        len(fit.contrast)
    with pytest.raises(ValueError, match="two or more lines"):
        NextLineScorer().score(tiny_llama, _task(tiny_llama, ["one line only"], ["another single line"]))
    told = []  # progress in neurons as the texts are done, adding up to every neuron scored
    task = _task(tiny_llama, _prompts(pos, 2)[:5], _prompts(neg, 2)[:4])
    task.on_progress = told.append
    NextLineScorer(batch_size=2).score(tiny_llama, task)
    assert sum(told) == tiny_llama.d_ff and len(told) > 1


def _task(model, pos, neg):
    from neat_llm.concepts.vectors import ConceptReadout
    from neat_llm.scoring import ProbeSet, ScoringTask

    readout = ConceptReadout(layer=0, vector=torch.ones(model.d_model))
    return ScoringTask(readout, ProbeSet(list(pos), [1.0] * len(pos)), [0], positives=list(pos), contrast=list(neg))
