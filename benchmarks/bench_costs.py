"""Cost curves, measured: wall time and passes against the number of neurons scored (n) and against
the number of examples (m), for `neat`, `exhaustive` and `attribution-patching` (the scorers of
neat_llm.scoring), on the demo concept's readout and probe.

    python benchmarks/bench_costs.py                    # embedded SmolLM2 (estimated 15-20 min on 2 CPU cores)
    python benchmarks/bench_costs.py --scale-check      # + peak memory of the sweep with 4x the neurons
    python benchmarks/bench_costs.py --quick --model PATH   # tiny sizes, to check the script

vs n: seeded random neurons of the blocks up to the reading layer (a smaller set is a prefix of a
  larger one), n in --sizes, m = --m fit positives. neat (b = 1 probe, the most prototypical fit
  positive) and attribution-patching are measured at every n; exhaustive (every one of the m
  positives is its own probe: n*m partial passes) is measured for n <= --exhaustive-max and
  extrapolated linearly in n beyond (rows with extrapolated=True, dashed in the plot).
vs m: n = --n-fixed neurons, m in --m-values (the first m of a seeded shuffle of the fit
  positives). The readout and the probe stay fixed, so only the scorer's own dependence on m is
  measured: NEAT's probe batch b does not grow with m (flat), exhaustive grows ~linearly,
  attribution patching (m forward + m backward, for all neurons at once) grows ~linearly but small.
concept stage: the one-time cost NEAT pays before its O(n) sweep: one pass over m positives and m
  contrast texts, the reading layer (cross-validated AUROC) and the concept vector.

Writes to --out (default benchmarks/out/): costs.csv (sweep, method, n, m, seconds, passes,
peak memory, extrapolated), costs.png (log-log time vs n; time vs m), and prints the table and the
growth exponents (slope of log time against log n and against log m, measured points only).

--scale-check: randomly initialised Llama models (--scale-hidden, --scale-blocks, d_ff =
  --scale-dff and --scale-factor times that) are swept in full (reading layer = last block, a
  random unit concept vector, the same probe text and tokenizer); prints the peak memory each
  sweep adds and its ratio: linear growth in n gives the factor, less is better. Writes scale.csv.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch

from neat_llm.find import parse_layers
from neat_llm.scoring import AttributionPatchingScorer, ExhaustiveScorer, NeatScorer, ProbeSet, ScoringTask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_model_args, demo_setup, fit_readout, load, measured, memory_str, passes_str, sample_neurons  # noqa: E402

METHODS = ("neat", "exhaustive", "attribution-patching")
COLORS = {"neat": "C0", "exhaustive": "C3", "attribution-patching": "C2", "concept-stage": "C7"}
# (full run, --quick) defaults of the options left unset
DEFAULTS = {"sizes": ("256,1024,4096,16384", "8,16,32"), "m": (16, 4), "m_values": ("4,8,16,32", "2,4"),
            "n_fixed": (512, 16), "exhaustive_max": (1024, 16), "scale_hidden": (256, 32), "scale_blocks": (8, 3),
            "scale_dff": (1024, 48)}
COLUMNS = ["sweep", "method", "n", "m", "seconds", "forward", "partial_forward", "block_forward", "backward",
           "peak_rss_mb", "rss_increase_mb", "memory_method", "extrapolated"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the script)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out"), help="output folder")
    ap.add_argument("--sizes", help="n values of the vs-n sweep (default 256,1024,4096,16384)")
    ap.add_argument("--m", type=int, help="fit positives given to the scorers in the vs-n sweep (default 16)")
    ap.add_argument("--m-values", help="m values of the vs-m sweep (default 4,8,16,32)")
    ap.add_argument("--n-fixed", type=int, help="neurons scored in the vs-m sweep (default 512)")
    ap.add_argument("--exhaustive-max", type=int, help="largest n exhaustive is measured at (default 1024)")
    ap.add_argument("--layers", default=None, help="blocks neurons are drawn from (default: all up to the reading layer)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale-check", action="store_true", help="peak memory of the sweep at 1x and Nx the neurons")
    ap.add_argument("--scale-hidden", type=int, help="hidden size of the scale-check models (default 256)")
    ap.add_argument("--scale-blocks", type=int, help="blocks of the scale-check models (default 8)")
    ap.add_argument("--scale-dff", type=int, help="d_ff of the smaller scale-check model (default 1024)")
    ap.add_argument("--scale-factor", type=int, default=4, help="d_ff of the larger one = factor x --scale-dff")
    args = ap.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.sizes = [int(x) for x in str(args.sizes).split(",")]
    args.m_values = [int(x) for x in str(args.m_values).split(",")]
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the curves; returns {"costs": DataFrame, "slopes": {method: {"n": .., "m": ..}}, and
    with --scale-check "scale": DataFrame}; the same is written to --out."""
    import pandas as pd

    args = parse_args(argv)
    model = load(args)
    setup = demo_setup(model)
    print(setup.describe())
    top = setup.layer
    pool = [l for l in (parse_layers(args.layers, model.n_layers) or range(model.n_layers)) if l <= top]
    if not pool:
        raise SystemExit(f"no block of --layers {args.layers} is at or before the reading layer {top}")
    available = len(pool) * model.d_ff
    positives = list(setup.positives)
    random.Random(args.seed).shuffle(positives)
    sizes = _capped(args.sizes, available, "--sizes", "neurons in blocks up to the reading layer")
    m_values = _capped(args.m_values, len(positives), "--m-values", "fit positives")
    m_fixed = min(args.m, len(positives))
    probes = ProbeSet([setup.probe], [1.0])
    print(f"neurons drawn from blocks {pool[0]}..{pool[-1]} ({available:,} available); vs n: n = {sizes}, m = "
          f"{m_fixed}; vs m: n = {min(args.n_fixed, available)}, m = {m_values}; exhaustive measured up to n = "
          f"{args.exhaustive_max}")

    rows: list[dict] = []

    def record(sweep: str, method: str, n: float, m: int, fn) -> None:
        _, row = measured(model, fn)
        rows.append({"sweep": sweep, "method": method, "n": n, "m": m, **row, "extrapolated": False})
        n_str = "-" if math.isnan(n) else n
        print(f"  {sweep:>7} {method:<21} n={n_str:<6} m={m:<3} {row['seconds']:8.3f} s  {passes_str(row)}; "
              f"{memory_str(row)}")

    def score_all(sweep: str, n: int, m: int) -> None:
        neurons = sample_neurons(pool, model.d_ff, n, args.seed)
        task = ScoringTask(setup.readout, probes, layers=sorted(neurons), neurons=neurons,
                           positives=positives[:m], contrast=setup.contrast)
        scorers = {"neat": NeatScorer(args.tokens_per_batch), "exhaustive": ExhaustiveScorer(args.tokens_per_batch),
                   "attribution-patching": AttributionPatchingScorer()}
        for method, scorer in scorers.items():
            if method == "exhaustive" and sweep == "n" and n > args.exhaustive_max:
                continue
            record(sweep, method, n, m, lambda: scorer.score(model, task))

    print("concept stage (once per concept, before any sweep):")
    for m in sorted(set(m_values) | {m_fixed}):
        if m < 2:  # the reading layer's cross-validated AUROC needs two texts per side
            continue
        texts = positives[:m] + setup.contrast[:m]
        y = torch.tensor([True] * m + [False] * len(setup.contrast[:m]))
        record("concept", "concept-stage", math.nan, m, lambda: fit_readout(model, texts, y))
    print("vs n:")
    for n in sizes:
        score_all("n", n, m_fixed)
    rows += _extrapolate_exhaustive(rows, sizes)
    print("vs m:")
    for m in m_values:
        score_all("m", min(args.n_fixed, available), m)

    costs = pd.DataFrame(rows)
    costs = costs[COLUMNS + [c for c in costs.columns if c not in COLUMNS]]
    costs["n"] = costs.n.astype("Int64")  # NaN (concept stage) stays missing
    rank = {k: i for i, k in enumerate(("concept", "n", "m", *METHODS, "concept-stage"))}
    costs = costs.sort_values(["sweep", "method", "n", "m"], kind="stable", ignore_index=True,
                              key=lambda c: c.map(rank) if c.name in ("sweep", "method") else c)
    slopes = _slopes(costs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    costs.to_csv(out / "costs.csv", index=False)
    _print_table(costs, slopes)
    _plot(costs, slopes, out / "costs.png", model, setup)
    print(f"wrote {out / 'costs.csv'} and {out / 'costs.png'}")
    result = {"costs": costs, "slopes": slopes}
    if args.scale_check:
        result["scale"] = scale_check(args, model, setup.probe)
        result["scale"].to_csv(out / "scale.csv", index=False)
        print(f"wrote {out / 'scale.csv'}")
    return result


def _capped(values: list[int], limit: int, flag: str, what: str) -> list[int]:
    kept = sorted({min(v, limit) for v in values})
    if max(values) > limit:
        print(f"note: {flag} capped at {limit} ({what})")
    return kept


def _extrapolate_exhaustive(rows: list[dict], sizes: list[int]) -> list[dict]:
    """Exhaustive rows for the sizes it was not measured at: wall time from a least-squares line
    a + b*n through the measured sizes (through the origin from the largest one if there is
    only one, or the intercept comes out negative); partial and block passes scale with n."""
    done = [r for r in rows if r["sweep"] == "n" and r["method"] == "exhaustive"]
    missing = [n for n in sizes if n not in {r["n"] for r in done}]
    if not done or not missing:
        return []
    last = max(done, key=lambda r: r["n"])
    a, b = 0.0, last["seconds"] / last["n"]
    if len(done) >= 2:
        b_fit, a_fit = np.polyfit([r["n"] for r in done], [r["seconds"] for r in done], 1)
        if a_fit >= 0 and b_fit > 0:
            a, b = a_fit, b_fit
    out = []
    for n in missing:
        f = n / last["n"]
        out.append({"sweep": "n", "method": "exhaustive", "n": n, "m": last["m"], "seconds": a + b * n,
                    "forward": last["forward"], "partial_forward": round(last["partial_forward"] * f),
                    "block_forward": round(last["block_forward"] * f), "backward": last["backward"],
                    "extrapolated": True})
    return out


def _slopes(costs) -> dict[str, dict[str, float]]:
    """Slope of log seconds against log n (vs-n sweep) and log m (vs-m sweep and concept stage),
    measured rows only; NaN with fewer than two distinct x."""
    out: dict[str, dict[str, float]] = {}
    for method in (*METHODS, "concept-stage"):
        out[method] = {}
        for x, sweeps in (("n", ("n",)), ("m", ("m", "concept"))):
            d = costs[(costs.method == method) & costs.sweep.isin(sweeps) & ~costs.extrapolated.astype(bool)]
            ok = d[x].nunique() >= 2
            out[method][x] = float(np.polyfit(np.log(d[x]), np.log(d.seconds), 1)[0]) if ok else math.nan
    return out


def _print_table(costs, slopes) -> None:
    show = costs.drop(columns="memory_method")
    show["seconds"] = show.seconds.map(lambda s: f"{s:.3f}")
    show["extrapolated"] = show.extrapolated.map(lambda e: "yes" if e else "")
    print("\n" + show.to_string(index=False, na_rep="-"))
    print("\ngrowth exponents (slope of log wall time; measured points only; expected (METHOD.md): NEAT ~1 in n "
          "and ~0 in m, exhaustive ~1 in n and ~1 in m, attribution patching ~0 in n and ~1 in m):")
    for method, s in slopes.items():
        rng = {x: _range(costs, method, x) for x in ("n", "m")}
        print(f"  {method:<21} vs n: {_fmt(s['n'])}{rng['n']:<16} vs m: {_fmt(s['m'])}{rng['m']}")


def _range(costs, method: str, x: str) -> str:
    d = costs[(costs.method == method) & ~costs.extrapolated.astype(bool) & costs.sweep.isin(
        ("n",) if x == "n" else ("m", "concept"))]
    return f" ({x}={int(d[x].min())}..{int(d[x].max())})" if d[x].nunique() >= 2 else ""


def _fmt(v: float) -> str:
    return "   -" if math.isnan(v) else f"{v:5.2f}"


def _plot(costs, slopes, path: Path, model, setup) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_n, ax_m) = plt.subplots(1, 2, figsize=(11, 4.3))
    for method in METHODS:
        d = costs[(costs.sweep == "n") & (costs.method == method)].sort_values("n")
        meas = d[~d.extrapolated.astype(bool)]
        label = f"{method} (slope {_fmt(slopes[method]['n']).strip()})"
        ax_n.plot(meas.n, meas.seconds, "o-", color=COLORS[method], label=label)
        if d.extrapolated.astype(bool).any():  # dashed from the last measured point on
            tail = d[d.n >= meas.n.max()]
            ax_n.plot(tail.n, tail.seconds, "o--", color=COLORS[method], mfc="none", label=f"{method}, extrapolated")
    ax_n.set(xscale="log", yscale="log", xlabel="neurons scored n", ylabel="wall time (s)",
             title=f"vs n (m = {int(costs[costs.sweep == 'n'].m.iloc[0])})")
    sizes = sorted(costs[costs.sweep == "n"].n.unique())
    ax_n.set_xticks(sizes, [f"{n:,}" for n in sizes], minor=False)
    ax_n.set_xticks([], minor=True)
    for method in (*METHODS, "concept-stage"):
        d = costs[costs.sweep.isin(("m", "concept")) & (costs.method == method)].sort_values("m")
        style = ":" if method == "concept-stage" else "-"
        ax_m.plot(d.m, d.seconds, "o" + style, color=COLORS[method],
                  label=f"{method} (slope {_fmt(slopes[method]['m']).strip()})")
    n_m = costs[costs.sweep == "m"].n
    ax_m.set(xlabel="examples m (fit positives)", ylabel="wall time (s)",
             title=f"vs m (n = {int(n_m.iloc[0]) if len(n_m) else '-'})")
    ax_m.set_xticks(sorted(costs[costs.sweep.isin(("m", "concept"))].m.unique()))
    ax_m.set_ylim(bottom=0)
    for ax in (ax_n, ax_m):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"{model.model_id}: reading layer {setup.layer}, probe of {setup.n_tokens} tokens "
                 f"({model.device.type}, {str(model.dtype).removeprefix('torch.')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scale_check(args: argparse.Namespace, model, probe: str):
    """Sweep every neuron of two random Llama models that differ only in d_ff (x --scale-factor);
    the peak memory each sweep adds, and its ratio."""
    import pandas as pd
    from transformers import AutoModelForCausalLM, LlamaConfig

    from neat_llm.concepts.vectors import ConceptReadout
    from neat_llm.models import LoadedModel, family_for

    H, L = args.scale_hidden, args.scale_blocks
    heads = max(1, H // 64)
    rows = []
    print(f"scale check: random Llama, hidden {H}, {L} blocks, d_ff {args.scale_dff} and "
          f"{args.scale_factor}x; every neuron swept, reading layer {L - 1}")
    for factor in (1, args.scale_factor):
        d_ff = args.scale_dff * factor
        torch.manual_seed(args.seed)
        cfg = LlamaConfig(vocab_size=len(model.tokenizer), hidden_size=H, intermediate_size=d_ff, num_hidden_layers=L,
                          num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
                          tie_word_embeddings=True)
        hf = AutoModelForCausalLM.from_config(cfg).to(model.device, model.dtype)
        small = LoadedModel(hf=hf, tokenizer=model.tokenizer, family=family_for("llama"),
                            model_id=f"random-llama-{H}x{L}x{d_ff}")
        vector = torch.nn.functional.normalize(torch.randn(H), dim=0)
        task = ScoringTask(ConceptReadout(L - 1, vector), ProbeSet([probe], [1.0]), layers=list(range(L)))
        _, row = measured(small, lambda: NeatScorer(args.tokens_per_batch).score(small, task))
        rows.append({"d_ff": d_ff, "n_neurons": small.n_neurons, **row})
        print(f"  d_ff {d_ff}: {small.n_neurons:,} neurons in {row['seconds']:.2f} s; {memory_str(row)}")
        del small, hf
    a, b = rows
    key = "cuda_increase_mb" if "cuda_increase_mb" in a else "rss_increase_mb"
    ratio = b[key] / a[key] if a[key] > 0 else math.nan
    print(f"  {args.scale_factor}x the neurons: the sweep's added peak memory ({key}) {a[key]:,.1f} -> {b[key]:,.1f} MB "
          f"= {ratio:.2f}x ({'linear or less' if ratio <= args.scale_factor * 1.1 else 'MORE than linear'}); "
          f"wall time {b['seconds'] / a['seconds']:.1f}x")
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
