"""One self-contained HTML page per run: the run's facts, the concept vector's quality per layer,
where the concept neurons live, the top neurons with their top-activating examples, and, when the
run folder holds them, the removal evaluation (evaluation.json), hate (hate.json) and bias
(bias.json) results.

Self-contained: inline CSS and inline SVG, no JavaScript, and a Content-Security-Policy that lets
the page fetch nothing. Every string that comes from the run (model id, concept name, texts,
tokens, file contents) goes through ``html.escape``. Each section is drawn from what the folder
holds; a missing or unreadable file leaves a short note instead of its section.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from .charts import GREY, PALETTE, Series, bar_chart, empty_chart, histogram, interval_chart, line_chart
from ..concepts.conceptset import ConceptSource
from ..evaluation.bias import BiasReport
from ..evaluation.behaviour import BehaviourReport
from ..runs import RunFiles
from ..evaluation.hate import HateReport

REPORT_FILE = RunFiles.REPORT
OPEN_ROWS = 2  # top neurons shown expanded when the page opens
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def e(s) -> str:
    """Escape any value for HTML text and attribute values."""
    return escape(str(s), quote=True)


@dataclass
class ReportInputs:
    """What a run folder holds, read tolerantly: ``meta`` is meta.json as a dict; tensors are None
    when scores.safetensors is missing; ``notes`` lists what could not be read and why."""

    run_dir: Path
    meta: dict
    scores: object = None  # torch.Tensor [n_layers, d_ff], NaN = not scored
    layer_auroc: object = None  # torch.Tensor [n_layers]
    top: list[dict] = field(default_factory=list)
    examples: dict | None = None
    evaluation: dict | None = None
    hate: HateReport | None = None
    bias: BiasReport | None = None
    behaviour: dict = field(default_factory=dict)  # {file name: BehaviourReport} (neat hate --design demonstrations)
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path, notes: list[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        notes.append(f"{path.name} could not be read ({err})")
        return None
    if not isinstance(obj, dict):
        notes.append(f"{path.name} is not a JSON object")
        return None
    return obj


def read_run_folder(run_dir: str | Path) -> ReportInputs:
    """Everything the report shows from ``run_dir``. Only meta.json is required."""
    from ..runs import RunError

    d = Path(run_dir)
    if not d.is_dir():
        raise RunError(f"no such run folder: {d}")
    notes: list[str] = []
    meta = _read_json(d / RunFiles.META, notes)
    if meta is None:
        raise RunError(f"{d} is not a finished run: meta.json is missing or unreadable")
    inp = ReportInputs(d, meta, notes=notes)
    if (d / RunFiles.SCORES).is_file():
        try:
            from safetensors.torch import load_file

            t = load_file(str(d / RunFiles.SCORES))
            inp.scores, inp.layer_auroc = t.get("scores"), t.get("layer_auroc")
        except Exception as err:  # a damaged file costs its charts, not the page
            notes.append(f"scores.safetensors could not be read ({err})")
    if (d / RunFiles.TOP).is_file():
        try:
            import pandas as pd

            inp.top = pd.read_csv(d / RunFiles.TOP, keep_default_na=False).to_dict("records")
        except Exception as err:
            notes.append(f"top.csv could not be read ({err})")
    inp.examples = _read_json(d / RunFiles.EXAMPLES, notes)
    inp.evaluation = _read_json(d / RunFiles.EVALUATION, notes)
    inp.hate = _read_typed(d / RunFiles.HATE, HateReport.from_dict, notes)
    inp.bias = _read_typed(d / RunFiles.BIAS, BiasReport.from_dict, notes)
    for f in sorted(d.glob("behaviour-*.json")):
        if not f.name.endswith("-continuations.json"):
            got = _read_typed(f, BehaviourReport.from_dict, notes)
            if got is not None:
                inp.behaviour[f.name] = got
    return inp


def _read_typed(path: Path, reader, notes: list[str]):
    """A results file typed by its own reader (``HateReport.from_dict`` ...), or None with a note."""
    obj = _read_json(path, notes)
    if obj is None:
        return None
    try:
        return reader(obj)
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        notes.append(f"{path.name} could not be read ({err})")
        return None


# --- small formatting helpers -------------------------------------------------------------------
def _f(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}f}" if abs(v) >= 10 ** -digits or v == 0 else f"{v:.2e}"
    return str(v)


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def ranges(xs) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0–2, 5, 7–8'."""
    xs = sorted({int(x) for x in xs})
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}–{xs[j]}")
        i = j + 1
    return ", ".join(out)


def _dl(items: list[tuple[str, str]]) -> str:
    """Definition list; values are already-escaped HTML."""
    return '<dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _section(sid: str, title: str, body: str, intro: str = "") -> str:
    intro_html = f'<p class="intro">{intro}</p>' if intro else ""
    return f'<section id="{e(sid)}"><h2>{e(title)}</h2>{intro_html}{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


# --- sections -------------------------------------------------------------------------------------
def _headline(inp: ReportInputs) -> str:
    m = inp.meta
    passes = m.get("passes") or {}
    fwd = sum((p.get("forward", 0) or 0) + (p.get("partial_forward", 0) or 0) for p in passes.values()
              if isinstance(p, dict))
    secs = (m.get("seconds") or {}).get("total")
    cards = [("reading layer", _f(m.get("reading_layer"))), ("eval AUROC at that layer", _f(_num(m.get("eval_auroc")))),
             ("neurons scored", _f(m.get("n_neurons_scored"))), ("forward passes", _f(fwd)),
             ("wall time", f"{secs:.1f} s" if isinstance(secs, (int, float)) else "–")]
    return '<div class="cards">' + "".join(f'<div class="card"><div class="v">{e(v)}</div><div class="k">{e(k)}</div></div>'
                                          for k, v in cards) + "</div>"


def _facts(inp: ReportInputs) -> str:
    m = inp.meta
    p = m.get("params") or {}
    n_fit, n_eval = m.get("n_fit") or {}, m.get("n_eval") or {}
    src = (m.get("extra") or {}).get("concept_source") or {}
    model = [("model", f"<code>{e(m.get('model_id', '?'))}</code>"),
             ("family", e(m.get("model_family", "?"))),
             ("size", f"{e(_f(m.get('n_layers')))} blocks × {e(_f(m.get('d_ff')))} MLP neurons"),
             ("weights hash", f"<code>{e(str(m.get('weights_hash', ''))[:16])}</code>")]
    concept = [("concept", e(m.get("concept_name", "?"))),
               ("fit texts", f"{e(_f(n_fit.get('positive')))} positive, {e(_f(n_fit.get('contrast')))} contrast"),
               ("eval texts (held out)", f"{e(_f(n_eval.get('positive')))} positive, {e(_f(n_eval.get('contrast')))} contrast"),
               ("data hash", f"<code>{e(str(m.get('concept_hash', ''))[:16])}</code>")]
    if src:
        try:
            what = ConceptSource.from_dict(src).describe()
        except (ValueError, TypeError):  # a source this version cannot read: show it as recorded
            what = str(src)
        if what:
            concept.append(("source", f"<code>{e(what)}</code>"))
    layers = p.get("layers")
    subset = p.get("neuron_subset")
    method = [("method", f"<b>{e(m.get('method', '?'))}</b>"),
              ("reading layer", f"{e(_f(m.get('reading_layer')))}"
                                + (" (best cross-validated AUROC)" if p.get("reading_layer_chosen") else " (given)")),
              ("concept vector", f"{e(p.get('vector', '?'))}, {e(p.get('pool', '?'))}-token pooling"),
              ("probe batch", f"{e(_f(p.get('probe_size')))} text(s)" + (", contrastive" if p.get("contrastive") else "")),
              ("ablation", e(p.get("ablation", "?"))),
              ("blocks scored", e(ranges(layers)) if layers else "all"),
              ("seed", e(_f(m.get("seed")))),
              ("eval fraction", e(_f(p.get("eval_fraction"), 2)))]
    if subset:
        method.append(("neuron subset", f"{sum(len(v) for v in subset.values()):,} neurons"))
    scorer = p.get("scorer") or {}
    if scorer:
        method.append(("scorer options", "<code>" + e(", ".join(f"{k}={v}" for k, v in scorer.items())) + "</code>"))
    passes = m.get("passes") or {}
    secs = m.get("seconds") or {}
    stages = [s for s in passes if isinstance(passes[s], dict)]
    cost_rows = "".join(
        f"<tr><td>{e(s)}</td><td>{e(_f(passes[s].get('forward', 0)))}</td><td>{e(_f(passes[s].get('partial_forward', 0)))}</td>"
        f"<td>{e(_f(passes[s].get('backward', 0)))}</td><td>{e(_f(_num(secs.get(s)), 1))}</td></tr>" for s in stages)
    cost = (f'<table class="small"><thead><tr><th>stage</th><th>forward</th><th>partial forward</th><th>backward</th>'
            f"<th>seconds</th></tr></thead><tbody>{cost_rows}</tbody></table>")
    versions = m.get("versions") or {}
    when = [("created", e(m.get("created", "?"))),
            ("versions", e(", ".join(f"{k} {v}" for k, v in versions.items())))]
    probes = m.get("probe_texts") or []
    probe_html = ""
    if probes:
        probe_html = ('<h3>Probe batch X*</h3><ol class="probes">'
                      + "".join(f"<li>{e(t)}</li>" for t in probes[:10]) + "</ol>")
    return _section("facts", "The run", f"""
<div class="grid3">
  <div><h3>Model</h3>{_dl(model)}</div>
  <div><h3>Concept set</h3>{_dl(concept)}</div>
  <div><h3>Method</h3>{_dl(method)}</div>
</div>
<div class="grid2">
  <div><h3>Cost</h3>{cost}</div>
  <div><h3>When</h3>{_dl(when)}{probe_html}</div>
</div>""")


def _layer_quality(inp: ReportInputs) -> str:
    intro = ("Cross-validated AUROC of the concept score S(x) = ⟨h<sub>ℓ</sub>(x), c<sub>ℓ</sub>⟩ separating "
             "positives from contrast texts, per block output. The reading layer ℓ* is where the concept is read.")
    if inp.layer_auroc is None:
        return _section("layers", "Concept vector quality per layer", _note("No per-layer AUROC in this run folder."), intro)
    aucs = [float(x) for x in inp.layer_auroc.tolist()]
    lstar = inp.meta.get("reading_layer")
    xs = list(range(len(aucs)))
    hl = (lstar, aucs[lstar], f"ℓ* = {lstar}") if isinstance(lstar, int) and 0 <= lstar < len(aucs) else None
    lo = min([a for a in aucs if math.isfinite(a)] + [0.5])
    chart = line_chart([Series("AUROC", xs, aucs, color=PALETTE[1])], title="P-vs-N AUROC by layer", xlabel="block",
                       ylabel="AUROC (cross-validated)", y_range=(max(0.0, math.floor(lo * 10) / 10 - 0.02), 1.02),
                       hlines=[(0.5, "chance")], highlight=hl, width=1000, height=260, css_class="auroc")
    extra = ""
    ev = _num(inp.meta.get("eval_auroc"))
    if ev is not None:
        extra = f'<p class="caption">AUROC of S on the held-out eval texts at ℓ* = {e(lstar)}: <b>{ev:.3f}</b>.</p>'
    return _section("layers", "Concept vector quality per layer", chart + extra, intro)


def _ranked(inp: ReportInputs, k: int):
    """[(score, layer, neuron)] of the k best scored neurons, from the scores tensor."""
    import torch

    s = inp.scores
    flat = s.flatten()
    ok = torch.nonzero(torch.isfinite(flat)).flatten()
    order = ok[torch.sort(flat[ok], descending=True, stable=True).indices][:k]
    d_ff = s.shape[1]
    return [(float(flat[i]), int(i) // d_ff, int(i) % d_ff) for i in order]


def _where(inp: ReportInputs) -> str:
    title = "Where the concept neurons live"
    if inp.scores is None:
        return _section("where", title, _note("No scores in this run folder."))
    import torch

    L = inp.scores.shape[0]
    k = len(inp.top) or 100
    top = _ranked(inp, k)
    counts = [0] * L
    for _, l, _n in top:
        counts[l] += 1
    lstar = inp.meta.get("reading_layer")
    bars = bar_chart(list(range(L)), counts, title=f"top-{k} neurons per block", xlabel="block",
                     ylabel=f"neurons in the top {k}", highlight={lstar} if isinstance(lstar, int) else None,
                     highlight_label=f"reading layer ℓ* = {lstar}", value_labels=L <= 40, css_class="per-block")
    fin = inp.scores[torch.isfinite(inp.scores)]
    n_zero = int((fin == 0).sum())
    nz = fin[fin != 0]
    if len(nz):
        n_bins = 60
        lo, hi = float(nz.min()), float(nz.max())
        if hi == lo:
            hi = lo + 1e-9
        hist = torch.histc(nz.double(), bins=n_bins, min=lo, max=hi).long().tolist()
        edges = [lo + (hi - lo) * i / n_bins for i in range(n_bins + 1)]
        thr = top[-1][0] if top else None
        dist = histogram(hist, edges, title="score distribution", xlabel="score (drop of S when the neuron is off)",
                         ylabel="neurons (log scale)", marker=(thr, f"top-{k} cut") if thr is not None else None,
                         css_class="scores")
    else:
        dist = empty_chart("score distribution", "every scored neuron has score 0")
    proof = (inp.meta.get("extra") or {}).get("exact_top") or {}
    caption = (f'<p class="caption">{int(fin.numel()):,} neurons scored'
               + (f"; {n_zero:,} scored exactly 0 (e.g. blocks after ℓ*, which cannot change S) and are left out "
                  "of the histogram" if n_zero else "")
               + (f"; the contrast probes were swept for {proof.get('contrast_swept', 0):,} of them, enough to prove the "
                  f"top {proof.get('k')} (--exact-top): the others show their upper bound" if proof else "") + ".</p>")
    return _section("where", title, f'<div class="grid2"><div>{bars}</div><div>{dist}{caption}</div></div>')


def _token_html(tokens: list[str], acts: list[float], scale: float) -> str:
    out = []
    for tok, a in zip(tokens, acts):
        alpha = min(1.0, abs(a) / scale) if scale > 0 else 0.0
        rgb = "217,72,15" if a >= 0 else "28,126,214"
        shown = tok.replace("\n", "⏎\n") if tok else "∅"
        out.append(f'<span class="t" style="background:rgba({rgb},{alpha:.2f})" title="{e(f"{a:.3f}")}">{e(shown)}</span>')
    return "".join(out)


def _neurons(inp: ReportInputs) -> str:
    title = "Top neurons"
    ex_by = {}
    if inp.examples:
        for n in inp.examples.get("neurons") or []:
            try:
                ex_by[(int(n["layer"]), int(n["neuron"]))] = n
            except (KeyError, TypeError, ValueError):
                continue
    rows = inp.top
    if not rows and inp.scores is not None:
        rows = [{"rank": i + 1, "layer": l, "neuron": n, "score": s} for i, (s, l, n) in enumerate(_ranked(inp, 100))]
    if not rows:
        return _section("neurons", title, _note("No ranking in this run folder."))
    lam = _num((inp.meta.get("params") or {}).get("specificity"))
    intro = ("The run's best-scoring neurons (score = how much the concept score S drops when the neuron is turned "
             "off" + (f", as a share of the fit gap, minus λ = {lam:g} × its fluency cost" if lam else "") + "). "
             "ΔS P and ΔS N: the drop of S on the positive and on the contrast probes when the neuron alone is off "
             "(a neuron that moves both alike is generic machinery, not the concept); act. P / N: its mean "
             "activation on the fit positives and contrast texts; stays: the share of 200 resamples of the probe "
             "texts in which the neuron is in the top 100 (a solid neuron stays, a lucky one does not). Open a row to see the texts of the concept set "
             "that excite it most; each token is coloured by the neuron's activation there "
             "(<span class=\"swatch pos\"></span> positive, <span class=\"swatch neg\"></span> negative, relative "
             "to the neuron's largest activation shown).")
    head = ('<div class="nrow head"><span>rank</span><span>block</span><span>neuron</span><span>score</span>'
            '<span>stays</span><span>ΔS P</span><span>ΔS N</span><span>act. P</span><span>act. N</span>'
            '<span>tokens that excite it most</span></div>')
    items, rest = [], []
    for r in rows[:100]:
        try:
            l, n = int(r["layer"]), int(r["neuron"])
        except (KeyError, TypeError, ValueError):
            continue
        info = ex_by.get((l, n))
        mp, mc = _num(r.get("mean_positive")), _num(r.get("mean_contrast"))  # top.csv; older runs: examples.json
        mp = mp if mp is not None else (_num(info.get("mean_positive")) if info else None)
        mc = mc if mc is not None else (_num(info.get("mean_contrast")) if info else None)
        cells = (f'<span>{e(r.get("rank", ""))}</span><span>{l}</span><span>{n}</span>'
                 f'<span>{e(_f(_num(r.get("score")), 4))}</span><span>{e(_f(_num(r.get("stability")), 2))}</span>'
                 f'<span>{e(_f(_num(r.get("effect_positive")), 3))}</span>'
                 f'<span>{e(_f(_num(r.get("effect_contrast")), 3))}</span><span>{e(_f(mp, 3))}</span>'
                 f'<span>{e(_f(mc, 3))}</span><span class="toks">{e(r.get("top_tokens", ""))}</span>')
        exs = (info or {}).get("examples") or []
        if not exs:
            (rest if ex_by else items).append(f'<div class="nrow plain">{cells}</div>')
            continue
        scale = max((abs(a) for x in exs for a in (x.get("acts") or []) if _num(a) is not None), default=0.0)
        body = []
        for x in exs:
            toks, acts = x.get("tokens") or [], [(_num(a) or 0.0) for a in (x.get("acts") or [])]
            side = str(x.get("side", ""))
            badge = f'<span class="badge {"pos" if side == "positive" else "neg"}">{e(side)}</span>'
            pre = "… " if x.get("truncated_left") else ""
            post = " …" if x.get("truncated_right") else ""
            body.append(f'<div class="ex">{badge}<span class="max">max {e(_f(_num(x.get("max")), 2))}</span>'
                        f'<div class="text">{e(pre)}{_token_html(toks, acts, scale)}{e(post)}</div></div>')
        is_open = " open" if len(items) < OPEN_ROWS else ""
        items.append(f'<details class="nrow"{is_open}><summary>{cells}</summary>'
                     f'<div class="examples">{"".join(body)}</div></details>')
    note = ""
    if not ex_by:
        note = _note("This run folder has no examples.json (runs made before it existed): the rows cannot be "
                     "expanded. Rerun <code>neat find</code> to get the top-activating examples.")
    more = ""
    if rest:
        more = (f'<details class="more"><summary>{len(rest)} more neurons of the ranking (no examples stored)</summary>'
                f'<div class="ntable">{head}{"".join(rest)}</div></details>')
    return _section("neurons", title, note + f'<div class="ntable">{head}{"".join(items)}</div>' + more, intro)


def _evaluation(inp: ReportInputs) -> str:
    ev = inp.evaluation
    rows = [r for r in (ev.get("rows") or []) if isinstance(r, dict) and _num(r.get("k")) is not None]
    title = "Concept removal on held-out data"
    if not rows:
        return _section("evaluation", title, _note("evaluation.json holds no rows."))
    rows.sort(key=lambda r: r["k"])
    ks = [int(r["k"]) for r in rows]

    def series(key: str, name: str = "top-K neurons"):
        mu = [_num(r.get(f"random_{key}_mean")) for r in rows]
        sd = [_num(r.get(f"random_{key}_std")) or 0.0 for r in rows]
        band = ([m - s if m is not None else None for m, s in zip(mu, sd)],
                [m + s if m is not None else None for m, s in zip(mu, sd)])
        n_rand = ev.get("n_random", "?")
        return [Series(name, ks, [_num(r.get(key)) for r in rows], color=PALETTE[0]),
                Series(f"random K-sets (n={n_rand})", ks, mu, color=GREY, band=band, dashed=True)]

    charts = [
        line_chart(series("gap_removal"), title="dose-response: gap removal", xlabel="K (neurons turned off)",
                   ylabel="gap removal (1 = concept gap gone)", x_log=True, xticks=ks, hlines=[(0.0, "")],
                   width=400, height=290, css_class="dose-response"),
        line_chart(series("auroc_after"), title="AUROC after removal", xlabel="K (neurons turned off)",
                   ylabel="P-vs-N AUROC after", x_log=True, xticks=ks,
                   hlines=[(0.5, "chance")] + ([(ev["auroc_before"], "before")] if _num(ev.get("auroc_before")) else []),
                   width=400, height=290, css_class="auroc-after"),
        line_chart(series("ppl_ratio"), title="perplexity ratio", xlabel="K (neurons turned off)",
                   ylabel="perplexity after / before (neutral text)", x_log=True, xticks=ks, hlines=[(1.0, "unchanged")],
                   width=400, height=290, css_class="ppl"),
    ]
    table = ('<table class="small"><thead><tr><th>K</th><th>gap removal</th><th>random</th><th>positive shift</th>'
             '<th>AUROC after</th><th>random</th><th>specificity</th><th>ppl ratio</th><th>random</th></tr></thead><tbody>'
             + "".join(f"<tr><td>{r['k']}</td><td>{e(_f(_num(r.get('gap_removal'))))}</td>"
                       f"<td>{e(_f(_num(r.get('random_gap_removal_mean'))))} ± {e(_f(_num(r.get('random_gap_removal_std'))))}</td>"
                       f"<td>{e(_f(_num(r.get('positive_shift'))))}</td><td>{e(_f(_num(r.get('auroc_after'))))}</td>"
                       f"<td>{e(_f(_num(r.get('random_auroc_after_mean'))))}</td><td>{e(_f(_num(r.get('specificity'))))}</td>"
                       f"<td>{e(_f(_num(r.get('ppl_ratio'))))}</td><td>{e(_f(_num(r.get('random_ppl_ratio_mean'))))}</td></tr>"
                       for r in rows) + "</tbody></table>")
    intro = (f"The run's top-K neurons turned off ({e(ev.get('mode', '?'))} ablation) on the held-out eval split, "
             f"against random K-sets of the same size. AUROC before: {e(_f(_num(ev.get('auroc_before'))))}; "
             f"perplexity before: {e(_f(_num(ev.get('ppl_before')), 2))}.")
    return _section("evaluation", title, f'<div class="grid3">{"".join(f"<div>{c}</div>" for c in charts)}</div>{table}',
                    intro)


def _hate(inp: ReportInputs) -> str:
    h = inp.hate
    title = "Hate speech"
    res = h.rows
    if not res:
        return _section("hate", title, _note("hate.json holds no results."))
    metrics = [("gap", "log-likelihood gap (hate − neutral)"), ("readout_accuracy", "readout accuracy"),
               ("hate_rate", "hate rate"), ("ppl_ratio", "perplexity ratio")]
    charts = []
    for key, label in metrics:
        if not any(_num(getattr(r, key)) is not None for r in res):
            continue
        series, hlines = [], []
        for cond in ("concept", "random"):
            pts = sorted((r.k, _num(getattr(r, key))) for r in res if r.condition == cond)
            if pts:
                series.append(Series("concept neurons off" if cond == "concept" else "random neurons off",
                                     [p[0] for p in pts], [p[1] for p in pts],
                                     color=PALETTE[0] if cond == "concept" else GREY, dashed=cond == "random"))
        before = [_num(getattr(r, key)) for r in res if r.condition == "before" and _num(getattr(r, key)) is not None]
        if before:
            hlines.append((before[0], "before"))
        ks = sorted({r.k for r in res if r.k > 0})
        if series:
            charts.append(line_chart(series, title=label, xlabel="K (neurons turned off)", ylabel=label,
                                     x_log=bool(ks) and min(ks) > 0, xticks=ks or None, hlines=hlines,
                                     width=480, height=260, css_class=f"hate-{key}"))

    def point(r):
        lo, hi = r.hate_rate_ci
        return _num(r.ppl_ratio), _num(r.hate_rate), _num(lo), _num(hi)

    by = {c: [point(r) for r in res if r.condition == c] for c in ("before", "concept", "random")}
    if by["concept"] and all(p[0] is not None and p[1] is not None for p in by["concept"] + by["random"]):
        before = [p[1] for p in by["before"] if p[1] is not None]
        charts.insert(0, _dose_response(by["concept"], by["random"], "hate rate of continuations",
                                        "dose-response: hate rate against fluency cost",
                                        before[0] if before else None, "hate-dose"))
    judged = "; ".join(f"{e(name)}{' (judge)' if name == h.judge else ''}: "
                       + ", ".join(f"{e(src)} F1 {e(_f(_num(q.get('f1_hate'))))}" for src, q in by_src.items()
                                   if isinstance(q, dict))
                       for name, by_src in h.judges.items() if isinstance(by_src, dict))
    agree = h.agreement
    intro = (f"Data set: {e(h.dataset or '?')}; method: {e(h.method or '?')}; "
             f"{e(h.n_continuations or '?')} continuations per condition."
             + (f" Judges (held-out hate-class F1): {judged}." if judged else "")
             + (f" The judges agree on {e(_f(_num(agree.get('agreement'))))} of the continuations "
                f"(kappa {e(_f(_num(agree.get('kappa'))))})." if agree else ""))
    body = f'<div class="grid2">{"".join(f"<div>{c}</div>" for c in charts)}</div>' if charts else _note("no numbers to plot")
    return _section("hate", title, body, intro)


def _behaviour(inp: ReportInputs) -> str:
    """One table per intervention: what the model writes on demonstration prompts, paired per prompt."""
    def diff(d: dict | None) -> str:
        if not d:
            return "–"
        lo, hi = d["ci"]
        clear = lo > 0 or hi < 0
        return f"{'<b>' if clear else ''}{d['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]{'</b>' if clear else ''}, p={d['p']:.3f}"

    parts = []
    for name, r in inp.behaviour.items():
        head = ("<tr><th>K</th><th>neurons</th><th>hate rate [95%]</th><th>vs random</th><th>vs before</th>"
                "<th>neutral rate</th><th>next-statement gap</th><th>vs random</th><th>ppl ratio</th></tr>")
        rows = "".join(
            f"<tr><td>{x.k}</td><td>{e(x.condition if x.condition != 'random' else f'random ×{x.n_sets}')}</td>"
            f"<td>{_f(x.hate_rate)} [{_f(x.hate_rate_ci[0])}, {_f(x.hate_rate_ci[1])}]</td>"
            f"<td>{diff(x.vs_random.get('hate_rate'))}</td><td>{diff(x.vs_before.get('hate_rate'))}</td>"
            f"<td>{_f(x.neutral_hate_rate)}</td><td>{_f(x.next_gap)}</td><td>{diff(x.vs_random.get('next_gap'))}</td>"
            f"<td>{_f(x.ppl_ratio)}</td></tr>" for x in r.rows)
        j = r.judge
        parts.append(f"<h3>{e(r.intervention)} <small>({e(name)})</small></h3>"
                     f"<p>{r.n_prompts} hate-prone demonstration prompts × {r.samples} = {r.n_continuations} "
                     f"continuations per condition; {r.n_neutral_prompts} × {r.neutral_samples} neutral. Judge threshold "
                     f"{e(_f(_num(j.get('threshold'))))} set on {e(j.get('calibrated_on', '?'))} neutral continuations; "
                     f"one group left out: AUROC {e(_f(_num(j.get('logo_auroc'))))}; held-out statements: AUROC "
                     f"{e(_f(_num(j.get('heldout_auroc'))))}, hate F1 {e(_f(_num(j.get('heldout_f1_hate'))))} "
                     f"(all-hate {e(_f(_num(j.get('heldout_all_hate_f1'))))}).</p>"
                     f"<table>{head}{rows}</table>")
    intro = ("What the model writes (METHOD.md section 6): differences are paired per prompt (every condition "
             "draws the same samples); bold where the 95% interval excludes 0.")
    return _section("behaviour", "What the model writes", "".join(parts), intro)


def _dose_response(concept: list[tuple], random: list[tuple], ylabel: str, title: str, before: float | None,
                   css: str) -> str:
    """Effect against the perplexity ratio: the top-K sets as one line (their 95% interval as a
    band), the random K-sets as a dashed line with theirs; points are (ppl ratio, y, lo, hi)."""
    def series(points, name, color, dashed):
        pts = sorted(points)
        band = None
        if all(p[2] is not None and p[3] is not None for p in pts):
            band = ([p[2] for p in pts], [p[3] for p in pts])
        return Series(name, [p[0] for p in pts], [p[1] for p in pts], color=color, band=band, dashed=dashed)

    lines = [series(concept, "concept neurons off (95% interval)", PALETTE[0], False)]
    if random:
        lines.append(series(random, "random neurons off", GREY, True))
    return line_chart(lines, title=title, xlabel="perplexity ratio (neutral text)", ylabel=ylabel,
                      hlines=[(before, "before")] if before is not None else [], vlines=[(1.05, "1.05"), (1.10, "1.10")],
                      width=480, height=260, css_class=css)


PPL_BUDGET = 1.10  # the fluency budget the charts mark (and the studies report against)


def _k_within_budget(rows) -> tuple[int, float | None, bool]:
    """The K a one-K chart shows: the largest whose perplexity ratio (the worst over the rows of that
    K) stays within ``PPL_BUDGET``; the smallest K when none does, or when none has a ratio."""
    worst: dict[int, float | None] = {}
    for r in rows:
        v = _num(r.ppl_ratio)
        if v is not None:
            worst[r.k] = max(v, worst.get(r.k) or v)
        else:
            worst.setdefault(r.k, None)
    ok = [k for k, v in worst.items() if v is not None and v <= PPL_BUDGET]
    if ok:
        return max(ok), worst[max(ok)], True
    k = min(worst)
    return k, worst[k], worst[k] is None


def _paired_points(v: dict | None) -> str:
    """A paired difference in points, bold where its interval excludes 0; – where not measured."""
    if not v:
        return "–"
    text = e(f"{v['diff']:+.1f} [{v['ci'][0]:+.1f}, {v['ci'][1]:+.1f}]")
    return f"<b>{text}</b>" if v["ci"][0] > 0 or v["ci"][1] < 0 else text


def _bias(inp: ReportInputs) -> str:
    b = inp.bias
    title = "Social bias before and after"
    res = b.rows
    if not res:
        return _section("bias", title, _note("bias.json holds no results."))
    k_chart, ppl_chart, within = _k_within_budget(res)  # one K in the chart; the table has every K
    names = {"before": "before", "after": "concept neurons off", "random": "random neurons off"}
    rows = [(f"{r.bias_type} (n={r.n})",
             [(names[c], _num(getattr(r, c).score), _num(getattr(r, c).lo), _num(getattr(r, c).hi))
              for c in ("before", "after", "random") if _num(getattr(r, c).score) is not None])
            for r in res if r.k == k_chart]
    cost = "" if ppl_chart is None else (f" (perplexity ×{ppl_chart:.3f}" + (f", within {PPL_BUDGET:g})" if within else
                                                                           f", over {PPL_BUDGET:g}: the smallest K)"))
    k_title = f", K = {_f(k_chart)} neurons off{cost}"
    chart = interval_chart(rows, title=f"stereotype preference per bias type{k_title}",
                           xlabel=f"stereotype preference (%; 50 = none){k_title}",
                           reference=(50.0, "no preference"), css_class="bias")
    table = ('<table class="small"><thead><tr><th>bias type</th><th>K</th><th>n</th><th>before</th><th>after</th>'
             '<th>random</th><th>after − random (paired, points)</th><th>ppl ratio</th></tr></thead><tbody>'
             + "".join(f"<tr><td>{e(r.bias_type)}</td><td>{e(r.k)}</td><td>{e(r.n)}</td>"
                       + "".join(f"<td>{e(_ci(getattr(r, c)))}</td>" for c in ("before", "after", "random"))
                       + f"<td>{_paired_points(r.vs_random)}</td>"
                       + f"<td>{e(_f(_num(r.ppl_ratio)))}</td></tr>" for r in res) + "</tbody></table>")
    st = b.settings
    acc = _num(st.eval_paired_accuracy)
    readable = (f" Concept read at layer {e(st.reading_layer if st.reading_layer is not None else '?')} "
                f"({e(st.layer_rule or '?')} rule); "
                f"held-out paired accuracy {e(_f(acc))} (share of pairs whose stereotypical sentence scores higher "
                "than its counterpart; 0.5 = not readable)." if acc is not None else "")
    intro = (f"Data set: {e(b.dataset or '?')} ({e(b.lang or '?')}); method: {e(b.method or '?')}."
             f"{readable} Percent of pairs where the model prefers the stereotypical sentence, with its 95% "
             f"interval; the chart shows the largest K within a perplexity ratio of {PPL_BUDGET:g} (the smallest K "
             "when none is), the table every K.")

    def point(r, side, ppl):
        c = getattr(r, side)
        return _num(ppl), _num(c.score), _num(c.lo), _num(c.hi)

    overall = [r for r in res if r.bias_type == "all"]
    dose = ""
    if len(overall) > 1 and all(_num(r.ppl_ratio) is not None for r in overall):
        dose = _dose_response([point(r, "after", r.ppl_ratio) for r in overall],
                              [point(r, "random", r.random_ppl_ratio) for r in overall],
                              "stereotype preference (%, all pairs)", "dose-response: stereotype score against fluency cost",
                              _num(overall[0].before.score), "bias-dose")
    return _section("bias", title, chart + dose + table, intro)


def _ci(c) -> str:
    if _num(c.score) is None:
        return "–"
    lo, hi = _num(c.lo), _num(c.hi)
    return f"{c.score:.1f}" + (f" [{lo:.1f}, {hi:.1f}]" if lo is not None and hi is not None else "")


def _guard(fn, inp: ReportInputs, name: str) -> str:
    """A section whose data is malformed becomes a note; the rest of the page still renders."""
    try:
        return fn(inp)
    except Exception as err:  # the report is a view of the data: never lose the page to one section
        return _section(name, name, _note(f"This section could not be drawn: {e(type(err).__name__)}: {e(err)}"))


CSS = """
:root{--fg:#212529;--muted:#6c757d;--line:#e9ecef;--accent:#d9480f;--blue:#1c7ed6}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:#f8f9fa}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
header h1{font-size:24px;margin:0 0 4px}
header .sub{color:var(--muted);margin:0 0 16px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:16px 0}
h2{font-size:18px;margin:0 0 8px}
h3{font-size:13px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);margin:8px 0 6px}
.intro,.caption{color:#495057;margin:4px 0 12px}
.note{color:#856404;background:#fff3cd;border-radius:6px;padding:8px 12px}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:12px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .v{font-size:22px;font-weight:600}
.card .k{color:var(--muted);font-size:12px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:20px}
.grid3{display:grid;grid-template-columns:1fr 1fr 1fr;gap:20px}
@media (max-width:900px){.grid2,.grid3,.cards{grid-template-columns:1fr}}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 12px;margin:0}
dl.facts dt{color:var(--muted)} dl.facts dd{margin:0;overflow-wrap:anywhere}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f1f3f5;padding:1px 4px;border-radius:3px}
table.small{border-collapse:collapse;font-size:12.5px;margin:8px 0}
table.small th,table.small td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:right}
table.small th:first-child,table.small td:first-child{text-align:left}
ol.probes{margin:0;padding-left:20px;color:#495057;overflow-wrap:anywhere}
svg.chart{width:100%;height:auto;display:block}
.ntable{border:1px solid var(--line);border-radius:6px;overflow:hidden}
.nrow>summary,.nrow.plain,.nrow.head{display:grid;grid-template-columns:44px 48px 56px 72px 48px 72px 72px 72px 72px 1fr;gap:8px;
  padding:6px 12px;align-items:baseline;border-top:1px solid var(--line)}
.nrow.head{background:#f1f3f5;font-weight:600;font-size:12px;color:#495057;border-top:0}
.nrow>summary{cursor:pointer;list-style:none}
.nrow>summary::-webkit-details-marker{display:none}
.nrow>summary>span:first-child::before{content:"▸ ";color:var(--muted)}
.nrow[open]>summary>span:first-child::before{content:"▾ "}
.nrow[open]>summary{background:#fff4e6}
.nrow>summary:hover{background:#f8f9fa}
.nrow span{overflow-wrap:anywhere}
.nrow .toks{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;color:#495057}
.examples{padding:6px 12px 12px 64px;background:#fffaf5}
.ex{margin:6px 0}
.ex .text{font:13px/1.9 ui-monospace,SFMono-Regular,Menlo,monospace;white-space:pre-wrap;overflow-wrap:anywhere}
.t{border-radius:2px}
.badge{display:inline-block;font-size:11px;border-radius:10px;padding:0 8px;margin-right:6px;color:#fff}
.badge.pos{background:var(--accent)} .badge.neg{background:var(--blue)}
.max{font-size:11px;color:var(--muted)}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:middle}
.swatch.pos{background:rgba(217,72,15,.8)} .swatch.neg{background:rgba(28,126,214,.8)}
details.more{margin-top:10px}
details.more>summary{cursor:pointer;color:#495057;padding:4px 0}
footer{color:var(--muted);font-size:12px;margin-top:24px}
"""


def render_report(run_dir: str | Path) -> str:
    """The report page of ``run_dir`` as one HTML string."""
    from .. import __version__

    inp = read_run_folder(run_dir)
    m = inp.meta
    sections = [_guard(_facts, inp, "The run"), _guard(_layer_quality, inp, "Concept vector quality"),
                _guard(_where, inp, "Where the concept neurons live"), _guard(_neurons, inp, "Top neurons")]
    if inp.evaluation is not None:
        sections.append(_guard(_evaluation, inp, "Concept removal"))
    if inp.hate is not None:
        sections.append(_guard(_hate, inp, "Hate speech"))
    if inp.bias is not None:
        sections.append(_guard(_bias, inp, "Social bias"))
    if inp.behaviour:
        sections.append(_guard(_behaviour, inp, "What the model writes"))
    notes = "".join(_note(e(n)) for n in inp.notes)
    title = f"{m.get('concept_name', '?')} neurons of {m.get('model_id', '?')} ({m.get('method', '?')})"
    generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    files = sorted(p.name for p in inp.run_dir.iterdir() if p.is_file() and p.name != REPORT_FILE)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header>
<h1>Concept neurons: {e(m.get('concept_name', '?'))}</h1>
<p class="sub">{e(m.get('model_id', '?'))} · method <b>{e(m.get('method', '?'))}</b> · run folder <code>{e(inp.run_dir.name)}</code></p>
{_headline(inp)}
</header>
{notes}
{''.join(sections)}
<footer>Generated by neat-llm {e(__version__)} at {e(generated)} from {e(', '.join(files))}.</footer>
</main>
</body>
</html>
"""


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` (default ``run_dir/report.html``); returns its path."""
    from ..files import write_text

    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    write_text(path, render_report(run_dir))
    return path
