"""``neat compare``: every method on the same model and concept split, each scoring the *whole*
model, judged by the same held-out evaluation (against the same random K-sets, next to its
perplexity cost), with the removal at a fluency budget and the cost of each method side by side.

Methods too slow to score every neuron (exhaustive ablation, integrated gradients) run on a seeded
neuron subset, and only to check agreement: their table compares every method's scores with
exhaustive ablation's on that subset. It is never a removal comparison: the top K of a 2% subset
are not the model's concept neurons.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .concepts.conceptset import ConceptSet
from .evaluation.removal import BUDGETS, BudgetResult, RemovalReport, evaluate_removal
from .find import find_concept_neurons
from .models.loaded import LoadedModel
from .records import known
from .runs import Run, RunFiles, run_folder_lock, write_text
from .scoring import Scorer

WHOLE_MODEL_METHODS = ("neat", "neat-cluster", "screen-verify", "attribution-patching", "logprob-increase",
                       "activation", "auroc", "aura", "random")
AGREEMENT_METHODS = ("exhaustive", "integrated-gradients")


def subset_neurons(model: LoadedModel, n: int, seed: int = 0) -> dict[int, list[int]]:
    """A seeded uniform sample of ``n`` neurons of the whole model: {block: [neuron indices]}."""
    total = model.n_layers * model.d_ff
    if not 0 < n <= total:
        raise ValueError(f"the neuron subset must have 1..{total} neurons, got {n}")
    flat = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values
    out: dict[int, list[int]] = {}
    for i in flat.tolist():
        out.setdefault(i // model.d_ff, []).append(i % model.d_ff)
    return out


def agreement(a: torch.Tensor, b: torch.Tensor, k: int = 100) -> tuple[float, float, int]:
    """Spearman correlation and top-k overlap (share of a's top k in b's top k) over the neurons
    both scored: (spearman, overlap, n_common). k shrinks to a fifth of the common neurons when
    fewer than 5k are common (an overlap over all of them would be 1 trivially).
    scores: [n_layers, d_ff], NaN = not scored."""
    from scipy.stats import spearmanr

    both = torch.isfinite(a) & torch.isfinite(b)
    n = int(both.sum())
    if n < 3:
        return float("nan"), float("nan"), n
    x, y = a[both].double().numpy(), b[both].double().numpy()
    rho = float(spearmanr(x, y).statistic)
    kk = max(1, min(k, n // 5))
    top_x = set(np.argsort(-x, kind="stable")[:kk].tolist())
    top_y = set(np.argsort(-y, kind="stable")[:kk].tolist())
    return rho, len(top_x & top_y) / kk, n


@dataclass
class MethodRow:
    """One whole-model method: passes and seconds of its scoring stage, how its neurons were turned
    off, its removal report (with the removal at each fluency budget)."""

    method: str
    run_dir: str
    n_scored: int
    forward_passes: int
    backward_passes: int
    seconds: float
    intervention: str
    removal: RemovalReport | None  # None: no K within what the method scored

    def budgets(self) -> list[BudgetResult]:
        """The removal at each fluency budget of ``BUDGETS`` (none without a removal report)."""
        return [self.removal.at_budget(b) for b in BUDGETS] if self.removal else []


@dataclass
class AgreementRow:
    """A method's scores against exhaustive ablation's on the agreement subset."""

    method: str
    n_common: int
    spearman: float
    top_k_overlap: float
    forward_passes: int | None = None  # for the subset-only methods: their scoring cost on the subset
    backward_passes: int | None = None
    seconds: float | None = None


@dataclass
class Comparison:
    model_id: str
    concept: str
    ks: list[int]
    mode: str
    n_random: int
    auroc_before: float
    rows: list[MethodRow] = field(default_factory=list)
    random_sets: dict = field(default_factory=dict)  # {K: {gap_removal_mean, _std, ...}}
    agreement_subset: int | None = None
    agreement: list[AgreementRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        """compare.json: every field, each method's removal as ``RemovalReport.to_dict`` (with its budgets)."""
        d = asdict(self)
        for row, r in zip(d["rows"], self.rows):
            row["removal"] = r.removal.to_dict() if r.removal else {}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Comparison":
        """compare.json typed again."""
        rows = [MethodRow(**{**known(MethodRow, r), "removal": RemovalReport.from_dict(r["removal"])
                             if r.get("removal") else None}) for r in d.get("rows", [])]
        return cls(**known(cls, d, skip=("rows", "random_sets", "agreement")), rows=rows,
                   random_sets={int(k): v for k, v in (d.get("random_sets") or {}).items()},
                   agreement=[AgreementRow(**known(AgreementRow, a)) for a in d.get("agreement", [])])

    def table(self):
        """One row per method (plus the random K-sets): the columns of compare.csv."""
        import pandas as pd

        recs = []
        for r in self.rows:
            rec = {"method": r.method, "turned off by": r.intervention, "neurons scored": r.n_scored,
                   "forward passes": r.forward_passes, "backward passes": r.backward_passes,
                   "seconds": round(r.seconds, 2)}
            by_k = {row.k: row for row in r.removal.rows} if r.removal else {}
            for k in self.ks:
                row = by_k.get(k)
                for name, key in (("gap removal", "gap_removal"), ("positive shift", "positive_shift"),
                                  ("AUROC after", "auroc_after"), ("specificity", "specificity"),
                                  ("ppl ratio", "ppl_ratio")):
                    rec[f"{name} @{k}"] = getattr(row, key) if row else math.nan
            for b in r.budgets():
                rec[f"removal within ppl {b.max_ppl}"] = b.gap_removal
                rec[f"K within ppl {b.max_ppl}"] = b.k
            recs.append(rec)
        rec = {"method": f"random K-sets (mean of {self.n_random})"}
        for k in self.ks:
            rs = self.random_sets.get(k, {})
            for name, key in (("gap removal", "gap_removal"), ("positive shift", "positive_shift"),
                              ("AUROC after", "auroc_after"), ("specificity", "specificity"), ("ppl ratio", "ppl_ratio")):
                rec[f"{name} @{k}"] = rs.get(f"{key}_mean", math.nan)
        recs.append(rec)
        return pd.DataFrame(recs)

    def markdown(self) -> str:
        """The removal table (whole model), the fluency-budget table and, where run, the agreement table."""
        df = self.table()
        keep = ["method", "turned off by", "neurons scored", "forward passes", "backward passes", "seconds"]
        keep += [f"{m} @{k}" for m in ("gap removal", "AUROC after", "ppl ratio") for k in self.ks]
        df = df[[c for c in keep if c in df.columns]]
        parts = [_md_table(df), "\n" + self.budget_markdown()]
        if self.agreement:
            parts.append("\n" + self.agreement_markdown())
        return "".join(parts)

    def budget_markdown(self) -> str:
        """Removal at a fluency budget: the largest held-out gap removal among the K tried whose
        perplexity ratio stays within each budget, with its K and the random K-sets of that K."""
        head = ["method"] + [c for b in BUDGETS for c in (f"gap removal, ppl <= {b}", "K", "random K-sets")]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r.method]
            for b in r.budgets():
                if b.k is None:
                    cells += ["none", "–", "–"]
                else:
                    cells += [f"{b.gap_removal:.3f}", str(b.k),
                              f"{b.random_gap_removal_mean:.3f} ± {b.random_gap_removal_std:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def agreement_markdown(self) -> str:
        lines = [f"Agreement check on a seeded subset of {self.agreement_subset:,} neurons (not a removal comparison):",
                 "", "| method | neurons in common | Spearman vs exhaustive | top-k overlap | forward passes | seconds |",
                 "|---|---|---|---|---|---|"]
        for a in self.agreement:
            lines.append(f"| {a.method} | {a.n_common:,} | {_f(a.spearman)} | {_f(a.top_k_overlap)} | "
                         f"{'–' if a.forward_passes is None else f'{a.forward_passes:,}'} | "
                         f"{'–' if a.seconds is None else f'{a.seconds:.1f}'} |")
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> None:
        """Dose-response: gap removal against K and against the perplexity ratio, one line per
        method, the random K-sets as a band (left) and as grey points (right)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.4), dpi=120)
        ks = [k for k in self.ks if k in self.random_sets]
        if ks:
            mu = np.array([self.random_sets[k]["gap_removal_mean"] for k in ks])
            sd = np.array([self.random_sets[k]["gap_removal_std"] for k in ks])
            ax.fill_between(ks, mu - sd, mu + sd, color="0.8", label=f"random K-sets (±1 sd, n={self.n_random})")
            ax.plot(ks, mu, color="0.5", lw=1)
            bx.plot([self.random_sets[k]["ppl_ratio_mean"] for k in ks], mu, color="0.5", lw=1, marker=".",
                    label="random K-sets (mean)")
        for r in self.rows:
            pts = sorted((row.k, row.gap_removal, row.ppl_ratio) for row in (r.removal.rows if r.removal else []))
            if pts:
                line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=1.5, label=r.method)
                bx.plot([p[2] for p in pts], [p[1] for p in pts], marker="o", lw=1.5, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xticks(self.ks, [str(k) for k in self.ks])
        ax.minorticks_off()
        ax.set_xlabel("K (top neurons turned off)")
        ax.set_ylabel("gap removal on held-out data")
        bx.set_xscale("log")
        from matplotlib.ticker import FormatStrFormatter, NullFormatter

        bx.xaxis.set_major_formatter(FormatStrFormatter("%.2f"))  # ratios near 1, not powers of ten
        bx.xaxis.set_minor_formatter(NullFormatter())
        bx.set_xlabel("perplexity ratio on neutral text (after / before)")
        for b in BUDGETS:
            bx.axvline(b, color="k", lw=0.6, ls=":")
        for a in (ax, bx):
            a.axhline(0, color="k", lw=0.5)
        fig.suptitle(f"{self.concept} on {self.model_id}")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(2.25, 1.0), frameon=False)  # right of both panels
        fig.tight_layout(rect=(0, 0, 0.86, 1))
        fig.savefig(path)
        plt.close(fig)


def _f(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _md_table(df) -> str:
    counts = {"neurons scored", "forward passes", "backward passes"}

    def fmt(col, v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        if col in counts:
            return f"{int(v):,}"
        if col == "seconds":
            return f"{v:.1f}"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(c, v) for c, v in zip(df.columns, row)) + " |\n"
                          for row in df.itertuples(index=False))


def _scoring_cost(run: Run) -> tuple[int, int, float]:
    spent = run.meta.passes.get("scoring", {})  # the concept stage (m passes) is the same for every method
    return (spent.get("forward", 0) + spent.get("partial_forward", 0), spent.get("backward", 0),
            run.meta.seconds.get("scoring", 0.0))


def _name(method: str | Scorer) -> str:
    return method if isinstance(method, str) else method.name


def _find_or_load(model, concept, method: str | Scorer, run_dir: Path, **kwargs) -> Run:
    return Run.load(run_dir) if (run_dir / RunFiles.META).exists() else find_concept_neurons(
        model, concept, method=method, out=run_dir, **kwargs)


def compare_methods(model: LoadedModel, concept: ConceptSet, methods: Sequence[str | Scorer], out: str | Path, *,
                    ks: list[int] = (10, 50, 100, 500, 2000), n_random: int = 5, mode: str = "zero", seed: int = 0,
                    progress: bool = True, agreement_methods: Sequence[str | Scorer] = (),
                    agreement_subset: int = 1000, **find_kwargs) -> Comparison:
    """Run every method in ``methods`` on the whole model (same split, same seed), evaluate each on
    the held-out split against the same random K-sets (each method's neurons turned off by ``mode``,
    or dampened by their own factors for AurA), and write compare.{csv,md,json} and
    dose_response.png into ``out`` (one run folder per method under ``out/runs``; a rerun reuses
    them). ``agreement_methods`` (exhaustive, integrated-gradients) run on a seeded subset of
    ``agreement_subset`` neurons; every method's scores are compared with exhaustive's there.
    A method is a name or a scorer made with its own options (e.g. ``build_scorer("integrated-gradients",
    max_texts=8)``); ``find_kwargs`` are find's settings (``probe_size=``, ``label=`` ...)."""
    out = Path(out)
    with run_folder_lock(out):  # one writer per comparison folder
        slow = [_name(m) for m in methods if _name(m) in AGREEMENT_METHODS]
        if slow:
            raise ValueError(f"{', '.join(slow)} cannot score the whole model here; give them as agreement methods "
                             "(run on a neuron subset, compared with exhaustive ablation, never a removal comparison)")
        random_cache: dict = {}
        rows: list[MethodRow] = []
        runs: dict[str, Run] = {}
        for scorer in methods:
            method = _name(scorer)
            run = _find_or_load(model, concept, scorer, out / "runs" / method, seed=seed, progress=progress,
                                **find_kwargs)
            runs[method] = run
            n_scored = int(torch.isfinite(run.scores).sum())
            usable = [k for k in ks if k <= n_scored]
            own = run.alpha is not None or mode is None  # the run's own intervention (AurA's factors): no shared randoms
            iv = run.intervention(None if run.alpha is not None else mode)
            report = evaluate_removal(model, run.readout(), run.eval_set(concept),
                                      {k: run.top(k) for k in usable}, n_random=n_random, seed=seed, mode=iv,
                                      random_cache=None if own else random_cache) if usable else None
            fwd, bwd, secs = _scoring_cost(run)
            rows.append(MethodRow(method, str(run.run_dir), n_scored, fwd, bwd, secs, iv.describe(), report))
        agreement_rows: list[AgreementRow] = []
        if agreement_methods:
            subset = subset_neurons(model, agreement_subset, seed)
            sub_runs = {_name(m): _find_or_load(model, concept, m, out / "agreement" / _name(m), seed=seed,
                                                progress=progress, neurons=subset, **find_kwargs)
                        for m in agreement_methods}
            ref = sub_runs.get("exhaustive")
            for name, run in {**runs, **sub_runs}.items():
                rho, overlap, n = agreement(run.scores, ref.scores) if ref is not None else (math.nan, math.nan, 0)
                cost = _scoring_cost(run) if name in sub_runs else (None, None, None)
                agreement_rows.append(AgreementRow(name, n, rho, overlap, *cost))
        first = next((r for r in rows if r.removal), None)
        random_sets = {}
        for k, effects in sorted(random_cache.items()):
            rec = {}
            for nm in ("gap_removal", "positive_shift", "auroc_after", "specificity", "ppl_ratio"):
                v = np.array([getattr(e, nm) for e in effects], dtype=np.float64)
                rec[f"{nm}_mean"], rec[f"{nm}_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
            random_sets[k] = rec
        cmp = Comparison(model.model_id, concept.name, list(ks), mode, n_random,
                         first.removal.auroc_before if first else math.nan, rows, random_sets,
                         agreement_subset if agreement_methods else None, agreement_rows)
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "compare.csv", cmp.table().to_csv(index=False))
        write_text(out / "compare.md", cmp.markdown())
        write_text(out / "compare.json", json.dumps(cmp.to_dict(), indent=2, default=float))
        cmp.plot(out / "dose_response.png")
        return cmp


