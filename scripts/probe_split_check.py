"""Does the bootstrap over probes tell the truth about other probes? A split-half check on a run's
stored per-probe effects, no model needed.

The run's probe texts (each side apart: the positives, and the contrast texts of the specific or
contrastive rule) are dealt alternately into two halves, A and B, two independent probe sets of the
same fit split and concept vector. Each half gives a score of its own (the same rule, weights
1/half, the fluency cost held). For each K the script prints the share of A's top K that is in B's
top K (what other probes actually keep) next to the mean *stays* of A's and of B's top K (the
bootstrap over that half's own probes: the overlap it expects with another probe sample).

    python scripts/probe_split_check.py RUN_DIR [--k 10,50,100] [--resamples 200] [--json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from neat_llm.runs import Run
from neat_llm.scoring.effects import ProbeEffects, bootstrap


def _halves(weights: tuple[float, ...]) -> tuple[list[int], list[int]]:
    """Probe indices dealt alternately into two halves, each side (sign of the weight) apart."""
    a, b = [], []
    for side in ([i for i, w in enumerate(weights) if w >= 0], [i for i, w in enumerate(weights) if w < 0]):
        a += side[0::2]
        b += side[1::2]
    return a, b


def _reweighted(weights: tuple[float, ...], idx: list[int]) -> tuple[float, ...]:
    """The half's weights: ±1 / (its probes on that side), as the sweep weighs a probe set of that size."""
    n_pos = sum(1 for i in idx if weights[i] >= 0)
    n_neg = len(idx) - n_pos
    return tuple((1.0 / n_pos) if weights[i] >= 0 else (-1.0 / n_neg) for i in idx)


def half(effects: ProbeEffects, which: int) -> ProbeEffects:
    """Half ``which`` (0 = A, 1 = B) of a run's probes as probe effects of their own."""
    pos = _halves(effects.positive_weights)[which]
    out = replace(effects, positive=effects.positive[pos], positive_weights=_reweighted(effects.positive_weights, pos))
    if effects.contrast is not None:
        neg = _halves(effects.contrast_weights)[which]
        out = replace(out, contrast=effects.contrast[neg], contrast_weights=_reweighted(effects.contrast_weights, neg))
    return out


def top_set(score: torch.Tensor, k: int) -> set[int]:
    flat = torch.nan_to_num(score.flatten(), nan=-torch.inf)
    return set(torch.topk(flat, k).indices.tolist())


def check(run_dir: Path, ks: list[int], resamples: int) -> dict:
    run = Run.load(run_dir)
    pe = run.probe_effects
    if pe is None:
        raise SystemExit(f"{run_dir} has no per-probe effects (probe_effects.safetensors)")
    a, b = half(pe, 0), half(pe, 1)
    sa, sb = a.score(), b.score()
    rows = []
    for k in ks:
        ta, tb = top_set(sa, k), top_set(sb, k)
        stays = []
        for h, s in ((a, sa), (b, sb)):
            share = bootstrap(h, k, resamples).in_top.flatten()
            stays.append(float(share[sorted(top_set(s, k))].mean()))
        whole = top_set(run.scores, k)
        rows.append({"k": k, "shared_by_halves": len(ta & tb) / k, "stays_a": stays[0], "stays_b": stays[1],
                     "half_a_in_whole": len(ta & whole) / k})
    n_pos = len(pe.positive_weights)
    return {"run_dir": str(run_dir), "concept": run.meta.concept_name, "reading_layer": run.meta.reading_layer,
            "probes": {"positive_side": n_pos, "contrast_side": 0 if pe.contrast is None else len(pe.contrast_weights)},
            "resamples": resamples, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--k", default="10,50,100")
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = check(args.run_dir, [int(x) for x in args.k.split(",")], args.resamples)
    if args.json:
        print(json.dumps(res))
        return
    print(f"{res['run_dir']}: {res['concept']}, reading layer {res['reading_layer']}, probes {res['probes']}")
    print("K | top-K shared by the halves | mean stays of A's top K | of B's | A's top K in the whole run's")
    for r in res["rows"]:
        print(f"{r['k']} | {r['shared_by_halves']:.2f} | {r['stays_a']:.2f} | {r['stays_b']:.2f} | "
              f"{r['half_a_in_whole']:.2f}")


if __name__ == "__main__":
    main()
