"""The grid that chose `neat find`'s defaults: NEAT's scoring variants on the whole SmolLM2
(46,080 neurons), each judged on the held-out split against 5 random K-sets, next to its
perplexity cost and the seconds of its search.

    python scripts/grid.py [--concepts toxigen,insults,threats] [--cells "default;b=1;..."]   # runs what is missing (resumes)

Every cell is one `find_concept_neurons` run (run folder under results/grid/<concept>/<cell>/,
reused when finished) with the default settings changed as the cell says. Each run stores its
plain NEAT effect and its fluency cost (scoring/fluency.py), so the specificity-aware score for
another lambda is the library's own `specificity_aware` on the stored tensors, not another sweep
(a test checks that formula against a run made with that lambda). Output: results/grid/grid.json,
read by scripts/make_results.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "grid"
KS = [10, 50, 100, 500, 2000]
N_RANDOM = 5
EVAL_GROUPS = ["jewish", "muslim", "trans", "women"]  # ToxiGen target groups held out of the fit data

# cell name -> the settings it changes (everything else: find's defaults: score "specific" with b = 8
# positive and 8 contrast probes, read position, lambda = 10, read template "{text}\n", zero
# ablation, last-token readout). An all-position sweep costs ~T times a read-position one (23 min
# per 45-token ToxiGen probe here), so those cells use one positive probe, next to their
# read-position partner "positive-only b=1".
CELLS: dict[str, dict] = {
    "default": {},
    "b=1": {"probe_size": 1},
    "b=4": {"probe_size": 4},
    "b=16": {"probe_size": 16},
    "positive-only b=8": {"score": "positive"},
    "contrastive b=1": {"probe_size": 1, "score": "contrastive"},
    "contrastive b=8": {"score": "contrastive"},
    "mean ablation": {"ablation": "mean"},
    "positive-only b=1": {"score": "positive", "probe_size": 1},
    "all positions, positive-only b=1": {"positions": "all", "score": "positive", "probe_size": 1},
    "mean-pooled readout, all positions, positive-only b=1": {"pool": "mean", "positions": "all", "score": "positive",
                                                             "probe_size": 1},
    "text's own last token": {"read_template": "{text}"},
    "held-out target groups": {},  # ToxiGen only: found on 7 groups, evaluated on the other 4
    "held-out target groups, positive-only": {"score": "positive"},
    "held-out target groups, contrastive": {"score": "contrastive"},
}
HELD_OUT = "held-out target groups"
# cells that need no sweep of their own: a specific run sweeps the positive and the contrast probes in
# full, and the positive-only and contrastive scores are functions of those two sweeps
# (find.score_from_effects; a test checks them against runs made with those scores)
DERIVED = {"positive-only b=8": ("default", "positive"), "contrastive b=8": ("default", "contrastive"),
           "positive-only b=1": ("b=1", "positive"), "contrastive b=1": ("b=1", "contrastive"),
           "held-out target groups, positive-only": (HELD_OUT, "positive"),
           "held-out target groups, contrastive": (HELD_OUT, "contrastive")}
LAMBDAS = {"default": [0, 3, 10, 30]}  # every other cell: its plain score (0) and the default 10


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def concept(name: str, groups: list[str] | None = None):
    import neat_llm as nl
    from neat_llm.concepts.datasets import load_named, load_toxigen

    if name == "insults":
        return nl.demo_concept()
    if name == "threats":
        return nl.ConceptSet.from_file(ROOT / "scripts" / "data" / "threats.jsonl", positive="threat", name="threats")
    if groups is not None:
        return load_toxigen(groups=groups)
    return load_named(name)


def heldout_groups_eval(fit_concept):
    """The ToxiGen sentences about the held-out groups that are not in the fit groups' data."""
    import neat_llm as nl
    from neat_llm.concepts.datasets import load_toxigen

    held = load_toxigen(groups=EVAL_GROUPS)
    seen = set(fit_concept.texts)
    return nl.ConceptSet.from_texts([t for t in held.positives if t not in seen],
                                    [t for t in held.contrast if t not in seen], name="toxigen-hate[held-out groups]")


class RandomCache:
    """The random K-sets' effects, kept on disk per (readout, eval set, intervention): cells that
    read the concept the same way share them (they are the same numbers)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def file(self, readout, eval_set, mode: str) -> Path:
        import hashlib

        h = hashlib.sha256()
        h.update(json.dumps([readout.layer, readout.pool, readout.template, mode, eval_set.hash]).encode())
        h.update(readout.vector.float().numpy().tobytes())
        return self.folder / f"random-{h.hexdigest()[:16]}.json"

    def load(self, path: Path) -> dict:
        from neat_llm.evaluation.removal import RemovalEffect

        if not path.exists():
            return {}
        return {int(k): [RemovalEffect(**e) for e in v] for k, v in json.loads(path.read_text()).items()}

    def save(self, path: Path, cache: dict) -> None:
        from neat_llm.files import write_text

        write_text(path, json.dumps({k: [dataclasses.asdict(e) for e in v] for k, v in cache.items()}))


def evaluate(model, run, eval_set, scores: torch.Tensor, randoms: RandomCache) -> dict:
    from neat_llm.evaluation import evaluate_removal

    ranked = dataclasses.replace(run, scores=scores)
    iv = run.intervention()
    readout = run.readout()
    path = randoms.file(readout, eval_set, iv.mode)
    cache = randoms.load(path)
    report = evaluate_removal(model, readout, eval_set, {k: ranked.top(k) for k in KS}, n_random=N_RANDOM, mode=iv.mode,
                              alpha=iv.alpha, random_cache=cache)
    randoms.save(path, cache)
    return report.to_dict()


def find_or_load(model, concept_name: str, cell: str):
    """The cell's run (found now or loaded from its folder) and its concept set."""
    import neat_llm as nl

    folder = OUT / concept_name / slug(cell)
    if cell == HELD_OUT:
        from neat_llm.concepts.datasets import resolve
        import pandas as pd

        every = sorted(pd.read_json(resolve("toxigen"), lines=True)["group"].unique())
        cs = concept(concept_name, [g for g in every if g not in EVAL_GROUPS])
    else:
        cs = concept(concept_name)
    if (folder / "meta.json").exists():
        return nl.Run.load(folder), cs
    return nl.find_concept_neurons(model, cs, out=folder, progress=True, **CELLS[cell]), cs


def run_cell(model, concept_name: str, cell: str, randoms: RandomCache) -> dict:
    from neat_llm.find import score_from_effects
    from neat_llm.scoring.fluency import specificity_aware

    base, rule = DERIVED.get(cell, (cell, None))
    run, cs = find_or_load(model, concept_name, base)
    folder = OUT / concept_name / slug(cell)
    folder.mkdir(parents=True, exist_ok=True)
    eval_set = heldout_groups_eval(cs) if base == HELD_OUT else \
        cs.split(run.meta.params["eval_fraction"], run.meta.seed).eval
    p = run.meta.params
    effect = run.effect if rule is None else score_from_effects(rule, run.effect_positive, run.effect_contrast)
    rows = []
    for lam in LAMBDAS.get(cell, [0, p["specificity"]]):
        if rule is None and lam == p["specificity"]:
            scores = run.scores
        else:
            scores = effect if lam == 0 else specificity_aware(effect, run.fluency_cost, p["gap_fit"], lam)
        done = folder / f"evaluation-lambda{lam:g}.json"
        if done.exists():
            rep = json.loads(done.read_text())
        else:
            rep = evaluate(model, run, eval_set, scores, randoms)
            done.write_text(json.dumps(rep, indent=1))
        rows.append({"lambda": lam, "report": rep})
    secs = run.meta.seconds
    return {"concept": concept_name, "cell": cell, "settings": CELLS[cell], "derived_from": base if rule else None,
            "run_dir": str((OUT / concept_name / slug(base)).relative_to(ROOT)),
            "reading_layer": run.meta.reading_layer, "eval_auroc": run.meta.eval_auroc,
            "n_eval": {"positive": eval_set.n_positive, "contrast": eval_set.n_contrast},
            "n_scored": run.meta.n_neurons_scored,
            "search_seconds": secs.get("scoring", 0.0) + secs.get("fluency_cost", 0.0),
            "scoring_passes": run.meta.passes.get("scoring", {}), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concepts", default="toxigen,insults,threats")
    ap.add_argument("--cells", default=";".join(CELLS), help="';'-separated (cell names hold commas)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    import neat_llm as nl

    model = nl.load_model()
    summary_file = OUT / "grid.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else []
    randoms = RandomCache(OUT / "random")
    randoms.folder.mkdir(parents=True, exist_ok=True)
    for c in args.concepts.split(","):
        for cell in args.cells.split(";"):
            if cell not in CELLS:
                raise SystemExit(f"unknown cell {cell!r}; cells: {'; '.join(CELLS)}")
            if cell.startswith(HELD_OUT) and c != "toxigen":
                continue
            t0 = time.time()
            print(f"== {c}: {cell}", flush=True)
            res = run_cell(model, c, cell, randoms)
            summary = [r for r in summary if (r["concept"], r["cell"]) != (c, cell)] + [res]
            summary_file.write_text(json.dumps(summary, indent=1))
            print(f"   done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
