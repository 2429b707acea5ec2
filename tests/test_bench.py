"""The benchmark's figures are all there and consistent (no timing thresholds: those are
measurements for the book, not tests)."""
from __future__ import annotations

import math

from nanogpt.bench import run_benchmark, save_result
from nanogpt.model import GPTConfig
from nanogpt.results import load_results

KEYS = ("matmul_gflops", "train_ms_per_iter", "train_tokens_per_s", "mfu", "fused_speedup_vs_naive",
        "step_peak_mem_gib", "gen_tokens_per_s_cached", "gen_tokens_per_s_uncached", "device", "torch",
        "threads")


def test_benchmark_reports_every_figure(tmp_path, monkeypatch):
    config = GPTConfig(block_size=32, vocab_size=65, n_layer=2, n_head=2, n_embd=32, dropout=0.2)
    result = run_benchmark(device="cpu", steps=1, threads=1, batch_size=4, new_tokens=40, config=config,
                           log=lambda *a: None)
    for key in KEYS:
        assert key in result, key
    for key in ("matmul_gflops", "train_ms_per_iter", "train_tokens_per_s", "mfu", "step_peak_mem_gib",
                "gen_tokens_per_s_cached", "gen_tokens_per_s_uncached", "fused_speedup_vs_naive"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["train_tokens_per_s"] * result["train_ms_per_iter"] / 1000 == 4 * 32 or math.isclose(
        result["train_tokens_per_s"] * result["train_ms_per_iter"] / 1000, 4 * 32)
    assert result["gen_same_tokens"] is True
    assert result["threads"] == 1 and result["device"] == "cpu"
    # --save writes a record the results page accepts.
    monkeypatch.setenv("NANOGPT_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("NANOGPT_QUICK", "0")
    save_result(result)
    valid, skipped = load_results(tmp_path)
    assert skipped == [] and len(valid) == 1
    assert valid[0][1]["metrics"]["mfu"] == result["mfu"]
