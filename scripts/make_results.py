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
NEAT = str(Path(sys.executable).parent / "neat")
COMMON = ["--max-per-side", "40", "--neurons-subset", "1000", "--k", "10,50,100,500", "--random", "5",
          "--ig-max-texts", "4", "--clusters", "8", "--keep-clusters", "8", "--candidates", "200", "--seed", "0"]
EXPERIMENTS = {
    "toxigen": {
        "title": "ToxiGen: hateful vs neutral statements",
        "args": ["compare", "--data", "toxigen", *COMMON,
                 "--label-template", "Text: {text}\nIs this text hateful? Answer:"],
    },
    "insults": {
        "title": "Built-in demo concept: insults vs friendly text",
        "args": ["compare", *COMMON, "--label-template", "Text: {text}\nIs this text insulting? Answer:"],
    },
}


# The paper's applications: `neat hate` and `neat bias` (NEAT, 10% seeded neuron subset, 3 random K-sets).
STUDY_COMMON = ["--neurons-subset", "4608", "--k", "10,50,100", "--random", "3", "--seed", "0"]
STUDIES = {
    "hate-toxigen": {"title": "ToxiGen, all target groups (held-out 30%)",
                     "args": ["hate", "--data", "toxigen", *STUDY_COMMON]},
    "hate-toxigen-groups": {"title": "ToxiGen, generalisation: found on 7 target groups, evaluated on 4 others",
                            "args": ["hate", "--data", "toxigen", "--eval-groups", "jewish,muslim,trans,women",
                                     *STUDY_COMMON]},
    "bias-crows-pairs": {"title": "CrowS-Pairs (English)", "args": ["bias", "--data", "crows-pairs", *STUDY_COMMON]},
    "bias-indibias-en": {"title": "IndiBias, English (Indian context)",
                         "args": ["bias", "--data", "indibias", "--lang", "en", *STUDY_COMMON]},
    "bias-indibias-hi": {"title": "IndiBias, Hindi (Indian context)",
                         "args": ["bias", "--data", "indibias", "--lang", "hi", *STUDY_COMMON]},
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
    cmd = [NEAT, *{**EXPERIMENTS, **STUDIES}[name]["args"], "--out", str(out)]
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def findings(cmp: dict) -> str:
    """Plain statements read off the numbers (nothing here is typed in by hand)."""
    rand = {int(k): v for k, v in cmp["random_sets"].items()}
    lines = []
    for r in cmp["rows"]:
        rows = {row["k"]: row for row in r["removal"].get("rows", [])}
        if not rows:
            continue
        k = max(rows)
        g, mu, sd = rows[k]["gap_removal"], rand[k]["gap_removal_mean"], rand[k]["gap_removal_std"]
        verdict = "beats" if g > mu + 2 * sd else "does not beat"
        lines.append(f"- `{r['method']}`: gap removal {g:.3f} at K={k} {verdict} the random K-sets "
                     f"({mu:.3f} ± {sd:.3f}); AUROC after {rows[k]['auroc_after']:.3f} "
                     f"(before {cmp['auroc_before']:.3f}); perplexity ratio {rows[k]['ppl_ratio']:.3f}"
                     + (f"; Spearman with exhaustive {r['spearman_vs_exhaustive']:.2f}"
                        if r.get("spearman_vs_exhaustive") is not None else "") + ".")
    best = max((r for r in cmp["rows"] if r["removal"].get("rows")),
               key=lambda r: max(r["removal"]["rows"], key=lambda x: x["k"])["gap_removal"])
    lines.append(f"- Largest gap removal at its largest K: `{best['method']}`.")
    return "\n".join(lines) + "\n"


def _hate_table(obj: dict) -> str:
    cols = [("loglik_hate", "loglik hate"), ("loglik_neutral", "loglik neutral"), ("gap", "gap"),
            ("readout_accuracy", "readout acc."), ("readout_auroc", "readout AUROC"), ("hate_rate", "hate rate"),
            ("toxic_rate", "hate or offensive rate")]
    lines = ["| K | neurons off | " + " | ".join(c for _, c in cols) + " | ppl ratio |",
             "|---|---|" + "---|" * len(cols) + "---|"]
    for r in obj["results"]:
        sd = r.get("std") or {}
        cells = [f"{r[n]:.3f}" + (f" ± {sd[n]:.3f}" if n in sd else "") for n, _ in cols]
        what = {"before": "none (before)", "concept": f"top-{r['k']} (NEAT)",
                "random": f"random {r['k']} (mean of {r['n_sets']})"}[r["condition"]]
        lines.append(f"| {r['k']} | {what} | " + " | ".join(cells) + f" | {r['ppl_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def _hate_findings(obj: dict) -> str:
    rows = obj["results"]
    before = rows[0]
    out = []
    for k in sorted({r["k"] for r in rows if r["k"]}):
        c = next(r for r in rows if r["k"] == k and r["condition"] == "concept")
        rnd = next(r for r in rows if r["k"] == k and r["condition"] == "random")
        parts = []
        for n, label in (("gap", "log-likelihood gap (hate − neutral)"), ("hate_rate", "hate rate"),
                         ("toxic_rate", "hate-or-offensive rate"), ("readout_accuracy", "readout accuracy")):
            d, dr, sd = c[n] - before[n], rnd[n] - before[n], rnd["std"].get(n, 0.0)
            beyond = abs(d - dr) > 2 * sd and abs(d - dr) > 1e-9
            parts.append(f"{label} {before[n]:.3f} → {c[n]:.3f} (random: {rnd[n]:.3f} ± {sd:.3f}; "
                         + ("outside" if beyond else "within") + " 2 s.d. of random)")
        out.append(f"- K={k}: " + "; ".join(parts) + f"; perplexity ratio {c['ppl_ratio']:.3f} "
                   f"(random {rnd['ppl_ratio']:.3f}).")
    return "\n".join(out) + "\n"


def _hate_headline(obj: dict) -> str:
    """One plain sentence on the largest K: the effect on the likelihood gap, the hate rate and
    fluency, each against the random control."""
    rows = obj["results"]
    before = rows[0]
    k = max(r["k"] for r in rows)
    c = next(r for r in rows if r["k"] == k and r["condition"] == "concept")
    rnd = next(r for r in rows if r["k"] == k and r["condition"] == "random")
    sd = rnd["std"]

    def beyond(n):
        return abs((c[n] - before[n]) - (rnd[n] - before[n])) > 2 * sd.get(n, 0.0) + 1e-9

    gap = c["gap"] - before["gap"]
    parts = [f"**Plainly (top-{k} off):** "
             + (f"hateful text becomes {'less' if gap < 0 else 'more'} likely relative to neutral text by "
                f"{abs(gap):.3f} nats per token, beyond the random control (random {rnd['gap'] - before['gap']:+.3f} "
                f"± {sd.get('gap', 0):.3f})" if beyond("gap") and abs(gap) > 0.02
                else "the hate-vs-neutral likelihood gap does not move beyond the random control"),
             f"the hate rate of continuations goes {before['hate_rate']:.3f} → {c['hate_rate']:.3f} "
             + ("(beyond" if beyond("hate_rate") else "(within") + f" the random control's {rnd['hate_rate']:.3f} ± "
             f"{sd.get('hate_rate', 0):.3f}; {obj['n_prompts']} prompts, so one continuation is "
             f"{1 / obj['n_prompts']:.3f})",
             f"perplexity on neutral text rises {100 * (c['ppl_ratio'] - 1):.1f}% (random {100 * (rnd['ppl_ratio'] - 1):.1f}%)"]
    return "; ".join(parts) + ".\n"


def _bias_table(obj: dict) -> str:
    def s(x):
        return f"{x['score']:.1f} [{x['lo']:.1f}, {x['hi']:.1f}]"

    lines = ["| bias type | n | K | before | top-K off | random K off | ppl ratio | random ppl ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in obj["results"]:
        lines.append(f"| {r['bias_type']} | {r['n']} | {r['k']} | {s(r['before'])} | {s(r['after'])} | "
                     f"{s(r['random'])} | {r['ppl_ratio']:.3f} | {r['random_ppl_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def _bias_findings(obj: dict) -> str:
    k = max(r["k"] for r in obj["results"])
    out = []
    for r in (x for x in obj["results"] if x["k"] == k):
        b, a, rn = r["before"], r["after"], r["random"]
        toward = abs(b["score"] - 50) - abs(a["score"] - 50)
        toward_r = abs(b["score"] - 50) - abs(rn["score"] - 50)
        inside = b["lo"] <= a["score"] <= b["hi"]
        out.append(f"- {r['bias_type']} (n={r['n']}): {b['score']:.1f} → {a['score']:.1f} with the top-{k} off "
                   f"({toward:+.1f} points toward 50; random {k}: {toward_r:+.1f}); the new score is "
                   + ("inside" if inside else "outside") + " the before interval"
                   + (f"; before interval {'excludes' if not b['lo'] <= 50 <= b['hi'] else 'includes'} 50" ) + ".")
    ppl = next(r for r in obj["results"] if r["k"] == k)
    out.append(f"- Perplexity ratio with the top-{k} off: {ppl['ppl_ratio']:.3f} (random {k}: "
               f"{ppl['random_ppl_ratio']:.3f}).")
    return "\n".join(out) + "\n"


def _bias_headline(obj: dict) -> str:
    k = max(r["k"] for r in obj["results"])
    r = next(x for x in obj["results"] if x["k"] == k and x["bias_type"] == "all")
    b, a, rn = r["before"], r["after"], r["random"]
    inside = b["lo"] <= a["score"] <= b["hi"]
    return (f"**Plainly (top-{k} off):** the overall stereotype score goes {b['score']:.1f} [{b['lo']:.1f}, "
            f"{b['hi']:.1f}] → {a['score']:.1f} (random {k}: {rn['score']:.1f}), "
            + ("inside the before interval: no measurable change" if inside else "outside the before interval")
            + f"; perplexity rises {100 * (r['ppl_ratio'] - 1):.1f}% (random {k}: "
            f"{100 * (r['random_ppl_ratio'] - 1):.1f}%)"
            + (": turning these neurons off harms fluency more than it changes bias" if r["ppl_ratio"] > 1.05
               and inside else "") + ".\n")


def _bias_plot(obj: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    k = max(r["k"] for r in obj["results"])
    rows = [r for r in obj["results"] if r["k"] == k]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(rows) + 2), 3.6))
    for i, (key, label) in enumerate((("before", "before"), ("after", f"top-{k} off"), ("random", f"random {k} off"))):
        v = np.array([r[key]["score"] for r in rows])
        err = np.array([[r[key]["score"] - r[key]["lo"] for r in rows], [r[key]["hi"] - r[key]["score"] for r in rows]])
        ax.bar(x + (i - 1) * 0.27, v, 0.27, yerr=err, capsize=2, label=label)
    ax.axhline(50, color="k", lw=0.8, ls="--")
    ax.set_xticks(x, [f"{r['bias_type']}\n(n={r['n']})" for r in rows], fontsize=8)
    ax.set_ylabel("stereotype score (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{obj['dataset']}: stereotype score with 95% bootstrap intervals", fontsize=10, pad=20)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)  # above the bars
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def study_sections() -> list[str]:
    docs = ROOT / "docs"
    hate = ["## Hate speech: `neat hate`\n",
            "NEAT finds hate-speech neurons on the fit part (hateful vs neutral statements), the top-K are turned "
            "off (zero ablation), and everything is measured on held-out sentences, next to K random neurons from "
            "the same pool (3 sets; mean ± s.d.). *loglik* = mean per-token log-likelihood (nats); *gap* = hate − "
            "neutral; *readout* = the label readout \"Is this text hateful? Answer:\" (logit \" Yes\" − \" No\" > 0); "
            "*hate rate* = share of continuations (20 sampled tokens, fixed seeds) of hate-prone prompts (the first "
            "half of held-out hateful sentences) that the Davidson-trained classifier labels hate speech; "
            "*ppl ratio* = perplexity on neutral text after / before. Cost limit: NEAT scores a seeded 10% subset of "
            "the neurons (4,608 of 46,080), so K=100 is the top 2% of that subset.\n"]
    bias = ["## Social bias: `neat bias`\n",
            "Minimal pairs are split (seeded, whole pairs, stratified by bias type) into 70% fit and 30% eval. NEAT "
            "finds bias neurons on the fit pairs (the more stereotypical sentences as positives, their counterparts "
            "as contrast); the *stereotype score* is the share of held-out pairs whose more stereotypical sentence "
            "the model finds more likely (summed token log-likelihood after the start token; 50 = no preference), "
            "with n and a 95% bootstrap interval (1,000 resamples of pairs). Random K neurons (3 sets, per-pair "
            "preferences averaged) are the control; the perplexity ratio is on neutral English text (Hindi text for "
            "the Hindi run). Bias types with fewer than 5 held-out pairs only count towards *all*. Same cost limit "
            "as above (10% neuron subset).\n",
            "Where the concept is read: a minimal pair differs in a word or two while different pairs differ in "
            "everything, so the usual P-vs-N AUROC of the concept score (every stereotypical sentence against every "
            "counterpart) stays near 0.5 at every layer and picks an arbitrary one (layer 0 on IndiBias English in "
            "an earlier run of these studies). `neat bias` therefore reads the concept at the layer with the best "
            "cross-validated *paired accuracy* on the fit pairs: the share of pairs whose stereotypical sentence "
            "scores higher than its own counterpart (`--layer-rule paired`, the default; `concepts/paired.py`), and "
            "reports the same share on the held-out pairs.\n"]
    for name, exp in STUDIES.items():
        out = ROOT / "results" / name
        kind = exp["args"][0]
        f = out / f"{kind}.json"
        cmd = "neat " + " ".join(shlex.quote(a) for a in exp["args"]) + f" --out results/{name}"
        head = f"### {exp['title']}\n\n```bash\n{cmd}\n```\n\n"
        if not f.exists():
            (hate if kind == "hate" else bias).append(previous_section(f"### {exp['title']}\n")
                                                      or head + "Not run yet.\n")
            continue
        obj = json.loads(f.read_text())
        st = obj["settings"]
        if kind == "hate":
            q = obj["classifier"]
            hate.append(head + f"Held out: {obj['n_eval']['hate']} hateful and {obj['n_eval']['neutral']} neutral "
                        f"sentences, {obj['n_prompts']} prompts; reading layer {st['reading_layer']} (held-out "
                        f"AUROC of the concept score {st['eval_auroc']:.3f}); fit groups "
                        f"{st['fit_groups'] or 'all'}, eval groups {st['eval_groups'] or 'all (held-out split)'}. "
                        f"Judge: held-out accuracy {q['accuracy']:.3f}, hate-class F1 {q['f1_hate']:.3f} "
                        f"(precision {q['precision_hate']:.3f}, recall {q['recall_hate']:.3f}, n={q['n_test']}).\n\n"
                        + _hate_table(obj) + "\n" + _hate_headline(obj) + "\nWhat the numbers say:\n\n"
                        + _hate_findings(obj))
        else:
            _bias_plot(obj, docs / "img" / f"{name}.png")
            acc = st.get("eval_paired_accuracy")
            n_ev = obj["n_eval_pairs"]
            se = (0.25 / n_ev) ** 0.5  # s.e. of a share near 1/2
            if acc is None:
                readable = f"held-out AUROC of the concept score {st['eval_auroc']:.3f}"
                caveat = ""
            else:
                cv = st.get("paired_cv_accuracy")
                readable = (f"chosen by the {st.get('layer_rule', 'auroc')} rule"
                            + (f" (cross-validated paired accuracy on the fit pairs {cv:.3f})" if cv is not None else "")
                            + f"; held-out paired accuracy {acc:.3f} (the share of held-out pairs whose stereotypical "
                            f"sentence scores higher than its own counterpart; chance 0.5, s.e. {se:.3f}); "
                            f"unpaired P-vs-N AUROC {st['eval_auroc']:.3f}")
                caveat = ("" if acc - 0.5 > 2 * se else
                          f"\n\n**The concept is barely readable here:** held-out paired accuracy {acc:.3f} is within "
                          f"2 s.e. of chance, so the neurons found need not be bias neurons; read the changes below "
                          "as noise unless they clearly beat the random control.")
            bias.append(head + f"{n_ev} held-out pairs ({st['n_fit_pairs']} fit pairs); reading layer "
                        f"{st['reading_layer']}, {readable}.{caveat}\n\n" + _bias_table(obj)
                        + f"\n![{name}](img/{name}.png)\n\n" + _bias_headline(obj)
                        + "\nWhat the numbers say (K = largest):\n\n"
                        + _bias_findings(obj))
    return hate + bias


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
    return None if "Not run yet." in section else section.rstrip("\n") + "\n"


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
             "sets of K neurons drawn from the same subset: an effect counts only where it clearly beats it.\n",
             "Cost limits on this 2-core CPU, the same for every method: each concept set is subsampled to 40 "
             "positive and 40 contrast texts (seeded; 70% fit, 30% eval), and every method scores the same "
             "seeded subset of 1,000 of the 46,080 neurons (exhaustive ablation costs n·m partial passes). "
             "Integrated gradients costs m·layers·20 forward and backward passes whatever the subset, so it uses "
             "4 of the fit positives (`--ig-max-texts 4`). NEAT-cluster uses 8 k-means clusters per block and keeps the best 8; screen-verify verifies the top 200 candidates. Passes and seconds are those of the scoring stage.\n"]
    for name, exp in EXPERIMENTS.items():
        out = ROOT / "results" / name
        if not (out / "compare.json").exists():
            parts.append(previous_section(f"## {exp['title']}\n") or f"## {exp['title']}\n\nNot run yet.\n")
            continue
        cmp = json.loads((out / "compare.json").read_text())
        shutil.copy(out / "dose_response.png", docs / "img" / f"{name}_dose_response.png")
        cmd = "neat " + " ".join(shlex.quote(a) for a in exp["args"]) + f" --out results/{name}"
        parts.append(f"## {exp['title']}\n\n```bash\n{cmd}\n```\n\n"
                     f"Model `{cmp['model_id']}`, concept `{cmp['concept']}`, P-vs-N AUROC of S before: "
                     f"{cmp['auroc_before']:.3f}, {cmp['mode']} ablation.\n\n"
                     + (out / "compare.md").read_text()
                     + f"\n![dose-response {name}](img/{name}_dose_response.png)\n\n"
                     + "What the numbers say:\n\n" + findings(cmp))
    parts += study_sections()
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
