"""The ``neat hate`` and ``neat bias`` commands (registered on the ``neat`` app by cli.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from .cli_app import (ActivationPoolOption, AlphaOption, StrengthOption, JsonOption, LayersOption, ModelOption, ModeOption, NeuronsSubsetOption,
                      ProbeSizeOption, RandomOption, ReadingLayerOption, ScoreOption, SeedOption, SpecificityOption,
                      StudyOutOption, _fail, _one_span, _parse_ks, _quiet_libraries, _spans, app, err, out, resumable)


def _find_settings(layers, probe_size, seed, score=None, specificity=None, reading_layer=None, method="neat",
                   activation_pool=None):
    """How a study finds its neurons, from the option group the studies share with ``neat find``
    (checked here, against the study's method, before the model loads)."""
    from .find_settings import FindSettings

    settings = FindSettings(layers=layers or None, probe_size=probe_size, seed=seed, score=score,
                            specificity=specificity, reading_layer=reading_layer, activation_pool=activation_pool)
    settings.check_for(method)
    return settings


def _subset(neurons_subset, model):
    """--neurons-subset: that many seeded random neurons, or None (the whole model)."""
    if not neurons_subset:
        return None
    from .compare import subset_neurons

    return subset_neurons(model, neurons_subset)


def _data_not_a_folder(data: str, names: str) -> None:
    """--data names a data set or a file; a folder there is almost always meant for --data-path."""
    if Path(data).expanduser().is_dir():
        _fail(f"--data {data!r} is a folder: --data takes {names} or a file; say where the data sets are with "
              f"--data-path {data}")


def _csv(v: Optional[str]) -> Optional[list[str]]:
    return [x.strip() for x in v.split(",") if x.strip()] if v else None


@app.command()
@resumable
def hate(
    model: ModelOption = None,
    data: str = typer.Option("toxigen", "--data", help="toxigen, davidson, or a file of labelled texts"),
    data_path: Optional[Path] = typer.Option(None, "--data-path", help="where toxigen/davidson are (default: $NEAT_LLM_DATA, ../shared/data)"),
    text_col: str = typer.Option("text", "--text-col", help="(own file) column holding the text"),
    label_col: str = typer.Option("label", "--label-col", help="(own file) column holding the label"),
    positive: str = typer.Option("hate", "--positive", help="(own file) label value(s) of hateful texts"),
    contrast: Optional[str] = typer.Option(None, "--contrast", help="(own file) label value(s) of neutral texts (default: all others)"),
    method: Optional[str] = typer.Option(None, "--method", help="how to find the neurons (any `neat find` method; default: neat, and next-line for the demonstrations design, whose writers it ranks from the run's means and direction)"),
    design: Optional[str] = typer.Option(None, "--design", help="demonstrations (lists of held-out statements about a group; METHOD.md section 6: paired vs random, judge set on neutral continuations, judge-free measure; the default for toxigen) or prefixes (continue the first half of held-out hateful sentences; the default for other data)"),
    k: Optional[str] = typer.Option(None, "--k", help="sizes of the top-K sets turned off (default: 10,50,100,500,2000; demonstrations: 500 writers, or with --writers none the K chosen on the fit split at perplexity ratios 1.05 and 1.10)"),
    n_random: Optional[int] = typer.Option(None, "--random", help="random K-sets per K, the control (default 3; demonstrations with writers: 1)"),
    fit_groups: Optional[str] = typer.Option(None, "--fit-groups", help="ToxiGen target groups to find the neurons on (default: all but --eval-groups)"),
    eval_groups: Optional[str] = typer.Option(None, "--eval-groups", help="ToxiGen target groups to evaluate on (default: all but --fit-groups)"),
    max_per_side: Optional[int] = typer.Option(None, "--max-per-side", help="seeded cap on fit texts per side"),
    max_eval: Optional[int] = typer.Option(None, "--max-eval", help="seeded cap on held-out texts per side"),
    n_prompts: Optional[int] = typer.Option(None, "--prompts", help="hate-prone prompts to continue (default 80; demonstrations: 200)"),
    neutral_prompts: int = typer.Option(50, "--neutral-prompts", help="(demonstrations) neutral demonstration prompts, the control"),
    per_prompt: int = typer.Option(4, "--per-prompt", help="(demonstrations) held-out statements shown in each prompt"),
    ceiling_layers: Optional[str] = typer.Option(None, "--ceiling-layers", help="(demonstrations) also the concept direction read at each of these blocks removed there, e.g. 8,14,20 (rows direction-L<block>): where removing it moves what the model writes, at what fluency cost"),
    ceiling_spans: Optional[str] = typer.Option(None, "--ceiling-spans", help="(demonstrations) also each block's own concept direction removed at every block of a span, e.g. 14-29 (rows direction-L<a>-<b>; later blocks cannot write it back)"),
    ceiling_units: Optional[str] = typer.Option(None, "--ceiling-units", help="(demonstrations) also every MLP unit of a span of blocks under the study's intervention, e.g. 20-27 with --mode transport (rows units-L<a>-<b>: the unit-level ceiling)"),
    ceiling_writers: Optional[str] = typer.Option(None, "--ceiling-writers", help="(demonstrations) also the run's concept direction removed from what the MLPs of a span of blocks write, and apart from what their attention writes, e.g. 0-29 (rows mlp-writes-L<a>-<b>, attn-writes-L<a>-<b>: which writer puts the direction there; refused where a family normalises those outputs)"),
    writer_ks: Optional[str] = typer.Option(None, "--writer-ks", help="(demonstrations, with --ceiling-writers) also the concept direction removed from what only the K neurons of each writer span write that write most of it (mean activation on concept minus contrast text times the neuron's write along the direction), e.g. 500,2000 (rows writes-K<K>-L<a>-<b>, each beside --random random K-sets of the span, the same edit, with vs rnd)"),
    ceiling_strength: float = typer.Option(1.0, "--ceiling-strength", help="(demonstrations) the direction ceilings at this strength t in (0, 2]: h - t (h.u) u (1: the direction removed; less: shrunk, for less fluency cost; 2: reversed); file names add -t<t>"),
    transport_at: Optional[str] = typer.Option(None, "--transport-at", help="(demonstrations, --mode transport) fit the map on the run's fit texts at each one's last token ('last': the end of a demonstration prompt, where the model writes) or at every token ('all'); default: the run's own all-token means"),
    probe: str = typer.Option("prototypical", "--probe", help="(demonstrations) prototypical (find's probe batch) or paired (each probe a hateful text with a neutral one about the same target group: what separates hate within a group, not one group from another)"),
    shared_conditions: bool = typer.Option(True, "--shared-conditions/--no-shared-conditions", help="(demonstrations) take a condition another study already measured the same way (same weights, prompts, draws, and the same neurons changed the same way: the before row, random K-sets) from the cache ($NEAT_LLM_CACHE/conditions) instead of measuring it again; the study lists what it reused"),
    ceiling: bool = typer.Option(False, "--ceiling", help="(demonstrations) also measure the concept direction removed from the residual stream at the reading layer, every position: the direction-level ceiling beside the neurons"),
    readout_at: str = typer.Option("generation", "--readout", help="(demonstrations) where the concept is read: generation (at the end of fit demonstration prompts, where the model writes; with writers, at the last block unless --reading-layer) or recognition (after a statement, as neat find)"),
    writers: Optional[str] = typer.Option(None, "--writers", help="(demonstrations) the K rows edit what neurons write: the concept direction removed from what the K neurons of this span of blocks that write most of it write, beside random K-sets of the span under the same edit (default: the second half of the blocks, e.g. 15-29 on SmolLM2; 'none': the K rows turn the top-K neurons' activations off instead, as --mode/--alpha/--strength/--transport-at imply)"),
    writes_strength: float = typer.Option(1.0, "--writes-strength", help="(demonstrations, writers) the share of each write along the concept direction removed, in (0, 2] (1: removed, 2: reversed)"),
    hate_writer_rank: str = typer.Option("effect", "--writer-rank", help="(demonstrations, writers) how the K writers are chosen: effect (the first-order effect of the edit on log p(hateful next statement) - log p(neutral one) after demonstration prompts built from the fit statements) or contrast (mean activation on concept minus contrast text, times the write along the direction)"),
    samples: int = typer.Option(5, "--samples", help="seeded continuations per prompt (the same draws in every condition)"),
    davidson_prompts: int = typer.Option(0, "--davidson-prompts", help="also continue this many prefixes of hate-class Davidson tweets (the judges' test part); rates per source too"),
    new_tokens: Optional[int] = typer.Option(None, "--new-tokens", help="tokens sampled per continuation (default 20; demonstrations: at most 40, ending at the line's end)"),
    classifier_data: Optional[Path] = typer.Option(None, "--classifier-data", help="Davidson labeled_data.csv the judges are trained on"),
    judge: str = typer.Option("minilm", "--judge", help="minilm (MiniLM embeddings + logistic regression; TF-IDF as second opinion) or tfidf"),
    label_yes: str = typer.Option(" Yes", "--label-yes", help="label readout: the single-token 'hateful' answer"),
    label_no: str = typer.Option(" No", "--label-no", help="label readout: the single-token 'not hateful' answer"),
    mode: ModeOption = None,
    alpha: AlphaOption = None,
    strength: StrengthOption = None,
    neurons_subset: NeuronsSubsetOption = None,
    layers: LayersOption = None,
    probe_size: ProbeSizeOption = 8,
    score: ScoreOption = None,
    specificity: SpecificityOption = None,
    activation_pool: ActivationPoolOption = None,
    reading_layer: ReadingLayerOption = None,
    seed: SeedOption = 0,
    out_dir: StudyOutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Hate-speech neurons: find them, turn them off, measure on held-out text vs random neurons.

    Measures: log-likelihood of hateful vs neutral sentences, label-readout accuracy, hate rate of sampled
    continuations (judged by a classifier trained on Davidson et al.), perplexity ratio."""
    import neat_llm as nl
    from neat_llm.evaluation.hate import HATE_READOUT
    from neat_llm.studies import HateStudySettings, hate_study

    _quiet_libraries()
    _data_not_a_folder(data, "toxigen, davidson")
    design = design or ("demonstrations" if data == "toxigen" else "prefixes")
    if design == "demonstrations":
        if data != "toxigen":
            _fail("--design demonstrations builds prompts from target groups: it needs --data toxigen")
        activations = any(x is not None for x in (mode, alpha, strength, transport_at))
        if writers is not None and writers != "none" and activations:
            _fail("--writers edits what the neurons write, not their activations: drop --mode/--alpha/--strength/"
                  "--transport-at, or give --writers none")
        span = "none" if writers == "none" or (writers is None and activations) else (
            _one_span(writers, "--writers") if writers is not None else "half")
        method_given = method is not None
        method = method or ("next-line" if span != "none" else "neat")
        try:
            find = _find_settings(layers, probe_size, seed, score, specificity, reading_layer, method, activation_pool)
        except ValueError as e:
            _fail(e)
        return _demonstration_hate(model, data_path, _parse_ks(k) if k else None, n_random, fit_groups, eval_groups,
                                   n_prompts or 200, samples, neutral_prompts, per_prompt, new_tokens or 40, mode, alpha,
                                   strength, find, seed, out_dir, as_json, readout_at, ceiling,
                                   _int_list(ceiling_layers, "--ceiling-layers"), _spans(ceiling_spans, "--ceiling-spans"),
                                   _spans(ceiling_units, "--ceiling-units"), probe, transport_at, ceiling_strength,
                                   method, shared_conditions, ceiling_writers=_spans(ceiling_writers, "--ceiling-writers"),
                                   writer_ks=_parse_ks(writer_ks) if writer_ks else None, writers=span,
                                   writes_strength=writes_strength, method_given=method_given,
                                   writer_rank=hate_writer_rank)
    if design != "prefixes":
        _fail(f"--design must be prefixes or demonstrations, got {design!r}")
    if writers is not None:
        _fail("--writers belongs to the demonstrations design (--design demonstrations)")
    method, n_random = method or "neat", 3 if n_random is None else n_random
    ks = _parse_ks(k or "10,50,100,500,2000")
    n_prompts, new_tokens = n_prompts or 80, new_tokens or 20
    try:  # every setting is checked here, before the model and the data load
        find = _find_settings(layers, probe_size, seed, score, specificity, reading_layer, method, activation_pool)
        readout = replace(HATE_READOUT, positive_word=label_yes, negative_word=label_no)
        settings = HateStudySettings(data=data, data_path=data_path, text_col=text_col, label_col=label_col,
                                     positive=_csv(positive) or ("hate",), contrast=_csv(contrast), method=method,
                                     ks=ks, fit_groups=_csv(fit_groups), eval_groups=_csv(eval_groups),
                                     n_random=n_random, max_per_side=max_per_side, max_eval=max_eval,
                                     n_prompts=n_prompts, samples=samples, max_new_tokens=new_tokens,
                                     davidson_prompts=davidson_prompts, classifier_data=classifier_data,
                                     readout=readout, mode=mode, alpha=alpha, strength=strength, judge=judge, seed=seed)
        m = nl.load_model(model)
        study = hate_study(m, settings, out=out_dir, find=find, neurons=_subset(neurons_subset, m))
    except (ValueError, OSError, FloatingPointError) as e:
        _fail(e)
    if as_json:
        print(json.dumps({"path": str(study.path), **study.report.to_dict()}))
        return
    _print_hate(study)


def _int_list(text: str | None, flag: str) -> tuple[int, ...] | None:
    """'8,14,20' as (8, 14, 20); a clear error for anything else."""
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        _fail(f"{flag} takes block numbers separated by commas, e.g. 8,14,20; got {text!r}")


def _print_hate(study) -> None:
    """``neat hate``'s (prefixes design) table and notes."""
    r = study.report
    t = Table(title=f"hate speech: {r.dataset}, {r.method}, {r.mode} ablation; held-out {r.n_eval['hate']} hateful / "
                    f"{r.n_eval['neutral']} neutral, {r.n_prompts} prompts, {r.n_continuations} continuations per condition")
    for col in ("K", "neurons", "loglik hate", "loglik neutral", "gap", "readout acc", "hate rate", "toxic rate",
                "ppl ratio"):
        t.add_column(col, justify="right")
    for row in r.rows:
        sd = row.std

        def f(name, fmt="{:.3f}"):
            v = fmt.format(getattr(row, name))
            return v + (f"±{fmt.format(sd[name])}" if name in sd else "")

        def ci(name):
            lo, hi = getattr(row, f"{name}_ci")
            return f"{getattr(row, name):.3f} [{lo:.3f}, {hi:.3f}]"

        t.add_row(str(row.k), row.condition if row.condition != "random" else f"random ×{row.n_sets}",
                  f("loglik_hate"), f("loglik_neutral"), f("gap"), f("readout_accuracy"), ci("hate_rate"),
                  ci("toxic_rate"), f"{row.ppl_ratio:.3f}")
    out.print(t)
    names = {"minilm": "MiniLM embeddings + logistic regression", "tfidf": "TF-IDF + logistic regression"}
    for name, by_source in r.judges.items():
        role = "judge" if name == r.judge else "second opinion"
        out.print(f"{role}: {names.get(name, name)}; held-out " + "; ".join(
            f"{src} accuracy {q['accuracy']:.3f}, hate-class F1 {q['f1_hate']:.3f} (n={q['n_test']})"
            for src, q in by_source.items()))
    if r.agreement:
        out.print(f"the judges agree on {r.agreement['agreement']:.3f} of {r.agreement['n']} continuations "
                  f"(hate vs not; Cohen's kappa {r.agreement['kappa']:.3f})")
    out.print("hate / toxic rate: [95% interval], bootstrap over prompts (random: the sets' mean per prompt)")
    for row in r.rows:
        d = row.vs_random.get("hate_rate")
        if d:
            out.print(f"K={row.k}: hate rate of the top-K minus random K-sets, paired per prompt: {d['diff']:+.3f} "
                      f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}], permutation p = {d['p']:.3f}")
    for row in r.rows:
        if row.by_source:
            out.print(f"K={row.k} {row.condition}: hate rate by prompt source: " + "; ".join(
                f"{src} {v['hate_rate']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}] ({v['n_prompts']} prompts)"
                for src, v in row.by_source.items()))
    out.print(f"written to {study.path}")

def _demonstration_hate(model, data_path, ks, n_random, fit_groups, eval_groups, n_prompts, samples, neutral_prompts,
                        per_prompt, new_tokens, mode, alpha, strength, find, seed, out_dir, as_json,
                        readout_at="recognition", ceiling=False, ceiling_layers=None, ceiling_spans=None,
                        ceiling_units=None, probe="prototypical", transport_at=None, ceiling_strength=1.0,
                        method="neat", shared_conditions=True, ceiling_writers=None, writer_ks=None, writers="none",
                        writes_strength=1.0, method_given=True, writer_rank="contrast") -> None:
    """``neat hate --design demonstrations``: METHOD.md section 6's hate study, one table. ``writers``:
    a span, "half" (the second half of the model's blocks, known once it is loaded) or "none"."""
    import neat_llm as nl
    from neat_llm.find_settings import FindSettings
    from neat_llm.studies.demonstrations import demonstration_study
    from neat_llm.studies.settings import DemonstrationStudySettings

    random_given, n_random = n_random is not None, 1 if n_random is None else n_random
    try:  # every setting is checked here, before the model and the data load; the writers' span "half" after
        settings = DemonstrationStudySettings(data_path=data_path, method=method, ks=ks, fit_groups=_csv(fit_groups),
                                              eval_groups=_csv(eval_groups),
                                              n_random=n_random if random_given or writers != "none" else 3,
                                              n_prompts=n_prompts,
                                              samples=samples, n_neutral_prompts=neutral_prompts,
                                              per_prompt=per_prompt, max_new_tokens=new_tokens, mode=mode, alpha=alpha,
                                              strength=strength, seed=seed, readout=readout_at,
                                              ceiling=ceiling, ceiling_layers=ceiling_layers,
                                              ceiling_spans=ceiling_spans, ceiling_units=ceiling_units,
                                              ceiling_writers=ceiling_writers, writer_ks=writer_ks, probe=probe,
                                              transport_at=transport_at, ceiling_strength=ceiling_strength,
                                              share_conditions=shared_conditions,
                                              writers=None if writers in ("none", "half") else writers,
                                              writes_strength=writes_strength, writer_rank=writer_rank)
        m = nl.load_model(model)
        if writers == "half" and not _writers_by_default(m):  # Gemma 2/3: the MLP output is normalised
            method = method if method_given else "neat"
            _note_activation_rows(m, f", found with {method}")
            writers = "none"
            settings = DemonstrationStudySettings.of(settings, method=method, n_random=n_random if random_given else 3)
        if writers == "half":
            settings = DemonstrationStudySettings.of(settings, writers=(m.n_layers // 2, m.n_layers - 1))
        if settings.writers and readout_at == "generation" and find.reading_layer is None:  # where it writes: the last block
            find = FindSettings.of(find, reading_layer=m.n_layers - 1)
        study = demonstration_study(m, settings, out=out_dir, find=find)
    except (ValueError, OSError, FloatingPointError) as e:
        _fail(e)
    if as_json:
        print(json.dumps({"path": str(study.path), **study.report.to_dict()}))
        return
    _print_demonstrations(study)


def _print_demonstrations(study) -> None:
    """``neat hate --design demonstrations``'s table and notes."""
    r = study.report
    t = Table(title=f"what the model writes: {r.dataset}, {r.method}, {r.intervention}; {r.n_prompts} hate-prone "
                    f"demonstration prompts x {r.samples} = {r.n_continuations} continuations per condition, "
                    f"{r.n_neutral_prompts} x {r.neutral_samples} neutral",
              box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)  # ten columns fit 80, no number cut
    widths = {"K": 4, "hate": 5, "vs rnd": 6, "p": 5, "neutral": 7, "gap": 6, "ppl": 5}  # the widest cell of each
    for col in ("K", "neurons", "hate", "vs rnd", "p", "neutral", "gap", "vs rnd", "p", "ppl"):
        if col == "neurons":  # a long condition name folds onto a second line instead of squeezing the numbers
            t.add_column(col, overflow="fold", min_width=9)
        else:
            t.add_column(col, justify="right", no_wrap=True, min_width=widths[col])

    def vs(row, name) -> list[str]:
        d = row.vs_random.get(name)
        return ["", ""] if d is None else [f"{d['diff']:+.3f}", f"{d['p']:.3f}"]

    for row in r.rows:
        t.add_row(str(row.k), row.condition if row.condition != "random" else f"random x{row.n_sets}",
                  f"{row.hate_rate:.3f}", *vs(row, "hate_rate"), f"{row.neutral_hate_rate:.3f}", f"{row.next_gap:+.3f}",
                  *vs(row, "next_gap"), f"{row.ppl_ratio:.3f}")
    out.print(t)
    n_pos = r.settings.get("n_positive_score")
    top_k = max((row.k for row in r.rows if row.condition == "concept"), default=0)
    if n_pos is not None and top_k > n_pos:
        from neat_llm.find_settings import EFFECT_METHODS
        from neat_llm.scoring import chance_score

        why = ("at or below 0 (no net effect on the concept after the contrast texts and the fluency cost)"
               if r.method in EFFECT_METHODS else f"at or below chance ({chance_score(r.method):g})")
        out.print(f"note: only {n_pos} neurons score above chance; the top {top_k} beyond them are ranked by a score "
                  f"{why}", soft_wrap=True)
    if r.settings.get("reused_conditions"):
        out.print(f"reused from an earlier study measuring the same way (--no-shared-conditions to measure them again): "
                  f"{', '.join(r.settings['reused_conditions'])}", soft_wrap=True)
    for c in r.settings.get("k_choice") or []:
        got = (f"K = {c['k']} (fit gap removal {c['fit_gap_removal'][c['ks'].index(c['k'])]:.3f}, ratio "
               f"{c['fit_ppl_ratio'][c['ks'].index(c['k'])]:.3f})" if c["k"] is not None else
               f"no K (the top {c['ks'][0]} already {c['fit_ppl_ratio'][0]:.3f})")
        out.print(f"chosen on the fit split at perplexity ratio {c['max_ppl']}: {got}", soft_wrap=True)
    out.print("hate: hate rate of the continuations; neutral: the judge's rate on neutral-prompt continuations; gap: "
              "log p(hateful next statement) - log p(neutral one), nats per token; vs rnd: top-K minus its random "
              "K-sets, paired per prompt, with the permutation p; 95% intervals:", soft_wrap=True)
    for row in r.rows:
        lo, hi = row.hate_rate_ci
        line = f"  K={row.k} {row.condition}: hate rate {row.hate_rate:.3f} [{lo:.3f}, {hi:.3f}]"
        for label, d in (("vs random", row.vs_random.get("hate_rate")), ("vs before", row.vs_before.get("hate_rate")),
                         ("gap vs random", row.vs_random.get("next_gap"))):
            if d:
                line += f"; {label} {d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
        out.print(line, soft_wrap=True)
    j = r.judge
    out.print(f"judge: MiniLM + logistic regression on the fit statements; threshold {j['threshold']:.2f} set on "
              f"{j['calibrated_on']} neutral continuations (rate there {j['neutral_rate_at_threshold']:.3f}); "
              f"one group left out: AUROC {j['logo_auroc']:.3f}, macro-F1 {j['logo_macro_f1']:.3f}; held-out "
              f"statements: AUROC {j['heldout_auroc']:.3f}, hate F1 {j['heldout_f1_hate']:.3f} (all-hate "
              f"{j['heldout_all_hate_f1']:.3f})", soft_wrap=True)
    out.print(f"written to {study.path}")


BIAS_WRITERS_K = 500  # neat bias's K by default: the 500 writers of docs/results.md's CrowS-Pairs study


def _writers_by_default(m) -> bool:
    """Whether the writers' edit is the default K rows on this model: where the MLP output is what
    the neurons write. Gemma 2/3 normalise it, and there the edit (``--writers a-b``, made after the
    norm) was measured on one data set only, IndiBias on Gemma 3 270M, where it moved nothing beyond
    random (docs/results.md), so there the default stays the activation rows."""
    return bool(m.family.mlp_output_direct)


def _note_activation_rows(m, found: str = "") -> None:
    """Say that a study's default K rows on this model turn activations off, not the writers' edit."""
    err.print(f"note: {m.family.name} models normalise what their MLPs write; the writers' edit is not the default "
              f"there (--writers a-b asks for it): the K rows turn the top-K neurons' activations off (--writers none)"
              f"{found}", soft_wrap=True)


def _bias_writers_for(m, settings, span: str | tuple, method_given: bool, k_given: bool):
    """The bias study's writers once the model is known: "half" the second half of its blocks (K = 500
    or half the span's neurons, unless --k was given); where the family normalises what its MLPs write
    (Gemma 2/3: ``_writers_by_default``), the activation rows instead, with a note (found with neat and the
    dose-response of K, unless --method or --k were given)."""
    from .studies.settings import DEFAULT_KS

    if span != "half":
        return settings
    if _writers_by_default(m):
        a, b = m.n_layers // 2, m.n_layers - 1
        ks = {} if k_given else {"ks": (min(BIAS_WRITERS_K, (b - a + 1) * m.d_ff // 2),)}
        return type(settings).of(settings, writers=(a, b), **ks)
    _note_activation_rows(m)
    return type(settings).of(settings, **({} if method_given else {"method": "neat"}),
                             **({} if k_given else {"ks": DEFAULT_KS}))


@app.command()
@resumable
def bias(
    model: ModelOption = None,
    data: str = typer.Option("crows-pairs", "--data", help="crows-pairs, indibias, or a file of minimal pairs"),
    data_path: Optional[Path] = typer.Option(None, "--data-path", help="where crows-pairs/indibias are (default: $NEAT_LLM_DATA, ../shared/data)"),
    lang: str = typer.Option("en", "--lang", help="IndiBias language: en or hi"),
    bias_type: Optional[str] = typer.Option(None, "--bias-type", help="only pairs of this bias type (find and evaluate)"),
    more_col: str = typer.Option("sent_more", "--more-col", help="(own file) column of the more stereotypical sentence"),
    less_col: str = typer.Option("sent_less", "--less-col", help="(own file) column of the less stereotypical sentence"),
    type_col: str = typer.Option("bias_type", "--type-col", help="(own file) column of the bias type ('' for none)"),
    template_col: Optional[str] = typer.Option(None, "--template-col", help="(own file of templates) column of the sentence with a MASK slot, e.g. Sentence"),
    stereo_col: str = typer.Option("Target_Stereotypical", "--stereo-col", help="(templates) column of the stereotypical targets, a list such as ['Dalits']"),
    anti_col: str = typer.Option("Target_Anti-Stereotypical", "--anti-col", help="(templates) column of the anti-stereotypical targets"),
    mask: str = typer.Option("MASK", "--mask", help="(templates) the slot the targets fill"),
    method: Optional[str] = typer.Option(None, "--method", help="how to find the neurons (any `neat find` method; default: auroc with writers, whose run only gives the direction, else neat)"),
    k: Optional[str] = typer.Option(None, "--k", help="sizes of the K rows (default: 500 writers; with --writers none: 10,50,100,500,2000, a dose-response)"),
    n_random: RandomOption = 3,
    eval_fraction: float = typer.Option(0.3, "--eval-fraction", help="share of pairs held out for the evaluation"),
    folds: Optional[int] = typer.Option(None, "--folds", help="k-fold cross-fitting instead of one split: every item evaluated once, by neurons found on the other k-1 folds (k finds; fold-<i>/ study folders, pooled bias.json)"),
    max_fit_pairs: Optional[int] = typer.Option(None, "--max-fit-pairs", help="seeded cap on fit pairs"),
    max_eval_pairs: Optional[int] = typer.Option(None, "--max-eval-pairs", help="seeded cap on held-out pairs"),
    n_boot: int = typer.Option(1000, "--boot", help="bootstrap resamples for the 95% intervals"),
    min_pairs: int = typer.Option(5, "--min-pairs", help="bias types with fewer held-out pairs only count towards 'all'"),
    probe: str = typer.Option("prototypical", "--probe", help="prototypical (find's probe batch) or paired (the b most stereotypical-leaning fit pairs; each neuron scored by its effect on S(stereotypical) - S(its own counterpart))"),
    shared_conditions: bool = typer.Option(True, "--shared-conditions/--no-shared-conditions", help="take a condition another study already measured the same way (same weights, held-out items, and the same neurons changed the same way: the before row, random K-sets) from the cache ($NEAT_LLM_CACHE/conditions) instead of measuring it again; the study lists what it reused"),
    layer_rule: str = typer.Option("paired", "--layer-rule", help="reading layer: best cross-validated paired accuracy on the fit pairs ('paired') or find's P-vs-N AUROC ('auroc')"),
    mode: ModeOption = None,
    alpha: AlphaOption = None,
    strength: StrengthOption = None,
    writers: Optional[str] = typer.Option(None, "--writers", help="the K rows edit what neurons write, not their activations: the concept direction removed from what the K neurons of this span of blocks (e.g. 15-29) chosen by --writer-rank write, beside random K-sets of the span under the same edit (default: the second half of the blocks; 'none': the top-K neurons' activations turned off instead, as --mode/--alpha/--strength imply; Gemma 2/3, which normalise what their MLPs write, fall back to that; there --writers a-b takes the neurons' part out after the norm)"),
    writes_strength: float = typer.Option(1.0, "--writes-strength", help="with --writers: the share of each write along the concept direction removed, in (0, 2] (1: removed, 2: reversed, a reflection of each output vector)"),
    writer_rank: str = typer.Option("effect", "--writer-rank", help="with --writers: how the K writers are chosen: effect (the first-order effect of the edit on the fit pairs' preference for the stereotypical sentence: one forward and backward pass per fit sentence) or contrast (mean activation on the stereotypical minus the counterpart sentences, times the write along the direction)"),
    ceiling: bool = typer.Option(False, "--ceiling", help="also the concept direction edited itself (at --writes-strength), against before: out of the residual stream at the reading layer (direction-L<r>), out of what every MLP writes (mlp-writes-L0-<last>: every neuron, the ceiling of any --writers set) and, with --writers, what the MLPs of that span write"),
    neurons_subset: NeuronsSubsetOption = None,
    layers: LayersOption = None,
    probe_size: ProbeSizeOption = 8,
    score: ScoreOption = None,
    specificity: SpecificityOption = None,
    activation_pool: ActivationPoolOption = None,
    reading_layer: ReadingLayerOption = None,
    seed: SeedOption = 0,
    out_dir: StudyOutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Social-bias neurons on minimal pairs: stereotype score per bias type, before / after / random.

    Finds the neurons on fit pairs, turns them off, and reports the stereotype score (50 = no preference; n and 95% bootstrap interval) per bias type on held-out pairs, before and
    after, with random neurons as the control and the perplexity ratio."""
    import neat_llm as nl
    from neat_llm.studies import BiasStudySettings, bias_study

    _quiet_libraries()
    _data_not_a_folder(data, "crows-pairs, indibias")
    activations = any(x is not None for x in (mode, alpha, strength))
    if writers is not None and writers != "none" and activations:
        _fail("--writers edits what the neurons write, not their activations: drop --mode/--alpha/--strength, or "
              "give --writers none")
    span = "none" if writers == "none" or (writers is None and activations) else (
        _one_span(writers, "--writers") if writers is not None else "half")
    neat_only = probe != "prototypical" or score is not None or specificity is not None  # NEAT's own options
    method_given = method is not None
    method = method or ("auroc" if span != "none" and not neat_only else "neat")
    ks = _parse_ks(k or (str(BIAS_WRITERS_K) if span != "none" else "10,50,100,500,2000"))
    columns = {} if data in ("crows-pairs", "indibias") else {"more": more_col, "less": less_col,
                                                               "bias_type": type_col or None}
    templates = None
    if template_col is not None:
        if data in ("crows-pairs", "indibias"):
            _fail(f"--template-col reads a file of templates; {data} holds sentence pairs")
        templates, columns = {"template": template_col, "stereo": stereo_col, "anti": anti_col,
                              "bias_type": type_col or None, "mask": mask}, {}
    try:  # every setting is checked here, before the model and the data load
        find = _find_settings(layers, probe_size, seed, score, specificity, reading_layer, method, activation_pool)
        settings = BiasStudySettings(data=data, data_path=data_path, lang=lang, bias_type=bias_type, columns=columns,
                                     method=method, ks=ks, n_random=n_random, eval_fraction=eval_fraction,
                                     max_fit_pairs=max_fit_pairs, max_eval_pairs=max_eval_pairs, n_boot=n_boot,
                                     min_pairs=min_pairs, mode=mode, alpha=alpha, strength=strength, seed=seed, layer_rule=layer_rule,
                                     templates=templates, probe=probe, folds=folds,
                                     share_conditions=shared_conditions,
                                     writers=None if span in ("none", "half") else span,
                                     writes_strength=writes_strength, ceiling=ceiling, writer_rank=writer_rank)
        m = nl.load_model(model)
        settings = _bias_writers_for(m, settings, span, method_given, k is not None)
        study = bias_study(m, settings, out=out_dir, find=find, neurons=_subset(neurons_subset, m))
    except (ValueError, OSError, FloatingPointError) as e:
        _fail(e)
    if as_json:
        print(json.dumps({"path": str(study.path), **study.report.to_dict()}))
        return
    _print_bias(study, writers)


def _print_bias(study, writers: Optional[str]) -> None:
    """The bias study's tables and notes, as `neat bias` prints them."""
    r = study.report
    held = (f"{r.n_eval_pairs} items, each held out once ({r.settings.folds}-fold cross-fitting)" if r.settings.folds
            else f"{r.n_eval_pairs} held-out pairs")
    how = (f"the concept direction out of what the K writers of blocks {writers} write"
           + (" (ranked by their effect on the fit pairs)" if r.settings.writer_rank == "effect" else "")
           if r.edits_writes else f"{r.mode} ablation")
    t = Table(title=f"stereotype score (%, 50 = no preference, 95% bootstrap interval): {r.dataset}, {r.method}, "
                    f"{how}; {held}")
    for col in ("bias type", "n", "K", "before", "top-K off", "random off", "vs random (paired)", "ppl ratio",
                "random ppl"):
        t.add_column(col, justify="right" if col != "bias type" else "left")

    def s(x):
        return f"{x.score:.1f} [{x.lo:.1f}, {x.hi:.1f}]"

    for row in r.rows:
        v = row.vs_random
        vs = "–" if v is None else f"{v['diff']:+.1f} [{v['ci'][0]:+.1f}, {v['ci'][1]:+.1f}]"
        t.add_row(row.bias_type, str(row.n), str(row.k), s(row.before), s(row.after), s(row.random), vs,
                  f"{row.ppl_ratio:.3f}", f"{row.random_ppl_ratio:.3f}")
    out.print(t)
    if r.ceilings:
        c = Table(title="ceilings: the concept direction edited itself (every neuron), against before (above), "
                        "paired over items")
        c.add_column("ceiling", no_wrap=True)
        for col in ("bias type", "n", "after", "vs before (paired)", "ppl ratio"):
            c.add_column(col, justify="left" if col == "bias type" else "right")
        for row in r.ceilings:
            v = row.vs_before
            c.add_row(row.ceiling, row.bias_type, str(row.n), s(row.after),
                      f"{v['diff']:+.1f} [{v['ci'][0]:+.1f}, {v['ci'][1]:+.1f}]", f"{row.ppl_ratio:.3f}")
        out.print(c)
    st = r.settings
    cv = st.paired_cv_accuracy
    if st.reused_conditions:
        out.print(f"reused from an earlier study measuring the same way (--no-shared-conditions to measure them again): "
                  f"{', '.join(st.reused_conditions)}", soft_wrap=True)
    if st.folds:
        out.print(f"reading layers of the {st.folds} folds: {st.fold_reading_layers} ({st.layer_rule} rule); each fold's "
                  f"own numbers in its bias.json under {study.path.parent}/fold-<i>/")
        out.print(f"written to {study.path}")
        return
    out.print(f"reading layer {st.reading_layer} ({st.layer_rule} rule); paired accuracy (stereotypical sentence "
              f"scores higher than its counterpart): held-out {st.eval_paired_accuracy:.3f}"
              + (f", cross-validated on the fit pairs {cv:.3f}" if cv is not None else "")
              + f"; P-vs-N AUROC {st.eval_auroc:.3f}")
    out.print(f"written to {study.path}")
