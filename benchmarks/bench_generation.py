"""Sampling speed, side by side in one run: the demonstration study's own kind of prompt (lists of
statements, here written for this benchmark, 78-86 tokens each on SmolLM2) continued to the line's end,
5 seeded samples per prompt, 4 conditions along the batch, by

  (a) transformers' ``generate`` with the conditions' hooks, every sample prefilling its prompt
      (``sample_continuations_along``, the plain reference), 16 jobs per batch;
  (b) the path of the time the speed issue was filed: each prompt read once per condition, its KV
      cache copied to its samples, then ``generate`` on it (rows that end early still cost steps);
  (c) the decoding loop of 2026-12-01 (``_previous_loops.decode_jobs``): a (prompt, sample) job
      leaves the batch once it has ended under every condition, batches of whole prompts (16 jobs);
  (d) our decoding loop (``neat_llm.evaluation.decoding``, what the studies run now): a row leaves
      the batch when it ends, a new prompt takes the freed slots (a KV-cache budget in tokens, not a
      fixed batch), each row attending to exactly its own keys.

Every path runs with glibc keeping freed blocks (``neat_llm.allocator.keep_freed_memory``), as
under the ``neat`` command. Each as generated tokens per second and as a share of the float32 matmul rate measured in the same
run: the matrix-product FLOPs the path had to do (2 x the model's matrix parameters per prompt
token read, plus 2 x the unembedding per decoding row) over its wall time. Continuations are
compared with (a)'s: exactly, and as the share of continuations that are the same (the products'
last bits depend on how many rows a product has, on this CPU's BLAS, so a batch of another size can
flip a near-tied draw). Then the ceiling of any float32 loop that does (d)'s passes: the model's
own matrix products alone (every linear layer and the unembedding, nothing else) at (d)'s mean rows
per decoding step and at the prompt's length, timed on their own; no float32 loop on these rows can
beat it, whatever its attention or bookkeeping. The last line is a JSON object with
``share_of_matmul`` and ``speedup_over_current`` (over (c), the loop (d) replaces) of (d), its
speed-up over (b), the agreement, and the ceiling (``ceiling_share``, ``ceiling_speedup_over_current``,
``ceiling_speedup_over_filed``).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from _common import add_model_args, load, seconds_per_call
from _previous_loops import decode_jobs, prefilled
from bench_sweep import matmul_gflops

from neat_llm.allocator import keep_freed_memory
from neat_llm.evaluation.decoding import DECODE_TOKENS
from neat_llm.evaluation.generation import _InverseCdfSampler, first_line, newline_tokens, sample_continuations_along
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


def earlier_path(model, prompts_, G, *, new_tokens, samples, batch_size, loop: bool) -> list[list[str]]:
    """(b) (``loop=False``): the shared prefill, then transformers' ``generate`` on the prefilled
    cache; (c) (``loop=True``): the shared prefill, then the job-dropping loop of 2026-12-01. Both
    with the same seeded uniforms and stop tokens as the library's path."""
    from transformers import DynamicCache, GenerationConfig, LogitsProcessorList

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
            if loop:
                enc, cache, _ = prefilled(model, chunk, G, samples)
                sampler = _InverseCdfSampler(ur, enc["input_ids"].shape[1], 1.0, 0.95, 0)
                text = tok.batch_decode(decode_jobs(model, enc, cache, sampler, ur, G, eos), skip_special_tokens=True)
            else:
                enc, cache, _ = prefilled(model, chunk, G, samples, cache=DynamicCache(config=model.hf.config))
                width = enc["input_ids"].shape[1]
                gen = model.generate_ids(enc, generation_config=config, cache=cache, logits_processor=LogitsProcessorList(
                    [_InverseCdfSampler(ur, width, 1.0, 0.95, 0)]))
                text = tok.batch_decode(gen[:, width:], skip_special_tokens=True)
            text = [first_line(t) for t in text]
            n = len(chunk) * samples
            for g in range(G):
                out[g] += text[g * n:(g + 1) * n]
    finally:
        tok.padding_side = side
    return out


def product_seconds_per_row(model, rows: int, *, unembed: bool, reps: int = 3) -> float:
    """Seconds per row of the model's own linear layers (the unembedding only with ``unembed``),
    each applied to ``rows`` random rows, nothing else: the matrix products of one step of that many
    rows, at the rate this CPU gives products of their shapes."""
    out_emb = model.hf.get_output_embeddings()
    linears = [m for m in model.hf.modules() if isinstance(m, torch.nn.Linear) and (unembed or m is not out_emb)]
    xs = {w: torch.randn(rows, w, dtype=model.dtype, device=model.device) for w in {m.in_features for m in linears}}
    def step():
        for m in linears:
            torch.nn.functional.linear(xs[m.in_features], m.weight)

    with torch.inference_mode():
        return seconds_per_call(step, reps) / rows


def counting_steps(model) -> tuple[list[int], object]:
    """A list that counts the Hugging Face model's one-token calls (decoding steps), and the hook's handle."""
    steps = [0]

    def pre(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[-1] == 1:
            steps[0] += 1

    return steps, model.hf.register_forward_pre_hook(pre, with_kwargs=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--prompts", type=int, default=12, help="prompts (each continued --samples times)")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--decode-tokens", type=int, default=DECODE_TOKENS, help="(d)'s KV-cache budget in tokens")
    ap.add_argument("--only", default="abcd", help="the paths to run, e.g. 'ad' ((a) always runs: the reference)")
    args = ap.parse_args(argv)
    keep_freed_memory()  # for every path, as the `neat` command does at its start (the loop (d) would set it itself)
    model = load(args)
    ps = prompts(args.prompts)
    g = torch.Generator().manual_seed(0)
    conds = [Condition("before")] + [Condition(f"off{i}", NeuronSelection(tuple(
        (int(l), int(k)) for l, k in zip(torch.randint(0, model.n_layers, (50,), generator=g),
                                         torch.randint(0, model.d_ff, (50,), generator=g)))), Zero()) for i in range(3)]
    matrices = sum(p.numel() for n, p in model.hf.named_parameters() if p.dim() == 2 and "embed" not in n
                   and "lm_head" not in n)
    unembed = model.hf.get_output_embeddings().weight.numel()
    rate = matmul_gflops(4096, model.d_model, model.d_ff)
    print(f"float32 matmul: {rate:.0f} GFLOP/s; {2 * matrices / 1e9:.2f} GFLOP per prompt token read, "
          f"{2 * (matrices + unembed) / 1e9:.2f} per decoding row (the unembedding included)")
    kw = dict(max_new_tokens=args.new_tokens, samples=args.samples, seed=0, stop_at_newline=True)
    ew = dict(new_tokens=args.new_tokens, samples=args.samples, batch_size=16)
    paths = {
        "a": ("generate, every sample prefills", lambda G: sample_continuations_along(model, ps, G, batch_size=16, **kw)),
        "b": ("shared prefill, then generate (the path when the issue was filed)",
              lambda G: earlier_path(model, ps, G, loop=False, **ew)),
        "c": ("the loop of 2026-12-01: jobs leave when ended under every condition, 16 jobs per batch",
              lambda G: earlier_path(model, ps, G, loop=True, **ew)),
        "d": (f"our decoding loop: rows leave when ended, new prompts take their slots, {args.decode_tokens:,} "
              "tokens of KV cache", lambda G: sample_continuations_along(model, ps, G, share_prefill=True,
                                                                         decode_tokens=args.decode_tokens, **kw)),
    }
    results, shape = {}, {}
    with conditions_along_batch(model, conds) as G:
        for key, (name, run) in paths.items():
            if key != "a" and key not in args.only:
                continue
            steps, handle = counting_steps(model)
            c0, t0 = model.counter.snapshot(), time.perf_counter()
            try:
                conts = run(G)
            finally:
                handle.remove()
            secs = time.perf_counter() - t0
            new = sum(len(model.tokenizer(t)["input_ids"]) for c in conts for t in c)
            prompt_tokens = len(model.tokenizer(ps[0])["input_ids"])
            passes = model.counter.since(c0)
            flops = passes.forward * prompt_tokens * 2 * matrices + passes.decode * 2 * (matrices + unembed)
            share = flops / secs / 1e9 / rate
            results[key] = (conts, secs, share)
            shape[key] = (passes, steps[0], prompt_tokens, flops)
            print(f"({key}) {name}: {secs:.1f} s, {new / secs:.0f} generated tokens/s, {passes.decode:,} decoding rows, "
                  f"{flops / secs / 1e9:.0f} GFLOP/s = {share:.0%} of the matmul rate", flush=True)
    ref = results["a"][0]
    n_conts = sum(len(c) for c in ref)

    def agreement(k):
        return sum(x == y for cr, ck in zip(ref, results[k][0]) for x, y in zip(cr, ck)) / n_conts

    for k in results:
        if k != "a":
            speed = "; ".join(f"{results[o][1] / results[k][1]:.2f}x ({o})" for o in results if o != k)
            print(f"({k}) identical to (a): {results[k][0] == ref}, {agreement(k):.1%} of {n_conts} continuations "
                  f"the same; {speed}")
    if "d" in results:
        out = {"share_of_matmul": round(results["d"][2], 3), "identical": results["d"][0] == ref,
               "agreement": round(agreement("d"), 4)}
        if "c" in results:
            out["speedup_over_current"] = round(results["c"][1] / results["d"][1], 2)
        if "b" in results:
            out["speedup_over_filed"] = round(results["b"][1] / results["d"][1], 2)
        out.update(ceiling(model, results, shape["d"], rate))
        print(json.dumps(out))


def ceiling(model, results: dict, d_shape: tuple, rate: float) -> dict:
    """(d)'s passes at the speed of their matrix products alone (``product_seconds_per_row`` at (d)'s
    mean rows per step, and at the prompt's length for the prefills): printed, and as JSON fields."""
    passes, steps, prompt_tokens, flops = d_shape
    rows = max(1, round(passes.decode / max(steps, 1)))
    secs = (passes.forward * prompt_tokens * product_seconds_per_row(model, prompt_tokens, unembed=False)
            + passes.decode * product_seconds_per_row(model, rows, unembed=True))
    share = flops / secs / 1e9 / rate
    out = {"ceiling_share": round(share, 3)}
    print(f"(d) ceiling: its passes ({passes.decode:,} decoding rows in {steps:,} steps, {rows} rows a step) at the "
          f"speed of their matrix products alone: {secs:.1f} s = {share:.0%} of the matmul rate, "
          f"{results['d'][1] / secs:.2f}x (d)", end="")
    for key, name in (("c", "current"), ("b", "filed")):
        if key in results:
            out[f"ceiling_speedup_over_{name}"] = round(results[key][1] / secs, 2)
            print(f", {results[key][1] / secs:.2f}x ({key})", end="")
    print()
    return out


if __name__ == "__main__":
    main()
