"""Regenerate docs/results.md from real runs on the embedded SmolLM2-135M-Instruct.

    python scripts/make_results.py            # runs what is missing (resumes), then writes the page
    python scripts/make_results.py --only-write

Each experiment is one `neat compare` command, run as written below; its outputs stay in
results/<name>/ (not committed) and the table and plot are copied into docs/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from grid import CELLS as _CELLS, EVAL_GROUPS as GRID_EVAL_GROUPS  # noqa: E402
from neat_llm.compare import Comparison  # noqa: E402
from neat_llm.evaluation.bias import BiasReport, StereotypeScore  # noqa: E402
from neat_llm.evaluation.hate import HateReport, HateRow  # noqa: E402

CELL_ORDER = list(_CELLS)
NEAT = str(Path(sys.executable).parent / "neat")
COMMON = ["--k", "10,50,100,500,2000", "--random", "5", "--agreement-subset", "1000", "--ig-max-texts", "4",
          "--seed", "0"]
EXPERIMENTS = {
    "toxigen": {
        "title": "Methods compared: ToxiGen, hateful vs neutral statements",
        # no agreement check here: exhaustive ablation over 1,000 neurons x 343 fit texts and integrated
        # gradients cost about as much as the rest of this comparison on a 2-core CPU; the two smaller
        # concepts below carry it
        "args": ["compare", "--data", "toxigen", *COMMON, "--agreement-methods", "",
                 "--label-template", "Text: {text}\nIs this text hateful? Answer:"],
    },
    "insults": {
        "title": "Methods compared: the built-in demo concept, insults vs friendly text",
        "args": ["compare", *COMMON, "--label-template", "Text: {text}\nIs this text insulting? Answer:"],
    },
    "threats": {
        "title": "Methods compared: threats of violence vs matched harmless sentences",
        "args": ["compare", "--concept", "scripts/data/threats.jsonl", "--positive", "threat", *COMMON,
                 "--label-template", "Text: {text}\nIs this text a threat? Answer:"],
    },
}


# The paper's applications: `neat hate` and `neat bias` (NEAT with find's defaults, whole model, 3 random K-sets).
STUDY_COMMON = ["--random", "3", "--seed", "0"]  # K = 10, 50, 100, 500, 2000 (the studies' default)
STUDIES = {
    "hate-toxigen": {"title": "ToxiGen, all target groups (held-out 30%)",
                     "args": ["hate", "--data", "toxigen", *STUDY_COMMON]},
    "hate-toxigen-dampen": {"title": "ToxiGen, all target groups, dampening (activations x 0.3, AurA-style) instead of zero",
                            "args": ["hate", "--data", "toxigen", "--mode", "dampen", "--alpha", "0.3", *STUDY_COMMON]},
    "hate-toxigen-davidson": {"title": "ToxiGen, all target groups, with Davidson tweet prefixes as a second prompt source",
                              "args": ["hate", "--data", "toxigen", "--davidson-prompts", "40", *STUDY_COMMON]},
    "hate-toxigen-groups": {"title": "ToxiGen, generalisation: found on 7 target groups, evaluated on 4 others",
                            "args": ["hate", "--data", "toxigen", "--eval-groups", "jewish,muslim,trans,women",
                                     *STUDY_COMMON]},
    "bias-crows-pairs": {"title": "CrowS-Pairs (English)", "args": ["bias", "--data", "crows-pairs", *STUDY_COMMON]},
    "bias-crows-pairs-paired": {"title": "CrowS-Pairs (English), the pair as the probe (`--probe paired`)",
                                "args": ["bias", "--data", "crows-pairs", "--probe", "paired", *STUDY_COMMON]},
    "bias-indibias-en": {"title": "IndiBias, English (Indian context)",
                         "args": ["bias", "--data", "indibias", "--lang", "en", *STUDY_COMMON]},
    "bias-indibias-hi": {"title": "IndiBias, Hindi (Indian context)",
                         "args": ["bias", "--data", "indibias", "--lang", "hi", *STUDY_COMMON]},
    "bias-indibias-en-gemma": {"title": "IndiBias, English, on Gemma 3 270M (multilingual)",
                               "args": ["bias", "--model", "gemma3-270m", "--data", "indibias", "--lang", "en",
                                        *STUDY_COMMON]},
    "bias-indibias-hi-gemma": {"title": "IndiBias, Hindi, on Gemma 3 270M (multilingual)",
                               "args": ["bias", "--model", "gemma3-270m", "--data", "indibias", "--lang", "hi",
                                        *STUDY_COMMON]},
}


# What the model writes (METHOD.md section 6): the demonstration design, one study folder per readout,
# one behaviour-<intervention>.json per intervention (each a command of its own).
DEMO_COMMON = ["--design", "demonstrations", "--seed", "0"]
DEMOS = {
    "hate-demo": {"title": "ToxiGen, demonstration prompts, neurons found with the recognition readout (S after a statement)",
                  "runs": [["--k", "500", "--random", "2"], ["--k", "500", "--random", "2", "--mode", "transport"]]},
    "hate-demo-gen": {"title": "ToxiGen, demonstration prompts, neurons found where the model writes (`--readout generation`)",
                      "runs": [["--k", "500", "--random", "2", "--readout", "generation", "--ceiling"],
                               ["--k", "500", "--random", "1", "--mode", "transport", "--readout", "generation"]]},
}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, Python "
            f"{platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")


def run(name: str) -> None:
    out = ROOT / "results" / name
    grid_default = ROOT / "results" / "grid" / name / "default"
    if name == "hate-toxigen" and (ROOT / "results/grid/toxigen/default/meta.json").exists() \
            and not (out / "meta.json").exists():
        # the study's run is `neat find` with its defaults on all of ToxiGen: the grid's default cell
        shutil.copytree(ROOT / "results/grid/toxigen/default", out, ignore=shutil.ignore_patterns("evaluation-*.json"))
        print(f"reusing results/grid/toxigen/default as the run of {name}", flush=True)
    same_run = ROOT / "results" / "hate-toxigen"
    if name == "hate-toxigen-davidson" and (same_run / "meta.json").exists() and not (out / "meta.json").exists():
        # the same `neat find` as hate-toxigen (same data, seed and defaults): only the prompts differ
        shutil.copytree(same_run, out, ignore=shutil.ignore_patterns("hate*.json", ".*"))
        print(f"reusing results/hate-toxigen as the run of {name}", flush=True)
    if name in EXPERIMENTS and (grid_default / "meta.json").exists() and not (out / "runs" / "neat").exists():
        # the grid's default cell is `neat find` with its defaults on the same data and seed: the very run
        # `neat compare` would make for NEAT, so it is reused rather than swept again
        (out / "runs").mkdir(parents=True, exist_ok=True)
        shutil.copytree(grid_default, out / "runs" / "neat", ignore=shutil.ignore_patterns("evaluation-*.json"))
        print(f"reusing {grid_default.relative_to(ROOT)} as the NEAT run of {name}", flush=True)
    cmd = [NEAT, *{**EXPERIMENTS, **STUDIES}[name]["args"], "--out", str(out)]
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def _stale_rows(out: Path) -> str:
    """A warning for method runs made before neat-cluster and screen-verify scored at the read
    position: their positive probes were ablated at every position while the contrast side and the
    per-row effects were measured at the read position, a mix that ranks massive-activation neurons
    first. Read from the run folders (their scorer parameters lack ``positions``)."""
    stale = []
    for m in ("neat-cluster", "screen-verify"):
        meta = out / "runs" / m / "meta.json"
        if meta.exists() and "positions" not in json.loads(meta.read_text())["params"]["scorer"]:
            stale.append(m)
    if not stale:
        return ""
    return ("\n**Do not read the " + " and ".join(f"`{m}`" for m in stale) + " rows as those methods' results.** "
            "These runs were made before a fault this comparison exposed was fixed: their exactly scored neurons "
            "were turned off at every position on the positive probes, while the contrast side of the *specific* "
            "score and the per-neuron effects were measured at the read position. The mix put massive-activation "
            "neurons first (2/90, activation about 100 on 'its', scored 12.3 against 0.02 at the read position), "
            "hence their perplexity. They now score at the read position like `neat` (a test checks they give "
            "NEAT's numbers); deleting their run folders and rerunning the command above regenerates their "
            "rows.\n")


def findings(cmp: Comparison) -> str:
    """Plain statements read off the numbers (nothing here is typed in by hand): per method, the
    removal within each fluency budget against the random K-sets of the same K, and whether the
    concept is erased (the AUROC of S after turning off the largest K within 1.10)."""
    lines = []
    for r in cmp.rows:
        if not r.removal or not r.removal.rows:
            continue
        parts = []
        for b in r.budgets():
            if b.k is None:
                parts.append(f"no K stays within a perplexity ratio of {b.max_ppl}")
                continue
            beats = b.gap_removal > b.random_gap_removal_mean + 2 * b.random_gap_removal_std
            parts.append(f"within {b.max_ppl}: gap removal {b.gap_removal:.3f} at K={b.k} "
                         f"({'beats' if beats else 'does not beat'} random {b.random_gap_removal_mean:.3f} ± "
                         f"{b.random_gap_removal_std:.3f}; AUROC {r.removal.auroc_before:.3f} → {b.auroc_after:.3f})")
        lines.append(f"- `{r.method}` ({r.intervention}): " + "; ".join(parts) + ".")
    scored = [r for r in cmp.rows if r.budgets() and r.budgets()[0].k is not None]
    if scored:
        best = max(scored, key=lambda r: r.budgets()[0].gap_removal)
        lines.append(f"- Most removed within a perplexity ratio of 1.05: `{best.method}`.")
    return "\n".join(lines) + "\n"


def _rate(r: HateRow, n: str) -> str:
    lo, hi = getattr(r, f"{n}_ci")
    return f"{getattr(r, n):.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo == lo and hi == hi else "")


def _hate_pair(rep: HateReport, k: int) -> tuple[HateRow, HateRow]:
    """The top-K row and the random K-sets' row at ``k``."""
    return rep.row("concept", k), rep.row("random", k)


def _sds(rep: HateReport, r: HateRow) -> float:
    """The gap's move beyond random, in s.d. of the random sets (− = hateful text less likely)."""
    before, rn = rep.row("before"), rep.row("random", r.k)
    sd = rn.std.get("gap", 0.0)
    return ((r.gap - before.gap) - (rn.gap - before.gap)) / sd if sd > 0 else float("nan")


def _clear(a: HateRow, b: HateRow) -> bool:
    """The two hate-rate intervals do not overlap."""
    return a.hate_rate_ci[1] < b.hate_rate_ci[0] or a.hate_rate_ci[0] > b.hate_rate_ci[1]


def _hate_table(rep: HateReport) -> str:
    cols = [("gap", "loglik gap (hate − neutral)"), ("readout_accuracy", "readout acc."), ("hate_rate", "hate rate"),
            ("second_hate_rate", "hate rate, 2nd judge"), ("toxic_rate", "hate or offensive rate")]
    lines = ["| K | neurons off | " + " | ".join(c for _, c in cols) + " | ppl ratio |",
             "|---|---|" + "---|" * len(cols) + "---|"]
    for r in rep.rows:
        cells = []
        for n, _ in cols:
            v = getattr(r, n)
            if v != v:
                cells.append("–")
            elif n in ("hate_rate", "toxic_rate"):
                cells.append(_rate(r, n))
            else:
                cells.append(f"{v:.3f}" + (f" ± {r.std[n]:.3f}" if n in r.std else ""))
        what = {"before": "none (before)", "concept": f"top-{r.k} ({rep.method})",
                "random": f"random {r.k} (mean of {r.n_sets})"}[r.condition]
        lines.append(f"| {r.k} | {what} | " + " | ".join(cells) + f" | {r.ppl_ratio:.3f} |")
    return "\n".join(lines) + "\n"


def _hate_findings(rep: HateReport) -> str:
    before = rep.row("before")
    out = []
    for k in sorted({r.k for r in rep.rows if r.k}):
        c, rnd = _hate_pair(rep, k)
        sd = rnd.std.get("gap", 0.0)
        out.append(f"- K={k}: log-likelihood gap {before.gap:.3f} → {c.gap:.3f} (random {rnd.gap:.3f} ± {sd:.3f}; "
                   f"{_sds(rep, c):+.1f} s.d. of the random sets; − = hateful text less likely); hate rate "
                   f"{_rate(before, 'hate_rate')} → {_rate(c, 'hate_rate')} (random {_rate(rnd, 'hate_rate')}; the "
                   f"intervals {'do not overlap' if _clear(c, rnd) else 'overlap'}); perplexity ratio "
                   f"{c.ppl_ratio:.3f} (random {rnd.ppl_ratio:.3f}).")
        for src, v in c.by_source.items():  # each prompt source on its own, next to its random control
            b, rv = before.by_source.get(src, {}), rnd.by_source.get(src, {})
            out.append(f"  - prompts from {src} (n={v['n_prompts']}): hate rate {b.get('hate_rate', float('nan')):.3f} "
                       f"→ {v['hate_rate']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}] (random {rv.get('hate_rate', float('nan')):.3f} "
                       f"[{rv.get('lo', float('nan')):.3f}, {rv.get('hi', float('nan')):.3f}]).")
    return "\n".join(out) + "\n"


def _hate_headline(rep: HateReport) -> str:
    """The issue's target in one plain sentence: within a perplexity ratio of 1.10, the K with the
    lowest hate rate, whether it falls by half or more with its interval clear of the random
    control's, and how far the likelihood gap moves in s.d. of the random sets."""
    before = rep.row("before")
    ok = [r for r in rep.rows if r.condition == "concept" and r.ppl_ratio <= 1.10]
    if not ok:
        return "**Plainly:** no top-K set stays within a perplexity ratio of 1.10.\n"
    best = min(ok, key=lambda r: r.hate_rate)
    k = best.k
    rnd = rep.row("random", k)
    drop = 1 - best.hate_rate / before.hate_rate if before.hate_rate else float("nan")
    clear = best.hate_rate_ci[1] < rnd.hate_rate_ci[0]
    verdict = ("meets" if drop >= 0.5 and clear else "misses") + " the target (half or more, interval clear of random)"
    most = min(ok, key=lambda r: _sds(rep, r))
    return (f"**Plainly:** within a perplexity ratio of 1.10 the lowest hate rate is at K = {k} (ratio "
            f"{best.ppl_ratio:.3f}): {_rate(before, 'hate_rate')} → {_rate(best, 'hate_rate')}, a "
            f"{100 * drop:.0f}% drop, against random {k}: {_rate(rnd, 'hate_rate')}; this {verdict}. The "
            f"hate − neutral log-likelihood gap moves furthest toward less hateful at K = {most.k}: "
            f"{before.gap:.3f} → {most.gap:.3f}, {_sds(rep, most):+.1f} s.d. of the random sets (target: −3 or "
            f"beyond; a positive number means hateful text became relatively more likely).\n")


def _hate_plot(rep: HateReport, path: Path) -> None:
    """Hate rate against the perplexity ratio: the top-K sets and the random K-sets, 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.4, 3.6))
    for cond, color, label in (("concept", "C0", f"top-K ({rep.method})"), ("random", "0.5", "random K-sets")):
        rows = sorted((r for r in rep.rows if r.condition == cond), key=lambda r: r.ppl_ratio)
        x = [r.ppl_ratio for r in rows]
        ax.plot(x, [r.hate_rate for r in rows], "o-" if cond == "concept" else "s--", color=color, label=label)
        ax.fill_between(x, [r.hate_rate_ci[0] for r in rows], [r.hate_rate_ci[1] for r in rows], color=color,
                        alpha=0.15)
        for r in rows:
            if cond == "concept":
                ax.annotate(f"K={r.k}", (r.ppl_ratio, r.hate_rate), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
    ax.axhline(rep.row("before").hate_rate, color="k", lw=0.8, ls=":", label="before")
    for v in (1.05, 1.10):
        ax.axvline(v, color="0.7", lw=0.6)
    ax.set_xlabel("perplexity ratio on neutral text")
    ax.set_ylabel("hate rate of continuations")
    ax.set_title(f"{rep.dataset}: hate rate against fluency cost (95% intervals)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _judges(rep: HateReport) -> str:
    names = {"minilm": "MiniLM embeddings + logistic regression", "tfidf": "TF-IDF + logistic regression"}
    parts = []
    for name, by_source in rep.judges.items():
        role = "judge" if name == rep.judge else "second opinion"
        parts.append(f"{role}: {names.get(name, name)} (held-out " + "; ".join(
            f"{src}: accuracy {q['accuracy']:.3f}, hate-class F1 {q['f1_hate']:.3f}, n={q['n_test']}"
            for src, q in by_source.items()) + ")")
    a = rep.agreement
    if a:
        parts.append(f"the two agree on {a['agreement']:.3f} of {a['n']} continuations (Cohen's kappa {a['kappa']:.3f})")
    if not parts:
        q = rep.classifier
        parts.append(f"judge: held-out accuracy {q['accuracy']:.3f}, hate-class F1 {q['f1_hate']:.3f} (n={q['n_test']})")
    return "; ".join(parts) + "."


def _how(mode: str, args: list[str]) -> str:
    """How the study turned its neurons off, in words (the factor from the command that ran it)."""
    if mode != "dampen":
        return f"{mode} ablation"
    alpha = args[args.index("--alpha") + 1] if "--alpha" in args else None
    return f"dampening (activations x {alpha})" if alpha else "dampening by each neuron's own factor"


def _score(x: StereotypeScore) -> str:
    return f"{x.score:.1f} [{x.lo:.1f}, {x.hi:.1f}]"


def _toward(before: StereotypeScore, after: StereotypeScore) -> float:
    """Points the score moved toward 50 (no preference)."""
    return abs(before.score - 50) - abs(after.score - 50)


def _bias_table(rep: BiasReport) -> str:
    lines = ["| bias type | n | K | before | top-K off | random K off | ppl ratio | random ppl ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rep.rows:
        lines.append(f"| {r.bias_type} | {r.n} | {r.k} | {_score(r.before)} | {_score(r.after)} | "
                     f"{_score(r.random)} | {r.ppl_ratio:.3f} | {r.random_ppl_ratio:.3f} |")
    return "\n".join(lines) + "\n"


def _bias_findings(rep: BiasReport) -> str:
    k = max(r.k for r in rep.rows)
    out = []
    for r in (x for x in rep.rows if x.k == k):
        b, a = r.before, r.after
        inside = b.lo <= a.score <= b.hi
        out.append(f"- {r.bias_type} (n={r.n}): {b.score:.1f} → {a.score:.1f} with the top-{k} off "
                   f"({_toward(b, a):+.1f} points toward 50; random {k}: {_toward(b, r.random):+.1f}); the new score "
                   "is " + ("inside" if inside else "outside") + " the before interval"
                   + f"; before interval {'excludes' if not b.lo <= 50 <= b.hi else 'includes'} 50.")
    ppl = next(r for r in rep.rows if r.k == k)
    out.append(f"- Perplexity ratio with the top-{k} off: {ppl.ppl_ratio:.3f} (random {k}: "
               f"{ppl.random_ppl_ratio:.3f}).")
    return "\n".join(out) + "\n"


def _bias_headline(rep: BiasReport) -> str:
    """The issue's target in one sentence: among the top-K sets within a perplexity ratio of 1.05, the
    one that moves the overall stereotype score most toward 50, and whether it leaves the random
    control's interval; then what the largest K does."""
    rows = [x for x in rep.rows if x.bias_type == "all"]
    ok = [x for x in rows if x.ppl_ratio <= 1.05]
    parts = []
    if ok:
        r = max(ok, key=lambda x: _toward(x.before, x.after))
        a, rn = r.after, r.random
        outside = not rn.lo <= a.score <= rn.hi
        meets = _toward(r.before, a) >= 5 and outside
        parts.append(f"**Plainly:** within a perplexity ratio of 1.05 the top-{r.k} set (ratio {r.ppl_ratio:.3f}) "
                     f"moves the stereotype score most: {_score(r.before)} → {a.score:.1f} "
                     f"({_toward(r.before, a):+.1f} points toward 50), "
                     + ("outside" if outside else "inside") + f" the random control's interval ({_score(rn)}); "
                     "the target (≥ 5 points toward 50, outside random) is " + ("met" if meets else "missed") + ".")
    else:
        parts.append("**Plainly:** no top-K set stays within a perplexity ratio of 1.05.")
    k = max(x.k for x in rows)
    r = next(x for x in rows if x.k == k)
    parts.append(f"With the top {k} off: {r.before.score:.1f} → {r.after.score:.1f} (random "
                 f"{r.random.score:.1f}) at a perplexity ratio of {r.ppl_ratio:.3f} (random "
                 f"{r.random_ppl_ratio:.3f}).")
    return " ".join(parts) + "\n"


def _bias_plot(rep: BiasReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    k = max(r.k for r in rep.rows)
    rows = [r for r in rep.rows if r.k == k]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(rows) + 2), 3.6))
    for i, (key, label) in enumerate((("before", "before"), ("after", f"top-{k} off"), ("random", f"random {k} off"))):
        s = [getattr(r, key) for r in rows]
        v = np.array([x.score for x in s])
        err = np.array([[x.score - x.lo for x in s], [x.hi - x.score for x in s]])
        ax.bar(x + (i - 1) * 0.27, v, 0.27, yerr=err, capsize=2, label=label)
    ax.axhline(50, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [f"{r.bias_type}\n(n={r.n})" for r in rows], fontsize=8)
    ax.set_ylabel("stereotype score (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{rep.dataset}: stereotype score with 95% bootstrap intervals", fontsize=10, pad=20)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)  # above the bars
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _diff(d: dict | None) -> str:
    if not d:
        return "–"
    lo, hi = d["ci"]
    clear = "**" if lo > 0 or hi < 0 else ""
    return f"{clear}{d['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]{clear} (p={d['p']:.3f})"


def behaviour_table(rep) -> str:
    """One intervention's rows as a markdown table (read through the typed reader)."""
    lines = ["| K | neurons | hate rate [95%] | vs random (paired) | vs before (paired) | neutral rate | "
             "next-statement gap | vs random (paired) | ppl ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rep.rows:
        who = r.condition if r.condition != "random" else f"random ×{r.n_sets}"
        lines.append(f"| {r.k} | {who} | {r.hate_rate:.3f} [{r.hate_rate_ci[0]:.3f}, {r.hate_rate_ci[1]:.3f}] | "
                     f"{_diff(r.vs_random.get('hate_rate'))} | {_diff(r.vs_before.get('hate_rate'))} | "
                     f"{r.neutral_hate_rate:.3f} | {r.next_gap:+.3f} | {_diff(r.vs_random.get('next_gap'))} | "
                     f"{r.ppl_ratio:.3f} |")
    return "\n".join(lines) + "\n"


def behaviour_sections() -> list[str]:
    """The demonstration studies: every behaviour-*.json of each study folder, read back typed."""
    from neat_llm.evaluation.behaviour import BehaviourReport

    parts = ["## What the model writes: `neat hate --design demonstrations`\n",
             "METHOD.md section 6's design. A hate-prone prompt lists 4 held-out ToxiGen statements about one target "
             "group, one per line (`- ...`), and ends where the model writes the next; 200 such prompts × 5 seeded "
             "samples = 1,000 continuations per condition (ending at the line's end, at most 40 tokens), and 50 "
             "neutral-demonstration prompts × 4 as the control. The judge is a logistic regression on MiniLM "
             "embeddings trained on the fit statements only; its threshold is the lowest that calls at most 10% of "
             "the model's own *before* neutral continuations hate (so the before row's neutral rate is ≤ 0.10 by "
             "construction; the other rows' neutral rate is the check). *next-statement gap* is judge-free: log "
             "p(a held-out hateful statement | prompt) − log p(a held-out neutral statement about the same group | "
             "prompt), nats per token. Differences are **paired per prompt** (every condition draws the same samples): "
             "mean difference, 95% bootstrap interval over prompts, sign-flip permutation p; bold where the interval "
             "excludes 0. Random K-sets: 2 per K (1 where the command says so).\n"]
    for name, demo in DEMOS.items():
        out = ROOT / "results" / name
        cmds = "\n".join("neat hate " + " ".join(shlex.quote(a) for a in (*DEMO_COMMON, *args)) + f" --out results/{name}"
                          for args in demo["runs"])
        head = f"### {demo['title']}\n"
        files = sorted(f for f in out.glob("behaviour-*.json") if not f.name.endswith("-continuations.json"))
        if not files:
            parts.append(previous_section(head) or f"{head}\n```bash\n{cmds}\n```\n\n{NOT_RUN_YET}")
            continue
        body = [f"{head}\n```bash\n{cmds}\n```\n"]
        for f in files:
            rep = BehaviourReport.from_dict(json.loads(f.read_text()))
            j = rep.judge
            body.append(f"**{rep.intervention}** (`{f.name}`; evaluation {rep.seconds / 60:.1f} min). Judge: threshold "
                        f"{j['threshold']:.2f} on {j['calibrated_on']} neutral continuations; one target group left "
                        f"out: AUROC {j['logo_auroc']:.3f}, macro-F1 {j['logo_macro_f1']:.3f} ({j['logo_groups']} "
                        f"groups); held-out statements: AUROC {j['heldout_auroc']:.3f}, macro-F1 "
                        f"{j['heldout_macro_f1']:.3f}, hate F1 {j['heldout_f1_hate']:.3f} (calling all hate: "
                        f"{j['heldout_all_hate_f1']:.3f}).\n\n" + behaviour_table(rep))
        for args in demo["runs"]:  # a command whose intervention has no file here was not run
            mode = args[args.index("--mode") + 1] if "--mode" in args else "zero"
            if not any(f.name.startswith(f"behaviour-{mode}") for f in files):
                cmd = "neat hate " + " ".join(shlex.quote(a) for a in (*DEMO_COMMON, *args)) + f" --out results/{name}"
                body.append(f"Not run yet: `{cmd}` (left out for compute in the session that added it).\n")
        parts.append("\n".join(body))
    return parts


def study_sections() -> list[str]:
    docs = ROOT / "docs"
    hate = ["## Hate speech: `neat hate`\n",
            "NEAT finds hate-speech neurons on the fit part (hateful vs neutral statements), the top-K are turned "
            "off (zero ablation), and everything is measured on held-out sentences, next to K random neurons from "
            "the same pool (3 sets; mean ± s.d.). *loglik* = mean per-token log-likelihood (nats); *gap* = hate − "
            "neutral; *readout* = the label readout \"Is this text hateful? Answer:\" (logit \" Yes\" − \" No\" > 0); "
            "*hate rate* = share of continuations (20 sampled tokens; 5 seeded samples per prompt, the same draws "
            "in every condition) of hate-prone prompts (the first half of held-out hateful sentences) that the judge "
            "labels hate speech, with a 95% bootstrap interval over prompts; the judge is a logistic regression on "
            "MiniLM sentence embeddings trained on Davidson's train part and the fit texts, the TF-IDF judge "
            "(Davidson) the second opinion; "
            "*ppl ratio* = perplexity on neutral text after / before. NEAT scores every neuron of the model with "
            "`neat find`'s defaults.\n"]
    bias = ["## Social bias: `neat bias`\n",
            "Minimal pairs are split (seeded, whole pairs, stratified by bias type) into 70% fit and 30% eval. NEAT "
            "finds bias neurons on the fit pairs (the more stereotypical sentences as positives, their counterparts "
            "as contrast); the *stereotype score* is the share of held-out pairs whose more stereotypical sentence "
            "the model finds more likely (summed token log-likelihood after the start token; 50 = no preference), "
            "with n and a 95% bootstrap interval (1,000 resamples of pairs). Random K neurons (3 sets, per-pair "
            "preferences averaged) are the control; the perplexity ratio is on neutral English text (Hindi text for "
            "the Hindi run). Bias types with fewer than 5 held-out pairs only count towards *all*. NEAT scores "
            "every neuron of the model.\n",
            "Where the concept is read: a minimal pair differs in a word or two while different pairs differ in "
            "everything, so the usual P-vs-N AUROC of the concept score (every stereotypical sentence against every "
            "counterpart) stays near 0.5 at every layer and picks an arbitrary one (layer 0 on IndiBias English in "
            "an earlier run of these studies). `neat bias` therefore reads the concept at the layer with the best "
            "cross-validated *paired accuracy* on the fit pairs: the share of pairs whose stereotypical sentence "
            "scores higher than its own counterpart (`--layer-rule paired`, the default; `concepts/paired.py`), and "
            "reports the same share on the held-out pairs.\n"]
    last = None
    for name, exp in STUDIES.items():
        if last == HATE_INTERVENTIONS[-1][0]:
            hate += _hate_interventions(docs)  # right after the last run it compares
        last = name
        out = ROOT / "results" / name
        kind = exp["args"][0]
        f = out / f"{kind}.json"
        cmd = "neat " + " ".join(shlex.quote(a) for a in exp["args"]) + f" --out results/{name}"
        head = f"### {exp['title']}\n\n```bash\n{cmd}\n```\n\n"
        if not f.exists():
            (hate if kind == "hate" else bias).append(
                previous_section(f"### {exp['title']}\n") or head + NOT_RUN_YET)
            continue
        if kind == "hate":
            rep = HateReport.from_dict(json.loads(f.read_text()))
            st = rep.settings
            _hate_plot(rep, docs / "img" / f"{name}.png")
            hate.append(head + f"Held out: {rep.n_eval['hate']} hateful and {rep.n_eval['neutral']} neutral "
                        f"sentences, {rep.n_prompts} prompts x {st.samples_per_prompt or 1} continuations "
                        f"({rep.n_continuations or rep.n_prompts} per condition); reading layer "
                        f"{st.reading_layer} (held-out AUROC of the concept score {st.eval_auroc:.3f}); fit groups "
                        f"{st.fit_groups or 'all'}, eval groups {st.eval_groups or 'all (held-out split)'}; neurons "
                        f"turned off by {_how(rep.mode, exp['args'])}. "
                        + _judges(rep) + f" Evaluation: {rep.seconds / 60:.1f} min.\n\n"
                        + _hate_table(rep) + f"\n![{name}](img/{name}.png)\n\n" + _hate_headline(rep)
                        + "\nWhat the numbers say:\n\n" + _hate_findings(rep))
        else:
            rep = BiasReport.from_dict(json.loads(f.read_text()))
            st = rep.settings
            _bias_plot(rep, docs / "img" / f"{name}.png")
            acc = st.eval_paired_accuracy
            n_ev = rep.n_eval_pairs
            se = (0.25 / n_ev) ** 0.5  # s.e. of a share near 1/2
            if acc is None:
                readable = f"held-out AUROC of the concept score {st.eval_auroc:.3f}"
                caveat = ""
            else:
                cv = st.paired_cv_accuracy
                readable = (f"chosen by the {st.layer_rule or 'auroc'} rule"
                            + (f" (cross-validated paired accuracy on the fit pairs {cv:.3f})" if cv is not None else "")
                            + f"; held-out paired accuracy {acc:.3f} (the share of held-out pairs whose stereotypical "
                            f"sentence scores higher than its own counterpart; chance 0.5, s.e. {se:.3f}); "
                            f"unpaired P-vs-N AUROC {st.eval_auroc:.3f}")
                caveat = ("" if acc - 0.5 > 2 * se else
                          f"\n\n**The concept is barely readable here:** held-out paired accuracy {acc:.3f} is within "
                          f"2 s.e. of chance, so the neurons found need not be bias neurons; read the changes below "
                          "as noise unless they clearly beat the random control.")
            by_type = st.eval_paired_accuracy_by_type or {}
            per_type = ("\n\nHeld-out paired accuracy per bias type (readable where clearly above 0.5): "
                        + ", ".join(f"{t} {v['accuracy']:.3f} (n={v['n']})" for t, v in by_type.items()) + "."
                        if by_type else "")
            bias.append(head + f"{n_ev} held-out pairs ({st.n_fit_pairs} fit pairs); reading layer "
                        f"{st.reading_layer}, {readable}.{caveat}{per_type}\n\n" + _bias_table(rep)
                        + f"\n![{name}](img/{name}.png)\n\n" + _bias_headline(rep)
                        + "\nWhat the numbers say (K = largest):\n\n"
                        + _bias_findings(rep))
    bias += _probe_comparison()
    return hate + bias


def _probe_comparison() -> list[str]:
    """CrowS-Pairs with the two probes side by side (all pairs): the prototypical probe (find's b
    most concept-like fit sentences) against the pair as the probe (the b most stereotype-leaning
    fit pairs, each neuron scored on the within-pair difference)."""
    reps = [(probe, BiasReport.from_dict(json.loads(f.read_text()))) for name, probe in
            (("bias-crows-pairs", "prototypical"), ("bias-crows-pairs-paired", "paired"))
            if (f := ROOT / "results" / name / "bias.json").exists()]
    if len(reps) < 2:
        return []
    lines = ["### CrowS-Pairs: the prototypical probe against the pair as the probe\n",
             "All held-out pairs; *toward 50* = points the stereotype score moved toward 50 with the top-K off "
             "(random: with K random neurons off, mean of 3 sets).\n",
             "| K | probe | stereotype score after | toward 50 | random | toward 50 (random) | ppl ratio |",
             "|---|---|---|---|---|---|---|"]
    rows = {probe: {r.k: r for r in rep.rows if r.bias_type == "all"} for probe, rep in reps}
    for k in sorted(set.intersection(*(set(v) for v in rows.values()))):
        for probe, _ in reps:
            r = rows[probe][k]
            lines.append(f"| {k} | {probe} | {_score(r.after)} | {_toward(r.before, r.after):+.1f} | "
                         f"{_score(r.random)} | {_toward(r.before, r.random):+.1f} | {r.ppl_ratio:.3f} |")
    return ["\n".join(lines) + "\n"]


HATE_INTERVENTIONS = (("hate-toxigen", "zero ablation"), ("hate-toxigen-dampen", "dampening, activations x 0.3"))


def _hate_interventions(docs: Path) -> list[str]:
    """One dose-response chart for the ways of turning the same neurons off (zero ablation,
    dampening): hate rate against the perplexity ratio, one line per intervention, the random
    K-sets of each as a band."""
    reps = [(label, HateReport.from_dict(json.loads(f.read_text()))) for name, label in HATE_INTERVENTIONS
            if (f := ROOT / "results" / name / "hate.json").exists()]
    if len(reps) < 2:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    for i, (label, rep) in enumerate(reps):
        color = f"C{i}"
        for cond in ("concept", "random"):
            rows = sorted((r for r in rep.rows if r.condition == cond), key=lambda r: r.ppl_ratio)
            x = [r.ppl_ratio for r in rows]
            if cond == "concept":
                ax.plot(x, [r.hate_rate for r in rows], "o-", color=color, label=f"top-K, {label}")
                for r in rows:
                    ax.annotate(f"{r.k}", (r.ppl_ratio, r.hate_rate), fontsize=7, xytext=(3, 3),
                                textcoords="offset points", color=color)
            else:
                ax.fill_between(x, [r.hate_rate_ci[0] for r in rows], [r.hate_rate_ci[1] for r in rows], color=color,
                                alpha=0.12, label=f"random K-sets, {label} (95%)")
    ax.axhline(reps[0][1].row("before").hate_rate, color="k", lw=0.8, ls=":", label="before")
    for v in (1.05, 1.10):
        ax.axvline(v, color="0.7", lw=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("perplexity ratio on neutral text (log)")
    ax.set_ylabel("hate rate of continuations")
    ax.set_title("ToxiGen: the same NEAT neurons, zeroed or dampened (K next to each point)", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(docs / "img" / "hate-interventions.png", dpi=110)
    plt.close(fig)
    lines = []
    for label, rep in reps:
        before = rep.row("before")
        ok = [r for r in rep.rows if r.condition == "concept" and r.ppl_ratio <= 1.10]
        best = min(ok, key=lambda r: r.hate_rate) if ok else None
        lines.append(f"- {label}: " + (f"lowest hate rate within a perplexity ratio of 1.10 at K = {best.k}: "
                                       f"{_rate(before, 'hate_rate')} → {_rate(best, 'hate_rate')} (ratio "
                                       f"{best.ppl_ratio:.3f}; random {best.k}: "
                                       f"{_rate(rep.row('random', best.k), 'hate_rate')})" if best else
                                       "no top-K set within a perplexity ratio of 1.10") + ".")
    return ["### Zero ablation against dampening (dose-response)\n\n"
            "The same neurons (the two runs share the data, the seed and find's defaults, so they rank the same "
            "neurons) turned off two ways; the random K-sets of each are turned off the same way.\n\n"
            "![hate-interventions](img/hate-interventions.png)\n\n" + "\n".join(lines) + "\n"]


NOT_RERUN = ("Not rerun on the whole model yet. The numbers published here before came from a 10% neuron subset and "
             "are withdrawn; the whole-model rerun belongs with the studies' own rework (more continuations, a "
             "stronger judge, dampening and dose-response; issue 12).\n")


NOT_RUN_YET = "Not run yet: the command above runs it (it was left out for compute in the session that added it).\n"


def previous_section(heading: str) -> str | None:
    """The section under ``heading`` in the current docs/results.md (up to the next heading of the
    same or a higher level), so rewriting the page keeps results whose run folders are not on this
    machine (results/ is not committed) instead of replacing them with "Not run yet"."""
    page = ROOT / "docs" / "results.md"
    if not page.exists():
        return None
    text = page.read_text()
    start = text.find(heading)
    if start < 0:
        return None
    level = heading.split(" ", 1)[0]
    body_start = start + len(heading)
    ends = [i for i in (text.find("\n" + "#" * n + " ", body_start) for n in range(1, len(level) + 1)) if i >= 0]
    section = text[start:min(ends) + 1 if ends else len(text)]
    if "Not run yet." in section or "Not rerun" in section or "--neurons-subset" in section:
        return None  # nothing to keep, or numbers from a neuron subset (never published again)
    return section.rstrip("\n") + "\n"


GRID_TITLES = {"toxigen": "ToxiGen: hateful vs neutral statements (shared data)",
               "insults": "Built-in demo concept: insults vs friendly text",
               "threats": "Threats of violence vs matched harmless sentences (written for this project, "
                          "scripts/data/threats.jsonl)"}


HELD = "held-out target groups"
_ALL_POSITIONS = ("an all-position sweep costs about T times a read-position one: about 23 minutes per 45-token "
                  "ToxiGen probe on this machine")
LEFT_OUT = {"all positions, positive-only b=1": _ALL_POSITIONS,
            "mean-pooled readout, all positions, positive-only b=1": _ALL_POSITIONS}
LEFT_OUT_DEFAULT = "not run: this machine's compute for the session went to the cells above and the comparisons"


def _grid_row(cell: dict, row: dict, ks: list[int]) -> str:
    rep = row["report"]
    by_k = {r["k"]: r for r in rep["rows"]}
    lam = row["lambda"]
    derived = cell.get("derived_from")
    cells = [f"{cell['cell']}" + (" †" if derived else ""), f"{lam:g}",
             f"({cell['search_seconds']:.0f})" if derived else f"{cell['search_seconds']:.0f}"]
    cells += [f"{by_k[k]['gap_removal']:.3f}" for k in ks]
    cells += [f"{by_k[k]['auroc_after']:.3f}" for k in (100, 500, 2000)]
    cells += [f"{by_k[k]['ppl_ratio']:.3f}" for k in (100, 500, 2000)]
    for b in rep["budgets"]:
        cells.append("none" if b["k"] is None else f"{b['gap_removal']:.3f} (K={b['k']})")
    return "| " + " | ".join(cells) + " |"


def _grid_findings(concept: str, cells: list[dict]) -> str:
    """Plain statements read off the grid (nothing typed in by hand): the most removal within each
    fluency budget and where it came from, the default's, and the held-out target groups."""
    rows = [(c, r) for c in cells if not c["cell"].startswith(HELD) for r in c["rows"]]
    out = []
    for i, budget in enumerate((1.05, 1.10)):
        ok = [(r["report"]["budgets"][i], c, r) for c, r in rows if r["report"]["budgets"][i]["k"] is not None]
        if not ok:
            out.append(f"- Within a perplexity ratio of {budget}: no cell's top-K stays within it.")
            continue
        b, c, r = max(ok, key=lambda t: t[0]["gap_removal"])
        d = next(((x["report"]["budgets"][i]) for cc, x in rows if cc["cell"] == "default" and x["lambda"] == 10), None)
        out.append(f"- Within a perplexity ratio of {budget}: most gap removal {b['gap_removal']:.3f} by *{c['cell']}*, "
                   f"λ={r['lambda']:g}, K={b['k']} (random {b['k']}: {b['random_gap_removal_mean']:.3f} ± "
                   f"{b['random_gap_removal_std']:.3f}; AUROC {r['report']['auroc_before']:.3f} → {b['auroc_after']:.3f})"
                   + (f"; the default (λ=10) {d['gap_removal']:.3f} at K={d['k']}" if d and d["k"] is not None else
                      "; the default stays within it at no K tried" if d else "") + ".")
    for held in (c for c in cells if c["cell"].startswith(HELD)):
        for r in held["rows"]:
            by_k = {x["k"]: x for x in r["report"]["rows"]}
            parts = [f"K={k}: {by_k[k]['gap_removal']:.3f} at ppl {by_k[k]['ppl_ratio']:.3f} (random "
                     f"{by_k[k]['random_gap_removal_mean']:.3f} ± {by_k[k]['random_gap_removal_std']:.3f})"
                     for k in (100, 500) if k in by_k]
            out.append(f"- Target groups the search never saw, *{held['cell']}* (λ={r['lambda']:g}): gap removal "
                       + "; ".join(parts)
                       + f"; AUROC {r['report']['auroc_before']:.3f} → {by_k[500]['auroc_after']:.3f} at K=500.")
    return "\n".join(out) + "\n"


def _grid_plot(concept: str, cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.4), dpi=120)
    rand = None
    for c in cells:
        for row in c["rows"]:
            if c["cell"].startswith(HELD):
                continue
            keep = (c["cell"] == "default") or row["lambda"] == 10 and c["cell"] in (
                "positive-only b=8", "contrastive b=8", "all positions, positive-only b=1", "text's own last token",
                "mean ablation")
            if c["cell"] == "default" and row["lambda"] not in (0, 10):
                continue
            if not keep:
                continue
            pts = sorted((r["ppl_ratio"], r["gap_removal"]) for r in row["report"]["rows"])
            ax.plot(*zip(*pts), marker="o", lw=1.4, label=f"{c['cell']}, λ={row['lambda']:g}")
            if rand is None and c["cell"] == "default":
                rand = sorted((r["random_ppl_ratio_mean"], r["random_gap_removal_mean"]) for r in row["report"]["rows"])
    if rand:
        ax.plot(*zip(*rand), color="0.5", marker=".", lw=1, label="random K-sets (mean of 5)")
    for b in (1.05, 1.10):
        ax.axvline(b, color="k", lw=0.6, ls=":")
    ax.set_xscale("log")
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    ax.xaxis.set_major_formatter(FormatStrFormatter("%.2f"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("perplexity ratio on neutral text (K = 10, 50, 100, 500, 2000 along each line)")
    ax.set_ylabel("gap removal on held-out data")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(GRID_TITLES.get(concept, concept), fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def grid_sections() -> list[str]:
    f = ROOT / "results" / "grid" / "grid.json"
    if not f.exists():
        return [previous_section("## Choosing the defaults: the grid\n") or
                "## Choosing the defaults: the grid\n\nNot run yet (`python scripts/grid.py`).\n"]
    grid = json.loads(f.read_text())
    ks = [10, 50, 100, 500, 2000]
    parts = ["## Choosing the defaults: the grid\n",
             "Every cell scores the **whole model** (46,080 neurons) with NEAT, changing one setting of `neat find`'s "
             "defaults (score *specific*: the drop of S on b = 8 prototypical positives minus the size of its change "
             "on the 8 lowest-S contrast texts; neurons turned off at the read position during the search; "
             "specificity λ = 10; S read at the newline after the text; zero ablation; last-token readout); each is "
             "judged on the held-out split with the top-K turned off at *every* position, against 5 random K-sets. "
             "λ = 0 is plain NEAT (the drop of S alone); λ > 0 is the specificity-aware score "
             "(`scoring/fluency.py`): share of the fit gap minus λ × the neuron's first-order fluency cost on the "
             "fit contrast texts and on fluency texts written for the package (not the neutral texts of the "
             "perplexity check). Seconds: the search (the sweep and the fluency cost) on this machine. "
             "Regenerate with `python scripts/grid.py` then `python scripts/make_results.py --only-write`.\n"]
    head = (["cell", "λ", "search s"] + [f"gap removal @{k}" for k in ks]
            + [f"AUROC after @{k}" for k in (100, 500, 2000)] + [f"ppl ratio @{k}" for k in (100, 500, 2000)]
            + ["removal, ppl ≤ 1.05", "removal, ppl ≤ 1.10"])
    for concept in [c for c in GRID_TITLES if any(r["concept"] == c for r in grid)]:
        cells = [r for r in grid if r["concept"] == concept]
        order = {name: i for i, name in enumerate(CELL_ORDER)}
        cells.sort(key=lambda r: order.get(r["cell"], 99))
        d = next((c for c in cells if c["cell"] == "default"), cells[0])
        rep0 = d["rows"][0]["report"]
        lines = [f"### {GRID_TITLES[concept]}\n",
                 f"Held-out split: {d['n_eval']['positive']} positive and {d['n_eval']['contrast']} contrast texts; "
                 f"default reading layer {d['reading_layer']}, held-out AUROC of S before {rep0['auroc_before']:.3f}.\n",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in cells:
            for row in c["rows"]:
                lines.append(_grid_row(c, row, ks))
        rnd = {r["k"]: r for r in rep0["rows"]}
        lines.append("| random K-sets (mean ± s.d. of 5) | – | – | "
                     + " | ".join(f"{rnd[k]['random_gap_removal_mean']:.3f} ± {rnd[k]['random_gap_removal_std']:.3f}"
                                  for k in ks)
                     + " | " + " | ".join(f"{rnd[k]['random_auroc_after_mean']:.3f}" for k in (100, 500, 2000))
                     + " | " + " | ".join(f"{rnd[k]['random_ppl_ratio_mean']:.3f}" for k in (100, 500, 2000)) + " | – | – |")
        if any(c.get("derived_from") for c in cells):
            lines.append("\n† No sweep of its own: a *specific* run sweeps the positive and the contrast probes in "
                         "full, and the positive-only (ΔS_P) and contrastive (ΔS_P − ΔS_N) scores are functions of "
                         "those two sweeps (`find.score_from_effects`; a test checks them against runs made with those "
                         "scores). The seconds in brackets are those of the run it is read from (b = 8: the *default* "
                         "row; b = 1: the *b=1* row); a positive-only run of its own needs only the positive sweep.")
        held = next((c for c in cells if c["cell"] == "held-out target groups"), None)
        if held:
            lines.append(f"\n*held-out target groups*: found on the 7 other ToxiGen groups, evaluated on every "
                         f"sentence about {', '.join(GRID_EVAL_GROUPS)} ({held['n_eval']['positive']} hateful, "
                         f"{held['n_eval']['contrast']} neutral; held-out AUROC of S before "
                         f"{held['rows'][0]['report']['auroc_before']:.3f}); its random K-sets are measured on "
                         "that set.")
        missing = [c for c in CELL_ORDER if c not in {x["cell"] for x in cells}
                   and not (c.startswith(HELD) and concept != "toxigen")]
        if missing:
            why = LEFT_OUT if concept == "toxigen" else {}
            lines.append("\nLeft out here: " + "; ".join(f"*{c}* ({why.get(c, LEFT_OUT_DEFAULT)})" for c in missing)
                         + f". Add a cell with `python scripts/grid.py --concepts {concept} --cells \"NAME\"`.")
        _grid_plot(concept, cells, ROOT / "docs" / "img" / f"grid_{concept}.png")
        lines.append(f"\n![grid {concept}](img/grid_{concept}.png)\n")
        lines.append("What the grid says:\n\n" + _grid_findings(concept, cells))
        parts.append("\n".join(lines) + "\n")
    return parts


def write() -> None:
    docs = ROOT / "docs"
    (docs / "img").mkdir(parents=True, exist_ok=True)
    parts = ["# Results\n",
             "Generated by `python scripts/make_results.py` from real runs of `neat compare`, `neat hate` and `neat bias` on the embedded "
             "SmolLM2-135M-Instruct (46,080 MLP neurons). Every number is measured on the held-out eval split.\n",
             f"- Machine: {machine()}\n- Written: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC (a section whose "
             "run folder was not on the writing machine is kept as it was, with the numbers of its own run)\n",
             "How to read the tables: *gap removal* = 1 − (S gap after / S gap before) on held-out data (1 = the "
             "concept direction no longer separates P from N, 0 = nothing changed, negative = the gap grew); "
             "*positive shift* = how far the positives' S moved toward the contrast mean, in units of the gap; "
             "*AUROC after* = how well S still tells P from N (0.5 = erased); *ppl ratio* = perplexity on neutral "
             "text after / before (1 = fluency untouched). The *random K-sets* row is the mean over 5 random "
             "sets of K neurons drawn from the whole model: an effect counts only where it clearly beats it.\n",
             "Every method scores the **whole model** (all 46,080 neurons); the removal comparisons never use a "
             "neuron subset. Exhaustive ablation (n·m partial passes) and integrated gradients (m·layers·20 forward "
             "and backward passes, here on 4 fit positives) are too slow for that on this 2-core CPU: they run on a "
             "seeded subset of 1,000 neurons, and only in an *agreement check* below a comparison (where one was run), "
             "where every method's scores are compared with exhaustive ablation's on that subset. NEAT-cluster (32 k-means "
             "clusters per block, the best 16 kept) and screen-verify (the top 500 candidates verified) look at every "
             "neuron and score the promising ones exactly. Passes and seconds are those of the scoring stage. AurA "
             "dampens its neurons by their own factors (its random K-sets are dampened by the same factors); every "
             "other method zeroes them.\n"]
    parts += grid_sections()
    for name, exp in EXPERIMENTS.items():
        out = ROOT / "results" / name
        if not (out / "compare.json").exists():
            cmd = "neat " + " ".join(shlex.quote(a) for a in exp["args"]) + f" --out results/{name}"
            parts.append(previous_section(f"## {exp['title']}\n") or
                         f"## {exp['title']}\n\n```bash\n{cmd}\n```\n\nNot run on the whole model yet (earlier "
                         "numbers, where there were any, scored a 1,000-neuron subset and are withdrawn); the command "
                         "above writes this section.\n")
            continue
        cmp = Comparison.from_dict(json.loads((out / "compare.json").read_text()))
        shutil.copy(out / "dose_response.png", docs / "img" / f"{name}_dose_response.png")
        cmd = "neat " + " ".join(shlex.quote(a) for a in exp["args"]) + f" --out results/{name}"
        parts.append(f"## {exp['title']}\n\n```bash\n{cmd}\n```\n\n"
                     f"Model `{cmp.model_id}`, concept `{cmp.concept}`, P-vs-N AUROC of S before: "
                     f"{cmp.auroc_before:.3f}, {cmp.mode} ablation.\n\n"
                     + (out / "compare.md").read_text()
                     + f"\n![dose-response {name}](img/{name}_dose_response.png)\n\n"
                     + "What the numbers say:\n\n" + findings(cmp) + _stale_rows(out))
    parts += study_sections()
    parts += behaviour_sections()
    (docs / "results.md").write_text("\n".join(parts))
    print("wrote", docs / "results.md")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only-write", action="store_true")
    ap.add_argument("--experiments", default=",".join([*EXPERIMENTS, *STUDIES]))
    args = ap.parse_args()
    if not args.only_write:
        for name in args.experiments.split(","):
            run(name)
    write()


if __name__ == "__main__":
    main()
