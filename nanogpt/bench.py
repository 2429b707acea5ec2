"""``python -m nanogpt bench``: how fast the course's models run on this machine.

Measured in one process, in one run: matmul throughput (the yardstick), training step time,
tokens/s and MFU against that yardstick, the naive ``Head``-based model against the fused GPT
(``attention.naive_twin``: the same function and weights; alternating steps, medians), peak memory of a training step, and generation with and
without the key/value cache. The machine may be shared and noisy: A and B are alternated,
every figure is a median, and the thread count is pinned and reported.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from .attention import naive_twin
from .compute import measure_matmul_flops
from .model import GPT, GPTConfig
from .presets import PRESETS
from .runtime import describe_hardware, pick_device
from .train import autocast, configure_adamw, resolve_dtype


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str = "cpu"):
    """``fn`` wrapped to return its wall time in seconds, synchronising the GPU around it."""

    def run() -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    return run


def make_step(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: str,
              dtype: torch.dtype = torch.float32, optimizer: torch.optim.Optimizer | None = None):
    """A function that runs one full training step (forward, backward, AdamW) and returns its seconds."""
    device_type = torch.device(device).type
    optimizer = optimizer or configure_adamw(model, 0.1, 1e-4, (0.9, 0.99), device_type)
    ctx = autocast(device_type, dtype)
    x, y = batch
    model.train()

    def step() -> None:
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, device)


def alternate(steps: dict[str, callable], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each step function in turn, ``repeats`` rounds after ``warmup``; all timings per name."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            times[name].append(fn())
    return times


def measure_generation(model: GPT, new_tokens: int, use_cache: bool, device: str, seed: int = 0):
    """Tokens/s generating ``new_tokens`` from a one-token prompt; returns (tokens/s, tokens)."""
    model.eval()
    idx = torch.zeros((1, 1), dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    _sync(device)
    t0 = time.perf_counter()
    out = model.generate(idx, new_tokens, temperature=1.0, generator=gen, use_cache=use_cache)
    _sync(device)
    return new_tokens / (time.perf_counter() - t0), out


_MEMORY_PROBE = """
import json, resource, sys, torch
from nanogpt.bench import make_step
from nanogpt.model import GPT, GPTConfig
cfg = json.loads(sys.argv[1]); torch.set_num_threads(int(sys.argv[2]))
B = int(sys.argv[3])
torch.manual_seed(0)
model = GPT(GPTConfig(**cfg))
x = torch.randint(0, cfg["vocab_size"], (B, cfg["block_size"]))
step = make_step(model, (x, x), "cpu")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for _ in range(2):
    step()
print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "before_kib": before}))
"""


def step_peak_memory_gib(config: GPTConfig, batch_size: int, device: str, threads: int) -> float:
    """Peak memory of training steps: CUDA's allocator peak, or on a CPU the peak resident
    size of a fresh process that builds the model and runs two steps (model, optimizer
    state, activations and the torch runtime together)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        model = GPT(config).to(device)
        x = torch.randint(0, config.vocab_size, (batch_size, config.block_size), device=device)
        make_step(model, (x, x), device, resolve_dtype("cuda"))()
        return torch.cuda.max_memory_allocated() / 2**30
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, json.dumps(config.to_dict()), str(threads),
                          str(batch_size)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["peak_rss_kib"] / 2**20


def run_benchmark(preset: str = "shakespeare-char", device: str = "auto", steps: int = 5,
                  threads: int | None = None, batch_size: int = 64, new_tokens: int = 256,
                  config: GPTConfig | None = None, log=print) -> dict:
    """All the figures, as one dictionary (what ``--json`` prints).

    ``config`` replaces the preset's model (the tests use a tiny one).
    """
    if config is None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    device = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    config = config or PRESETS[preset].model
    device_type = torch.device(device).type
    dtype = resolve_dtype(device_type)
    result: dict = {"preset": preset, "device": device, "hardware": describe_hardware(device),
                    "torch": torch.__version__, "threads": threads, "dtype": str(dtype).replace("torch.", ""),
                    "batch_size": batch_size, "block_size": config.block_size, "dropout": config.dropout}

    log(f"matmul throughput on {device} ({threads} threads)...")
    result["matmul_gflops"] = measure_matmul_flops(n=2048, dtype=torch.float32, device=device) / 1e9
    log(f"  {result['matmul_gflops']:.1f} GFLOP/s fp32")
    if device_type == "cuda":
        result["matmul_gflops_bf16"] = measure_matmul_flops(n=8192, dtype=torch.bfloat16, device=device) / 1e9
    peak = (result["matmul_gflops_bf16"] if dtype == torch.bfloat16 else result["matmul_gflops"]) * 1e9

    torch.manual_seed(0)
    fused = GPT(config).to(device)
    naive = naive_twin(fused)
    x = torch.randint(0, config.vocab_size, (batch_size, config.block_size), device=device)
    y = torch.randint(0, config.vocab_size, (batch_size, config.block_size), device=device)
    log(f"training steps, fused vs naive attention, {steps} rounds...")
    times = alternate({"fused": make_step(fused, (x, y), device, dtype),
                       "naive": make_step(naive, (x, y), device, dtype)}, repeats=steps)
    fused_s, naive_s = statistics.median(times["fused"]), statistics.median(times["naive"])
    tokens = batch_size * config.block_size
    result.update({
        "train_ms_per_iter": fused_s * 1000,
        "train_tokens_per_s": tokens / fused_s,
        "mfu": fused.flops_per_token() * tokens / fused_s / peak,
        "naive_ms_per_iter": naive_s * 1000,
        "fused_speedup_vs_naive": naive_s / fused_s,
        "train_step_times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "flops_per_token": fused.flops_per_token(),
        "parameters": fused.num_params(),
    })
    del naive
    log(f"  fused {fused_s * 1000:.0f} ms/iter (MFU {result['mfu']:.1%}), naive {naive_s * 1000:.0f} ms/iter "
        f"({result['fused_speedup_vs_naive']:.2f}x)")
    log("peak memory of a training step...")
    result["step_peak_mem_gib"] = step_peak_memory_gib(config, batch_size, device, threads)
    log(f"  {result['step_peak_mem_gib']:.2f} GiB")

    log(f"generation of {new_tokens} tokens with and without the KV cache...")
    cached, uncached = [], []
    for _ in range(3):  # alternate, medians
        tps, out_cached = measure_generation(fused, new_tokens, True, device)
        cached.append(tps)
        tps, out_uncached = measure_generation(fused, new_tokens, False, device)
        uncached.append(tps)
    result.update({
        "gen_tokens_per_s_cached": statistics.median(cached),
        "gen_tokens_per_s_uncached": statistics.median(uncached),
        "gen_cache_speedup": statistics.median(cached) / statistics.median(uncached),
        "gen_same_tokens": bool(torch.equal(out_cached, out_uncached)),
    })
    return result


def save_result(result: dict) -> Path | None:
    """Write the figures as a record for the results page (``bench-*.json``); returns its path.

    The folder is ``nanogpt.course.results_dir()``: the course's records in a checkout,
    ``./nanogpt-results`` (or ``$NANOGPT_RESULTS_DIR``) elsewhere; None under quick mode.
    """
    from .course.results import write_result  # course-only, so imported on use

    metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics["tokens_per_s"] = metrics.pop("train_tokens_per_s")
    metrics["gen_same_tokens"] = result["gen_same_tokens"]
    return write_result(f"bench-{result['preset']}-{result['device']}", {
        "title": f"python -m nanogpt bench: {result['preset']} training step, generation, memory",
        "kind": "benchmark",
        "model": f"GPT {result['parameters']:,} parameters, batch {result['batch_size']} x {result['block_size']}, "
                 f"dropout {result['dropout']}",
        "hardware": result["hardware"], "device": result["device"], "torch": result["torch"],
        "command": f"python -m nanogpt bench --preset {result['preset']} --threads {result['threads']} --save",
        "metrics": metrics,
    })


def main(args) -> None:
    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    result = run_benchmark(args.preset, args.device, steps=max(1, args.steps), threads=args.threads, log=log)
    if args.save:
        saved = save_result(result)
        log(f"record written to {saved}" if saved else "no record written: quick mode (NANOGPT_QUICK)")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"\n{result['hardware']}, {result['threads']} threads, {result['dtype']}")
    print(f"matmul throughput      {result['matmul_gflops']:.1f} GFLOP/s (fp32)")
    print(f"training               {result['train_ms_per_iter']:.0f} ms/iter, "
          f"{result['train_tokens_per_s']:.0f} tokens/s, MFU {result['mfu']:.1%}")
    print(f"fused vs naive heads   {result['fused_speedup_vs_naive']:.2f}x "
          f"({result['naive_ms_per_iter']:.0f} ms/iter naive)")
    print(f"step peak memory       {result['step_peak_mem_gib']:.2f} GiB")
    print(f"generation             {result['gen_tokens_per_s_cached']:.0f} tokens/s cached, "
          f"{result['gen_tokens_per_s_uncached']:.0f} uncached "
          f"({result['gen_cache_speedup']:.1f}x, same tokens: {result['gen_same_tokens']})")
