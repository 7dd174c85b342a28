"""What reading a prompt's KV cache once for all its samples would buy the decoding loop, and what
it would cost in identity: one decoding step's attention at the loop's own shapes, two ways, side
by side in one run.

  (family) what the loop runs (``models/slot_cache.slot_attention``, called here): per running job (a prompt
           under G conditions x S samples, its rows in consecutive slots at one length), the
           family's own attention function over each row's own keys: every sample re-reads the
           prompt's keys and values.
  (shared) the prompt's part read once per (job, condition) for its S samples and the rows' own
           tokens per row, the two softmax parts merged through their log-sum-exp (the split
           attention of cascade / shared-prefix kernels), in plain torch, every job in one product.

The slots hold what the loop's slots hold: each condition's prompt keys copied to its S samples'
slots (as ``SlotCache.fill`` copies a prefill), then each row's own drawn tokens; the values are
random (the timing and the rounding do not depend on them). The model's attention shapes (heads,
key-value heads, head size, blocks) come from --model. Prints the milliseconds per decoding step
(every block), the ratio, how far (shared) is from (family) (largest |difference|, and whether they
are equal bit for bit), and the share of the step's attention time the KV reads are at this
machine's read bandwidth. The last line is a JSON object with those numbers.
"""

from __future__ import annotations

import argparse
import json

import torch

from _common import add_model_args, load, seconds_per_call

from neat_llm.models.slot_cache import SlotCache, SlotGroup, slot_attention


def slot_buffers(jobs: int, G: int, S: int, kv: int, d: int, prompt: int, own: int, gen: torch.Generator):
    """(keys, values) [jobs*G*S slots, kv, prompt+own, d] with each (job, condition)'s prompt part
    the same in its S slots, and that prompt part alone [jobs, G, kv, prompt, d] for each."""
    shape = (jobs, G, 1, kv, prompt, d)
    pk, pv = torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen)
    slots = jobs * G * S
    k, v = torch.empty(slots, kv, prompt + own, d), torch.empty(slots, kv, prompt + own, d)
    for buf, part in ((k, pk), (v, pv)):
        buf[:, :, :prompt] = part.expand(jobs, G, S, kv, prompt, d).reshape(slots, kv, prompt, d)
        buf[:, :, prompt:] = torch.randn(slots, kv, own, d, generator=gen)
    return k, v, pk[:, :, 0], pv[:, :, 0]


def family_step(model, module, q, k, v, jobs: int, unit: int) -> torch.Tensor:
    """The loop's attention itself (``slot_attention`` inside a ``SlotCache`` step): per job, the
    family's function over its rows' own keys (every key of ``k`` written, this step's included)."""
    n = k.shape[2]
    cache = SlotCache(model.n_layers, jobs * unit, n + 1)
    rows = torch.arange(jobs * unit)
    groups = [SlotGroup(slice(j * unit, (j + 1) * unit), j * unit, n) for j in range(jobs)]
    with cache.step(model.hf, rows, torch.full((jobs * unit,), n - 1), groups):
        return slot_attention(module, q, k, v, None, dropout=0.0, scaling=module.scaling)[0]


def shared_step(q, k, v, pk, pv, jobs: int, G: int, S: int, prompt: int, scaling: float) -> torch.Tensor:
    """The prompt's keys and values read once per (job, condition), each row's own per row; the
    two parts of the softmax merged by their maxima and sums. Returns [rows, 1, heads, d] as the
    family's function does."""
    rows, H, _, d = q.shape
    kv = pk.shape[2]
    rep = H // kv
    own = k.shape[2] - prompt
    # queries [jobs, G, kv, S*rep, d]: the S samples' query heads of one key-value head side by side
    qq = q.view(jobs, G, S, kv, rep, d).permute(0, 1, 3, 2, 4, 5).reshape(jobs, G, kv, S * rep, d)
    sp = torch.matmul(qq, pk.transpose(-1, -2)) * scaling                       # [jobs, G, kv, S*rep, prompt]
    ss = torch.matmul(q.view(rows, kv, rep, d), k[:, :, prompt:].transpose(-1, -2)) * scaling  # [rows, kv, rep, own]
    ss = ss.view(jobs, G, S, kv, rep, own).permute(0, 1, 3, 2, 4, 5).reshape(jobs, G, kv, S * rep, own)
    m = torch.maximum(sp.amax(-1, keepdim=True), ss.amax(-1, keepdim=True))
    ep, es = (sp - m).exp(), (ss - m).exp()
    total = ep.sum(-1, keepdim=True) + es.sum(-1, keepdim=True)
    op = torch.matmul(ep, pv)                                                     # [jobs, G, kv, S*rep, d]
    es_rows = es.view(jobs, G, kv, S, rep, own).permute(0, 1, 3, 2, 4, 5).reshape(rows, kv, rep, own)
    os_ = torch.matmul(es_rows, v[:, :, prompt:])                                 # [rows, kv, rep, d]
    os_ = os_.view(jobs, G, S, kv, rep, d).permute(0, 1, 3, 2, 4, 5).reshape(jobs, G, kv, S * rep, d)
    o = (op + os_) / total
    return o.view(jobs, G, kv, S, rep, d).permute(0, 1, 3, 2, 4, 5).reshape(rows, 1, H, d)


def read_bandwidth(mb: int = 256) -> float:
    """GB/s of one large sum (this machine's memory read rate, roughly)."""
    x = torch.randn(mb * 2**20 // 4)
    return x.numel() * 4 / seconds_per_call(x.sum, 5) / 1e9


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--jobs", type=int, default=7, help="running jobs (the loop's 145 rows a step: 7 jobs of 20)")
    ap.add_argument("--conditions", type=int, default=4)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=82, help="bench_generation's prompts: 78-86 tokens")
    ap.add_argument("--own-tokens", type=int, default=20, help="each row's drawn tokens so far, this step's included")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    model = load(args)
    module = next(m for m in model.hf.modules() if hasattr(m, "num_key_value_groups") and hasattr(m, "scaling"))
    implementation = model.hf.config._attn_implementation
    cfg = model.hf.config
    H, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    J, G, S, P, own = args.jobs, args.conditions, args.samples, args.prompt_tokens, args.own_tokens
    gen = torch.Generator().manual_seed(0)
    k, v, pk, pv = slot_buffers(J, G, S, kv, d, P, own, gen)
    q = torch.randn(J * G * S, H, 1, d, generator=gen)
    with torch.inference_mode():
        fam = family_step(model, module, q, k, v, J, G * S)
        shared = shared_step(q, k, v, pk, pv, J, G, S, P, module.scaling)
        t_fam = seconds_per_call(lambda: family_step(model, module, q, k, v, J, G * S), args.reps) * model.n_layers
        t_shared = seconds_per_call(lambda: shared_step(q, k, v, pk, pv, J, G, S, P, module.scaling),
                                    args.reps) * model.n_layers
    diff = float((fam - shared).abs().max())
    bw = read_bandwidth()
    kv_bytes = 2 * k.numel() * k.element_size() * model.n_layers
    print(f"{model.n_layers} blocks, {H} heads over {kv} key-value heads of {d}; {J} jobs x {G} conditions x {S} "
          f"samples = {J * G * S} rows, {P} prompt tokens + {own} own; attention via {implementation!r}")
    print(f"(family) the loop's attention: {t_fam * 1e3:.1f} ms a step; reads {kv_bytes / 1e9:.2f} GB of keys and "
          f"values = {kv_bytes / t_fam / 1e9:.1f} GB/s (this machine reads {bw:.1f} GB/s)")
    print(f"(shared) the prompt's part read once per job and condition: {t_shared * 1e3:.1f} ms a step, "
          f"{t_fam / t_shared:.2f}x; largest |difference| {diff:.2e}, bit for bit: {diff == 0.0}")
    print(json.dumps({"family_ms": round(t_fam * 1e3, 2), "shared_ms": round(t_shared * 1e3, 2),
                      "speedup": round(t_fam / t_shared, 2), "max_abs_diff": diff, "bit_for_bit": diff == 0.0,
                      "kv_gb_per_s": round(kv_bytes / t_fam / 1e9, 1), "read_gb_per_s": round(bw, 1)}))


if __name__ == "__main__":
    main()
