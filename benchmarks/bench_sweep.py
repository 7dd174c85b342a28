"""NEAT sweep over every MLP neuron of the embedded SmolLM2-135M-Instruct, against this machine's
float32 matmul rate and the naive per-neuron loop, measured side by side in one run.

    python benchmarks/bench_sweep.py            # full sweep (minutes)
    python benchmarks/bench_sweep.py --quick    # blocks >= 24 only, to check the script

Prints: the full sweep's wall time; its FLOP count (FLOPs of one block call on one replica,
counted by torch.utils.flop_counter, times the block calls the sweep made) and achieved GFLOP/s
beside the measured float32 matmul GFLOP/s at the sweep's dominant shape ([C*T, d_model] x
[d_model, d_ff]) and at 2048^3; the naive loop (one full forward with one hook per neuron) timed
on a sample of neurons and extrapolated to all; the max |fast - naive| on that sample.

Where the time goes (torch.profiler on a 256-replica chunk, this machine): aten::mm ~79%, the
elementwise work of RMSNorm / rotary / SiLU-gating (aten::mul, silu, add, cat) ~18%, attention
(SDPA) ~2%. The sweep is matmul-bound; what is left is elementwise work that a fused kernel could
remove (torch.compile gave ~13% on one block in a trial, at ~20 s of compile time: not used yet).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import neat_llm as nl
from neat_llm.scoring import NeatScorer, ProbeSet, ReferenceScorer, ScoringTask
from neat_llm.scoring.neat import ProbeCache, call_block

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import demo_setup, sample_neurons  # noqa: E402


def matmul_gflops(m: int, k: int, n: int, seconds: float = 3.0) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def block_flops(model, cache: ProbeCache, layer: int) -> int:
    h = cache.block_input(layer)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        call_block(model.blocks[layer], h, cache.calls[layer])
    return fc.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sweep blocks >= 24 only")
    ap.add_argument("--naive-sample", type=int, default=48, help="neurons timed in the naive loop")
    ap.add_argument("--tokens-per-batch", type=int, default=4096)
    args = ap.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    model = nl.load_model()
    setup = demo_setup(model)
    readout, probe, layer = setup.readout, setup.probe, setup.layer
    print(setup.describe())

    mm_sweep = matmul_gflops(args.tokens_per_batch, model.d_model, model.d_ff)
    mm_square = matmul_gflops(2048, 2048, 2048)
    print(f"float32 matmul: {mm_sweep:.0f} GFLOP/s at [{args.tokens_per_batch}x{model.d_model}]x[{model.d_model}x{model.d_ff}], "
          f"{mm_square:.0f} GFLOP/s at 2048^3")

    layers = list(range(24 if args.quick else 0, model.n_layers))
    task = ScoringTask(readout, ProbeSet([probe], [1.0]), layers=layers)
    fast = NeatScorer(args.tokens_per_batch).score(model, task)
    cache = ProbeCache(model, probe, layer, readout.vector)
    per_block = block_flops(model, cache, min(layer, 1))
    flops = per_block * fast.passes.block_forward
    rate = flops / fast.seconds / 1e9
    n = task.n_selected(model.n_layers, model.d_ff)
    print(f"NEAT sweep: {n:,} neurons in {fast.seconds:.1f} s ({fast.seconds / n * 1e3:.2f} ms/neuron); "
          f"{fast.passes.block_forward:,} block calls x {per_block / 1e6:.1f} MFLOP = {flops / 1e12:.1f} TFLOP; "
          f"{rate:.0f} GFLOP/s = {rate / mm_sweep:.0%} of the sweep-shape matmul rate, {rate / mm_square:.0%} of 2048^3")

    sample = sample_neurons(layers, model.d_ff, args.naive_sample, seed=0)
    naive_task = ScoringTask(readout, ProbeSet([probe], [1.0]), layers=sorted(sample), neurons=sample)
    naive = ReferenceScorer().score(model, naive_task)
    per_neuron = naive.seconds / args.naive_sample
    naive_all = per_neuron * n
    ok = torch.isfinite(naive.scores)
    diff = (naive.scores[ok] - fast.scores[ok]).abs().max().item()
    print(f"naive loop: {per_neuron * 1e3:.1f} ms/neuron on {args.naive_sample} sampled neurons -> "
          f"{naive_all:.0f} s ({naive_all / 60:.1f} min) extrapolated to {n:,}")
    print(f"speed-up over the naive loop: {naive_all / fast.seconds:.1f}x; max |fast - naive| on the sample: {diff:.2e} "
          f"(scores up to {naive.scores[ok].abs().max().item():.3g})")


if __name__ == "__main__":
    main()
