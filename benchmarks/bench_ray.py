"""The NEAT sweep of a few SmolLM2 blocks in one process and sharded over a local Ray cluster with
1 and 2 workers, measured side by side in one run (demo concept, default settings).

    python benchmarks/bench_ray.py                 # blocks 14-21 (the demo concept reads at 21)
    python benchmarks/bench_ray.py --layers 18-21

Prints, per configuration: the scoring stage's wall time (for Ray: cluster start, the workers'
model loads, and the shards), the part spent starting up, and whether the scores equal the
single-process scores bit for bit; then the sweep's FLOP count (block calls x FLOPs of one block
call on one replica, as in bench_sweep.py) and the achieved FLOP rate of each configuration.
Workers run one torch thread each (2 workers on 2 cores); single process runs at 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from types import SimpleNamespace
from pathlib import Path

import torch

import neat_llm as nl
from neat_llm.distributed import RaySweep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep import executed_flops  # noqa: E402
from neat_llm.concepts.vectors import ConceptReadout
from neat_llm.find import parse_layers
from neat_llm.scoring import ProbeSet, ScoringTask
from neat_llm.scoring.neat import ProbeCache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="14-21")
    args = ap.parse_args()
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads available, blocks {args.layers}")
    model = nl.load_model()
    concept = nl.demo_concept()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    runs = {}
    configs = [("single process, 2 threads", 2, None), ("single process, 1 thread", 1, None),
               ("Ray, 1 worker x 1 thread", 2, 1), ("Ray, 2 workers x 1 thread", 2, 2)]
    for name, threads, workers in configs:
        torch.set_num_threads(threads)
        sweep = RaySweep(workers=workers) if workers else None
        t0 = time.perf_counter()
        run = nl.find_concept_neurons(model, concept, layers=args.layers, out=tmp / name.replace(" ", "_"),
                                      progress=False, distributed=sweep)
        runs[name] = (run, time.perf_counter() - t0)
    ref = runs["single process, 1 thread"][0]
    top = ref.meta.reading_layer
    cache = ProbeCache(model, ref.meta.probe_texts[0], top, ref.concept_vector)
    task = ScoringTask(ConceptReadout(top, ref.concept_vector), ProbeSet(ref.meta.probe_texts, [1.0]),
                       layers=parse_layers(args.layers, model.n_layers))
    flops, full, calls = executed_flops(model, cache, task, SimpleNamespace(**ref.meta.passes["scoring"]))
    print(f"reading layer {top}; probe {cache.n_tokens} tokens; {int(torch.isfinite(ref.scores).sum()):,} neurons; "
          f"{calls:,} block calls, {flops / 1e12:.2f} TFLOP executed")
    base = runs["Ray, 1 worker x 1 thread"][0].meta.seconds["scoring"]
    for name, (run, wall) in runs.items():
        s = run.meta.seconds["scoring"]
        info = run.meta.extra.get("distributed", {})
        start = info.get("seconds_startup", 0.0)
        same = torch.equal(torch.nan_to_num(run.scores, nan=-9.0), torch.nan_to_num(ref.scores, nan=-9.0))
        diff = float((run.scores - ref.scores).nan_to_num().abs().max())
        shards = f", {info['shards']} shards" if info else ""
        print(f"{name:28s} scoring {s:6.1f} s (startup {start:4.1f} s{shards}); sweep {flops / (s - start) / 1e9:5.1f} "
              f"GFLOP/s; vs 1 Ray worker {base / s:4.2f}x; identical to 1-thread single process: {same} "
              f"(max diff {diff:.1e})")


if __name__ == "__main__":
    main()
