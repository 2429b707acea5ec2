"""How much memory a training step takes: its measured peak, and where it goes.

The peak is measured in a fresh process per precision (nothing another measurement left
behind is counted); the breakdown counts what autograd saves for the backward pass, by the
kind of module that saved it. ``python -m nanogpt bench`` reports both.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import torch

from .model import GPT, GPTConfig
from .precision import autocast, dtype_name


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
    from .bench import make_step  # the step the benchmark times (bench imports this module)

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
from nanogpt.step_memory import probe_step_peak_gib
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
                          str(batch_size), dtype_name(dtype), str(device)],
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
