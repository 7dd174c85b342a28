"""``neat compare``: every method on the same model, concept split and neuron subset, judged by the
same held-out evaluation, with cost and agreement with exhaustive ablation side by side."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .concepts.conceptset import ConceptSet
from .evaluation.removal import RemovalReport, evaluate_removal, run_eval_set, run_readout
from .find import find_concept_neurons
from .models.loaded import LoadedModel
from .runs import Run, write_text


def subset_neurons(model: LoadedModel, n: int, seed: int = 0) -> dict[int, list[int]]:
    """A seeded uniform sample of ``n`` neurons of the whole model: {block: [neuron indices]}."""
    total = model.n_layers * model.d_ff
    if not 0 < n <= total:
        raise ValueError(f"--neurons-subset must be in 1..{total}, got {n}")
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
    """One method: passes and seconds of its scoring stage, its removal report, agreement with exhaustive."""

    method: str
    run_dir: str
    n_scored: int
    forward_passes: int
    backward_passes: int
    seconds: float
    removal: dict  # RemovalReport.to_dict() (rows only for the K the method could fill)
    spearman_vs_exhaustive: float | None = None
    overlap_vs_exhaustive: float | None = None
    n_common_with_exhaustive: int | None = None


@dataclass
class Comparison:
    model_id: str
    concept: str
    ks: list[int]
    subset_size: int | None
    mode: str
    n_random: int
    auroc_before: float
    rows: list[MethodRow] = field(default_factory=list)
    random_sets: dict = field(default_factory=dict)  # {K: {gap_removal_mean, _std, ...}}

    def table(self):
        """One row per method (plus the random K-sets): the columns of compare.csv."""
        import pandas as pd

        recs = []
        for r in self.rows:
            rec = {"method": r.method, "neurons scored": r.n_scored, "forward passes": r.forward_passes,
                   "backward passes": r.backward_passes, "seconds": round(r.seconds, 2)}
            by_k = {row["k"]: row for row in r.removal.get("rows", [])}
            for k in self.ks:
                row = by_k.get(k)
                rec[f"gap removal @{k}"] = row["gap_removal"] if row else math.nan
                rec[f"positive shift @{k}"] = row["positive_shift"] if row else math.nan
                rec[f"AUROC after @{k}"] = row["auroc_after"] if row else math.nan
                rec[f"specificity @{k}"] = row["specificity"] if row else math.nan
                rec[f"ppl ratio @{k}"] = row["ppl_ratio"] if row else math.nan
            rec["Spearman vs exhaustive"] = r.spearman_vs_exhaustive
            rec["top-k overlap vs exhaustive"] = r.overlap_vs_exhaustive
            recs.append(rec)
        rec = {"method": f"random K-sets (mean of {self.n_random})"}
        for k in self.ks:
            rs = self.random_sets.get(k, {})
            rec[f"gap removal @{k}"] = rs.get("gap_removal_mean", math.nan)
            rec[f"positive shift @{k}"] = rs.get("positive_shift_mean", math.nan)
            rec[f"AUROC after @{k}"] = rs.get("auroc_after_mean", math.nan)
            rec[f"specificity @{k}"] = rs.get("specificity_mean", math.nan)
            rec[f"ppl ratio @{k}"] = rs.get("ppl_ratio_mean", math.nan)
        recs.append(rec)
        return pd.DataFrame(recs)

    def markdown(self) -> str:
        df = self.table()
        keep = ["method", "neurons scored", "forward passes", "backward passes", "seconds"]
        keep += [f"{m} @{k}" for m in ("gap removal", "positive shift", "AUROC after") for k in self.ks]
        keep += ["ppl ratio @" + str(self.ks[-1]), "Spearman vs exhaustive", "top-k overlap vs exhaustive"]
        df = df[[c for c in keep if c in df.columns]]
        head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"

        counts = {"neurons scored", "forward passes", "backward passes"}

        def fmt(col, v):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return "–"
            if col in counts:
                return f"{int(v):,}"
            if col == "seconds":
                return f"{v:.1f}"
            return f"{v:.3f}" if isinstance(v, float) else str(v)

        return head + "".join("| " + " | ".join(fmt(c, v) for c, v in zip(df.columns, row)) + " |\n"
                              for row in df.itertuples(index=False))

    def plot(self, path: Path) -> None:
        """Dose-response: gap removal against K, one line per method, random K-sets as a band."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8.5, 4.2), dpi=120)
        ks = [k for k in self.ks if k in self.random_sets]
        if ks:
            mu = np.array([self.random_sets[k]["gap_removal_mean"] for k in ks])
            sd = np.array([self.random_sets[k]["gap_removal_std"] for k in ks])
            ax.fill_between(ks, mu - sd, mu + sd, color="0.8", label=f"random K-sets (±1 sd, n={self.n_random})")
            ax.plot(ks, mu, color="0.5", lw=1)
        for r in self.rows:
            pts = sorted((row["k"], row["gap_removal"]) for row in r.removal.get("rows", []))
            if pts:
                ax.plot(*zip(*pts), marker="o", lw=1.5, label=r.method)
        ax.set_xscale("log")
        ax.set_xticks(self.ks, [str(k) for k in self.ks])
        ax.minorticks_off()
        ax.set_xlabel("K (top neurons turned off)")
        ax.set_ylabel("gap removal on held-out data")
        ax.set_title(f"{self.concept} on {self.model_id}")
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # never over the lines
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def compare_methods(model: LoadedModel, concept: ConceptSet, methods: list[str], out: str | Path, *,
                    ks: list[int] = (10, 50, 100, 500), neurons_subset: int | None = None, n_random: int = 5,
                    mode: str = "zero", seed: int = 0, progress: bool = True,
                    scorer_options: dict[str, dict] | None = None, **find_kwargs) -> Comparison:
    """Run every method on the same split (same seed) and neuron subset, evaluate each on the
    held-out split against the same random K-sets, and write compare.{csv,md,json} and
    dose_response.png into ``out`` (one run folder per method under ``out/runs``).
    ``scorer_options``: {method: constructor options}, e.g. {"integrated-gradients": {"max_texts": 8}}."""
    out = Path(out)
    subset = subset_neurons(model, neurons_subset, seed) if neurons_subset else None
    pool = [(l, k) for l, ks_ in subset.items() for k in ks_] if subset else None
    random_cache: dict = {}
    rows: list[MethodRow] = []
    runs: dict[str, Run] = {}
    reports: dict[str, RemovalReport] = {}
    for method in methods:
        run_dir = out / "runs" / method
        run = Run.load(run_dir) if (run_dir / "meta.json").exists() else find_concept_neurons(
            model, concept, method=method, out=run_dir, neurons=subset, seed=seed, progress=progress,
            scorer_options=(scorer_options or {}).get(method), **find_kwargs)
        runs[method] = run
        n_scored = int(torch.isfinite(run.scores).sum())
        usable = [k for k in ks if k <= n_scored]
        report = evaluate_removal(model, run_readout(run), run_eval_set(run, concept),
                                  {k: run.top(k) for k in usable}, n_random=n_random, seed=seed, mode=mode,
                                  neuron_pool=pool, random_cache=random_cache) if usable else None
        reports[method] = report
        spent = run.meta.passes.get("scoring", {})  # the concept stage (m passes) is the same for every method
        rows.append(MethodRow(method, str(run.run_dir), n_scored, spent.get("forward", 0) + spent.get("partial_forward", 0),
                              spent.get("backward", 0), run.meta.seconds.get("scoring", 0.0),
                              report.to_dict() if report else {}))
    if "exhaustive" in runs:
        ref = runs["exhaustive"].scores
        for r in rows:
            if r.method != "exhaustive":
                r.spearman_vs_exhaustive, r.overlap_vs_exhaustive, r.n_common_with_exhaustive = agreement(
                    runs[r.method].scores, ref)
    first = next((rep for rep in reports.values() if rep is not None), None)
    random_sets = {}
    for k, effects in sorted(random_cache.items()):
        rec = {}
        for nm in ("gap_removal", "positive_shift", "auroc_after", "specificity", "ppl_ratio"):
            v = np.array([getattr(e, nm) for e in effects], dtype=np.float64)
            rec[f"{nm}_mean"], rec[f"{nm}_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        random_sets[k] = rec
    cmp = Comparison(model.model_id, concept.name, list(ks), neurons_subset, mode, n_random,
                     first.auroc_before if first else math.nan, rows, random_sets)
    out.mkdir(parents=True, exist_ok=True)
    table = cmp.table()
    write_text(out / "compare.csv", table.to_csv(index=False))
    write_text(out / "compare.md", cmp.markdown())
    write_text(out / "compare.json", json.dumps(asdict(cmp), indent=2, default=float))
    cmp.plot(out / "dose_response.png")
    return cmp
