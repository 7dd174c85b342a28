"""Conditions along the batch against one condition per pass, side by side in one run.

    python benchmarks/bench_conditions.py                      # embedded SmolLM2 (about 10 min on 2 CPU cores)
    python benchmarks/bench_conditions.py --quick --model PATH # tiny sizes, to check the script

An evaluation measures "before", each top-K set and its random K-sets: many conditions over the
same texts. ``evaluation.conditions.run_conditions`` measures ``per_batch`` of them at once (each
batch repeated along the batch, every block of rows under its own condition). This script times two
measures with C = --conditions conditions (before and random K-sets of K = --k, zero ablation) for
every ``per_batch`` in --per-batch:

- removal: the concept score S on the demo concept's texts + perplexity on the neutral texts
  (what ``evaluate_removal`` measures per condition);
- generation: --prompts sampled continuations of --new-tokens tokens (what ``evaluate_hate``
  samples per condition).

Each result is checked against per_batch = 1 (largest |difference| of S and of the perplexity
ratio; continuations identical). Writes conditions.csv to --out and prints the table with the
speed-up over per_batch = 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_model_args, demo_setup, load  # noqa: E402

from neat_llm.concepts.conceptset import ConceptSet  # noqa: E402
from neat_llm.evaluation.conditions import BEFORE, random_selections, run_conditions  # noqa: E402
from neat_llm.evaluation.generation import prompt_prefixes, sample_continuations_along  # noqa: E402
from neat_llm.evaluation.neutral_text import NEUTRAL_TEXTS  # noqa: E402
from neat_llm.evaluation.removal import RemovalMeasure  # noqa: E402
from neat_llm.interventions import Condition  # noqa: E402


class GenerationMeasure:
    """Sampled continuations per condition (the generation part of the hate study)."""

    def __init__(self, prompts: list[str], new_tokens: int):
        self.prompts, self.new_tokens = prompts, new_tokens

    def measure(self, model, replicas):
        return sample_continuations_along(model, self.prompts, replicas, max_new_tokens=self.new_tokens, seed=0)

    def to_json(self, r):
        return {"texts": r}

    def from_json(self, d):
        return d["texts"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the script)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="output folder")
    ap.add_argument("--conditions", type=int, help="conditions measured (before + random K-sets; default 16)")
    ap.add_argument("--per-batch", help="conditions per batch to compare (default 1,4,8,16)")
    ap.add_argument("--k", type=int, help="neurons per random set (default 100)")
    ap.add_argument("--prompts", type=int, help="prompts continued per condition (default 16)")
    ap.add_argument("--new-tokens", type=int, default=20, help="tokens sampled per continuation")
    args = ap.parse_args(argv)
    quick = {"conditions": 4, "per_batch": "1,4", "k": 5, "prompts": 3}
    full = {"conditions": 16, "per_batch": "1,4,8,16", "k": 100, "prompts": 16}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.per_batch = sorted({int(x) for x in str(args.per_batch).split(",")})
    if args.per_batch[0] != 1:
        args.per_batch = [1] + args.per_batch  # the reference every other row is checked against
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    model = load(args)
    setup = demo_setup(model)
    print(setup.describe())
    texts = list(setup.positives) + list(setup.contrast)
    ev = ConceptSet.from_texts(list(setup.positives), list(setup.contrast), name="demo")
    neutral = list(NEUTRAL_TEXTS)
    prompts = (prompt_prefixes(texts) * args.prompts)[: args.prompts]
    conds = [Condition(BEFORE)] + [Condition(f"random-{i}", s) for i, s in
                                   enumerate(random_selections(model, args.k, args.conditions - 1, seed=0))]
    print(f"{len(conds)} conditions (before + {len(conds) - 1} random {args.k}-sets); removal on {len(texts)} texts + "
          f"{len(neutral)} neutral texts; generation of {len(prompts)} prompts x {args.new_tokens} tokens")
    measures = {"removal": RemovalMeasure(setup.readout, ev, neutral), "generation": GenerationMeasure(prompts, args.new_tokens)}
    rows, ref = [], {}
    for what, measure in measures.items():
        for g in args.per_batch:
            t0 = time.perf_counter()
            got = run_conditions(model, conds, measure, per_batch=g)
            secs = time.perf_counter() - t0
            if g == 1:
                ref[what] = got
            rows.append({"measure": what, "per_batch": g, "conditions": len(conds), "seconds": secs,
                         "seconds_per_condition": secs / len(conds), "max_diff": _diff(what, got, ref[what])})
            base = next(r["seconds"] for r in rows if r["measure"] == what and r["per_batch"] == 1)
            rows[-1]["speedup"] = base / secs
            print(f"{what:10s} per_batch={g:3d}: {secs:7.2f} s ({secs / len(conds):.2f} s per condition), "
                  f"x{base / secs:.2f} vs one per pass; max diff {rows[-1]['max_diff']:.2g}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "conditions.csv", index=False)
    print(f"wrote {out / 'conditions.csv'}")
    return rows


def _diff(what: str, got: dict, ref: dict) -> float:
    """Largest |difference| from per_batch = 1: S and perplexity for removal; the share of
    continuations that differ for generation."""
    if what == "generation":
        pairs = [(a, b) for n in ref for a, b in zip(got[n], ref[n])]
        return sum(a != b for a, b in pairs) / len(pairs)
    d = 0.0
    for n in ref:
        (s, p), (s0, p0) = got[n], ref[n]
        d = max(d, float((s.pos - s0.pos).abs().max()), float((s.neg - s0.neg).abs().max()), abs(p / p0 - 1))
    return d


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
