"""NEAT sweep over every MLP neuron of the embedded SmolLM2-135M-Instruct, against this machine's
float32 matmul rate and the naive per-neuron loop, measured side by side in one run.

    python benchmarks/bench_sweep.py            # full sweep (minutes)
    python benchmarks/bench_sweep.py --quick    # blocks >= 18 only, to check the script

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
from neat_llm.allocator import keep_freed_memory
from neat_llm.scoring.blocks import call_block
from neat_llm.scoring.neat import ProbeCache, call_block_last

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import demo_setup, sample_neurons  # noqa: E402


def matmul_gflops(m: int, k: int, n: int, seconds: float = 3.0, dtype=torch.float32) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def block_flops(model, cache: ProbeCache, layer: int, last_only: bool = False) -> int:
    """FLOPs of one block call on one replica [1, T, d] (``last_only``: the reading block, whose MLP
    runs at the last position only), counted by torch.utils.flop_counter."""
    h = cache.block_input(layer)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        if last_only:
            call_block_last(model, layer, h, cache.calls[layer])
        else:
            call_block(model, layer, h, cache.calls[layer])
    return fc.get_total_flops()


def executed_flops(model, cache: ProbeCache, task: ScoringTask, passes) -> tuple[int, int, int]:
    """(FLOPs the sweep executed, FLOPs of the same sweep with every block call in full, block calls).
    Every replica of a neuron in a block below the reading layer ends with one reading-block call
    (MLP at the last position only); the other block calls are full."""
    top = task.readout.layer
    full = block_flops(model, cache, min(top, 1))
    last = block_flops(model, cache, top, last_only=True)
    n_last = sum(len(task.neurons_of(l, model.d_ff)) for l in task.layers if l < top)
    calls = passes.block_forward
    return (calls - n_last) * full + n_last * last, calls * full, calls


def profile_block_sweep(model, task: ScoringTask, layer: int, tokens_per_batch: int) -> None:
    """torch.profiler over the sweep of one block: the operators that take the time."""
    from torch.profiler import ProfilerActivity, profile

    one = ScoringTask(task.readout, task.probes, layers=[layer])
    NeatScorer(tokens_per_batch).score(model, one)  # warm
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        NeatScorer(tokens_per_batch).score(model, one)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    print(f"profile of the block-{layer} sweep (torch.profiler, self time):")
    for e in sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)[:8]:
        print(f"  {e.self_cpu_time_total / total:6.1%}  {e.key:28s} {str(e.input_shapes)[:70]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sweep blocks >= 18 only")
    ap.add_argument("--naive-sample", type=int, default=48, help="neurons timed in the naive loop")
    ap.add_argument("--tokens-per-batch", type=int, default=4096)
    ap.add_argument("--compile", action="store_true", help="also time the sweep with NeatScorer(compile=True)")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler summary of one block's sweep")
    args = ap.parse_args()

    kept = keep_freed_memory()  # what NeatScorer does on a CPU; set first so the matmul rate sees it too
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; glibc keeps freed buffers: {kept}")
    model = nl.load_model()
    setup = demo_setup(model)
    readout, probe, layer = setup.readout, setup.probe, setup.layer
    print(setup.describe())

    mm_sweep = matmul_gflops(args.tokens_per_batch, model.d_model, model.d_ff)
    mm_square = matmul_gflops(2048, 2048, 2048)
    mm_bf16 = matmul_gflops(args.tokens_per_batch, model.d_model, model.d_ff, dtype=torch.bfloat16)
    print(f"float32 matmul: {mm_sweep:.0f} GFLOP/s at [{args.tokens_per_batch}x{model.d_model}]x[{model.d_model}x{model.d_ff}], "
          f"{mm_square:.0f} GFLOP/s at 2048^3; bfloat16 at the sweep shape: {mm_bf16:.0f} GFLOP/s")

    layers = list(range(18 if args.quick else 0, model.n_layers))
    task = ScoringTask(readout, ProbeSet([probe], [1.0]), layers=layers)
    cache = ProbeCache(model, probe, layer, readout.vector)
    n = task.n_selected(model.n_layers, model.d_ff)
    runs = [("eager", NeatScorer(args.tokens_per_batch))]
    if args.compile:
        runs.append(("torch.compile", NeatScorer(args.tokens_per_batch, compile=True)))
    results = {}
    for name, scorer in runs:
        res = scorer.score(model, task)
        results[name] = res
        done, full, calls = executed_flops(model, cache, task, res.passes)
        rate = done / res.seconds / 1e9
        print(f"NEAT sweep ({name}): {n:,} neurons in {res.seconds:.1f} s ({res.seconds / n * 1e3:.2f} ms/neuron); "
              f"{calls:,} block calls, {done / 1e12:.1f} TFLOP executed; {rate:.0f} GFLOP/s = {rate / mm_sweep:.0%} of "
              f"the sweep-shape float32 matmul rate, {rate / mm_square:.0%} of 2048^3")
        print(f"  with every block call in full ({full / 1e12:.1f} TFLOP, the plain sweep's work): "
              f"{full / res.seconds / 1e9:.0f} GFLOP/s effective; that work at the matmul rate alone would take "
              f"{full / mm_sweep / 1e9:.0f} s")
    fast = results["eager"]
    if args.compile:
        d = (results["torch.compile"].scores - fast.scores).nan_to_num().abs().max().item()
        print(f"torch.compile vs eager: {fast.seconds / results['torch.compile'].seconds:.2f}x (compile time "
              f"included), max |diff| {d:.1e}")
    if args.profile:
        profile_block_sweep(model, task, max(0, layer - 4), args.tokens_per_batch)

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
