"""``python -m nanogpt bench``: how fast the course's models run on this machine.

Measured in one run: matmul throughput (the yardstick), training step time, tokens/s, the
matmul-rate utilisation (against that yardstick) and, on a GPU with a known data sheet, the
MFU (against the data-sheet peak), in fp32 and, where the hardware multiplies bf16 natively,
with bf16 autocast, each also under ``torch.compile`` where it can run (the first compiled
step, which compiles, is timed apart); the naive ``Head``-based model against the fused GPT
(``attention.naive_twin``: the same function and weights); peak memory of a training step
(each precision in a fresh process of its own) and where it goes; generation with and without
the key/value cache. The machine may be shared and noisy: the variants' steps are alternated
in one process, every figure is a median, and the thread count is pinned and reported.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from .attention import naive_twin
from .cpu_tuning import tune_for_cpu
from .model import GPT, GPTConfig, configure_adamw
from .precision import autocast, datasheet_peak, dtype_name, has_native_bf16, resolve_dtype, short_name
from .presets import PRESETS
from .runtime import compile_plan, describe_hardware, pick_device
from .step_memory import step_memory_breakdown, step_peak_memory_gib


def _sync(device: str | torch.device) -> None:
    device_type = torch.device(device).type
    if device_type == "cuda":
        torch.cuda.synchronize()
    elif device_type == "mps":
        torch.mps.synchronize()


def measure_matmul_flops(
    n: int = 1024, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", repeats: int = 5
) -> float:
    """Measured FLOP/s of an ``n`` × ``n`` matmul: 2·n³ FLOP over the median of ``repeats`` timings.

    One untimed warm-up runs first. This is the "what your own machine can do" number:
    an upper bound on what training reaches, usually well below the data-sheet peak on CPUs.
    """
    if n < 1 or repeats < 1:
        raise ValueError("n and repeats must be at least 1")
    device = torch.device(device)
    with torch.inference_mode():
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        a @ b  # warm-up: kernel selection, thread pool start, allocator
        _sync(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            _sync(device)
            times.append(time.perf_counter() - start)
    seconds = max(statistics.median(times), 1e-9)  # guard a timer too coarse for a tiny n
    return 2.0 * n**3 / seconds


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
    """A function that runs one full training step (forward, backward, AdamW) and returns its seconds.

    On a CPU the model gets the trainer's stand-ins first (``tune_for_cpu``), so the step is the one
    ``train`` runs.
    """
    device_type = torch.device(device).type
    if device_type == "cpu":
        tune_for_cpu(model)
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


COMPILE_SKIPPED = "torch.compile not measured (compile=False)"


def compiled_steps(model: GPT, batch: tuple[torch.Tensor, torch.Tensor], device: str,
                   dtypes: list[torch.dtype], log=print) -> tuple[dict[str, callable], dict[str, float], str]:
    """Training steps of ``torch.compile(model)`` and the seconds of each one's first (compiling)
    step, both by the suffix of their precision ("" for fp32, "_bf16"), and a line that says what
    happened.

    Compilation needs a toolchain (a C++ compiler on a CPU, Triton on a GPU); where it fails,
    no step is returned and the line says why, so the benchmark goes on without it.
    """
    if torch.device(device).type == "cuda":
        usable, reason = compile_plan("cuda")
        if not usable:
            return {}, {}, reason
    steps, first_s = {}, {}
    for dtype in dtypes:
        suffix = "" if dtype == torch.float32 else "_bf16"
        try:
            step = make_step(torch.compile(model), batch, device, dtype)
            first_s[suffix] = step()  # compiles the forward and the backward, then runs the step
        except Exception as error:  # a missing compiler surfaces as one of many error types
            return {}, {}, f"torch.compile failed, not measured: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        steps[suffix] = step
        log(f"  compiled ({short_name(dtype)}): first step {first_s[suffix]:.1f} s")
    return steps, first_s, "torch.compile: measured"


def run_benchmark(preset: str = "shakespeare-char", device: str = "auto", steps: int = 5,
                  threads: int | None = None, batch_size: int = 64, new_tokens: int = 256,
                  config: GPTConfig | None = None, compile: bool = True, log=print) -> dict:
    """All the figures, as one dictionary (what ``--json`` prints).

    Training steps run in fp32 (fused and naive attention) and, where the hardware has
    native bf16, with bf16 autocast, alternated in one process; with ``compile``, the fused
    steps also under ``torch.compile`` (``compiled_steps``). ``config`` replaces the preset's
    model (the tests use a tiny one).
    """
    if config is None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    device = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    config = config or PRESETS[preset].model
    device_type = torch.device(device).type
    bf16 = has_native_bf16(device)
    result: dict = {"preset": preset, "device": device, "hardware": describe_hardware(device),
                    "torch": torch.__version__, "threads": threads,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_native": bf16,
                    "dtype_auto": dtype_name(resolve_dtype(device_type, "auto", config.n_embd)),
                    "batch_size": batch_size, "block_size": config.block_size, "dropout": config.dropout}

    log(f"matmul throughput on {device} ({threads} threads)...")
    n = 8192 if device_type == "cuda" else 2048
    result["matmul_gflops"] = measure_matmul_flops(n=n, dtype=torch.float32, device=device) / 1e9
    if bf16:
        result["matmul_gflops_bf16"] = measure_matmul_flops(n=n, dtype=torch.bfloat16, device=device) / 1e9
        result["matmul_bf16_speedup"] = result["matmul_gflops_bf16"] / result["matmul_gflops"]
    log(f"  {result['matmul_gflops']:.1f} GFLOP/s fp32"
        + (f", {result['matmul_gflops_bf16']:.1f} bf16 ({result['matmul_bf16_speedup']:.2f}x)" if bf16 else
           ", no native bf16: bf16 not measured"))

    torch.manual_seed(0)
    fused = GPT(config).to(device)
    naive = naive_twin(fused)
    x = torch.randint(0, config.vocab_size, (batch_size, config.block_size), device=device)
    y = torch.randint(0, config.vocab_size, (batch_size, config.block_size), device=device)
    variants = {"fused": make_step(fused, (x, y), device), "naive": make_step(naive, (x, y), device)}
    if bf16:
        variants["fused_bf16"] = make_step(fused, (x, y), device, torch.bfloat16)
    if compile:
        log("compiling the fused model...")
        dtypes = [torch.float32] + ([torch.bfloat16] if bf16 else [])
        compiled, first_s, result["compile"] = compiled_steps(fused, (x, y), device, dtypes, log)
        variants.update({f"fused{suffix}_compiled": step for suffix, step in compiled.items()})
        result.update({f"compile_first_step_s{suffix}": s for suffix, s in first_s.items()})
    else:
        result["compile"] = COMPILE_SKIPPED
    log(f"training steps ({', '.join(variants)}), alternated, {steps} rounds...")
    times = alternate(variants, repeats=steps)
    median = {name: statistics.median(t) for name, t in times.items()}
    tokens = batch_size * config.block_size
    flops_per_step = fused.flops_per_token() * tokens
    # Two utilisations, never under one name: "matmul_rate_utilisation" divides by the matmul
    # rate measured above, "mfu" by the data-sheet peak of the precision (None without a data sheet).
    peak = {p: datasheet_peak(result["hardware"], p) if device_type == "cuda" else None for p in ("fp32", "bf16")}
    result.update({
        "train_ms_per_iter": median["fused"] * 1000,
        "train_tokens_per_s": tokens / median["fused"],
        "matmul_rate_utilisation": flops_per_step / median["fused"] / (result["matmul_gflops"] * 1e9),
        "mfu": flops_per_step / median["fused"] / peak["fp32"] if peak["fp32"] else None,
        "naive_ms_per_iter": median["naive"] * 1000,
        "fused_speedup_vs_naive": median["naive"] / median["fused"],
        "train_step_times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "flops_per_token": fused.flops_per_token(),
        "parameters": fused.num_params(),
    })
    log(f"  fp32 {median['fused'] * 1000:.0f} ms/iter ({utilisation_words(result)}), naive heads "
        f"{median['naive'] * 1000:.0f} ms/iter ({result['fused_speedup_vs_naive']:.2f}x slower)")
    if bf16:
        result.update({
            "train_ms_per_iter_bf16": median["fused_bf16"] * 1000,
            "train_tokens_per_s_bf16": tokens / median["fused_bf16"],
            "matmul_rate_utilisation_bf16": flops_per_step / median["fused_bf16"] / (result["matmul_gflops_bf16"] * 1e9),
            "mfu_bf16": flops_per_step / median["fused_bf16"] / peak["bf16"] if peak["bf16"] else None,
            "bf16_speedup": median["fused"] / median["fused_bf16"],
        })
        log(f"  bf16 autocast {median['fused_bf16'] * 1000:.0f} ms/iter ({result['bf16_speedup']:.2f}x fp32)")
    for suffix in ("", "_bf16"):  # each compiled step against the eager step of its precision
        if f"fused{suffix}_compiled" in median:
            result[f"train_ms_per_iter{suffix}_compiled"] = median[f"fused{suffix}_compiled"] * 1000
            result[f"compile_speedup{suffix}"] = median[f"fused{suffix}"] / median[f"fused{suffix}_compiled"]
            log(f"  torch.compile{suffix.replace('_', ', ')} {median[f'fused{suffix}_compiled'] * 1000:.0f} ms/iter "
                f"({result[f'compile_speedup{suffix}']:.2f}x eager)")
    del naive, variants

    log("peak memory of two training steps (a fresh process for each precision"
        + (": the CUDA allocator's peak)..." if device_type == "cuda" else ": its peak resident size)..."))
    result["step_peak_mem_gib"] = step_peak_memory_gib(config, batch_size, device, threads)
    result["step_memory_breakdown_gib"] = step_memory_breakdown(fused, (x, y), device)
    if bf16:
        result["step_peak_mem_gib_bf16"] = step_peak_memory_gib(config, batch_size, device, threads, torch.bfloat16)
        result["step_memory_breakdown_gib_bf16"] = step_memory_breakdown(fused, (x, y), device, torch.bfloat16)
    log(f"  {result['step_peak_mem_gib']:.2f} GiB fp32"
        + (f", {result['step_peak_mem_gib_bf16']:.2f} GiB bf16" if bf16 else ""))

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


def utilisation_words(result: dict, suffix: str = "") -> str:
    """"matmul-rate utilisation 61.6%, MFU 47.5%" (MFU only where a data-sheet peak is known)."""
    words = f"matmul-rate utilisation {result['matmul_rate_utilisation' + suffix]:.1%}"
    mfu = result.get("mfu" + suffix)
    return words + (f", MFU {mfu:.1%}" if mfu is not None else ", MFU n/a (no data-sheet peak)")


def save_result(result: dict) -> Path | None:
    """Write the figures as a record for the results page (``bench-*.json``); returns its path.

    The folder is ``nanogpt.course.results_dir()``: the course's records in a checkout,
    ``./nanogpt-results`` (or ``$NANOGPT_RESULTS_DIR``) elsewhere; None under quick mode.
    """
    from .course.results import write_result  # course-only, so imported on use

    metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key in ("mfu", "mfu_bf16"):  # kept as null without a data-sheet peak, beside the matmul-rate utilisation
        if "matmul_rate_utilisation" + key[3:] in result:
            metrics[key] = result.get(key)
    metrics["tokens_per_s"] = metrics.pop("train_tokens_per_s")
    metrics["gen_same_tokens"] = result["gen_same_tokens"]
    metrics["bf16_native"] = result["bf16_native"]
    return write_result(f"bench-{result['preset']}-{result['device']}", {
        "title": f"python -m nanogpt bench: {result['preset']} training step, generation, memory",
        "kind": "benchmark",
        "model": f"GPT {result['parameters']:,} parameters, batch {result['batch_size']} x {result['block_size']}, "
                 f"dropout {result['dropout']}",
        "hardware": result["hardware"], "device": result["device"], "torch": result["torch"],
        "cpu_capability": result["cpu_capability"], "dtype_auto": result["dtype_auto"], "compile": result["compile"],
        "step_memory_breakdown_gib": {k: v for k, v in result.items() if k.startswith("step_memory_breakdown")},
        "command": f"python -m nanogpt bench --preset {result['preset']} --threads {result['threads']} --save"
                   + (" --no-compile" if result["compile"] == COMPILE_SKIPPED else ""),
        "metrics": metrics,
    })


def main(args) -> None:
    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    result = run_benchmark(args.preset, args.device, steps=max(1, args.steps), threads=args.threads,
                           compile=args.compile, log=log)
    if args.save:
        saved = save_result(result)
        log(f"record written to {saved}" if saved else "no record written: quick mode (NANOGPT_QUICK)")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"\n{result['hardware']}, {result['threads']} threads, torch CPU kernels: {result['cpu_capability']}")
    bf16 = result["bf16_native"]
    print(f"matmul throughput      {result['matmul_gflops']:.1f} GFLOP/s fp32"
          + (f", {result['matmul_gflops_bf16']:.1f} bf16 ({result['matmul_bf16_speedup']:.2f}x)" if bf16
             else ", no native bf16"))
    print(f"training, fp32         {result['train_ms_per_iter']:.0f} ms/iter, "
          f"{result['train_tokens_per_s']:.0f} tokens/s, {utilisation_words(result)}")
    if bf16:
        print(f"training, bf16         {result['train_ms_per_iter_bf16']:.0f} ms/iter, "
              f"{result['train_tokens_per_s_bf16']:.0f} tokens/s, {result['bf16_speedup']:.2f}x fp32, "
              f"{utilisation_words(result, '_bf16')}")
    for suffix, name in (("", "fp32"), ("_bf16", "bf16")):
        if f"compile_speedup{suffix}" in result:
            print(f"torch.compile, {name}    {result[f'train_ms_per_iter{suffix}_compiled']:.0f} ms/iter, "
                  f"{result[f'compile_speedup{suffix}']:.2f}x eager (first step, compiling: "
                  f"{result[f'compile_first_step_s{suffix}']:.0f} s)")
    if "compile_speedup" not in result:
        print(f"torch.compile          {result['compile']}")
    print(f"dtype=\"auto\" picks    {result['dtype_auto']} for this model")
    print(f"fused vs naive heads   {result['fused_speedup_vs_naive']:.2f}x "
          f"({result['naive_ms_per_iter']:.0f} ms/iter naive, fp32)")
    print(f"step peak memory       {result['step_peak_mem_gib']:.2f} GiB fp32"
          + (f", {result['step_peak_mem_gib_bf16']:.2f} GiB bf16" if bf16 else "") + "; counted (fp32):")
    for part, gib in result["step_memory_breakdown_gib"].items():
        print(f"  {part:<46} {gib:5.2f} GiB")
    print(f"generation             {result['gen_tokens_per_s_cached']:.0f} tokens/s cached, "
          f"{result['gen_tokens_per_s_uncached']:.0f} uncached "
          f"({result['gen_cache_speedup']:.1f}x, same tokens: {result['gen_same_tokens']})")
