"""Where the package runs: the device and how a run computes on it, the data folders, and the
machine a figure was measured on.

- ``NANOGPT_DATA_DIR`` points at a local data folder (``tinyshakespeare/input.txt``).
- ``NANOGPT_CACHE_DIR`` overrides where downloads are cached (default ``~/.cache/nanogpt``).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn

from .distributed import DistInfo, setup_distributed
from .precision import (Precision, autocast, cpu_flags, cpuinfo_field, default_peak_flops, precision_plan,
                        short_name)

if TYPE_CHECKING:
    from .train import TrainConfig


def data_dir() -> Path | None:
    """The local data folder named by ``NANOGPT_DATA_DIR``, if set."""
    value = os.environ.get("NANOGPT_DATA_DIR")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Where downloaded files are kept between runs."""
    value = os.environ.get("NANOGPT_CACHE_DIR")
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nanogpt"


def pick_device(requested: str = "auto") -> str:
    """Resolve ``auto`` to cuda, then mps, then cpu; check an explicit request is available."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch.cuda.is_available() is False")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was requested but MPS is not available")
    if requested not in {"cpu", "mps"} and not requested.startswith("cuda"):
        raise ValueError(f"unknown device {requested!r}: use auto, cpu, cuda or mps")
    return requested


def describe_hardware(device: str = "cpu") -> str:
    """A one-line description of the machine a figure was measured on."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = cpuinfo_field(("model name",)) or "CPU"
    flags = cpu_flags()
    bf16 = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "no bf16 units"
    kernels = torch.backends.cpu.get_cpu_capability()
    return f"{cpu} ({bf16}, torch's {kernels} kernels), {torch.get_num_threads()} threads (torch {torch.__version__})"


@dataclass
class RunSetup:
    """Where and how a run computes, as ``set_up`` decided."""

    device: str
    device_type: str
    dist: DistInfo
    precision: Precision
    autocast: AbstractContextManager  # entered around every forward pass
    scaler: torch.amp.GradScaler      # scales fp16 losses; a no-op otherwise
    peak_flops: float | None          # data-sheet peak for MFU
    compile: bool = False             # wrap the model in torch.compile


def compile_plan(device_type: str, requested: bool | None = None) -> tuple[bool, str]:
    """Whether to ``torch.compile`` a model on ``device_type``, and why (one line).

    ``requested`` None: on CUDA GPUs where Triton, the compiler's GPU backend, can run (not on
    Windows, compute capability 7.0 or newer); eager elsewhere.
    """
    if requested is not None:
        return requested, "torch.compile, as requested" if requested else "eager, as requested"
    if device_type != "cuda":
        return False, "eager: torch.compile is on by default on CUDA GPUs only (compile=True turns it on here)"
    if sys.platform == "win32":
        return False, "eager: torch.compile's GPU backend, Triton, does not run on Windows"
    if importlib.util.find_spec("triton") is None:
        return False, "eager: torch.compile needs Triton, which is not installed"
    if torch.cuda.get_device_capability() < (7, 0):
        return False, "eager: Triton needs a GPU of compute capability 7.0 or newer"
    return True, "torch.compile: the first steps compile the model, the rest run its fused kernels"


def set_up(cfg: TrainConfig, width: int | None = None,
           time_step: Callable[[torch.dtype], float] | None = None) -> RunSetup:
    """Pick the device, join the torchrun process group, choose the precision (for a model
    ``width`` wide, timed with ``time_step`` where that decides: see ``precision_plan``), seed the RNG.

    This changes process-wide state, on purpose and only here:
    - under torchrun, it joins the process group (``train`` leaves it again if it joined);
    - on Ampere or newer GPUs, it allows TF32 for fp32 matmuls and convolutions;
    - it seeds torch's global RNG, which draws dropout masks, with ``cfg.seed + rank``, so each
      rank has its own masks (``restore`` then replaces the state with the saved one).
    """
    device = pick_device(cfg.device)
    device_type = torch.device(device).type
    dist_info = setup_distributed(device_type)
    if cfg.time_budget_s is not None and dist_info.world_size > 1:
        raise ValueError("time_budget_s is for single-process runs: under DDP the ranks' clocks "
                         "could stop them at different steps; use max_iters")
    if device_type == "cuda" and dist_info.world_size > 1:
        device = f"cuda:{dist_info.local_rank}"
    precision = precision_plan(device_type, cfg.dtype, width, time_step)
    if precision.tf32:  # fp32 matmuls on TF32 tensor cores (10-bit mantissa), as GPUs train since Ampere
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed + dist_info.rank)
    return RunSetup(
        device=device, device_type=device_type, dist=dist_info, precision=precision,
        autocast=autocast(device_type, precision.dtype),
        scaler=torch.amp.GradScaler(device_type, enabled=precision.use_scaler),
        peak_flops=cfg.peak_flops or default_peak_flops(device_type, precision.dtype),
        compile=compile_plan(device_type, cfg.compile)[0],
    )


def with_recorded_precision(setup: RunSetup, requested: str, recorded: str | None) -> RunSetup:
    """``setup``, training in ``recorded`` (a torch dtype's name, from a checkpoint) where ``auto``
    chose the precision on a CPU.

    There the choice may be timed (``precision_plan``), and a later timing can fall the other way
    when the two are close; a resumed run keeps its checkpoint's precision, so that it continues
    exactly. Elsewhere, and without a record, ``setup`` is returned as it is.
    """
    if setup.device_type != "cpu" or requested != "auto" or recorded is None:
        return setup
    dtype = getattr(torch, recorded)
    if dtype == setup.precision.dtype:
        return setup
    precision = setup.precision._replace(dtype=dtype, reason=f"{short_name(dtype)}: as the checkpoint's run")
    return replace(setup, precision=precision, autocast=autocast("cpu", dtype))


def wrap_model(model: nn.Module, setup: RunSetup) -> nn.Module:
    """``torch.compile`` and, under torchrun, DDP around ``model`` (sharing its weights)."""
    if setup.compile:
        model = torch.compile(model)
    if setup.dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[setup.dist.local_rank] if setup.device_type == "cuda" else None)
    return model
