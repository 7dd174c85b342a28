"""Estimated cost of a full NEAT sweep of large models, on paper: the FLOPs of one block call
counted exactly on the meta device (Hugging Face's own decoder layer, no weights allocated, nothing
downloaded), times the block calls of the sweep, divided by a FLOP rate you give (the one
benchmarks/bench_sweep.py measured on your hardware).

    python benchmarks/estimate_large.py --rate-gflops 74          # this 2-core CPU's measured sweep rate
    python benchmarks/estimate_large.py --rate-gflops 400000 --tokens 16 --reading-frac 0.66

Formula (all-position ablation, probe of T tokens, b probe texts, reading layer l*):
    block calls  = b * d_ff * sum_{l=0..l*} (l* - l)  =  b * d_ff * l* (l* + 1) / 2
    FLOPs        = block calls * F_block(T)           (F_block counted by torch.utils.flop_counter)
    seconds      = FLOPs / rate
plus one clean forward per probe text (negligible). Families whose MLP output enters the residual
unnormalised skip re-running block l itself (that is why the sum runs to l* - l, not l* - l + 1).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

# Architectures as published in each model's config.json (numbers only; nothing is downloaded).
MODELS = {
    "SmolLM2-135M": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3),
    "Llama-2-7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32),
    "Llama-3.1-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8),
    "Llama-3.1-70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8),
}


def block_flops(arch: dict, tokens: int) -> int:
    """FLOPs of one Llama decoder-layer call on [1, tokens, d] (meta tensors)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    cfg = LlamaConfig(**arch, vocab_size=32000, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        layer = LlamaDecoderLayer(cfg, layer_idx=0)
        rope = LlamaRotaryEmbedding(cfg)
        h = torch.zeros(1, tokens, cfg.hidden_size)
        pos = torch.arange(tokens)[None]
        cos_sin = rope(h, pos)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            layer(h, position_embeddings=cos_sin, attention_mask=None, position_ids=pos)
    return fc.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate-gflops", type=float, default=74.0, help="achieved sweep FLOP rate (bench_sweep.py)")
    ap.add_argument("--tokens", type=int, default=12, help="probe length T")
    ap.add_argument("--probe-size", type=int, default=1, help="b")
    ap.add_argument("--reading-frac", type=float, default=0.7, help="l* as a fraction of the depth")
    ap.add_argument("--workers", type=int, default=1, help="divide by this many equal workers (Ray)")
    args = ap.parse_args()
    print(f"probe T={args.tokens} tokens, b={args.probe_size}, l* = {args.reading_frac:.0%} of the depth, "
          f"rate {args.rate_gflops:,.0f} GFLOP/s per worker, {args.workers} worker(s)")
    print("| model | neurons n | l* | F_block(T) | block calls | sweep FLOPs | time |")
    print("|---|---|---|---|---|---|---|")
    for name, arch in MODELS.items():
        L, d_ff = arch["num_hidden_layers"], arch["intermediate_size"]
        top = round(args.reading_frac * (L - 1))
        f = block_flops(arch, args.tokens)
        calls = args.probe_size * d_ff * top * (top + 1) // 2
        flops = calls * f
        sec = flops / (args.rate_gflops * 1e9) / args.workers
        when = f"{sec:,.0f} s" if sec < 3600 else (f"{sec / 3600:,.1f} h" if sec < 48 * 3600 else f"{sec / 86400:,.1f} days")
        print(f"| {name} | {L * d_ff:,} | {top} | {f / 1e9:.2f} GFLOP | {calls:,} | {flops / 1e15:.2f} PFLOP | {when} |")


if __name__ == "__main__":
    main()
