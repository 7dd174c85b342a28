"""`neat find` with the contrast probes swept in full against `--exact-top K` (the contrast sweep
only where the top K can change; scoring/pruning.py), side by side in one run on the same model,
concept and settings.

    python benchmarks/bench_exact_top.py                  # the demo concept on SmolLM2, K = 100
    python benchmarks/bench_exact_top.py --data toxigen --k 500
    python benchmarks/bench_exact_top.py --layers 20-     # blocks 20.. only, to check the script

Prints each find's wall time by stage and its partial forward passes, the neurons the pruned run
swept on the contrast side (per round), whether the top K and its order are the same, and the
largest |score difference| in the top K; its last line is one JSON object with
``speedup_find``, ``speedup_scoring``, ``contrast_share_swept``, ``same_top_k`` and ``bit_for_bit``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import neat_llm as nl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_model_args, load  # noqa: E402


def concept(args) -> nl.ConceptSet:
    if args.data is None:
        return nl.demo_concept()
    from neat_llm.concepts.datasets import load_named

    return load_named(args.data, args.data_path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--data", default=None, help="a named data set (default: the built-in demo concept)")
    ap.add_argument("--data-path", default=None)
    ap.add_argument("--k", type=int, default=100, help="the top K proven (and top.csv's rows)")
    ap.add_argument("--layers", default=None, help="blocks to score, e.g. '20-' (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model = load(args)
    cs = concept(args)
    common = dict(progress=False, top_k=args.k, seed=args.seed, tokens_per_batch=args.tokens_per_batch,
                  **({"layers": args.layers} if args.layers else {}))
    runs, wall = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("two full sweeps", {}), (f"--exact-top {args.k}", {"exact_top": args.k})):  # library: no default
            t0 = time.perf_counter()
            runs[name] = nl.find_concept_neurons(model, cs, out=Path(tmp) / name.replace(" ", "_"), **common, **extra)
            wall[name] = time.perf_counter() - t0
    full, pruned = runs.values()
    a, b = full.top(args.k), pruned.top(args.k)
    same = a.neurons == b.neurons
    diff = float((torch.tensor(a.scores) - torch.tensor(b.scores)).abs().max()) if same else float("nan")
    for name, run in runs.items():
        sec = run.meta.seconds
        print(f"{name}: {wall[name]:.1f} s (scoring {sec.get('scoring', 0):.1f} s, fluency cost "
              f"{sec.get('fluency_cost', 0):.1f} s); partial forward passes "
              f"{run.meta.passes['scoring']['partial_forward']:,}")
    info = pruned.meta.extra["exact_top"]
    print(f"contrast side swept for {info['contrast_swept']:,} of {info['of']:,} neurons "
          f"({100 * info['share_swept']:.1f}%) in rounds {info['rounds']}")
    print(f"top {args.k} identical, in the same order: {same}; largest |score difference| there: {diff:.2e}")
    names = list(runs)
    print(json.dumps({"k": args.k, "speedup_find": wall[names[0]] / wall[names[1]],
                      "speedup_scoring": full.meta.seconds["scoring"] / pruned.meta.seconds["scoring"],
                      "contrast_share_swept": info["share_swept"], "same_top_k": same, "max_score_diff": diff,
                      "bit_for_bit": same and list(a.scores) == list(b.scores)}))


if __name__ == "__main__":
    main()
