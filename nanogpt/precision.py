"""Which number format a run trains in, and how fast the hardware is in it.

``precision_plan`` picks the autocast dtype for a device: bf16 on GPUs and CPUs that multiply
bf16 matrices in hardware, fp16 with a loss scaler on older GPUs, fp32 otherwise. The CPU
rules come from measurements, and each says where it was measured. ``default_peak_flops``
gives a known GPU's data-sheet peak in that dtype, the denominator of MFU.
"""
from __future__ import annotations

import copy
import statistics
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn as nn



def cpuinfo_field(field_names: tuple[str, ...]) -> str | None:
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
    return set((cpuinfo_field(("flags", "Features")) or "").split())


class Precision(NamedTuple):
    """How a device trains: autocast dtype, whether fp16 needs a GradScaler, whether to allow TF32,
    and why (one line, for the run's first line of output). ``timed``: chosen by timing steps."""

    dtype: torch.dtype
    use_scaler: bool
    tf32: bool
    reason: str = ""
    timed: bool = False


# On a CPU, bf16 autocast pays only where the bf16 units gain more than the casts around every
# op cost. Measured by benchmarks/cpu_bf16_widths.py on an Intel Xeon with AMX (2 threads,
# torch 2.13): with attention in fp32 for small heads (``nanogpt.cpu_tuning``), bf16 gained at
# every width from 64 up, so ``auto`` uses it at every width there. A CPU with AVX512-BF16 but
# no AMX gains less from its bf16 matmuls, and its narrow models were not measured by the
# course: ``auto`` keeps fp32 there below this width, as a margin.
CPU_BF16_MIN_WIDTH = 256


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX) and torch uses it.

    Without such units bf16 is emulated and slower than fp32. ``ATEN_CPU_CAPABILITY=avx2``
    (or an older CPU) makes torch use its AVX2 kernels, which have no bf16 path.
    """
    capability = torch.backends.cpu.get_cpu_capability().upper()  # "AVX512", "AVX2", "DEFAULT", ...
    if not capability.startswith(("AVX512", "AMX")):
        return False
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def has_native_bf16(device: str) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: bf16 tensor cores (compute
    capability 8.0+: A100, H100, RTX 30/40) on a GPU, AVX512-BF16 or AMX on a CPU."""
    device_type = torch.device(device).type
    if device_type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return device_type == "cpu" and cpu_has_native_bf16()


# ``auto`` on a CPU with bf16 units times a few training steps of the model in both precisions
# and takes bf16 only when it is at least this much faster: fp32 is exact, and a gain within the
# timing noise is not worth it.
BF16_MIN_SPEEDUP = 1.05


def precision_plan(device_type: str, requested: str = "auto", width: int | None = None,
                   time_step: Callable[[torch.dtype], float] | None = None) -> Precision:
    """The precision to train a model ``width`` wide (its ``n_embd``) with on ``device_type``.

    ``auto`` picks:
    - a GPU with native bf16 (compute capability 8.0 or newer: A100, H100, RTX 30/40): bf16
      autocast, and TF32 for what stays in fp32;
    - an older GPU (T4, V100: 7.x): fp16 autocast with a GradScaler. Such GPUs only emulate
      bf16 (``torch.cuda.is_bf16_supported()`` says True), slowly;
    - a CPU with bf16 units (AMX or AVX512-BF16) and a ``time_step(dtype) -> seconds`` to time the
      model's training step: the faster of fp32 and bf16, by ``BF16_MIN_SPEEDUP`` (fp32 on a tie);
    - such a CPU without ``time_step``: bf16 with AMX; with AVX512-BF16 alone, bf16 for models at
      least ``CPU_BF16_MIN_WIDTH`` wide (or of unknown width), fp32 for narrower ones;
    - any other CPU, and MPS: fp32.
    An explicit ``requested`` dtype wins; fp16 always gets the scaler.
    """
    ampere_or_newer = device_type == "cuda" and has_native_bf16("cuda")
    timed = False
    if requested != "auto":
        dtype, reason = getattr(torch, requested), f"{requested} as requested"
    elif device_type == "cuda":
        dtype = torch.bfloat16 if ampere_or_newer else torch.float16
        reason = ("bf16 autocast: the GPU has bf16 tensor cores (compute capability 8.0+)" if ampere_or_newer
                  else "fp16 autocast with a GradScaler: the GPU has fp16 tensor cores, bf16 only emulated")
    elif device_type == "cpu" and not cpu_has_native_bf16():
        dtype, reason = torch.float32, "fp32: this CPU has no bf16 matrix units (AVX512-BF16 or AMX)"
    elif device_type == "cpu" and time_step is not None:
        timed = True
        fp32_s, bf16_s = time_step(torch.float32), time_step(torch.bfloat16)
        speedup = fp32_s / bf16_s
        dtype = torch.bfloat16 if speedup >= BF16_MIN_SPEEDUP else torch.float32
        times = f"a step took {bf16_s * 1000:.1f} ms in bf16 and {fp32_s * 1000:.1f} ms in fp32 here ({speedup:.2f}x)"
        reason = (f"bf16 autocast: {times}" if dtype == torch.bfloat16
                  else f"fp32: {times}, under the {BF16_MIN_SPEEDUP:.2f}x bf16 must gain")
    elif device_type == "cpu" and "amx_bf16" in cpu_flags():
        dtype, reason = torch.bfloat16, "bf16 autocast: this CPU has AMX bf16 matrix units"
    elif device_type == "cpu" and width is not None and width < CPU_BF16_MIN_WIDTH:
        dtype = torch.float32
        reason = (f"fp32: on a CPU with AVX512-BF16 but no AMX, bf16 autocast is used from {CPU_BF16_MIN_WIDTH} "
                  f"wide and this model is {width} wide")
    elif device_type == "cpu":
        dtype, reason = torch.bfloat16, "bf16 autocast: this CPU has AVX512-BF16 instructions"
    else:
        dtype, reason = torch.float32, f"fp32: autocast on {device_type} is not used by this course"
    if dtype == torch.float32 and ampere_or_newer:
        reason += ", with TF32 matmuls"
    return Precision(dtype, use_scaler=dtype == torch.float16, tf32=ampere_or_newer, reason=reason, timed=timed)


def cpu_step_timer(model: nn.Module, batch_size: int, steps: int = 3) -> Callable[[torch.dtype], float] | None:
    """``time_step`` for ``precision_plan``: the median seconds of ``steps`` training steps (after
    one untimed) of a copy of ``model`` in a dtype, on random tokens. The model, its optimiser and
    the random-number state stay untouched. None for a model without a GPT's ``config``."""
    config = getattr(model, "config", None)
    if not all(hasattr(config, name) for name in ("vocab_size", "block_size")):
        return None

    def time_step(dtype: torch.dtype) -> float:
        from .bench import make_step  # the step the benchmark times: the trainer's CPU stand-ins, AdamW

        with torch.random.fork_rng(devices=[]):
            x = torch.randint(0, config.vocab_size, (batch_size, config.block_size))
            step = make_step(copy.deepcopy(model).to("cpu"), (x, x), "cpu", dtype)
            seconds = [step() for _ in range(steps + 1)]
        return statistics.median(seconds[1:])

    return time_step


def resolve_dtype(device_type: str, requested: str = "auto", width: int | None = None) -> torch.dtype:
    """The autocast dtype ``precision_plan`` chooses without timing the model."""
    return precision_plan(device_type, requested, width).dtype


def autocast(device_type: str, dtype: torch.dtype) -> AbstractContextManager:
    """The autocast context for ``dtype`` (a no-op for fp32)."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def short_name(dtype: torch.dtype) -> str:
    """fp32, bf16 or fp16."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def dtype_name(dtype: torch.dtype) -> str:
    """The name ``getattr(torch, name)`` gives back: "float32", "bfloat16", "float16"."""
    return str(dtype).removeprefix("torch.")


# --- data-sheet peaks ---------------------------------------------------------------------

@dataclass(frozen=True)
class GPUPeak:
    """Data-sheet peak throughput of one GPU at one precision (dense, no 2:4 sparsity)."""

    gpu: str
    precision: str  # "fp32", "tf32", "bf16", "fp16"
    peak_flops: float  # FLOP/s
    source: str
    label: str = "data-sheet peak"


GPU_PEAKS: tuple[GPUPeak, ...] = (
    GPUPeak("RTX 3070 Ti", "fp32", 21.75e12,
            "NVIDIA GeForce RTX 3070 Ti specifications: 6144 CUDA cores, 1.77 GHz boost; "
            "6144 x 2 x 1.77e9 = 21.75 TFLOP/s."),
    GPUPeak("RTX 4090", "fp32", 82.6e12,
            "NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090: peak FP32 82.6 TFLOPS "
            "(16384 CUDA cores x 2 x 2.52 GHz boost)."),
    GPUPeak("RTX 4090", "bf16", 165.2e12,
            "NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090: peak BF16 Tensor "
            "TFLOPS with FP32 accumulate 165.2 dense (330.4 with sparsity)."),
    GPUPeak("A100", "fp32", 19.5e12, "NVIDIA A100 Tensor Core GPU data sheet (SXM/PCIe): FP32 19.5 TFLOPS."),
    GPUPeak("A100", "tf32", 156e12, "NVIDIA A100 data sheet: TF32 Tensor Core 156 TFLOPS dense (312 with sparsity)."),
    GPUPeak("A100", "bf16", 312e12, "NVIDIA A100 data sheet: BF16 Tensor Core 312 TFLOPS dense (624 with sparsity)."),
    GPUPeak("H100 SXM", "fp32", 67e12, "NVIDIA H100 Tensor Core GPU data sheet, SXM5: FP32 67 TFLOPS."),
    GPUPeak("H100 SXM", "tf32", 494.5e12,
            "NVIDIA H100 data sheet, SXM5: TF32 Tensor Core 989 TFLOPS with sparsity, ~495 dense."),
    GPUPeak("H100 SXM", "bf16", 989.5e12,
            "NVIDIA H100 data sheet, SXM5: BF16 Tensor Core 1979 TFLOPS with sparsity, ~989 dense."),
    GPUPeak("H100 PCIe", "fp32", 51e12, "NVIDIA H100 Tensor Core GPU data sheet, PCIe: FP32 51 TFLOPS."),
    GPUPeak("H100 PCIe", "tf32", 378e12,
            "NVIDIA H100 data sheet, PCIe: TF32 Tensor Core 756 TFLOPS with sparsity, 378 dense."),
    GPUPeak("H100 PCIe", "bf16", 756.5e12,
            "NVIDIA H100 data sheet, PCIe: BF16 Tensor Core 1513 TFLOPS with sparsity, ~756 dense."),
    GPUPeak("H100 NVL", "fp32", 60e12, "NVIDIA H100 Tensor Core GPU data sheet, H100 NVL: FP32 60 TFLOPS."),
    GPUPeak("H100 NVL", "tf32", 417.5e12,
            "NVIDIA H100 data sheet, H100 NVL: TF32 Tensor Core 835 TFLOPS with sparsity, ~418 dense."),
    GPUPeak("H100 NVL", "bf16", 835.5e12,
            "NVIDIA H100 data sheet, H100 NVL: BF16 Tensor Core 1671 TFLOPS with sparsity, ~836 dense."),
    GPUPeak("T4", "fp32", 8.1e12, "NVIDIA T4 Tensor Core GPU data sheet: single precision 8.1 TFLOPS."),
    GPUPeak("T4", "fp16", 65e12, "NVIDIA T4 data sheet: mixed precision (FP16/FP32) 65 TFLOPS."),
)


def gpu_peak(gpu: str, precision: str = "fp32") -> float:
    """Data-sheet peak FLOP/s of ``gpu`` at ``precision`` (names as in ``GPU_PEAKS``, case-insensitive)."""
    for p in GPU_PEAKS:
        if p.gpu.lower() == gpu.lower() and p.precision == precision.lower():
            return p.peak_flops
    raise KeyError(f"no peak for {gpu!r} at {precision!r}; known: {[(p.gpu, p.precision) for p in GPU_PEAKS]}")


def gpu_model(device_name: str) -> str | None:
    """The ``GPU_PEAKS`` name for a CUDA device name (``torch.cuda.get_device_name()``), or None.

    The H100 comes in three forms with different clocks and power (SXM, PCIe, NVL); the H200
    has an H100's compute (SXM form, or NVL), with more and faster memory.
    """
    for family in ("H100", "H200"):
        if family in device_name:
            if "NVL" in device_name:
                return "H100 NVL"
            return "H100 PCIe" if "PCIe" in device_name and family == "H100" else "H100 SXM"
    for gpu in ("A100", "T4", "RTX 4090", "RTX 3070 Ti"):
        if gpu in device_name:
            return gpu
    return None


def datasheet_peak(device_name: str, precision: str) -> float | None:
    """Data-sheet dense peak FLOP/s of the GPU named ``device_name`` at ``precision`` ("fp32",
    "tf32", "bf16", "fp16"), or None for a CPU, or a GPU or precision not in ``GPU_PEAKS``."""
    model = gpu_model(device_name)
    return next((p.peak_flops for p in GPU_PEAKS if p.gpu == model and p.precision == precision.lower()), None)


def default_peak_flops(device_type: str, dtype: torch.dtype, device_name: str | None = None) -> float | None:
    """Data-sheet dense peak of the GPU at hand (or ``device_name``) for ``dtype``.

    fp32 counts as TF32 on GPUs that have it, since the trainer turns TF32 on. None on a
    CPU or an unknown GPU: pass a measured ``peak_flops`` then.
    """
    if device_type != "cuda":
        return None
    name = device_name or torch.cuda.get_device_name()
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "tf32")
    same_rate = {"tf32": "fp32", "bf16": "fp16", "fp16": "bf16"}  # tensor cores run both at one rate
    return datasheet_peak(name, precision) or datasheet_peak(name, same_rate[precision])
