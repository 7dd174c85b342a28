"""The ``neat`` command line: find, show, generate, evaluate, compare, report."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .cli_app import (ActivationPoolOption, AlphaOption, StrengthOption, JsonOption, LayersOption, MinStabilityOption, ModelOption,
                      ModeOption, ProbeSizeOption, RandomOption, ReadingLayerOption, ScoreOption, SeedOption,
                      SpecificityOption, _fail, _parse_ks, _one_span, _quiet_libraries, app, err, out, resumable)

def _model_of_run(run):
    """Load the model a run was made with, and refuse one whose weights changed since."""
    import neat_llm as nl
    from neat_llm.models import DEFAULT_MODEL

    m = nl.load_model(None if run.meta.model_id == DEFAULT_MODEL else run.meta.model_id)
    if m.weights_hash != run.meta.weights_hash:
        _fail(f"the model {run.meta.model_id} now has other weights than when the run was made")
    return m


def _num(v: float, fmt: str = ".3g") -> str:
    return "–" if v != v else format(v, fmt)


WIDE_COLUMNS = 140  # below this terminal width the table is compact (rank, layer, neuron, score, ΔS P, ΔS N, tokens)


def _top_table(run, k: int, title: str, wide: bool = False, min_stability: float | None = None,
               show: int | None = None) -> Table:
    """The top k neurons with what tells a concept neuron from a generic one: the drop of S its
    removal causes on the positive and on the contrast probes, its mean activation on P and N.
    Compact (never a number cut) on a narrow terminal unless ``wide``. With ``min_stability`` only
    the neurons that stay, "stays" then read against the top k; ``show``: at most that many rows."""
    wide = wide or out.width >= WIDE_COLUMNS
    caption = ("ΔS P / ΔS N: drop of the concept score on the positive / contrast probes when the neuron alone is off "
               "(a generic neuron moves both)" + ("; act P / act N: mean activation on the fit positives / contrast "
                                                  "texts; cost: fluency cost (nats per token)" if wide else
                                                  "; --wide or --json for every column"))
    stays = run.probe_effects is not None
    if stays:
        from neat_llm.runs import STABILITY_K, STABILITY_RESAMPLES

        caption += (f"; stays: share of {STABILITY_RESAMPLES} resamples of the probes in which the neuron is in the "
                    f"top {k if min_stability is not None else STABILITY_K}" + ("; score 95%: its interval over those resamples" if wide else ""))
    t = Table(title=title, caption=caption)
    cols = (("rank", "layer", "neuron", "score") + (("score 95%",) if wide and stays else ()) + (("stays",) if stays else ())
            + ("ΔS P", "ΔS N") + (("act P", "act N", "cost") if wide else ()))
    for col in cols:
        t.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    t.add_column("top tokens (activation)", justify="left", overflow="fold", ratio=1)
    rows = run.rows(k, min_stability)
    if min_stability is not None:
        t.title += f"; {len(rows)} of the top {k} stay in >= {min_stability:g} of the resamples"
    for r in rows[:show]:
        cells = [str(r.rank), str(r.layer), str(r.neuron), _num(r.score, ".4g")]
        if wide and stays:
            cells.append(f"{_num(r.score_lo, '.3g')}..{_num(r.score_hi, '.3g')}")
        if stays:
            cells.append(_num(r.stability, ".2f"))
        cells += [_num(r.effect_positive), _num(r.effect_contrast)]
        if wide:
            cells += [_num(r.mean_positive), _num(r.mean_contrast), _num(r.fluency_cost, ".2g")]
        t.add_row(*cells, r.top_tokens)
    return t


@app.command()
@resumable
def find(
    model: ModelOption = None,
    concept: Optional[Path] = typer.Option(None, "--concept", "-c", help="concept file (.jsonl/.csv/.tsv/.parquet); default: built-in demo"),
    data: Optional[str] = typer.Option(None, "--data", help="a named data set instead: toxigen, davidson, davidson-offensive, crows-pairs, indibias-en, indibias-hi"),
    data_path: Optional[Path] = typer.Option(None, "--data-path", help="where that data set is (default: ../shared/data)"),
    text_col: str = typer.Option("text", "--text-col", help="column holding the text"),
    label_col: str = typer.Option("label", "--label-col", help="column holding the label"),
    positive: Optional[str] = typer.Option(None, "--positive", help="label value(s) of positives, comma-separated"),
    contrast: Optional[str] = typer.Option(None, "--contrast", help="label value(s) of contrast rows (default: all others)"),
    method: str = typer.Option("neat", "--method", help="scoring method: neat, aura, exhaustive, screen-verify, attribution-patching, activation, auroc, random, reference, ..."),
    layers: LayersOption = None,
    probe_size: ProbeSizeOption = 8,
    score: ScoreOption = None,
    contrastive: bool = typer.Option(False, "--contrastive", help="the same as --score contrastive"),
    positions: Optional[str] = typer.Option(None, "--positions", help="neat: turn a neuron off at the read position only ('read', the default: KV-cache replay) or at every position ('all', ~T times slower)"),
    specificity: SpecificityOption = None,
    activation_pool: ActivationPoolOption = None,
    read_template: str = typer.Option("{text}\n", "--read-template", help="what the model reads for the concept score; {text} stands for the text (default: the text and a newline, so S is read at the same token for every text)"),
    reading_layer: ReadingLayerOption = None,
    vector: str = typer.Option("diff-means", "--vector", help="concept vector: diff-means, cav, centroid"),
    pool: str = typer.Option("last", "--pool", help="representation: last token or mean"),
    ablation: str = typer.Option("zero", "--ablation", help="turn off as zero or mean"),
    max_ppl: Optional[float] = typer.Option(None, "--max-ppl", help="choose K on the fit split: the most concept removed while the perplexity ratio on fluency texts stays <= this (e.g. 1.05); then measured on the eval split"),
    eval_fraction: float = typer.Option(0.3, "--eval-fraction"),
    seed: SeedOption = 0,
    top_k: int = typer.Option(100, "--top-k", help="rows kept in top.csv"),
    min_stability: MinStabilityOption = None,
    exact_top: Optional[int] = typer.Option(None, "--exact-top", help="specific score: sweep the contrast probes only over the neurons that can still reach the top K (the top K and its order are the two full sweeps', bit for bit; below it the scores are upper bounds and the run refuses a larger K); K >= --top-k (default: 2000, or --top-k if larger, for the specific score without --max-ppl; 0: two full sweeps, every neuron's exact score)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder (default: runs/<time>-<concept>-<method>); an interrupted run resumes here"),
    strict: bool = typer.Option(False, "--strict", help="refuse texts longer than the context instead of truncating"),
    device: str = typer.Option("cpu", "--device"),
    dtype: str = typer.Option("float32", "--dtype"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
    show: int = typer.Option(10, "--show", help="rows of the table printed"),
    label_template: Optional[str] = typer.Option(None, "--label-template", help="label readout prompt with {text} (integrated-gradients, logprob-increase)"),
    label_yes: str = typer.Option(" Yes", "--label-yes", help="label readout: the positive answer token"),
    label_no: str = typer.Option(" No", "--label-no", help="label readout: the negative answer token"),
    clusters: int = typer.Option(32, "--clusters", help="neat-cluster: k-means clusters per block"),
    keep_clusters: int = typer.Option(16, "--keep-clusters", help="neat-cluster: clusters whose neurons are scored"),
    candidates: int = typer.Option(500, "--candidates", help="screen-verify: neurons verified exactly"),
    screen_on: str = typer.Option("fit", "--screen-on", help="screen-verify: first-order screen on the fit positives ('fit') or on the probe batch ('probes': recovers NEAT's own top neurons)"),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="'auto': spread a large model over this machine's GPUs (accelerate)"),
    ray: bool = typer.Option(False, "--ray", help="shard the NEAT sweep over a Ray cluster (needs the ray extra); a local one unless --ray-address; see docs/scaling.md"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="join a running Ray cluster: 'auto', HOST:6379 or ray://HOST:10001 (implies --ray)"),
    workers: int = typer.Option(2, "--workers", help="--ray: workers, each loading the model once"),
    gpus_per_worker: float = typer.Option(0, "--gpus-per-worker", help="--ray: GPUs per worker (use with --device cuda)"),
) -> None:
    """Find the concept neurons of a model: concept vector, reading layer, NEAT sweep, run folder.

    With --ray the sweep is split into shards (by block, and within blocks when blocks are few) that
    Ray workers score; finished shards are stored in the run folder, so an interrupted run resumes
    with the same command. The scores are those of a single process."""
    import neat_llm as nl

    _quiet_libraries()
    try:
        if concept is None and data is None and positive is not None:
            _fail("--positive needs --concept FILE")
        cs = _concept_from_options(concept, data, data_path, text_col, label_col, positive, contrast, None, seed)
        from neat_llm.concepts.label_readout import DEFAULT_TEMPLATE, LabelReadout
        from neat_llm.find_settings import POSITION_METHODS, FindSettings, build_scorer

        if positions is not None and method not in POSITION_METHODS:
            _fail(f"--positions {positions} is an option of --method {', '.join(POSITION_METHODS)}")
        if min_stability is not None:
            _check_stability_option(min_stability, method, ray or ray_address is not None)
        settings = FindSettings(reading_layer=reading_layer, vector=vector, pool=pool, read_template=read_template,
                                probe_size=probe_size, score=score, contrastive=contrastive, positions=positions,
                                specificity=specificity, activation_pool=activation_pool, layers=layers, ablation=ablation, eval_fraction=eval_fraction,
                                seed=seed, top_k=top_k, strict=strict, max_ppl=max_ppl,
                                exact_top=_exact_top(exact_top, top_k, max_ppl, score, contrastive, method))
        label = LabelReadout(template=label_template or DEFAULT_TEMPLATE, concept=cs.name, positive_word=label_yes,
                             negative_word=label_no)
        own = {"neat-cluster": {"n_clusters": clusters, "keep": keep_clusters},
               "screen-verify": {"candidates": candidates, "screen_on": screen_on}}.get(method, {})
        scorer = build_scorer(method, settings, label=label, **own)  # checked before the model loads
        distributed = None
        if ray or ray_address:
            from neat_llm.distributed import ModelSpec, RaySweep

            distributed = RaySweep(address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker,
                                   model=ModelSpec(model, device=device, dtype=dtype, device_map=device_map))
            distributed.check(scorer)  # Ray missing: say what to install before loading anything
        m = nl.load_model(model, device=device, dtype=dtype, **({"device_map": device_map} if device_map else {}))
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            run = nl.find_concept_neurons(m, cs, scorer, settings, out=out_dir, progress=True,
                                          distributed=distributed)
            budget = _evaluate_chosen_k(m, run, cs) if max_ppl is not None else None
    except (ValueError, FloatingPointError, OSError) as e:
        _fail(e)
    meta = run.meta
    report = _write_run_report(run.run_dir)
    if as_json:
        top = [{"layer": int(r.layer), "neuron": int(r.neuron), "score": float(r.score)}
               for r in (run.top_table.itertuples() if min_stability is None else run.rows(top_k, min_stability))]
        print(json.dumps({"run_dir": str(run.run_dir), "model": meta.model_id, "concept": meta.concept_name,
                          "method": meta.method, "reading_layer": meta.reading_layer, "eval_auroc": meta.eval_auroc,
                          "n_neurons_scored": meta.n_neurons_scored, "forward_passes": meta.forward_passes,
                          "backward_passes": meta.backward_passes, "passes": meta.passes,
                          "seconds": meta.seconds["total"], "top": top, "min_stability": min_stability,
                          "k_choice": meta.extra.get("k_choice"), "budget_evaluation": budget,
                          "report": str(report) if report else None}))
        return
    if min_stability is None:
        out.print(_top_table(run, show, f"top concept neurons: {meta.concept_name} ({meta.model_id})"))
    else:
        out.print(_top_table(run, min(top_k, meta.n_neurons_scored), f"top concept neurons: {meta.concept_name} "
                             f"({meta.model_id})", min_stability=min_stability, show=show))
        out.print(f"the same neurons elsewhere: neat export {run.run_dir} --k {top_k} --min-stability {min_stability:g} "
                  f"(Python: run.top({top_k}, min_stability={min_stability:g}))")
    out.print(f"reading layer {meta.reading_layer} (eval AUROC {meta.eval_auroc:.3f}); {meta.n_neurons_scored:,} neurons "
              f"scored with {meta.forward_passes:,} forward passes in {meta.seconds['total']:.1f} s")
    if budget is not None:
        _print_budget(run, budget)
    out.print(f"run folder: {run.run_dir}")
    if report:
        out.print(f"report: {report}")


def _exact_top(given: Optional[int], top_k: int, max_ppl: Optional[float], score: Optional[str], contrastive: bool,
               method: str) -> Optional[int]:
    """--exact-top as given (0: None, two full sweeps), else the default proven top K where the
    score has a contrast sweep to prune and nothing needs the whole ranking (--max-ppl)."""
    from neat_llm.find_settings import DEFAULT_EXACT_TOP, FindSettings

    if given is not None:
        if given < 0:
            _fail(f"--exact-top must be >= 0 (0: two full sweeps), got {given}")
        return given or None
    if max_ppl is not None or FindSettings(score=score, contrastive=contrastive).rule(method) != "specific":
        return None
    return max(DEFAULT_EXACT_TOP, top_k)


def _check_stability_option(min_stability: float, method: str, sharded: bool) -> None:
    """--min-stability needs each probe's own effect, which only NEAT's sweep in one process keeps."""
    from neat_llm.runs import check_min_stability
    from neat_llm.scoring import SCORERS

    try:
        check_min_stability(min_stability)
    except ValueError as e:
        _fail(str(e).replace("min_stability", "--min-stability"))
    if sharded or not getattr(SCORERS.get(method), "gives_per_probe", False):
        _fail(f"--min-stability needs each probe's own effect, which only --method neat swept in one process keeps "
              f"(got --method {method}{' with --ray' if sharded else ''})")


def _evaluate_chosen_k(m, run, cs) -> dict:
    """The K chosen on the fit split within --max-ppl, measured on the eval split against 5 random
    K-sets; written to evaluation.json. Returns {"k_choice", "evaluation"} (evaluation None when no K fits)."""
    from neat_llm.evaluation import evaluate_removal

    choice = run.meta.extra["k_choice"]
    if choice["k"] is None:
        return {"k_choice": choice, "evaluation": None}
    iv = run.intervention()
    report = evaluate_removal(m, run.readout(), run.eval_set(cs), {choice["k"]: run.top(choice["k"])},
                              n_random=5, mode=iv)
    obj = {"run_dir": str(run.run_dir), "method": run.meta.method, **report.to_dict()}
    run.save_evaluation(obj)
    return {"k_choice": choice, "evaluation": report.to_dict()}


def _print_budget(run, budget: dict) -> None:
    c = budget["k_choice"]
    if c["k"] is None:
        out.print(f"--max-ppl {c['max_ppl']}: even the top {c['ks'][0]} neurons raise the perplexity ratio on the fit "
                  f"fluency texts to {c['fit_ppl_ratio'][0]:.3f}; no K chosen")
        return
    r = budget["evaluation"]["rows"][0]
    i = c["ks"].index(c["k"])
    out.print(f"--max-ppl {c['max_ppl']}: K = {c['k']} chosen on the fit split (fit gap removal "
              f"{c['fit_gap_removal'][i]:.3f}, fluency-text perplexity ratio {c['fit_ppl_ratio'][i]:.3f}); on the eval "
              f"split: gap removal {r['gap_removal']:.3f} (random {r['random_gap_removal_mean']:.3f} ± "
              f"{r['random_gap_removal_std']:.3f}), AUROC {budget['evaluation']['auroc_before']:.3f} -> "
              f"{r['auroc_after']:.3f}, perplexity ratio on neutral text {r['ppl_ratio']:.3f}")


def _write_run_report(run_dir: Path) -> Path | None:
    """Write run_dir/report.html; a failure is reported but never costs the run (already written)."""
    from neat_llm.report import write_report

    try:
        return write_report(run_dir)
    except Exception as e:  # the run folder is complete; the report can be redone with `neat report`
        err.print(f"[yellow]warning:[/] the report could not be written ({type(e).__name__}: {e}); "
                  f"the run is complete, retry with `neat report {run_dir}`", highlight=False)
        return None


@app.command("show")
def show_run(run_dir: Path = typer.Argument(..., help="a run folder"),
             k: int = typer.Option(20, "--k", help="rows to show"),
             wide: bool = typer.Option(False, "--wide", help="every column, whatever the terminal's width"),
             min_stability: MinStabilityOption = None,
             as_json: JsonOption = False) -> None:
    """Print a run's stored ranking (with --min-stability: only the top-k neurons that stay)."""
    import neat_llm as nl

    if k < 1:
        _fail(f"--k (rows to show) must be at least 1, got {k}")
    try:
        run = nl.Run.load(run_dir)
    except (ValueError, OSError) as e:
        _fail(e)
    m = run.meta
    k = min(k, m.n_neurons_scored)  # asking for more rows than there are shows them all
    try:
        rows = run.rows(k, min_stability)
    except ValueError as e:
        _fail(str(e).replace("min_stability", "--min-stability"))
    if as_json:
        print(json.dumps({"run_dir": str(run.run_dir), "model": m.model_id, "method": m.method,
                          "reading_layer": m.reading_layer, "min_stability": min_stability,
                          "top": [r.to_dict() for r in rows]}))
        return
    out.print(_top_table(run, k, f"{m.concept_name}: {m.method} on {m.model_id} (reading layer {m.reading_layer})",
                         wide, min_stability))


@app.command()
def generate(run_dir: Optional[Path] = typer.Argument(None, help="a run folder (or, with --spec, the prompt)"),
             prompt: Optional[str] = typer.Argument(None, help="the prompt to continue"),
             k: Optional[int] = typer.Option(None, "--k", help="turn off the top-k neurons (default 50; not with --spec)"),
             mode: ModeOption = None,
             alpha: AlphaOption = None,
             strength: StrengthOption = None,
             spec: Optional[Path] = typer.Option(None, "--spec", help="an intervention file (neat export) instead of a run folder: its neurons, mode and values"),
             model: Optional[str] = typer.Option(None, "--model", "-m", help="with --spec: the model (default: the one the file names)"),
             max_new_tokens: int = typer.Option(40, "--max-new-tokens"),
             chat: bool = typer.Option(False, "--chat", help="wrap the prompt in the chat template"),
             as_json: JsonOption = False) -> None:
    """Continue a prompt with the model as is and with the run's top-k neurons turned off
    (or the neurons of an intervention file: neat generate --spec spec.json "prompt")."""
    import neat_llm as nl
    from neat_llm.interventions import InterventionSpec

    _quiet_libraries()
    if spec is not None:
        if prompt is None and run_dir is not None:  # `neat generate --spec FILE "prompt"`: the one argument is the prompt
            prompt, run_dir = str(run_dir), None
        if run_dir is not None:
            _fail("give a run folder or --spec, not both")
        if mode is not None or alpha is not None or strength is not None:
            _fail("an intervention file carries its own mode and values; drop --mode / --alpha / --strength")
        if k is not None:
            _fail("an intervention file names its own neurons; drop --k (or export another K)")
    elif run_dir is None:
        _fail("give a run folder (or --spec FILE)")
    if prompt is None:
        _fail("give the prompt to continue")
    try:
        if spec is not None:
            s = InterventionSpec.load(spec)
            from neat_llm.models import DEFAULT_MODEL

            name = model or s.model_id
            m = nl.load_model(None if name == DEFAULT_MODEL else name)
            s.check_model(m)
            neurons = s.selection()
            what, iv = f"{len(s.neurons)} neurons of {spec.name}", s.intervention(neurons)
        else:
            run = nl.Run.load(run_dir)
            m = _model_of_run(run)
            iv = run.intervention(mode, alpha, strength)
            k = 50 if k is None else k
            what, neurons = f"top-{k} {run.meta.concept_name} neurons", run.top(k)
        before = m.generate(prompt, max_new_tokens, chat=chat)
        with nl.turn_off(m, neurons, iv):
            after = m.generate(prompt, max_new_tokens, chat=chat)
    except (ValueError, OSError) as e:
        _fail(e)
    if as_json:
        print(json.dumps({"prompt": prompt, "k": len(neurons), "mode": iv.mode, "alpha": iv.alpha, "before": before,
                          "after": after}))
        return
    t = Table(title=f"{prompt!r}", show_lines=True)
    t.add_column("model as is")
    t.add_column(f"{what} off ({iv.describe()})")
    t.add_row(before, after)
    out.print(t)


@app.command()
def export(run_dir: Path = typer.Argument(..., help="a run folder"),
           k: int = typer.Option(100, "--k", help="the top-k neurons"),
           fmt: str = typer.Option("spec", "--format", help="spec (intervention file), hf (the edited model as a Hugging Face checkpoint) or neuronpedia (one JSON line per neuron)"),
           mode: ModeOption = None,
           alpha: AlphaOption = None,
           strength: StrengthOption = None,
           out_path: Path = typer.Option(..., "--out", "-o", help="the file (spec, neuronpedia) or the new folder (hf)"),
           force: bool = typer.Option(False, "--force", help="replace an existing spec or neuronpedia file"),
           min_stability: MinStabilityOption = None,
           writes: Optional[str] = typer.Option(None, "--writes", help="(--format hf) instead of turning neurons off, the run's concept direction projected out of what the --k neurons of this span of blocks (e.g. 20-29) that write most of it write, their rows of the down projection; --strength shrinks it instead (default 1: removed)"),
           as_json: JsonOption = False) -> None:
    """Take a run's neurons elsewhere: an intervention file, the edited model as a plain checkpoint,
    or the neurons' evidence for Neuronpedia."""
    import neat_llm as nl
    from neat_llm.export import (FORMATS, check_baked, export_checkpoint, spec_from_run, write_neuronpedia,
                                 writes_from_run)

    _quiet_libraries()
    if fmt not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if k < 1:
        _fail(f"--k must be at least 1, got {k}")
    span = _one_span(writes, "--writes")
    if span is not None:
        if fmt != "hf":
            _fail("--writes edits the down projection's weights along the concept direction, which only --format hf "
                  "holds (the intervention file keeps per-neuron activation maps)")
        if mode is not None or alpha is not None or min_stability is not None:
            _fail("--mode / --alpha / --min-stability do not apply to --writes (the neurons keep their activations; "
                  "--strength sets how much of the direction goes)")
    try:
        run = nl.Run.load(run_dir)
        if span is not None:
            m = _model_of_run(run)
            w = writes_from_run(m, run, span, k, strength)
            path = export_checkpoint(m, w, out_path, {"run_dir": str(run.run_dir), "concept_name": run.meta.concept_name,
                                                       "reading_layer": run.meta.reading_layer, "k": k,
                                                       "span": list(span)})
            diff = check_baked(m, w, path, ["The weather today is", "You are"])
            result = {"format": fmt, "path": str(path), "neurons": len(w), "mode": "neuron-writes",
                      "max_logit_diff": diff}
        elif fmt == "neuronpedia":
            if mode is not None or alpha is not None or strength is not None:
                _fail("--mode / --alpha / --strength do not apply to --format neuronpedia (it exports evidence, not an edit)")
            path = write_neuronpedia(run, k, out_path, overwrite=force, min_stability=min_stability)
            result = {"format": fmt, "path": str(path), "neurons": len(run.top(k, min_stability))}
        else:
            s = spec_from_run(run, k, mode, alpha, strength, min_stability)
            if fmt == "spec":
                path = s.save(out_path, overwrite=force)
                result = {"format": fmt, "path": str(path), "neurons": len(s.neurons), "mode": s.mode}
            else:
                m = _model_of_run(run)
                path = export_checkpoint(m, s, out_path)
                diff = check_baked(m, s, path, ["The weather today is", "You are"])
                result = {"format": fmt, "path": str(path), "neurons": len(s.neurons), "mode": s.mode,
                          "max_logit_diff": diff}
    except (ValueError, OSError) as e:
        _fail(str(e).replace("min_stability", "--min-stability") if min_stability is not None else e)
    if as_json:
        print(json.dumps(result))
        return
    extra = f"; the checkpoint's logits match turn_off's to {result['max_logit_diff']:.2g}" if fmt == "hf" else ""
    kept = f" of the top {k} that stay in >= {min_stability:g} of the resamples" if min_stability is not None else ""
    out.print(f"wrote {result['path']} ({fmt}, {result['neurons']} neurons{kept}{', ' + result['mode'] if 'mode' in result else ''}){extra}")


@app.command()
def evaluate(run_dir: Path = typer.Argument(..., help="a run folder"),
             k: str = typer.Option("10,50,100,500", "--k", help="sizes of the top-K sets turned off"),
             n_random: RandomOption = 5,
             mode: ModeOption = None,
             alpha: AlphaOption = None,
             strength: StrengthOption = None,
             seed: SeedOption = 0,
             concept: Optional[Path] = typer.Option(None, "--concept", help="the run's concept file, if it moved"),
             as_json: JsonOption = False) -> None:
    """Turn off the run's top-K neurons and measure concept removal on the held-out eval split,
    against random K-sets; writes evaluation.json into the run folder."""
    from dataclasses import replace

    import neat_llm as nl
    from neat_llm.concepts.conceptset import ConceptSource
    from neat_llm.evaluation import evaluate_removal
    from neat_llm.evaluation.removal import BUDGETS
    from neat_llm.concepts.sources import load_concept_source
    from neat_llm.runs import run_folder_lock

    _quiet_libraries()
    ks = _parse_ks(k)
    try:
        run = nl.Run.load(run_dir)
        src = ConceptSource.from_dict(run.meta.extra.get("concept_source"))
        if concept is not None:
            if src is None or src.kind != "file":
                _fail("--concept replaces a concept file, but this run did not use one")
            src = replace(src, path=str(concept))
        if src is None:
            _fail("this run did not record where its concept set came from; pass --concept")
        cs = load_concept_source(src)
        iv = run.intervention(mode, alpha, strength)
        with run_folder_lock(run.run_dir):  # a second evaluate of the same run is refused at once
            m = _model_of_run(run)
            report = evaluate_removal(m, run.readout(), run.eval_set(cs), run.selections(ks),
                                      n_random=n_random, seed=seed, mode=iv)
            obj = {"run_dir": str(run.run_dir), "method": run.meta.method, **report.to_dict()}
            kept = run.save_evaluation(obj)
    except (ValueError, OSError, FloatingPointError) as e:
        _fail(e)
    if kept is not None and not as_json:
        out.print(f"the earlier evaluation.json (other settings) is kept as {kept}")
    if as_json:
        print(json.dumps(obj))
        return
    t = Table(title=f"concept removal on held-out data: {run.meta.concept_name}, {run.meta.method}, {iv.describe()} "
                    f"(AUROC before {report.auroc_before:.3f})")
    for col in ("K", "gap removal", "random", "positive shift", "random", "AUROC after", "random",
                "specificity", "ppl ratio", "random"):
        t.add_column(col, justify="right")
    for r in report.rows:
        t.add_row(str(r.k), f"{r.gap_removal:.3f}", f"{r.random_gap_removal_mean:.3f}±{r.random_gap_removal_std:.3f}",
                  f"{r.positive_shift:.3f}", f"{r.random_positive_shift_mean:.3f}", f"{r.auroc_after:.3f}",
                  f"{r.random_auroc_after_mean:.3f}", f"{r.specificity:+.3f}", f"{r.ppl_ratio:.3f}",
                  f"{r.random_ppl_ratio_mean:.3f}")
    out.print(t)
    for b in BUDGETS:
        res = report.at_budget(b)
        if res.k is None:
            out.print(f"within a perplexity ratio of {b}: no K tried stays within it")
        else:
            out.print(f"within a perplexity ratio of {b}: gap removal {res.gap_removal:.3f} at K = {res.k} "
                      f"(random K-sets {res.random_gap_removal_mean:.3f} ± {res.random_gap_removal_std:.3f})")
    out.print(f"written to {run.run_dir / 'evaluation.json'}")


def _concept_from_options(concept, data, data_path, text_col, label_col, positive, contrast, max_per_side, seed):
    import neat_llm as nl
    from neat_llm.concepts.datasets import load_named

    if concept is not None and data is not None:
        _fail("give --concept FILE or --data NAME, not both")
    if data is not None:
        cs = load_named(data, data_path)
    elif concept is not None:
        if positive is None:
            _fail("--concept needs --positive VALUE: the label value that marks positive examples")
        cs = nl.ConceptSet.from_file(concept, text=text_col, label=label_col, positive=positive.split(","),
                                     contrast=contrast.split(",") if contrast else None)
    else:
        cs = nl.demo_concept()
    return cs.sample(max_per_side, seed) if max_per_side else cs


@app.command()
@resumable
def compare(
    methods: str = typer.Option(",".join(("neat", "neat-cluster", "screen-verify", "attribution-patching", "logprob-increase",
                                          "activation", "auroc", "aura", "random")), "--methods",
                                help="comma-separated methods, each scoring every neuron of the model"),
    agreement_methods: str = typer.Option("exhaustive,integrated-gradients", "--agreement-methods",
                                          help="methods too slow for the whole model: run on --agreement-subset neurons and compared with exhaustive ablation there (not a removal comparison); '' for none"),
    agreement_subset: int = typer.Option(1000, "--agreement-subset", help="size of the seeded neuron subset of the agreement check"),
    model: ModelOption = None,
    concept: Optional[Path] = typer.Option(None, "--concept", "-c", help="concept file (default: the demo concept)"),
    data: Optional[str] = typer.Option(None, "--data", help="a named data set: toxigen, davidson, davidson-offensive, crows-pairs, indibias-en, indibias-hi"),
    data_path: Optional[Path] = typer.Option(None, "--data-path", help="where that data set is (default: ../shared/data)"),
    text_col: str = typer.Option("text", "--text-col"),
    label_col: str = typer.Option("label", "--label-col"),
    positive: Optional[str] = typer.Option(None, "--positive"),
    contrast: Optional[str] = typer.Option(None, "--contrast"),
    max_per_side: Optional[int] = typer.Option(None, "--max-per-side", help="seeded subsample of the concept set"),
    k: str = typer.Option("10,50,100,500,2000", "--k"),
    n_random: RandomOption = 5,
    mode: str = typer.Option("zero", "--mode", help="zero or mean (AurA always dampens by its own factors)"),
    probe_size: ProbeSizeOption = 8,
    positions: str = typer.Option("read", "--positions", help="neat and exhaustive: read or all"),
    seed: SeedOption = 0,
    out_dir: Path = typer.Option(Path("compare"), "--out", "-o", help="folder for the runs, compare.csv/.md/.json and dose_response.png; rerun to resume"),
    label_template: Optional[str] = typer.Option(None, "--label-template"),
    label_yes: str = typer.Option(" Yes", "--label-yes"),
    label_no: str = typer.Option(" No", "--label-no"),
    ig_max_texts: Optional[int] = typer.Option(None, "--ig-max-texts", help="integrated-gradients: use at most this many fit positives (its cost is m x layers x 20 steps)"),
    clusters: int = typer.Option(32, "--clusters"),
    keep_clusters: int = typer.Option(16, "--keep-clusters"),
    candidates: int = typer.Option(500, "--candidates"),
    as_json: JsonOption = False,
) -> None:
    """Run several methods on the same split, each on the whole model; evaluate each on held-out
    data against the same random K-sets and compare, also at a fluency budget."""
    import neat_llm as nl
    from neat_llm.compare import compare_methods
    from neat_llm.concepts.label_readout import DEFAULT_TEMPLATE, LabelReadout
    from neat_llm.scoring import SCORERS

    _quiet_libraries()
    ks = _parse_ks(k)
    names = [x.strip() for x in methods.split(",") if x.strip()]
    slow = [x.strip() for x in agreement_methods.split(",") if x.strip()]
    unknown = [x for x in names + slow if x not in SCORERS]
    if unknown:
        _fail(f"unknown method(s) {unknown}; available: {', '.join(SCORERS)}")
    if positions not in ("all", "read"):
        _fail(f"--positions must be 'all' or 'read', got {positions!r}")
    try:
        cs = _concept_from_options(concept, data, data_path, text_col, label_col, positive, contrast, max_per_side, seed)
        label = LabelReadout(template=label_template or DEFAULT_TEMPLATE, concept=cs.name, positive_word=label_yes,
                             negative_word=label_no)
        from neat_llm.find_settings import POSITION_METHODS, FindSettings, build_scorer

        own = {"integrated-gradients": {"max_texts": ig_max_texts},
               "neat-cluster": {"n_clusters": clusters, "keep": keep_clusters},
               "screen-verify": {"candidates": candidates}}
        scorers, slow_scorers = ([build_scorer(x, FindSettings(positions=positions if x in POSITION_METHODS else None),
                                               label=label, **own.get(x, {})) for x in group] for group in (names, slow))
        m = nl.load_model(model)
        cmp = compare_methods(m, cs, scorers, out_dir, ks=ks, n_random=n_random, mode=mode, seed=seed,
                              probe_size=probe_size,
                              agreement_methods=slow_scorers, agreement_subset=agreement_subset)
    except (ValueError, OSError, FloatingPointError) as e:
        _fail(e)
    if as_json:
        print(json.dumps({"out": str(out_dir), "table": json.loads(cmp.table().to_json(orient="records")),
                          "agreement": [a.__dict__ for a in cmp.agreement]}, default=float))
        return
    out.print(cmp.markdown())
    out.print(f"written: {out_dir / 'compare.md'}, compare.csv, compare.json, dose_response.png")


@app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., help="a run folder"),
               out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default: RUN_DIR/report.html)"),
               open_it: bool = typer.Option(False, "--open", help="open the report in the default browser"),
               screenshot: Optional[Path] = typer.Option(None, "--screenshot", help="also save a PNG of the page (headless Chromium)"),
               width: int = typer.Option(1280, "--width", help="screenshot width in pixels")) -> None:
    """Write a run's self-contained HTML report: facts, per-layer AUROC, where the neurons live,
    the top neurons with their top-activating examples, and any evaluation/hate/bias results."""
    from neat_llm.report import write_report

    try:
        path = write_report(run_dir, out_file)
    except (ValueError, OSError) as e:
        _fail(e)
    out.print(f"report: {path}")
    if screenshot is not None:
        from neat_llm.report.browser import BrowserError, check_page

        try:
            check = check_page(path, screenshot=screenshot, width=width)
        except BrowserError as e:
            _fail(e)
        for msg in check.errors:
            err.print(f"[yellow]page error:[/] {msg}", highlight=False)
        out.print(f"screenshot: {screenshot}")
    if open_it:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


from . import cli_studies  # noqa: E402,F401  (registers `neat hate` and `neat bias` on the app)


def main() -> None:
    from .allocator import keep_freed_memory

    keep_freed_memory()  # studies and sweeps allocate the same large buffers over and over
    app()


if __name__ == "__main__":
    main()
