"""The exact all-position NEAT sweep, the position-restricted sweep and screen-then-verify, side by
side in one run on the same model, concept readout and probe (the demo concept).

    python benchmarks/bench_variants.py                          # every neuron of the embedded SmolLM2
    python benchmarks/bench_variants.py --layers 14-21           # a few blocks, to check quickly
    python benchmarks/bench_variants.py --device cuda --dtype bfloat16
    python benchmarks/bench_variants.py --model PATH --candidates 50 --top 20 --out DIR

Variants (the scorers of neat_llm.scoring):
  all   NeatScorer(positions="all"): a neuron off at every position (the method's score).
  read  NeatScorer(positions="read"): off at the read position only, replayed through the KV
        cache; a different, position-restricted score: its agreement with `all` is measured
        (Spearman over the neurons of blocks <= the reading layer, later blocks are exactly 0 in
        both; and top-K overlap |top-K(all) ∩ top-K(read)| / K).
  screen-verify  ScreenVerifyScorer(candidates=R, positions="all"): attribution patching over the fit positives
        ranks every neuron, the top R are scored exactly; its top-K overlap with `all`, and the
        max |verified - all| over its R verified neurons (the same exact score: float noise only).

Prints per variant: wall time, passes (NeuronScores.passes), peak memory (peak RSS from the
kernel's VmHWM, reset before each phase; on CUDA also torch.cuda.max_memory_allocated), then the
ratios measured side by side. ``--out DIR`` also writes variants.csv (one row per variant).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from neat_llm.find import parse_layers
from neat_llm.scoring import NeatScorer, ProbeSet, ScoringTask, ScreenVerifyScorer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_model_args, demo_setup, load, measured, memory_str, passes_str, spearman,  # noqa: E402
                     times, top_overlap)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--layers", default=None, help="blocks to score, e.g. '14-21' (default: all)")
    ap.add_argument("--candidates", type=int, default=500, help="R, the neurons screen-verify scores exactly")
    ap.add_argument("--top", type=int, default=100, help="K of the top-K overlaps (default 100)")
    ap.add_argument("--out", default=None, help="folder for variants.csv (default: print only)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the comparison; returns one dict per variant (the rows of variants.csv)."""
    args = parse_args(argv)
    model = load(args)
    setup = demo_setup(model)
    print(setup.describe())
    print(f"concept stage (once, before any sweep): {setup.seconds:.3g} s, {passes_str(setup.passes)}")
    layers = parse_layers(args.layers, model.n_layers) or list(range(model.n_layers))
    task = ScoringTask(setup.readout, ProbeSet([setup.probe], [1.0]), layers=layers,
                       positives=setup.positives, contrast=setup.contrast)
    n = task.n_selected(model.n_layers, model.d_ff)
    top, k = setup.layer, args.top
    print(f"{n:,} neurons in blocks {layers[0]}..{layers[-1]} ({len(layers)} blocks); "
          f"{len(setup.positives)} fit positives for screen-verify's screen; top-K overlaps with K = {k}")

    variants = [("all", "all-position sweep", NeatScorer(args.tokens_per_batch, positions="all")),
                ("read", "read-position sweep", NeatScorer(args.tokens_per_batch, positions="read")),
                ("screen-verify", f"screen-verify R={args.candidates} (screen on the fit positives)",
                 ScreenVerifyScorer(args.candidates, args.tokens_per_batch, positions="all")),
                ("screen-verify-probes", f"screen-verify R={args.candidates} (screen on the probe)",
                 ScreenVerifyScorer(args.candidates, args.tokens_per_batch, screen_on="probes", positions="all"))]
    rows, scores = [], {}
    for key, label, scorer in variants:
        result, row = measured(model, lambda: scorer.score(model, task))
        scores[key] = result.scores
        rows.append({"variant": key, "label": label, "n_scored": result.n_scored, **row})
        print(f"{label}: {row['seconds']:.3g} s, {result.n_scored:,} neurons scored; {passes_str(result.passes)}; "
              f"{memory_str(row)}")

    exact = scores["all"]
    for row in rows:
        s = scores[row["variant"]]
        row["spearman_vs_all"], row["spearman_n"] = spearman(s, exact, top)
        row["top_overlap_vs_all"] = top_overlap(s, exact, k)
        both = torch.isfinite(s) & torch.isfinite(exact)
        row["max_abs_diff_vs_all"] = float((s[both] - exact[both]).abs().max()) if both.any() else math.nan
        row["speedup_vs_all"] = rows[0]["seconds"] / row["seconds"]

    a, r, *svs = rows
    scale = float(exact[torch.isfinite(exact)].abs().max())
    print("\nside by side (the same model, readout and probe):")
    print(f"read-position sweep: {r['seconds']:.3g} s = {times(r['seconds'], a['seconds'])} the "
          f"all-position sweep ({a['seconds']:.3g} s); block calls {r['block_forward']:,} vs {a['block_forward']:,}; "
          f"peak RSS +{r['rss_increase_mb']:,.0f} MB vs +{a['rss_increase_mb']:,.0f} MB")
    print(f"  agreement with the all-position score: Spearman {r['spearman_vs_all']:.3f} over {r['spearman_n']:,} "
          f"neurons of blocks <= {top}; top-{k} overlap {r['top_overlap_vs_all']:.2f}")
    for sv in svs:
        print(f"{sv['label']}: {sv['seconds']:.3g} s = {times(sv['seconds'], a['seconds'])} "
              f"the all-position sweep; {passes_str(sv)} vs {passes_str(a)}")
        print(f"  top-{k} overlap with the all-position sweep {sv['top_overlap_vs_all']:.2f}; max |verified - exact| "
              f"over its {sv['n_scored']:,} verified neurons {sv['max_abs_diff_vs_all']:.2e} (scores up to {scale:.3g})")
    if args.out:
        import pandas as pd

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(out / "variants.csv", index=False)
        print(f"wrote {out / 'variants.csv'}")
    return rows


if __name__ == "__main__":
    main()
