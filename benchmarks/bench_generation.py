"""Sampling speed, side by side in one run: the demonstration study's own prompts (lists of
statements, here written for this benchmark, about 170 tokens each) continued to the line's end,
5 seeded samples per prompt, 4 conditions along the batch, by

  (a) transformers' ``generate`` with the conditions' hooks, every sample prefilling its prompt
      (``sample_continuations_along``, the plain reference);
  (b) the previous path: each prompt read once per condition, its KV cache (transformers' own)
      copied to its samples, then ``generate`` on it (rows that end early still cost every step);
  (c) our own decoding loop (``share_prefill=True``, what the demonstration study runs): the
      shared prefill without logits into a KV cache that grows in place (``models/kv_cache.py``),
      then one step at a time, a job leaving the batch once it has ended under every condition; at
      the study's batch size (16 jobs) and at --big-batch.

Each as generated tokens per second and as a share of the float32 matmul rate measured in the same
run (a token costs about 2 x the model's matmul parameters in FLOPs; prefill tokens count too, as
"processed tokens"). The continuations of every path must be identical (checked here and in
tests/test_behaviour.py). The last line is a JSON object with ``share_of_matmul`` and
``speedup_over_current`` of (c) at the study's batch size (over (b)), and of the big batch.
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


def previous_path(model, prompts_, G, *, new_tokens, samples, batch_size) -> list[list[str]]:
    """(b): the shared prefill, then transformers' ``generate`` on the prefilled cache (the path the
    study ran before our decoding loop), with the same seeded uniforms and stop tokens."""
    from transformers import DynamicCache, GenerationConfig, LogitsProcessorList

    from neat_llm.evaluation.generation import _InverseCdfSampler, _prefilled, first_line, newline_tokens

    tok = model.tokenizer
    u = torch.rand(len(prompts_), samples, new_tokens, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eos = model.hf.generation_config.eos_token_id
    eos = sorted(set([eos] if isinstance(eos, int) else list(eos or [])) | set(newline_tokens(tok)))
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id,
                              eos_token_id=eos, bos_token_id=model.hf.generation_config.bos_token_id)
    out: list[list[str]] = [[] for _ in range(G)]
    per = max(1, batch_size // samples)
    side, tok.padding_side = tok.padding_side, "left"
    try:
        for p in range(0, len(prompts_), per):
            chunk = prompts_[p:p + per]
            ur = u[p:p + len(chunk)].reshape(-1, new_tokens).repeat(G, 1)
            enc, cache, _ = _prefilled(model, chunk, G, samples, cache=DynamicCache(config=model.hf.config))
            width = enc["input_ids"].shape[1]
            gen = model.generate_ids(enc, generation_config=config, cache=cache,
                                     logits_processor=LogitsProcessorList([_InverseCdfSampler(ur, width, 1.0, 0.95, 0)]))
            text = [first_line(t) for t in tok.batch_decode(gen[:, width:], skip_special_tokens=True)]
            n = len(chunk) * samples
            for g in range(G):
                out[g] += text[g * n:(g + 1) * n]
    finally:
        tok.padding_side = side
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--prompts", type=int, default=12, help="prompts (each continued --samples times)")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--big-batch", type=int, default=60, help="jobs per batch of the loop's second run")
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
    kw = dict(max_new_tokens=args.new_tokens, samples=args.samples, seed=0, stop_at_newline=True)
    paths = {
        "a": ("generate, every sample prefills", lambda G: sample_continuations_along(model, ps, G, batch_size=16, **kw)),
        "b": ("shared prefill, then generate (previous path)",
              lambda G: previous_path(model, ps, G, new_tokens=args.new_tokens, samples=args.samples, batch_size=16)),
        "c": ("our decoding loop, 16 jobs per batch",
              lambda G: sample_continuations_along(model, ps, G, batch_size=16, share_prefill=True, **kw)),
        "c_big": (f"our decoding loop, {args.big_batch} jobs per batch",
                  lambda G: sample_continuations_along(model, ps, G, batch_size=args.big_batch, share_prefill=True, **kw)),
    }
    results = {}
    with conditions_along_batch(model, conds) as G:
        for key, (name, run) in paths.items():
            c0, t0 = model.counter.snapshot(), time.perf_counter()
            conts = run(G)
            secs = time.perf_counter() - t0
            new = sum(len(model.tokenizer(t)["input_ids"]) for c in conts for t in c)
            prompt_tokens = len(model.tokenizer(ps[0])["input_ids"])
            passes = model.counter.since(c0)
            processed = passes.forward * prompt_tokens + passes.decode  # rows x tokens read
            share = processed * flops_per_token / secs / 1e9 / rate
            results[key] = (conts, secs, share)
            print(f"({key}) {name}: {secs:.1f} s, {new / secs:.0f} generated tokens/s, {processed / secs:.0f} "
                  f"processed tokens/s = {share:.0%} of the matmul rate")
    same = all(results[k][0] == results["a"][0] for k in results)
    for k in ("b", "c", "c_big"):
        print(f"({k}) identical to (a): {results[k][0] == results['a'][0]}; {results['a'][1] / results[k][1]:.2f}x (a), "
              f"{results['b'][1] / results[k][1]:.2f}x (b)")
    print(json.dumps({"share_of_matmul": round(results["c"][2], 3),
                      "speedup_over_current": round(results["b"][1] / results["c"][1], 2),
                      "share_of_matmul_big_batch": round(results["c_big"][2], 3),
                      "speedup_over_current_big_batch": round(results["b"][1] / results["c_big"][1], 2),
                      "identical": same}))


if __name__ == "__main__":
    main()
