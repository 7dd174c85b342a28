"""On a CUDA device: the fast NEAT sweep (all positions and read position) gives the plain
reference's numbers on a tiny Llama loaded with ``load_model(..., device="cuda", dtype=...)``, and
the benchmark runs there. Skipped where torch sees no CUDA device.

Tolerances: float32 as on the CPU (test_neat_equivalence.py), slightly looser for other kernels;
bfloat16 / float16 round every activation (bf16 has 8 bits of mantissa), so the fast sweep (the
clean block output plus the rank-one change) and the reference (the whole block re-run) differ by
rounding: on the CPU up to ~0.5% of |S| in bf16; allowed here 5% of max(|S|, largest score), and
the scores must also rank like the float32 reference (correlation > 0.98; observed 0.999 on CPU)."""

from __future__ import annotations

import warnings

import pytest
import torch

import neat_llm as nl
from conftest import concept_texts
from neat_llm.concepts.vectors import ConceptReadout
from neat_llm.scoring import NeatScorer, ProbeSet, ReferenceScorer, ScoringTask
from neat_llm.scoring.neat import ProbeCache
from neat_llm.scoring.positions import ReadPositionCache
from neat_llm.scoring.reference import concept_score_of
from test_benchmarks_smoke import _script, quiet_transformers  # noqa: F401  (a fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = ["float32", "bfloat16", "float16"]


def _task(m, layer: int = 1, seed: int = 1) -> ScoringTask:
    pos, _ = concept_texts(4)
    torch.manual_seed(seed)
    readout = ConceptReadout(layer=layer, vector=torch.nn.functional.normalize(torch.randn(m.d_model), dim=0))
    probes = ProbeSet([pos[0], pos[1] + " and more"], [0.5, 0.5])  # two lengths: no padding involved
    return ScoringTask(readout, probes, layers=[0, 1, 2])


def _close(fast: torch.Tensor, ref: torch.Tensor, m, task: ScoringTask) -> None:
    assert torch.equal(torch.isnan(fast), torch.isnan(ref))
    fa, fb = fast[~torch.isnan(fast)], ref[~torch.isnan(ref)]
    scale = fb.abs().max().item()
    assert scale > 1e-4, "scores are all ~0: the test would prove nothing"
    if m.dtype == torch.float32:
        torch.testing.assert_close(fa, fb, atol=1e-4 * scale + 1e-6, rtol=1e-3)
    else:
        r = task.readout
        s_max = max(abs(concept_score_of(m, t, r.layer, r.vector)) for t in task.probes.texts)
        torch.testing.assert_close(fa, fb, atol=0.05 * max(s_max, scale), rtol=0)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    ok = torch.isfinite(a) & torch.isfinite(b)
    return float(torch.corrcoef(torch.stack([a[ok], b[ok]]))[0, 1])


@pytest.fixture(scope="module")
def cpu_model(tiny_model_dir):
    return nl.load_model(tiny_model_dir)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_position_sweep_equals_reference_on_cuda(dtype, tiny_model_dir, cpu_model):
    m = nl.load_model(tiny_model_dir, device="cuda", dtype=dtype)
    assert m.device.type == "cuda" and m.dtype == getattr(torch, dtype)
    task = _task(m)
    fast = NeatScorer(tokens_per_batch=40).score(m, task)  # small batches: chunking is exercised
    ref = ReferenceScorer().score(m, task)
    assert fast.scores.device.type == "cpu"
    _close(fast.scores, ref.scores, m, task)
    assert torch.all(fast.scores[2] == 0), "neurons after the reading layer must score exactly 0"
    assert fast.passes.forward == 2 and fast.passes.partial_forward == 2 * 2 * m.d_ff
    cpu_ref = ReferenceScorer().score(cpu_model, task).scores  # the same numbers as on the CPU in float32
    if m.dtype == torch.float32:
        torch.testing.assert_close(fast.scores, cpu_ref, atol=1e-4 * cpu_ref[:2].abs().max().item(), rtol=1e-3)
    assert _corr(fast.scores[:2].flatten(), cpu_ref[:2].flatten()) > 0.98


@pytest.mark.parametrize("dtype", DTYPES)
def test_read_position_sweep_on_cuda(dtype, tiny_model_dir):
    m = nl.load_model(tiny_model_dir, device="cuda", dtype=dtype)
    task = _task(m, layer=2, seed=3)
    if m.dtype == torch.float32:  # the KV-cache replay itself is used, not the all-position fallback
        for text in task.probes.texts:
            pc = ProbeCache(m, text, 2, task.readout.vector)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert ReadPositionCache(m, text, 2, task.readout.vector, pc.block_out[2], pc.s_clean).kv
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # half precision may fall back to re-running every position
        fast = NeatScorer(tokens_per_batch=20, positions="read").score(m, task)
    assert fast.n_scored == 3 * m.d_ff and torch.isfinite(fast.scores).all()
    ref = ReferenceScorer(positions="read").score(m, task)
    _close(fast.scores, ref.scores, m, task)


def test_bench_variants_on_cuda(tiny_model_dir, quiet_transformers):
    rows = _script("bench_variants").main(["--model", str(tiny_model_dir), "--device", "cuda", "--dtype", "bfloat16",
                                           "--candidates", "30", "--top", "10"])
    assert [r["variant"] for r in rows] == ["all", "read", "screen-verify"]
    assert all(r["cuda_peak_mb"] > 0 for r in rows)
    assert rows[2]["max_abs_diff_vs_all"] < 0.05
