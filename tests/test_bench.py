"""The benchmark's figures are all there and agree with an independent count (no timing
thresholds: those are measurements for the book, not tests)."""
from __future__ import annotations

import math
import statistics

import pytest

from nanogpt.bench import run_benchmark, save_result
from nanogpt.course import load_results
from nanogpt.model import GPTConfig

KEYS = ("matmul_gflops", "train_ms_per_iter", "train_tokens_per_s", "mfu", "fused_speedup_vs_naive",
        "step_peak_mem_gib", "gen_tokens_per_s_cached", "gen_tokens_per_s_uncached", "device", "torch",
        "threads")
L, C, V, T, B = 2, 32, 65, 32, 4


@pytest.fixture(scope="module")
def result() -> dict:
    config = GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=2, n_embd=C, dropout=0.2)
    return run_benchmark(device="cpu", steps=3, threads=1, batch_size=B, new_tokens=40, config=config,
                         log=lambda *a: None)


def test_benchmark_reports_every_figure(result):
    for key in KEYS:
        assert key in result, key
    for key in ("matmul_gflops", "train_ms_per_iter", "train_tokens_per_s", "mfu", "step_peak_mem_gib",
                "gen_tokens_per_s_cached", "gen_tokens_per_s_uncached", "fused_speedup_vs_naive"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["gen_same_tokens"] is True
    assert result["threads"] == 1 and result["device"] == "cpu"


def test_figures_agree_with_an_independent_count(result):
    # Parameters counted by hand: token and position tables, per block the q/k/v and output
    # projections, the 4x MLP (weights and biases) and two LayerNorms, then the final LayerNorm.
    per_block = (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C) + 2 * (2 * C)
    matmul_params = V * C + L * per_block + 2 * C  # the position table is a lookup, not a matmul
    assert result["parameters"] == matmul_params + T * C
    flops_per_token = 6 * matmul_params + 12 * L * C * T  # weights, then attention scores (PaLM, appendix B)
    assert result["flops_per_token"] == flops_per_token
    # Each figure is the median of the alternated steps, and MFU divides by the measured matmul rate.
    fused = statistics.median(result["train_step_times_s"]["fused"])
    naive = statistics.median(result["train_step_times_s"]["naive"])
    assert len(result["train_step_times_s"]["fused"]) == 3
    assert math.isclose(result["train_ms_per_iter"], fused * 1000, abs_tol=0.051)  # times stored to 0.1 ms
    assert math.isclose(result["fused_speedup_vs_naive"], naive / fused, rel_tol=0.05)
    tokens_per_s = B * T / (result["train_ms_per_iter"] / 1000)
    assert math.isclose(result["mfu"], flops_per_token * tokens_per_s / (result["matmul_gflops"] * 1e9), rel_tol=1e-9)


def test_saved_record_is_one_the_results_page_accepts(result, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("NANOGPT_QUICK", "0")
    save_result(result)
    valid, skipped = load_results(tmp_path)
    assert skipped == [] and len(valid) == 1
    assert valid[0][1]["metrics"]["mfu"] == result["mfu"]
