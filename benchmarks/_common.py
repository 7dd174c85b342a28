"""Shared set-up of the benchmarks: the model flags, the demo concept's readout and probe (as a
``neat find`` run builds them), peak-memory measurement, and the agreement of two score tables.

Not a benchmark itself; imported by bench_sweep.py, bench_variants.py and bench_costs.py (which
put this folder on ``sys.path`` by being run as scripts)."""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import neat_llm as nl
from neat_llm.concepts.representations import text_pass
from neat_llm.concepts.vectors import ConceptReadout, choose_reading_layer, concept_vectors, layer_aurocs
from neat_llm.models.loaded import PassCounter

DTYPES = ("float32", "bfloat16", "float16")


# --- model -----------------------------------------------------------------------------------
def add_model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default=None,
                    help="model folder, hub id or .gguf (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--dtype", default="float32", choices=DTYPES)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--tokens-per-batch", type=int, default=4096, help="the sweep's replica batch bound C*T")


def load(args: argparse.Namespace) -> nl.LoadedModel:
    """The model the flags name, after quieting transformers and setting the thread count."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = nl.load_model(args.model, device=args.device, dtype=args.dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {model.model_id} "
          f"({model.n_layers} blocks x {model.d_ff} = {model.n_neurons:,} neurons) on {model.device}, {model.dtype}")
    return model


# --- concept readout and probe ---------------------------------------------------------------
@dataclass
class Setup:
    """The demo concept's readout as a run builds it: fit split, one pass over the fit texts, the
    reading layer with the best cross-validated AUROC, diff-means vector, and the probe (the most
    prototypical fit positive). ``seconds`` / ``passes``: the cost of this concept stage."""

    readout: ConceptReadout
    probe: str
    n_tokens: int
    positives: list[str]
    contrast: list[str]
    seconds: float
    passes: PassCounter

    @property
    def layer(self) -> int:
        return self.readout.layer

    def describe(self) -> str:
        return f"demo concept, reading layer {self.layer}, probe of {self.n_tokens} tokens: {self.probe!r}"


def fit_readout(model: nl.LoadedModel, texts: list[str], y: torch.Tensor) -> tuple[ConceptReadout, torch.Tensor]:
    """The concept stage: one pass over ``texts`` (y: [N] bool, True = positive), the reading layer
    with the best cross-validated AUROC, the diff-means vector. Returns the readout and S of every text."""
    tp = text_pass(model, list(texts))
    layer = choose_reading_layer(layer_aurocs(tp.residuals, y))
    readout = ConceptReadout(layer, concept_vectors(tp.residuals, y)[layer])
    return readout, readout.score(tp.residuals[:, layer])


def demo_setup(model: nl.LoadedModel, concept: nl.ConceptSet | None = None) -> Setup:
    concept = concept or nl.demo_concept()
    fit = concept.split(0.3, seed=0).fit
    y = torch.tensor(fit.labels)
    before, t0 = model.counter.snapshot(), time.perf_counter()
    readout, s = fit_readout(model, list(fit.texts), y)
    seconds, passes = time.perf_counter() - t0, model.counter.since(before)
    s[~y] = -float("inf")
    probe = fit.texts[int(s.argmax())]
    n_tokens = len(model.tokenizer(probe)["input_ids"])
    return Setup(readout, probe, n_tokens, list(fit.positives), list(fit.contrast), seconds, passes)


def sample_neurons(layers: list[int], d_ff: int, n: int, seed: int = 0) -> dict[int, list[int]]:
    """``n`` neurons drawn without replacement from ``layers`` (seeded; a smaller n is a prefix of
    a larger one with the same seed): {layer: [neuron indices]}."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.randperm(len(layers) * d_ff, generator=g)[:n]
    sample: dict[int, list[int]] = {}
    for i in flat.tolist():
        sample.setdefault(layers[i // d_ff], []).append(i % d_ff)
    return sample


# --- memory ----------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb / 1024
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) by writing 5 to /proc/self/clear_refs (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    hwm, rss = _status_kb("VmHWM"), _status_kb("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024  # the mark came down to the current RSS


def _release_freed_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so the next phase's peak is its own
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of the code inside ``with PeakMemory(device) as mem:``.

    CPU: the process's peak RSS, from the kernel's VmHWM reset at entry (``method="VmHWM"``), or,
    where that reset is not available, the maximum of RSS sampled every 50 ms by a thread
    (``method="sampled"``, may miss short spikes). ``rss_increase_mb`` = peak - RSS at entry: what
    the phase itself added (freed memory is handed back to the OS at entry, so an earlier phase's
    heap is not reused unseen). CUDA: torch.cuda.max_memory_allocated, and its increase."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.05):
        self.cuda = torch.device(device).type == "cuda"
        self.interval = interval
        self.result: dict[str, float | str] = {}

    def __enter__(self) -> "PeakMemory":
        _release_freed_memory()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.cuda_start = torch.cuda.memory_allocated()
        self.start = rss_mb()
        self.method = "VmHWM" if _reset_peak_rss() else "sampled"
        self._peak, self._stop = self.start, threading.Event()
        if self.method == "sampled":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, rss_mb())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        if self.method == "VmHWM":
            peak = _status_kb("VmHWM") / 1024
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, rss_mb())
        self.result = {"peak_rss_mb": round(peak, 1), "rss_increase_mb": round(peak - self.start, 1),
                       "memory_method": self.method}
        if self.cuda:
            top = torch.cuda.max_memory_allocated()
            self.result.update(cuda_peak_mb=round(top / 2**20, 1),
                               cuda_increase_mb=round((top - self.cuda_start) / 2**20, 1))

def seconds_per_call(fn: Callable[[], Any], reps: int) -> float:
    """Mean wall seconds of ``fn()`` over ``reps`` calls, after one call that warms it."""
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def measured(model: nl.LoadedModel, fn: Callable[[], Any]) -> tuple[Any, dict]:
    """``fn()`` with its wall time (synchronised on CUDA), the passes it added to the model's
    counter (for a scorer: its NeuronScores.passes) and its peak memory (``PeakMemory``)."""
    before = model.counter.snapshot()
    with PeakMemory(model.device) as mem:
        t0 = time.perf_counter()
        result = fn()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return result, {"seconds": seconds, **model.counter.since(before).as_dict(), **mem.result}


def memory_str(r: dict) -> str:
    """A PeakMemory result (or a row holding one) in words."""
    out = f"peak RSS {r['peak_rss_mb']:,.0f} MB (+{r['rss_increase_mb']:,.0f} MB in this phase, {r['memory_method']})"
    if "cuda_peak_mb" in r:
        out += f", CUDA peak {r['cuda_peak_mb']:,.0f} MB (+{r['cuda_increase_mb']:,.0f} MB)"
    return out


def times(t: float, base: float) -> str:
    """``t`` against ``base`` seconds in words: "3.2x faster than" / "1.5x slower than"."""
    return f"{base / t:.1f}x faster than" if t <= base else f"{t / base:.1f}x slower than"


def passes_str(p: PassCounter | dict) -> str:
    d = p.as_dict() if isinstance(p, PassCounter) else p
    return (f"{d['forward']:,} forward, {d['partial_forward']:,} partial, {d['block_forward']:,} block calls, "
            f"{d['backward']:,} backward")


# --- agreement of two score tables -----------------------------------------------------------
def top_set(scores: torch.Tensor, k: int) -> set[int]:
    """Flat indices of the ``k`` highest finite scores (stable order on ties)."""
    flat = scores.flatten()
    ok = torch.nonzero(torch.isfinite(flat)).flatten()
    return set(ok[torch.argsort(flat[ok], descending=True, stable=True)[:k]].tolist())


def top_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k, with k at most the number of neurons ``b`` scored."""
    k = min(k, int(torch.isfinite(b).sum()))
    return len(top_set(a, k) & top_set(b, k)) / k if k else float("nan")


def spearman(a: torch.Tensor, b: torch.Tensor, upto: int) -> tuple[float, int]:
    """Spearman correlation over neurons both tables scored (finite) in blocks 0..upto: (rho, count)."""
    from scipy.stats import spearmanr

    a, b = a[:upto + 1].flatten(), b[:upto + 1].flatten()
    ok = torch.isfinite(a) & torch.isfinite(b)
    if int(ok.sum()) < 3:
        return float("nan"), int(ok.sum())
    return float(spearmanr(a[ok].numpy(), b[ok].numpy()).statistic), int(ok.sum())
