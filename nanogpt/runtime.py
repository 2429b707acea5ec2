"""Where the package runs: the device, the data folders, the machine a figure was measured on.

- ``NANOGPT_DATA_DIR`` points at a local data folder (``tinyshakespeare/input.txt``).
- ``NANOGPT_CACHE_DIR`` overrides where downloads are cached (default ``~/.cache/nanogpt``).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


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


def _cpuinfo(field_names: tuple[str, ...]) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line naming one of ``field_names`` (Linux only)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field_names):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (``avx2``, ``amx_bf16``, ...); empty elsewhere."""
    return set((_cpuinfo(("flags", "Features")) or "").split())


def describe_hardware(device: str = "cpu") -> str:
    """A one-line description of the machine a figure was measured on."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = _cpuinfo(("model name",)) or "CPU"
    flags = cpu_flags()
    bf16 = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "no bf16 units"
    kernels = torch.backends.cpu.get_cpu_capability()
    return f"{cpu} ({bf16}, torch's {kernels} kernels), {torch.get_num_threads()} threads (torch {torch.__version__})"
