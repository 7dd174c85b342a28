"""Sampling speed, side by side in one run: the demonstration study's own prompts (lists of
statements, here written for this benchmark, about 170 tokens each) continued to the line's end,
5 seeded samples per prompt, 4 conditions along the batch, by

  (a) today's path: transformers' ``generate`` with the conditions' hooks, every sample prefilling
      its prompt (``sample_continuations_along``);
  (b) the shared prefill: each prompt read once per condition, its KV cache copied to its samples
      (``share_prefill=True``), the path the demonstration study uses.

Each as generated tokens per second and as a share of the float32 matmul rate measured in the same
run (a token costs about 2 x the model's matmul parameters in FLOPs; prefill tokens count too, as
"processed tokens"). The continuations of (a) and (b) must be identical (checked here and in
tests/test_behaviour.py). The last line is a JSON object with ``share_of_matmul`` and
``speedup_over_current`` (of (b)). Not the issue's own decoding loop: no row is dropped from a batch
when it ends, so rows that end early still cost their batch's decoding steps.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from _common import add_model_args, load
from bench_sweep import matmul_gflops

from neat_llm.evaluation.generation import sample_continuations_along
from neat_llm.interventions import Condition, NeuronSelection, Zero, conditions_along_batch

STATEMENTS = [
    "people who live near the river often grow rice and keep ducks in small ponds behind their houses",
    "the old market in the centre of town opens early on saturdays and closes before the evening rain",
    "many families in the valley speak two languages at home and a third one at school with friends",
    "the farmers in the hills have planted apple trees along the terraces for more than a hundred years",
    "most of the students in the evening class work during the day and study late into the night",
    "the fishing boats leave the harbour before dawn and return in the afternoon with their catch",
    "the town library lends books, maps and old newspapers to anyone who lives within the district",
    "the bakers on the main street start work at three in the morning so the bread is ready by six",
]


def prompts(n: int) -> list[str]:
    out = []
    for i in range(n):
        chosen = [STATEMENTS[(i + j) % len(STATEMENTS)] for j in range(4)]
        out.append("".join(f"- {s}\n" for s in chosen) + "-")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--prompts", type=int, default=12, help="prompts (each continued --samples times)")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=40)
    args = ap.parse_args(argv)
    model = load(args)
    ps = prompts(args.prompts)
    g = torch.Generator().manual_seed(0)
    conds = [Condition("before")] + [Condition(f"off{i}", NeuronSelection(tuple(
        (int(l), int(k)) for l, k in zip(torch.randint(0, model.n_layers, (50,), generator=g),
                                         torch.randint(0, model.d_ff, (50,), generator=g)))), Zero()) for i in range(3)]
    n_params = sum(p.numel() for n, p in model.hf.named_parameters() if p.dim() == 2 and "embed" not in n)
    flops_per_token = 2 * n_params
    rate = matmul_gflops(4096, model.d_model, model.d_ff)
    print(f"float32 matmul: {rate:.0f} GFLOP/s; {flops_per_token / 1e9:.2f} GFLOP per token")
    results = {}
    with conditions_along_batch(model, conds) as G:
        for name, shared in (("today's path (generate, every sample prefills)", False),
                             ("shared prefill (a prompt read once per condition)", True)):
            c0, t0 = model.counter.snapshot(), time.perf_counter()
            conts = sample_continuations_along(model, ps, G, max_new_tokens=args.new_tokens, samples=args.samples,
                                               seed=0, batch_size=16, stop_at_newline=True, share_prefill=shared)
            secs = time.perf_counter() - t0
            new = sum(len(model.tokenizer(t)["input_ids"]) for c in conts for t in c)
            prompt_tokens = len(model.tokenizer(ps[0])["input_ids"])
            passes = model.counter.since(c0)
            processed = passes.forward * prompt_tokens + passes.decode  # rows x tokens read
            results[shared] = (conts, secs, new, processed)
            print(f"{name}: {secs:.1f} s, {new / secs:.0f} generated tokens/s, {processed / secs:.0f} processed "
                  f"tokens/s = {processed * flops_per_token / secs / 1e9 / rate:.0%} of the matmul rate")
    same = results[False][0] == results[True][0]
    speedup = results[False][1] / results[True][1]
    share = results[True][3] * flops_per_token / results[True][1] / 1e9 / rate
    print(f"identical continuations: {same}; shared prefill {speedup:.2f}x today's path")
    print(json.dumps({"share_of_matmul": round(share, 3), "speedup_over_current": round(speedup, 2),
                      "identical": same}))


if __name__ == "__main__":
    main()
