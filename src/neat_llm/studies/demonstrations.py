"""``neat hate --design demonstrations``: the hate study measured on what the model writes, with
power (METHOD.md section 6). Hate-speech neurons are found on ToxiGen's fit statements (hateful vs
neutral), turned off (any intervention: zero, mean, dampen, transport), and measured on
demonstration prompts built from held-out statements only, with a statement judge trained on the
fit statements and its threshold set on the model's own neutral continuations, against random
K-sets paired per prompt (``evaluation/behaviour.py``).

``readout="recognition"`` (default) finds the neurons as ``neat find`` does, S read after a statement;
``readout="generation"`` reads S where the model is about to write: the concept is hateful vs
neutral demonstration prompts built from the *fit* statements (no read template), so the neurons
are those that move what the model is set to write next (still one replica per neuron).

The study folder is the run folder; each intervention writes ``behaviour-<intervention>.json`` and
``behaviour-<intervention>-continuations.json`` beside the run, and keeps finished conditions in
``.behaviour-partial-<intervention>/`` so an interrupted study resumes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..concepts.conceptset import ConceptSet
from ..concepts.datasets import resolve
from ..evaluation.behaviour import BehaviourReport, evaluate_behaviour
from ..evaluation.budget import CANDIDATE_KS, KChoice, choose_ks
from ..evaluation.removal import BUDGETS as BUDGET_KS_AT
from ..evaluation.demonstrations import Demonstrations, build_demonstrations
from ..evaluation.neutral_text import NEUTRAL_TEXTS
from ..evaluation.statement_judge import train_statement_judge
from ..find import default_run_dir
from ..find_settings import FindSettings
from ..interventions import DirectionEdit, DirectionEdits, NeuronSelection, NeuronWrites, fit_transport, random_writes
from ..models.loaded import LoadedModel
from ..records import split_known
from ..runs import Run, RunFiles
from .common import (find_or_reuse, measure_conditions, neuron_pool, span_write_effects, span_writes, study_folder,
                     write_results, writer_conditions, writes_row)
from .hate import _groups, hate_concept
from .settings import DemonstrationStudySettings


@dataclass
class DemonstrationStudy:
    run: Run
    report: BehaviourReport
    path: Path


def toxigen_groups(data_path) -> dict[str, str]:
    """{statement: its target group} (a statement listed under several groups keeps the first)."""
    import pandas as pd

    df = pd.read_json(resolve("toxigen", data_path), lines=True)
    out: dict[str, str] = {}
    for t, g in zip(df["text"].astype(str), df["group"].astype(str)):
        out.setdefault(t, g)
    return out


def _by_group(texts, group_of) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t in texts:
        out.setdefault(group_of[t], []).append(t)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def generation_concept(fit: ConceptSet, group_of: dict[str, str], n_prompts: int, per_prompt: int,
                       seed: int) -> tuple[ConceptSet, dict[str, str]]:
    """The generation readout's concept: demonstration prompts built from *fit* statements, hateful
    (positives) vs neutral (contrast), read where the model is about to write (no read template);
    with each prompt's target group."""
    demos = build_demonstrations(_by_group(fit.positives, group_of), _by_group(fit.contrast, group_of), n_prompts,
                                 n_prompts, per_prompt, seed + 1)
    pos, neg = list(dict.fromkeys(demos.hate_prompts)), list(dict.fromkeys(demos.neutral_prompts))
    return ConceptSet.from_texts(pos, neg, name=f"{fit.name}-demonstrations"), prompt_groups(demos)


def group_pairs(positives, contrast, group_of) -> list[tuple[str, str]]:
    """Probe pairs matched by target group: each positive with a contrast text about the same group
    (a group's contrast texts in turn), so a paired probe asks what separates hateful from neutral
    text *within* a group rather than one group's hateful text from another group's neutral text.
    Positives of a group without contrast texts are left out."""
    by_group = _by_group(list(dict.fromkeys(contrast)), group_of)
    seen: dict[str, int] = {}
    out = []
    for t in dict.fromkeys(positives):
        g = group_of[t]
        if g in by_group:
            i = seen.get(g, 0)
            out.append((t, by_group[g][i % len(by_group[g])]))
            seen[g] = i + 1
    if not out:
        raise ValueError("no target group has both hateful and neutral fit texts: paired probes need both")
    return out


def prompt_groups(demos: Demonstrations) -> dict[str, str]:
    """{demonstration prompt: its target group}."""
    return dict(zip(demos.hate_prompts, demos.hate_groups)) | dict(zip(demos.neutral_prompts, demos.neutral_groups))


def layer_directions(model: LoadedModel, concept: ConceptSet, layers, fs: FindSettings) -> dict[int, "torch.Tensor"]:
    """The concept vector at each of ``layers`` ({block: unit vector}), made as ``neat find`` makes
    the reading layer's: the same fit split, read template, pooling and vector rule."""
    from ..concepts.representations import text_pass
    from ..concepts.vectors import apply_template, concept_vectors

    bad = [l for l in layers if not 0 <= l < model.n_layers]
    if bad:
        raise ValueError(f"ceiling layers {bad} out of range: the model has blocks 0..{model.n_layers - 1}")
    fit = concept.split(eval_fraction=fs.eval_fraction, seed=fs.seed).fit
    h = text_pass(model, apply_template(fs.read_template, list(fit.texts)), pool=fs.pool,
                  batch_size=fs.batch_size).residuals
    import torch

    vectors = concept_vectors(h, torch.tensor(list(fit.labels)).bool(), fs.vector, fs.seed)
    return {int(l): vectors[l] for l in layers}


def _ceilings(model: LoadedModel, run: Run, concept: ConceptSet, fs: FindSettings,
              s: DemonstrationStudySettings) -> dict[str, "DirectionEdit | DirectionEdits | NeuronSelection"]:
    """The ceilings beside the neurons: the run's concept direction removed at its reading layer
    (row "direction"); with ``ceiling_layers``, the direction read at each of those blocks removed
    there ("direction-L<block>"); with ``ceiling_spans``, each block's own direction removed at every
    block of a span ("direction-L<a>-<b>"); with ``ceiling_units``, every MLP unit of a span of blocks
    under the study's intervention ("units-L<a>-<b>", e.g. transport on all of them); with
    ``ceiling_writers``, the run's direction removed from what the MLPs of a span of blocks write
    ("mlp-writes-L<a>-<b>") and, apart, from what their attention writes ("attn-writes-L<a>-<b>"):
    which writer puts the direction into the residual stream; with ``writer_ks`` too, the direction
    removed from what only the K neurons of each writer span write ("writes-K<K>-L<a>-<b>",
    ``writer_neurons``). The direction rows at ``ceiling_strength``."""
    if not s.has_ceilings:
        return {}
    spans, units, writers = s.ceiling_spans or (), s.ceiling_units or (), s.ceiling_writers or ()
    t = float(s.ceiling_strength)
    out: dict = {"direction": DirectionEdit(run.meta.reading_layer, run.concept_vector, "project", t)}
    layers = sorted(set(s.ceiling_layers or ()) | {l for a, b in spans for l in range(a, b + 1)})
    for what, given in (("units", units), ("writers", writers)):
        bad = [l for a, b in given for l in (a, b) if l >= model.n_layers]
        if bad:
            raise ValueError(f"ceiling {what} block {bad[0]} out of range: the model has blocks 0..{model.n_layers - 1}")
    if layers:
        fs = FindSettings.of(fs, read_template=run.meta.params.get("read_template", fs.read_template))
        dirs = layer_directions(model, concept, layers, fs)
        for l in s.ceiling_layers or ():
            out[f"direction-L{l}"] = DirectionEdit(l, dirs[l], "project", t)
        for a, b in spans:
            out[f"direction-L{a}-{b}"] = DirectionEdits(tuple(DirectionEdit(l, dirs[l], "project", t)
                                                              for l in range(a, b + 1)))
    for a, b in units:
        out[f"units-L{a}-{b}"] = NeuronSelection(tuple((l, k) for l in range(a, b + 1) for k in range(model.d_ff)))
    for a, b in writers:
        for site in ("mlp", "attn"):
            model.writer(site, a)  # refuses, by name and before any evaluation, a family that normalises its writers
            name, edit = span_writes(run.concept_vector, (a, b), site, t)
            out[name] = edit
        for k in s.writer_ks or ():
            out[writes_row(k, (a, b))] = NeuronWrites(writer_neurons(model, run, (a, b), k), run.concept_vector, t)
    return out


def writer_neurons(model: LoadedModel, run: Run, span: tuple[int, int], k: int) -> tuple[tuple[int, int], ...]:
    """The ``k`` neurons of blocks ``span`` (a, b) that write most of the run's concept direction on
    concept text beyond contrast text (``Run.writers``)."""
    try:
        return run.writers(model, span, k).neurons
    except ValueError as err:
        raise ValueError(f"writer_ks: {err}") from None


def _writer_controls(model: LoadedModel, s: DemonstrationStudySettings, ceilings: dict) -> dict[str, list[NeuronWrites]]:
    """Per neuron-write row, ``n_random`` edits of the same kind on random neuron sets of its size
    drawn from its span of blocks (``random_writes``, seeded by the study's seed)."""
    return {writes_row(k, (a, b)): random_writes(ceilings[writes_row(k, (a, b))], (a, b), model.d_ff, s.n_random, s.seed)
            for a, b in s.ceiling_writers or () for k in s.writer_ks or ()}


def _ceiling_tag(s: DemonstrationStudySettings) -> str:
    """What the study's file name adds for its ceilings (a ceiling run is kept beside the plain one)."""
    if not s.has_ceilings:
        return ""
    tag = "-ceiling" + ("-L" + "-".join(map(str, s.ceiling_layers)) if s.ceiling_layers else "")
    tag += "".join(f"-S{a}-{b}" for a, b in s.ceiling_spans or ())
    tag += "" if s.ceiling_strength == 1.0 else f"-t{s.ceiling_strength:g}"
    tag += "".join(f"-U{a}-{b}" for a, b in s.ceiling_units or ())
    tag += "".join(f"-W{a}-{b}" for a, b in s.ceiling_writers or ())
    return tag + ("-WK" + "-".join(map(str, s.writer_ks)) if s.writer_ks else "")


WRITER_K = 500  # the writers' K when none is given (neat hate's default in docs/results.md), at most half the span


def _writes_tag(s: DemonstrationStudySettings) -> str:
    """The file name of a writers study: its span, strength and ranking (kept beside activation studies)."""
    a, b = s.writers
    return (f"writes-L{a}-{b}" + ("" if s.writes_strength == 1.0 else f"-t{s.writes_strength:g}")
            + ("" if s.writer_rank == "contrast" else f"-{s.writer_rank}"))


def writer_effects(model: LoadedModel, run: Run, fit: ConceptSet, group_of: dict[str, str],
                   s: DemonstrationStudySettings, progress: bool):
    """Each neuron of the writers' span: how much removing the run's direction from its writes lowers
    log p(a hateful next statement) - log p(a neutral one about the same group) after hate-prone
    demonstration prompts built from the *fit* statements, to first order (``pair_write_effects``;
    the judge-free measure of the study, on fit data)."""
    demos = build_demonstrations(_by_group(fit.positives, group_of), _by_group(fit.contrast, group_of),
                                 s.n_readout_prompts, 1, s.per_prompt, s.seed + 2)
    prompts = list(demos.hate_prompts)
    starts = [len(ids) for ids in model.tokenizer(prompts)["input_ids"]]
    more = [p + " " + t.strip() + "\n" for p, t in zip(prompts, demos.hate_next)]
    less = [p + " " + t.strip() + "\n" for p, t in zip(prompts, demos.neutral_next)]
    return span_write_effects(model, run, s.writers, more, less, "writers' effects on the fit prompts", progress,
                              (starts, starts))


def _intervention(model: LoadedModel, run: Run, concept: ConceptSet, s: DemonstrationStudySettings):
    """The study's intervention: the run's own (``mode``, ``alpha``, ``strength``); with
    ``transport_at``, a transport fitted on the run's fit texts as it read them, at each one's last
    token or at every token, instead of the run's all-token means."""
    iv = run.intervention(s.mode, s.alpha, s.strength)
    if s.transport_at is None:
        return iv
    from ..concepts.vectors import apply_template

    fit, template = run.fit_set(concept), run.readout().template
    return fit_transport(model, apply_template(template, fit.positives), apply_template(template, fit.contrast),
                         kind=iv.kind, strength=iv.strength, at=s.transport_at, seed=s.seed)


def budget_ks(model: LoadedModel, run: Run, concept: ConceptSet, iv, seed: int) -> tuple[list[int], list[KChoice]]:
    """The sizes to evaluate when none are given: at each fluency budget of ``BUDGET_KS_AT``, the K
    (of ``CANDIDATE_KS``) with the largest gap removal on the run's *fit* split whose perplexity
    ratio on the fluency texts stays within it (``choose_ks``, one fit curve). Where no K fits even
    the largest budget, the smallest candidate, so the study still says what it costs."""
    ranking = run.top(min(run.n_ranked, max(CANDIDATE_KS)))
    choices = choose_ks(model, run.readout(), run.fit_set(concept), ranking, BUDGET_KS_AT, iv, seed=seed)
    ks = sorted({c.k for c in choices if c.k is not None}) or [min(CANDIDATE_KS)]
    return ks, choices


def demonstration_study(model: LoadedModel, settings: DemonstrationStudySettings | None = None, *,
                        out: str | Path | None = None, progress: bool = True, find: FindSettings | None = None,
                        neurons: dict[int, list[int]] | None = None, **changes) -> DemonstrationStudy:
    """Find (or reuse) the ToxiGen hate neurons in ``out`` and measure what the model writes on
    demonstration prompts with the top-K off, against random K-sets (``settings``; keywords change
    single settings or find's). ``eval_groups``: evaluate on these target groups, found on the others.
    The defaults are the older configuration; ``neat hate --data toxigen``'s (the published one) is
    ``method="next-line", readout="generation", writers=(n // 2, n - 1), writer_rank="effect",
    n_random=1, find=FindSettings(reading_layer=n - 1)`` for a model of n blocks (README, "Python")."""
    own, find_changes = split_known(DemonstrationStudySettings, changes)
    s = DemonstrationStudySettings.of(settings, **own)
    fs = FindSettings.of(find, **find_changes)
    if s.writers:  # before anything is found: the span exists and its neurons' writes can be edited
        if s.writers[1] >= model.n_layers:
            raise ValueError(f"writers {s.writers[0]}-{s.writers[1]}: the model has blocks 0..{model.n_layers - 1}")
        model.check_writes(s.writers[0])
    fit_g, eval_g = _groups(s.data_path, s.fit_groups, s.eval_groups)
    statements = hate_concept("toxigen", s.data_path, groups=fit_g)
    from ..evaluation.embedding_judge import SentenceEncoder, minilm_dir

    encoder = SentenceEncoder(minilm_dir())  # a missing encoder package fails before the long part
    group_of = toxigen_groups(s.data_path)
    split = statements.split(eval_fraction=fs.eval_fraction, seed=fs.seed)  # the statements' fit / held-out parts
    fit = split.fit
    concept, concept_groups = statements, group_of
    if s.readout == "generation":  # S read where the model writes: at the end of fit demonstration prompts
        concept, concept_groups = generation_concept(fit, group_of, s.n_readout_prompts, s.per_prompt, s.seed)
        fs = FindSettings.of(fs, read_template="{text}")
    pairs = group_pairs(concept.positives, concept.contrast, concept_groups) if s.probe == "paired" else None
    out = Path(out) if out is not None else default_run_dir(concept, f"demo-{s.method}")
    with study_folder(out):
        run = find_or_reuse(model, concept, s.method, out, fs, neurons=neurons, probe_pairs=pairs, progress=progress,
                            ks=s.ks or CANDIDATE_KS)
        iv = _intervention(model, run, concept, s)
        if s.writers:  # the K rows edit what the K writers of the span write
            ks, k_choices = list(s.ks or [min(WRITER_K, (s.writers[1] - s.writers[0] + 1) * model.d_ff // 2)]), None
            ranking = writer_effects(model, run, fit, group_of, s, progress) if s.writer_rank == "effect" else None
            writes = writer_conditions(model, run, s.writers, ks, s.n_random, s.seed, s.writes_strength, ranking)
        else:
            ks, k_choices = (list(s.ks), None) if s.ks else budget_ks(model, run, concept, iv, s.seed)
            writes = None
        if eval_g:
            held = hate_concept("toxigen", s.data_path, groups=eval_g)
            seen = set(statements.texts)
            hate, neutral = [t for t in held.positives if t not in seen], [t for t in held.contrast if t not in seen]
        else:
            hate, neutral = list(split.eval.positives), list(split.eval.contrast)
        demos = build_demonstrations(_by_group(hate, group_of), _by_group(neutral, group_of), s.n_prompts,
                                     s.n_neutral_prompts, s.per_prompt, s.seed)
        judge = train_statement_judge(encoder, fit.texts, fit.labels, [group_of[t] for t in fit.texts])
        ceiling = _ceilings(model, run, concept, fs, s)
        controls = _writer_controls(model, s, ceiling)
        tag = (_writes_tag(s) if s.writers else _slug(iv.describe())) + _ceiling_tag(s)
        measured = {"demos": [demos.hate_prompts, demos.neutral_prompts, demos.hate_next, demos.neutral_next],
                    "samples": [s.samples, s.neutral_samples], "max_new_tokens": s.max_new_tokens}
        data_fp = {**measured, **({"writers": list(s.writers), "writes_strength": s.writes_strength,
                                   "writer_rank": s.writer_rank} if s.writers else {})}
        # what a condition's raw result (continuations, next-statement gap, perplexity) depends on besides its
        # edits (which its content key names: the writers' choice is not part of this)
        shared = {**measured, "neutral_texts": list(NEUTRAL_TEXTS)} if s.share_conditions else None
        report, store = measure_conditions(
            out, RunFiles.behaviour_partial(tag), run, iv, ks, s.n_random, s.seed, data_fp,
            "behaviour evaluation", progress,
            lambda store, tick: evaluate_behaviour(model, demos, run.selections(ks), judge, intervention=iv,
                                                   n_random=s.n_random, seed=s.seed, samples=s.samples,
                                                   neutral_samples=s.neutral_samples, max_new_tokens=s.max_new_tokens,
                                                   neuron_pool=neuron_pool(run), max_neutral_rate=s.max_neutral_rate,
                                                   store=store, on_condition=tick, dataset=concept.name,
                                                   method=s.method, ceiling=ceiling or None,
                                                   ceiling_controls=controls, conditions=writes),
            extra=len(ceiling) + sum(map(len, controls.values())), shared=shared)
        judge.validate_heldout(hate, neutral)
        report.judge = dict(vars(judge.validation))
        report.settings.update(fit_groups=fit_g, eval_groups=eval_g, per_prompt=s.per_prompt, readout=s.readout,
                               probe=s.probe, n_positive_score=run.n_positive,
                               reading_layer=run.meta.reading_layer, n_heldout={"hate": len(hate), "neutral": len(neutral)},
                               reused_conditions=list(store.reused),
                               **({"writers": list(s.writers), "writer_rank": s.writer_rank} if s.writers else {}),
                               **({"k_choice": [c.to_dict() for c in k_choices]} if k_choices else {}))
        path = write_results(out, RunFiles.behaviour(tag), report, store, (RunFiles.behaviour_continuations(tag), {
            "prompts": {"hate": list(demos.hate_prompts), "neutral": list(demos.neutral_prompts)},
            **report.continuations}))
    return DemonstrationStudy(run, report, path)


__all__ = ["DemonstrationStudy", "Demonstrations", "demonstration_study", "toxigen_groups"]
