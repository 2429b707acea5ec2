"""``python -m nanogpt bench``: how fast the course's models run on this machine.

Measured in one run: matmul throughput (the yardstick), training step time, tokens/s, the
matmul-rate utilisation (against that yardstick) and, on a GPU with a known data sheet, the
MFU (against the data-sheet peak), in fp32 and, where the hardware multiplies bf16 natively,
with bf16 autocast; the naive ``Head``-based model against the fused GPT
(``attention.naive_twin``: the same function and weights); peak memory of a training step
(each precision in a fresh process of its own) and where it goes; generation with and without
the key/value cache. The machine may be shared and noisy: the variants' steps are alternated
in one process, every figure is a median, and the thread count is pinned and reported.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import defaultdict
import time
from pathlib import Path

import torch

from .attention import naive_twin
from .cpu_tuning import tune_for_cpu
from .model import GPT, GPTConfig, configure_adamw
from .precision import autocast, datasheet_peak, has_native_bf16, resolve_dtype
from .presets import PRESETS
from .runtime import describe_hardware, pick_device


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


def peak_rss_gib() -> float:
    """This process's peak resident memory, in GiB.

    On Linux it is ``VmHWM`` from ``/proc/self/status``: the high-water mark of this process's
    own memory. ``getrusage``'s ``ru_maxrss`` is not: a child started by fork and exec
    inherits the parent's peak there, so a probe run from a large process reports the
    parent's memory. Elsewhere ``ru_maxrss`` is the best there is (bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20


def _run_steps(config: GPTConfig, batch_size: int, device: str, dtype: torch.dtype, steps: int) -> None:
    """Build the model on ``device`` (seeded) and run ``steps`` full training steps on one batch."""
    torch.manual_seed(0)
    model = GPT(config).to(device)
    x = torch.randint(0, config.vocab_size, (batch_size, config.block_size), device=device)
    step = make_step(model, (x, x), device, dtype)
    for _ in range(steps):
        step()


def probe_step_peak_gib(config: GPTConfig, batch_size: int, device: str, threads: int,
                        dtype: torch.dtype = torch.float32, steps: int = 2) -> float:
    """The peak memory of ``steps`` training steps, measured in this process, in GiB.

    Meant to run alone in a fresh process (``step_peak_memory_gib`` starts one per precision),
    so that nothing another measurement left behind is counted. On CUDA it is the caching
    allocator's peak (``torch.cuda.max_memory_allocated``) since a reset before the model is
    built: weights, gradients, AdamW's moments, activations and the kernels' workspaces. On a
    CPU it is the process's peak resident size (``peak_rss_gib``), the torch runtime included.
    """
    torch.set_num_threads(threads)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    _run_steps(config, batch_size, device, dtype, steps)
    if cuda:
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**30
    return peak_rss_gib()


# What step_peak_memory_gib runs in a fresh process: argv is config (JSON), threads, batch size, dtype, device.
_MEMORY_PROBE = """
import json, sys, torch
from nanogpt.bench import probe_step_peak_gib
from nanogpt.model import GPTConfig
cfg, threads, B, dtype, device = sys.argv[1:6]
peak = probe_step_peak_gib(GPTConfig(**json.loads(cfg)), int(B), device, int(threads), getattr(torch, dtype))
print(json.dumps({"peak_gib": peak}))
"""


def step_peak_memory_gib(config: GPTConfig, batch_size: int, device: str, threads: int,
                         dtype: torch.dtype = torch.float32) -> float:
    """Peak memory of two training steps in ``dtype``, measured in a fresh process
    (``probe_step_peak_gib``): CUDA's allocator peak on a GPU, the peak resident size on a
    CPU. One process per call, so each precision's peak is its own: an in-process probe would
    count whatever the benchmark (or an earlier probe) still holds."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, json.dumps(config.to_dict()), str(threads),
                          str(batch_size), str(dtype).replace("torch.", ""), str(device)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the memory probe ({dtype}, {device}) failed with exit {out.returncode}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_gib"]


# What each kind of module keeps for the backward pass, in words.
SAVED_BY = {
    "Linear": "Linear inputs (for the weight gradients)",
    "GELU": "GELU inputs",
    "LayerNorm": "LayerNorm inputs and statistics",
    "Dropout": "dropout masks",
    "CausalSelfAttention": "attention q, k, v, output",
    "Embedding": "token and position ids",
    "GPT": "logits and cross-entropy",
}


def step_memory_breakdown(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: str,
                          dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Where a training step's memory goes, in GiB: the weights, their gradients, AdamW's two
    moments, and every tensor autograd saves for the backward pass, by the module that saved
    it (``SAVED_BY``). Each storage is counted once, for the first module that saves it;
    under autocast the bf16 copies of the weights are counted apart. What is left of a
    measured peak is the torch runtime, the allocator, and the backward pass's temporaries."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    running: list[torch.nn.Module] = [model]  # the innermost module running now is last
    counted: set[int] = set()
    saved: dict[str, int] = defaultdict(int)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in weights or key in counted:
            return t
        counted.add(key)
        module = running[-1]
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and t.shape == weight.shape and t.dtype != weight.dtype:
            label = "low-precision copies of the weights (autocast)"
        else:
            label = SAVED_BY.get(type(module).__name__, type(module).__name__)
        saved[label] += storage.nbytes()
        return t

    def enter(module: torch.nn.Module, args) -> None:
        running.append(module)

    def leave(module: torch.nn.Module, args, output) -> None:
        running.pop()

    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    x, y = batch
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(torch.device(device).type, dtype):
            _, loss = model(x, y)
    finally:
        for handle in handles:
            handle.remove()
    del loss
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gib = {"weights": weight_bytes, "gradients": weight_bytes, "AdamW moments": 2 * weight_bytes}
    gib.update(sorted(saved.items(), key=lambda kv: -kv[1]))
    gib = {k: v / 2**30 for k, v in gib.items()}
    gib["total"] = sum(gib.values())
    return gib


def run_benchmark(preset: str = "shakespeare-char", device: str = "auto", steps: int = 5,
                  threads: int | None = None, batch_size: int = 64, new_tokens: int = 256,
                  config: GPTConfig | None = None, log=print) -> dict:
    """All the figures, as one dictionary (what ``--json`` prints).

    Training steps run in fp32 (fused and naive attention) and, where the hardware has
    native bf16, with bf16 autocast, alternated in one process. ``config`` replaces the
    preset's model (the tests use a tiny one).
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
                    "dtype_auto": str(resolve_dtype(device_type, "auto", config.n_embd)).replace("torch.", ""),
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
        "cpu_capability": result["cpu_capability"], "dtype_auto": result["dtype_auto"],
        "step_memory_breakdown_gib": {k: v for k, v in result.items() if k.startswith("step_memory_breakdown")},
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
