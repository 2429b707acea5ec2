"""The benchmark's figures are all there and agree with an independent count (no timing
thresholds: those are measurements for the book, not tests)."""
from __future__ import annotations

import math
import statistics

import pytest

import torch

from nanogpt.bench import run_benchmark, save_result, step_memory_breakdown, step_peak_memory_gib
from nanogpt.course import load_results
from nanogpt.model import GPT, GPTConfig
from nanogpt.precision import cpu_has_native_bf16, resolve_dtype

KEYS = ("matmul_gflops", "train_ms_per_iter", "train_tokens_per_s", "matmul_rate_utilisation", "mfu",
        "fused_speedup_vs_naive",
        "step_peak_mem_gib", "step_memory_breakdown_gib", "gen_tokens_per_s_cached", "gen_tokens_per_s_uncached",
        "device", "torch", "threads", "cpu_capability", "bf16_native", "dtype_auto")
BF16_KEYS = ("matmul_gflops_bf16", "train_ms_per_iter_bf16", "train_tokens_per_s_bf16", "matmul_rate_utilisation_bf16",
             "mfu_bf16", "bf16_speedup",
             "step_peak_mem_gib_bf16", "step_memory_breakdown_gib_bf16")
L, C, V, T, B = 2, 32, 65, 32, 4


@pytest.fixture(scope="module")
def result() -> dict:
    config = GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=2, n_embd=C, dropout=0.2)
    return run_benchmark(device="cpu", steps=3, threads=1, batch_size=B, new_tokens=40, config=config,
                         log=lambda *a: None)


def test_benchmark_reports_every_figure(result):
    for key in KEYS:
        assert key in result, key
    for key in ("matmul_gflops", "train_ms_per_iter", "train_tokens_per_s", "matmul_rate_utilisation", "step_peak_mem_gib",
                "gen_tokens_per_s_cached", "gen_tokens_per_s_uncached", "fused_speedup_vs_naive"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["gen_same_tokens"] is True
    assert result["threads"] == 1 and result["device"] == "cpu"
    assert result["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert result["dtype_auto"] == str(resolve_dtype("cpu", "auto", C)).replace("torch.", "")


def test_bf16_is_measured_beside_fp32_exactly_where_the_cpu_has_it(result):
    assert result["bf16_native"] is cpu_has_native_bf16()
    if not result["bf16_native"]:
        assert not any(key in result for key in BF16_KEYS)
        return
    for key in BF16_KEYS:
        assert key in result, key
    bf16 = statistics.median(result["train_step_times_s"]["fused_bf16"])
    fp32 = statistics.median(result["train_step_times_s"]["fused"])
    assert math.isclose(result["bf16_speedup"], fp32 / bf16, rel_tol=0.05)
    assert math.isclose(result["matmul_bf16_speedup"], result["matmul_gflops_bf16"] / result["matmul_gflops"])


def test_compiled_steps_are_timed_against_the_eager_step_of_their_precision(result):
    if "compile_speedup" not in result:  # no toolchain: the line says why, and nothing is made up
        assert result["compile"].startswith("torch.compile failed")
        assert not any("compile" in key for key in result if key != "compile")
        return
    assert result["compile"] == "torch.compile: measured"
    times = result["train_step_times_s"]
    for suffix in ("", "_bf16") if result["bf16_native"] else ("",):
        compiled = statistics.median(times[f"fused{suffix}_compiled"])
        eager = statistics.median(times[f"fused{suffix}"])
        assert math.isclose(result[f"compile_speedup{suffix}"], eager / compiled, rel_tol=0.05)
        assert result[f"compile_first_step_s{suffix}"] > 0
    if not result["bf16_native"]:
        assert "fused_bf16_compiled" not in times and "compile_speedup_bf16" not in result


def test_a_compiler_that_fails_leaves_the_benchmark_running(monkeypatch):
    import nanogpt.bench as bench

    def no_compiler(model):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore lines")

    monkeypatch.setattr(bench.torch, "compile", no_compiler)
    config = GPTConfig(block_size=T, vocab_size=V, n_layer=1, n_head=2, n_embd=C)
    model = GPT(config)
    x = torch.randint(0, V, (B, T))
    steps, first_s, line = bench.compiled_steps(model, (x, x), "cpu", [torch.float32], log=lambda *a: None)
    assert steps == {} and first_s == {}
    assert line == "torch.compile failed, not measured: RuntimeError: InvalidCxxCompiler: No working C++ compiler found"


def test_memory_breakdown_counts_what_the_model_saves():
    # Counted by hand for a model without dropout: per block, the GELU keeps its (B, T, 4C)
    # input; the weights, their gradients and AdamW's two moments are four copies of the parameters.
    config = GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=2, n_embd=C, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(config)
    x = torch.randint(0, V, (B, T))
    parts = step_memory_breakdown(model, (x, x), "cpu")
    gib = 2**30
    assert parts["GELU inputs"] == pytest.approx(L * B * T * 4 * C * 4 / gib)
    assert parts["weights"] == parts["gradients"] == pytest.approx(model.num_params() * 4 / gib)
    assert parts["AdamW moments"] == pytest.approx(2 * parts["weights"])
    assert "dropout masks" not in parts
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))


def test_figures_agree_with_an_independent_count(result):
    # Parameters counted by hand: token and position tables, per block the q/k/v and output
    # projections, the 4x MLP (weights and biases) and two LayerNorms, then the final LayerNorm.
    per_block = (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C) + 2 * (2 * C)
    matmul_params = V * C + L * per_block + 2 * C  # the position table is a lookup, not a matmul
    assert result["parameters"] == matmul_params + T * C
    flops_per_token = 6 * matmul_params + 12 * L * C * T  # weights, then attention scores (PaLM, appendix B)
    assert result["flops_per_token"] == flops_per_token
    # Each figure is the median of the alternated steps; the matmul-rate utilisation divides by the
    # measured matmul rate, and MFU (against a data-sheet peak) is None on a CPU.
    fused = statistics.median(result["train_step_times_s"]["fused"])
    naive = statistics.median(result["train_step_times_s"]["naive"])
    assert len(result["train_step_times_s"]["fused"]) == 3
    assert math.isclose(result["train_ms_per_iter"], fused * 1000, abs_tol=0.051)  # times stored to 0.1 ms
    assert math.isclose(result["fused_speedup_vs_naive"], naive / fused, rel_tol=0.05)
    tokens_per_s = B * T / (result["train_ms_per_iter"] / 1000)
    assert math.isclose(result["matmul_rate_utilisation"], flops_per_token * tokens_per_s / (result["matmul_gflops"] * 1e9),
                        rel_tol=1e-9)
    assert result["mfu"] is None


def test_saved_record_is_one_the_results_page_accepts(result, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("NANOGPT_QUICK", "0")
    save_result(result)
    valid, skipped = load_results(tmp_path)
    assert skipped == [] and len(valid) == 1
    record = valid[0][1]
    assert record["metrics"]["matmul_rate_utilisation"] == result["matmul_rate_utilisation"]
    assert "mfu" in record["metrics"] and record["metrics"]["mfu"] is None  # a CPU: no data-sheet peak
    assert record["cpu_capability"] == result["cpu_capability"] and record["hardware"] == result["hardware"]
    assert record["metrics"]["bf16_native"] is result["bf16_native"]


def test_step_peak_memory_is_the_probe_s_own_not_its_parent_s():
    # A child started by fork and exec inherits its parent's ru_maxrss; the probe must not
    # report the memory of the process that launched it (here: a 1.5 GiB tensor).
    ballast = torch.ones(3 * 2**27)  # 1.5 GiB, every page touched
    config = GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=2, n_embd=C)
    peak = step_peak_memory_gib(config, B, "cpu", threads=1)
    assert 0.05 < peak < 1.0, peak  # the torch runtime and a tiny model, not the ballast
    del ballast


class FakeCudaAllocator:
    """What torch.cuda's allocator statistics report, for one process: bytes allocated now,
    the peak since the last reset, and what each call saw."""

    def __init__(self):
        self.allocated = self.peak = 0
        self.calls: list[str] = []

    def allocate(self, nbytes: int) -> None:
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)

    def free(self, nbytes: int) -> None:
        self.allocated -= nbytes

    def reset_peak_memory_stats(self, device=None) -> None:
        self.calls.append("reset")
        self.peak = self.allocated

    def max_memory_allocated(self, device=None) -> int:
        self.calls.append("max")
        return self.peak


def test_cuda_step_peak_is_measured_in_a_fresh_process_for_each_precision(monkeypatch):
    # The GPU's queries are mocked: every "process" gets its own fake allocator. A probe's steps
    # allocate their precision's peak and leave 1 GiB behind (as a benchmark's own model and
    # batches would), so a probe that ran in the parent, or two probes in one process, would
    # report the leftover on top of the second precision's peak.
    import contextlib
    import io
    import json
    import subprocess
    import sys as _sys

    import nanogpt.step_memory as bench

    gib = 2**30
    step_peaks = {torch.float32: int(2.5 * gib), torch.bfloat16: int(1.5 * gib)}
    processes: list[FakeCudaAllocator] = []
    argvs: list[list[str]] = []

    def refuse(*args, **kwargs):
        raise AssertionError("the parent process read or reset its own CUDA allocator statistics")

    for name in ("reset_peak_memory_stats", "max_memory_allocated", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def fake_steps(config, batch_size, device, dtype, steps):
        assert torch.device(device).type == "cuda" and steps == 2
        allocator = processes[-1]
        assert allocator.calls == ["reset"], "the peak must be reset before the model is built"
        allocator.allocate(step_peaks[dtype])
        allocator.free(step_peaks[dtype] - gib)  # 1 GiB left allocated after the steps

    def fake_run(argv, **kwargs):  # a fresh process: its own allocator, the probe's own code
        assert argv[0] == _sys.executable and argv[1] == "-c"
        argvs.append(argv)
        allocator = FakeCudaAllocator()
        processes.append(allocator)
        with monkeypatch.context() as child:
            child.setattr(torch.cuda, "reset_peak_memory_stats", allocator.reset_peak_memory_stats)
            child.setattr(torch.cuda, "max_memory_allocated", allocator.max_memory_allocated)
            child.setattr(torch.cuda, "synchronize", lambda device=None: None)
            child.setattr(torch, "set_num_threads", lambda n: None)
            child.setattr(_sys, "argv", ["-c", *argv[3:]])
            child.setattr(bench, "_run_steps", fake_steps)
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                exec(compile(argv[2], "<memory probe>", "exec"), {"__name__": "__main__"})
        return subprocess.CompletedProcess(argv, 0, stdout.getvalue(), "")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    config = GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=2, n_embd=C)
    peaks = {dtype: bench.step_peak_memory_gib(config, 64, "cuda", 16, dtype) for dtype in step_peaks}

    assert peaks == {torch.float32: 2.5, torch.bfloat16: 1.5}  # each its own, bf16 below fp32
    assert len(processes) == 2 and all(p.calls == ["reset", "max"] for p in processes)
    assert [argv[-2:] for argv in argvs] == [["float32", "cuda"], ["bfloat16", "cuda"]]
    assert json.loads(argvs[0][3]) == config.to_dict()


def test_the_memory_probe_reports_a_failed_child(monkeypatch):
    import nanogpt.step_memory as bench

    config = GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=2, n_embd=C)
    with pytest.raises(RuntimeError, match="memory probe .* failed"):
        bench.step_peak_memory_gib(config, B, "nonexistent-device", 1)
