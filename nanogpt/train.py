"""One training loop for every model in the course.

AdamW with decay/no-decay groups, linear warmup then cosine decay, gradient accumulation,
clipping, periodic evaluation, mixed precision chosen by the device, optional
``torch.compile``, atomic checkpoints that resume exactly (also after Ctrl-C), and DDP under
``torchrun``.

A model is anything with ``forward(idx, targets) -> (logits, loss)``. Batches come from any
object with ``next_batch() -> (x, y)`` (``RandomBatches`` or ``DataLoaderLite``); evaluation
sources also need ``reset()`` so every evaluation sees the same batches.

Read it in this order: ``TrainConfig`` and the schedule, precision, evaluation, checkpoints,
then ``train`` at the bottom, which calls the pieces above it one after the other:
``set_up`` (device, precision, seed, process group), ``restore`` (resume), ``wrap_model``
(compile, DDP), ``evaluate``, ``save_training_state`` (the checkpoint, built by
``checkpoint_state``), and ``forward_backward`` then ``clip_and_step`` (one optimisation step).
"""
from __future__ import annotations

import math
import os
import pickle
import signal
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from .runtime import cpu_flags, pick_device


class BatchSource(Protocol):
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...


# --- configuration and schedule -----------------------------------------------------------

@dataclass
class TrainConfig:
    """How to train: schedule, batch, optimiser, evaluation and hardware settings."""

    max_iters: int | None = 5000     # optimiser steps; None: no step cap (then time_budget_s is required)
    batch_size: int = 64
    grad_accum_steps: int = 1        # micro-batches per optimiser step
    learning_rate: float = 1e-3
    min_lr: float | None = None      # floor of the cosine; default learning_rate / 10
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # where the cosine reaches min_lr; default max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0           # 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 200            # batches per split in a loss estimate (fewer in short runs: eval_batches)
    device: str = "auto"
    dtype: str = "auto"              # auto | float32 | bfloat16 | float16 (see precision_plan)
    compile: bool = False
    seed: int = 1337
    peak_flops: float | None = None  # for MFU; None: a known GPU's data-sheet peak, else no MFU
    time_budget_s: float | None = None  # train for this many seconds (max_iters, if set, still caps)
    keep_best: bool = False          # end with the weights of the lowest val estimate (saved as best.pt), as nanoGPT

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum_steps", "eval_interval", "eval_iters"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.max_iters is not None and self.max_iters < 0:
            raise ValueError(f"TrainConfig.max_iters must be >= 0 (or None with a time budget), "
                             f"got {self.max_iters}")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig.learning_rate must be positive, got {self.learning_rate}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"TrainConfig.time_budget_s must be positive, got {self.time_budget_s}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"TrainConfig.dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.max_iters is None and self.time_budget_s is None:
            raise ValueError("TrainConfig.max_iters=None means no step cap, so the run needs a time_budget_s: "
                             "set max_iters to a number of steps, or time_budget_s to a number of seconds")


# Settings a resumed run may change: where it stops, how often and how long it evaluates, and
# where and how fast it computes. Every other field shapes the weights (schedule, batch,
# optimiser, seed, time budget), so a different value would silently make a different run.
# max_iters may grow as long as the schedule stays: the cosine ends at lr_decay_iters (which
# defaults to max_iters, so set it explicitly in a run you mean to extend).
MAY_CHANGE_ON_RESUME = frozenset({"max_iters", "eval_interval", "eval_iters", "device", "dtype", "compile",
                                  "peak_flops", "keep_best"})


def lr_at(it: int, cfg: TrainConfig, time_fraction: float | None = None) -> float:
    """Learning rate at step ``it``: linear warmup, cosine decay to ``min_lr``, then flat.

    With a time budget, ``time_fraction`` (the share of the budget already spent) drives the
    cosine instead of the step count, so the schedule ends when the time does.
    """
    min_lr = cfg.learning_rate / 10 if cfg.min_lr is None else cfg.min_lr
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if time_fraction is not None:
        progress = min(max(time_fraction, 0.0), 1.0)
    else:
        decay_iters = cfg.lr_decay_iters or cfg.max_iters
        if decay_iters is None:
            raise ValueError("lr_at needs time_fraction for a run with neither max_iters nor lr_decay_iters")
        if it >= decay_iters:
            return min_lr
        progress = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - min_lr)


def eval_batches(cfg: TrainConfig) -> int:
    """Batches per split in each loss estimate: ``eval_iters``, but at most half the run's steps.

    A short run should not spend most of its time evaluating. With the evaluations at the start
    and the end over two splits, the cap keeps evaluation to about ``2 * max_iters`` forward
    passes, less than the run's training (a step is a forward and a backward pass, about three
    forwards). Never fewer than 10 batches, so the estimate stays usable; runs without
    ``max_iters`` (time budget) keep ``eval_iters``.
    """
    if cfg.max_iters is None:
        return cfg.eval_iters
    return min(cfg.eval_iters, max(10, cfg.max_iters // 2))


def configure_adamw(model: nn.Module, weight_decay: float, learning_rate: float,
                    betas: tuple[float, float], device_type: str,
                    implementation: str | None = None) -> torch.optim.AdamW:
    """AdamW that decays matrices (matmul weights, embeddings) but not biases or LayerNorm gains.

    ``implementation``: "for-loop", "foreach" or "fused"; by default fused on CUDA and CPU,
    where one pass over every parameter is much faster than the per-parameter loop.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if implementation is None:
        implementation = "fused" if device_type in ("cuda", "cpu") else "foreach"
    flags = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    if implementation not in flags:
        raise ValueError(f"implementation must be one of {', '.join(flags)}, got {implementation!r}")
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **flags[implementation])


# --- precision ----------------------------------------------------------------------------

class Precision(NamedTuple):
    """How a device trains: autocast dtype, whether fp16 needs a GradScaler, whether to allow TF32,
    and why (one line, for the run's first line of output)."""

    dtype: torch.dtype
    use_scaler: bool
    tf32: bool
    reason: str = ""


# On a CPU, bf16 autocast pays only where the bf16 units gain more than the casts around every
# op cost. ``benchmarks/cpu_bf16_widths.py`` measures it (its record: "bf16 autocast vs fp32 on a
# CPU, by model width"): on an Intel Xeon with AMX, with attention kept in fp32 where bf16 attention
# is slow (``nanogpt.model.attention``), bf16 gained at every width measured, from 64 wide up, so
# ``auto`` uses it at every width there. A CPU with AVX512-BF16 but no AMX gains less from its bf16
# matmuls (2.5x over fp32 on an AMD EPYC, quoted from issue #13, against 3.5x on the Xeon) and its
# narrow models were not measured: ``auto`` keeps fp32 there below this width, as a margin.
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


def precision_plan(device_type: str, requested: str = "auto", width: int | None = None) -> Precision:
    """The precision to train a model ``width`` wide (its ``n_embd``) with on ``device_type``.

    ``auto`` picks:
    - a GPU with native bf16 (compute capability 8.0 or newer: A100, H100, RTX 30/40): bf16
      autocast, and TF32 for what stays in fp32;
    - an older GPU (T4, V100: 7.x): fp16 autocast with a GradScaler. Such GPUs only emulate
      bf16 (``torch.cuda.is_bf16_supported()`` says True), slowly;
    - a CPU with AMX bf16 units: bf16 autocast;
    - a CPU with AVX512-BF16 but no AMX: bf16 autocast for models at least ``CPU_BF16_MIN_WIDTH``
      wide (or of unknown width), fp32 for narrower ones;
    - any other CPU, and MPS: fp32.
    An explicit ``requested`` dtype wins; fp16 always gets the scaler.
    """
    ampere_or_newer = device_type == "cuda" and has_native_bf16("cuda")
    if requested != "auto":
        dtype, reason = getattr(torch, requested), f"{requested} as requested"
    elif device_type == "cuda":
        dtype = torch.bfloat16 if ampere_or_newer else torch.float16
        reason = ("bf16 autocast: the GPU has bf16 tensor cores (compute capability 8.0+)" if ampere_or_newer
                  else "fp16 autocast with a GradScaler: the GPU has fp16 tensor cores, bf16 only emulated")
    elif device_type == "cpu" and not cpu_has_native_bf16():
        dtype, reason = torch.float32, "fp32: this CPU has no bf16 matrix units (AVX512-BF16 or AMX)"
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
    return Precision(dtype, use_scaler=dtype == torch.float16, tf32=ampere_or_newer, reason=reason)


def resolve_dtype(device_type: str, requested: str = "auto", width: int | None = None) -> torch.dtype:
    """The autocast dtype ``precision_plan`` chooses."""
    return precision_plan(device_type, requested, width).dtype


def autocast(device_type: str, dtype: torch.dtype) -> AbstractContextManager:
    """The autocast context for ``dtype`` (a no-op for fp32)."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def default_peak_flops(device_type: str, dtype: torch.dtype) -> float | None:
    """Data-sheet dense peak of the GPU at hand for ``dtype`` (``nanogpt.compute.GPU_PEAKS``).

    fp32 counts as TF32 on GPUs that have it, since the trainer turns TF32 on. None on a
    CPU or an unknown GPU: pass a measured ``peak_flops`` then.
    """
    if device_type != "cuda":
        return None
    from .compute import GPU_PEAKS

    name = torch.cuda.get_device_name()
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "tf32")
    fallback = {"tf32": "fp32", "bf16": "fp16", "fp16": "bf16"}  # same tensor-core rate
    for gpu, listed_as in (("A100", "A100"), ("H100", "H100"), ("H200", "H100"), ("T4", "T4")):
        if gpu in name:  # the H200 has the H100's compute, with more and faster memory
            table = {p.precision: p.peak_flops for p in GPU_PEAKS if p.gpu.split()[0] == listed_as}
            return table.get(precision) or table.get(fallback[precision])
    return None


# --- evaluation ---------------------------------------------------------------------------

def _short_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def _progress_bar(**kwargs):
    from tqdm.auto import tqdm

    return tqdm(dynamic_ncols=True, **kwargs)


@torch.no_grad()
def estimate_loss(model: nn.Module, sources: dict[str, BatchSource], eval_iters: int,
                  ctx=None, device: str | torch.device | None = None, *,
                  progress: bool = False) -> dict[str, float]:
    """Mean loss over ``eval_iters`` batches of each source, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    out = {}
    bar = _progress_bar(total=eval_iters * len(sources), desc="evaluating", unit="batch", leave=False,
                        disable=not progress)
    try:
        for split, source in sources.items():
            if hasattr(source, "reset"):
                source.reset()
            losses = torch.zeros(eval_iters)
            for k in range(eval_iters):
                x, y = source.next_batch()
                if device is not None:
                    x, y = x.to(device), y.to(device)
                with ctx or nullcontext():
                    _, loss = model(x, y)
                losses[k] = loss.item()
                bar.update(1)
            out[split] = losses.mean().item()
    finally:
        bar.close()
        model.train(was_training)
    return out


def _windows(tokens: torch.Tensor, block_size: int, batch_size: int):
    """Batches of consecutive, non-overlapping windows over ``tokens``: (inputs, targets), each (b, block_size)."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    n_windows = (len(tokens) - 1) // block_size
    starts = torch.arange(n_windows) * block_size
    offsets = torch.arange(block_size)
    for i in range(0, n_windows, batch_size):
        ix = starts[i : i + batch_size, None] + offsets
        yield tokens[ix], tokens[ix + 1]


@torch.no_grad()
def evaluate_full(model: nn.Module, tokens: torch.Tensor, block_size: int, batch_size: int = 32,
                  device: str | torch.device = "cpu") -> float:
    """Mean loss over every position of ``tokens``, in consecutive windows of ``block_size``.

    Unlike ``estimate_loss`` (a random sample of windows), this covers the whole split once.
    """
    was_training = model.training
    model.eval()
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    total, count = 0.0, 0
    for x, y in _windows(tokens, block_size, batch_size):
        _, loss = model(x.to(device), y.to(device))
        total += loss.item() * y.numel()
        count += y.numel()
    tail = (len(tokens) - 1) % block_size  # positions left after the last full window
    if tail > 0:
        x = tokens[-tail - 1 : -1][None].to(device)
        y = tokens[-tail:][None].to(device)
        _, loss = model(x, y)
        total += loss.item() * tail
        count += tail
    model.train(was_training)
    return total / count


@torch.no_grad()
def loss_by_position(model: nn.Module, tokens: torch.Tensor, block_size: int, batch_size: int = 32,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Mean loss at each position 0 .. block_size-1 of the windows ``evaluate_full`` scores.

    Position t is predicted from t + 1 characters of context, so the curve shows what the
    context is worth, and why the first positions of every window weigh on the full-split loss.
    Returns a (block_size,) tensor.
    """
    was_training = model.training
    model.eval()
    total, windows = torch.zeros(block_size), 0
    for x, y in _windows(tokens, block_size, batch_size):
        logits, _ = model(x.to(device))
        losses = F.cross_entropy(logits.transpose(1, 2).float(), y.to(device), reduction="none")  # (b, T)
        total += losses.sum(0).cpu()
        windows += len(y)
    model.train(was_training)
    return total / windows


# --- history and errors -------------------------------------------------------------------

@dataclass
class History:
    """What a run measured: one row per optimiser step and one per evaluation."""

    steps: list[dict] = field(default_factory=list)  # iter, loss, lr, grad_norm, ms, tokens_per_s, mfu
    evals: list[dict] = field(default_factory=list)  # iter, train, val (one key per source)
    eval_seconds: float = 0.0                        # wall time spent in evaluations (not in "ms")

    def column(self, key: str, table: str = "steps") -> list:
        return [row[key] for row in getattr(self, table)]

    @property
    def train_seconds(self) -> float:
        """Seconds spent in training steps: the clock a time budget runs on (evaluations not counted)."""
        return sum(row["ms"] for row in self.steps) / 1000

    @property
    def best_eval(self) -> dict | None:
        """The evaluation with the lowest validation estimate (None without a ``val`` source)."""
        with_val = [e for e in self.evals if "val" in e]
        return min(with_val, key=lambda e: e["val"]) if with_val else None

    def to_dict(self) -> dict:
        return asdict(self)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before the next update."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, not a checkpoint, or from a different run."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped training after a whole step.

    ``iter`` is the number of steps done; ``checkpoint`` (None without ``out_dir``) holds
    exactly that state, so ``train(..., resume=True)`` continues as if never stopped.
    """

    def __init__(self, it: int, checkpoint: Path | None, signal_name: str = "SIGINT") -> None:
        where = f"checkpoint saved to {checkpoint}" if checkpoint is not None else "no out_dir, nothing saved"
        super().__init__(f"{signal_name}: training stopped after {it} steps; {where}")
        self.iter = it
        self.checkpoint = checkpoint
        self.signal_name = signal_name


class StopOnSignal(AbstractContextManager):
    """While active, SIGINT (Ctrl-C) and SIGTERM ask the training loop to stop; they do not kill it.

    The loop checks ``requested`` between steps. A second signal interrupts at once
    (``KeyboardInterrupt``). Python lets only the main thread set handlers, so elsewhere this
    does nothing; on exit the previous handlers come back.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


# --- distributed --------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    initialized_here: bool = False

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def setup_distributed(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (if any).

    NCCL on GPUs, gloo on CPUs. Without ``WORLD_SIZE`` > 1 this is a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    initialized = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        initialized = True
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistInfo(rank, local_rank, world, initialized)


def _mean_over_ranks(value: torch.Tensor, dist_info: DistInfo) -> torch.Tensor:
    """The mean of ``value`` over all ranks: all-reduce a sum, then divide (gloo lacks ReduceOp.AVG)."""
    if dist_info.world_size == 1:
        return value
    import torch.distributed as dist

    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist_info.world_size


def _any_rank(flag: bool, dist_info: DistInfo, device: str) -> bool:
    """True on every rank if ``flag`` is True on any, so that all ranks stop at the same step."""
    if dist_info.world_size == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _gather_to_master(obj, dist_info: DistInfo) -> list | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None on the other ranks)."""
    if dist_info.world_size == 1:
        return [obj]
    import torch.distributed as dist

    gathered = [None] * dist_info.world_size if dist_info.is_master else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


# --- checkpoints --------------------------------------------------------------------------

CHECKPOINT_NAME = "ckpt.pt"
BEST_CHECKPOINT_NAME = "best.pt"  # TrainConfig.keep_best: the run at its lowest val estimate
# What a checkpoint holds. Everything is a tensor, a number, a string, None, or a list or dict
# of those, so that ``torch.load(..., weights_only=True)`` reads it without running any code.
MODEL_KEYS = ("model", "model_spec")
RESUME_KEYS = (*MODEL_KEYS, "optimizer", "scaler", "train_config", "iter", "history", "ranks")


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically, so that a crash never leaves half a file.

    The state goes to ``<path>.tmp``, is flushed to the disk (fsync), then renamed over
    ``path``. If anything fails, the temporary file is removed and ``path`` is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable. POSIX only: Windows cannot open a folder as a file."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename still happened
        pass
    finally:
        os.close(fd)


def model_spec(model: nn.Module) -> dict:
    """What ``build_model`` needs to recreate ``model``'s architecture."""
    if hasattr(model, "config") and hasattr(model.config, "to_dict"):
        return {"class": type(model).__name__, "config": model.config.to_dict()}
    if hasattr(model, "vocab_size"):
        return {"class": type(model).__name__, "config": {"vocab_size": model.vocab_size}}
    raise ValueError(f"cannot describe a {type(model).__name__} for a checkpoint")


def build_model(spec: dict) -> nn.Module:
    """A freshly initialised model of the architecture ``model_spec`` described."""
    from .bigram import BigramLanguageModel
    from .model import GPT, GPTConfig

    if spec["class"] == "GPT":
        return GPT(GPTConfig.from_dict(spec["config"]))
    if spec["class"] == "BigramLanguageModel":
        return BigramLanguageModel(spec["config"]["vocab_size"])
    raise ValueError(f"unknown model class {spec['class']!r} in checkpoint")


def read_checkpoint(path: str | Path, required: tuple[str, ...] = MODEL_KEYS) -> dict:
    """The dict saved in ``path``, loaded onto the CPU without running code from the file.

    Raises ``CheckpointError`` for a truncated or foreign file, one that holds Python objects
    (loading those could run code: they are refused), or a dict that lacks ``required`` keys.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip errors, EOF, unpickling errors, ...: the file is not usable
        if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in str(e):
            reason = ("it holds Python objects besides tensors and plain data, and loading those could run "
                      "code, so it is refused; use checkpoints written by nanogpt.train")
        else:
            first_line = next((line for line in str(e).splitlines() if line.strip()), "")
            reason = (f"it is truncated or not a PyTorch checkpoint ({type(e).__name__}"
                      f"{': ' + first_line[:200] if first_line else ''}); train again or copy it again")
        raise CheckpointError(f"cannot read the checkpoint {path}: {reason}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint from nanogpt.train")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a complete checkpoint from this version of nanogpt.train: "
                              f"it lacks {', '.join(missing)}; start a new run in another folder")
    return state


def _load_weights(model: nn.Module, weights: dict, path: Path) -> None:
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"the weights in {path} do not fit the model its model_spec describes "
                              f"({first_line[:300]}); the file is damaged or was edited") from e


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """Load ``path`` (a file, or a folder holding ckpt.pt): returns (model, tokenizer, state).

    Loads with ``weights_only=True``: a shared checkpoint cannot run code. Raises
    ``CheckpointError`` when the file cannot be used (the message says why).
    """
    from .tokenizer import tokenizer_from_dict

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = read_checkpoint(path, MODEL_KEYS)
    try:
        model = build_model(state["model_spec"])
        tokenizer = tokenizer_from_dict(state["tokenizer"]) if state.get("tokenizer") else None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} describes a model or tokenizer this version cannot build: {e}") from e
    _load_weights(model, state["model"], path)
    model.to(device)
    return model, tokenizer, state


def _resume_differences(state: dict, model: nn.Module, cfg: TrainConfig, world_size: int) -> list[str]:
    """How the run in ``state`` differs from the one about to resume it (empty: compatible)."""
    differences = []
    saved_model, new_model = state["model_spec"], model_spec(model)
    if saved_model.get("class") != new_model["class"]:
        differences.append(f"model class: saved {saved_model.get('class')}, now {new_model['class']}")
    saved_config = saved_model.get("config", {})
    for key, value in new_model["config"].items():  # keys only in the saved spec no longer exist
        if saved_config.get(key, value) != value:
            differences.append(f"model {key}: saved {saved_config[key]!r}, now {value!r}")

    def schedule_view(config: dict) -> dict:  # where the cosine ends is what matters, not how it was set
        return {**config, "lr_decay_iters": config.get("lr_decay_iters") or config.get("max_iters")}

    saved_train, new_train = schedule_view(state["train_config"]), schedule_view(asdict(cfg))
    for key, value in new_train.items():
        if key not in MAY_CHANGE_ON_RESUME and key in saved_train and saved_train[key] != value:
            differences.append(f"{key}: saved {saved_train[key]!r}, now {value!r}")
    if len(state["ranks"]) != world_size:
        differences.append(f"processes: saved by {len(state['ranks'])}, now {world_size} "
                           f"(each rank has its own random and data state)")
    return differences


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     cfg: TrainConfig, it: int, history: History, ranks: list[dict], tokenizer=None) -> dict:
    """Everything ``restore`` needs to continue after ``it`` steps exactly as if never stopped.

    ``ranks[r]`` is rank r's own state (``rank_state``): under DDP each process draws its own
    dropout masks and reads its own part of the data.
    """
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),  # fp16 loss scale ({} when the scaler is off)
        "model_spec": model_spec(model),
        "train_config": asdict(cfg),
        "iter": it,
        "history": history.to_dict(),
        "ranks": ranks,
        "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
    }


def rank_state(train_batches: BatchSource, batch: tuple[torch.Tensor, torch.Tensor], device_type: str) -> dict:
    """This process's part of a checkpoint: its RNG, its data position, its batch not yet trained on."""
    return {
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None},
        "batches": train_batches.state_dict() if hasattr(train_batches, "state_dict") else None,
        "pending_batch": [t.cpu() for t in batch],
    }


# --- the pieces of the loop ---------------------------------------------------------------

@dataclass
class RunSetup:
    """Where and how a run computes, as ``set_up`` decided."""

    device: str
    device_type: str
    dist: DistInfo
    precision: Precision
    autocast: AbstractContextManager  # entered around every forward pass
    scaler: torch.amp.GradScaler      # scales fp16 losses; a no-op otherwise
    peak_flops: float | None          # for MFU


def set_up(cfg: TrainConfig, width: int | None = None) -> RunSetup:
    """Pick the device, join the torchrun process group, choose the precision (for a model
    ``width`` wide, see ``precision_plan``), seed the RNG.

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
    precision = precision_plan(device_type, cfg.dtype, width)
    if precision.tf32:  # fp32 matmuls on TF32 tensor cores (10-bit mantissa), as GPUs train since Ampere
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed + dist_info.rank)
    return RunSetup(
        device=device, device_type=device_type, dist=dist_info, precision=precision,
        autocast=autocast(device_type, precision.dtype),
        scaler=torch.amp.GradScaler(device_type, enabled=precision.use_scaler),
        peak_flops=cfg.peak_flops or default_peak_flops(device_type, precision.dtype),
    )


def restore(ckpt_path: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer,
            train_batches: BatchSource, cfg: TrainConfig,
            setup: RunSetup) -> tuple[int, History, tuple[torch.Tensor, torch.Tensor]]:
    """Load the checkpoint at ``ckpt_path`` into the model, optimiser, scaler, RNG and batch source.

    Returns the steps already done, the history so far and this rank's pending batch. Raises
    ``CheckpointError`` before touching anything if the checkpoint is unreadable or was written
    by a different run (another model, schedule, batch or number of processes).
    """
    if ckpt_path is None:
        raise FileNotFoundError("resume=True needs out_dir: the folder that holds the run's ckpt.pt")
    if not ckpt_path.exists():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt_path}: "
                                "train without resume first, or point out_dir at the run's folder")
    state = read_checkpoint(ckpt_path, RESUME_KEYS)
    differences = _resume_differences(state, model, cfg, setup.dist.world_size)
    if differences:
        raise CheckpointError(
            f"cannot resume from {ckpt_path}: it was saved by a different run ({'; '.join(differences)}). "
            f"Resume with the saved settings (only {', '.join(sorted(MAY_CHANGE_ON_RESUME))} may change), "
            "or start a new run in another folder (a new --out)")
    _load_weights(model, state["model"], ckpt_path)
    try:
        optimizer.load_state_dict(state["optimizer"])
        history = History(**state["history"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"the optimiser state or history in {ckpt_path} does not fit this run: {e}") from e
    if setup.scaler.is_enabled() and state["scaler"]:
        setup.scaler.load_state_dict(state["scaler"])
    mine = state["ranks"][setup.dist.rank]
    torch.set_rng_state(mine["rng"]["torch"])
    if setup.device_type == "cuda" and mine["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(mine["rng"]["cuda"])
    if hasattr(train_batches, "load_state_dict") and mine["batches"] is not None:
        train_batches.load_state_dict(mine["batches"])
    x, y = (t.to(setup.device) for t in mine["pending_batch"])
    return state["iter"], history, (x, y)


def wrap_model(model: nn.Module, cfg: TrainConfig, setup: RunSetup) -> nn.Module:
    """``torch.compile`` and, under torchrun, DistributedDataParallel around ``model``.

    The wrappers share ``model``'s weights; checkpoints save the unwrapped ``model``.
    """
    if cfg.compile:
        model = torch.compile(model)
    if setup.dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[setup.dist.local_rank] if setup.device_type == "cuda" else None)
    return model


def next_batch(train_batches: BatchSource, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The next training batch, on the model's device (sources may keep their data on the CPU)."""
    x, y = train_batches.next_batch()
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def forward_backward(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], train_batches: BatchSource,
                     cfg: TrainConfig, setup: RunSetup) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
    """Forward and backward over ``cfg.grad_accum_steps`` micro-batches, starting with ``batch``.

    The gradients add up in ``.grad``. Returns the step's mean loss (over micro-batches and,
    under DDP, over ranks) and the next batch, fetched while the device computes.
    """
    x, y = batch
    loss_sum = torch.zeros((), device=setup.device)
    for micro in range(cfg.grad_accum_steps):
        if setup.dist.world_size > 1:
            # DDP all-reduces gradients during backward: only the last micro-step needs to.
            model.require_backward_grad_sync = micro == cfg.grad_accum_steps - 1
        with setup.autocast:
            _, loss = model(x, y)
            loss = loss / cfg.grad_accum_steps  # the sum over micro-steps is the mean
        x, y = next_batch(train_batches, setup.device)  # fetch the next batch while the GPU works
        setup.scaler.scale(loss).backward()
        loss_sum += loss.detach()
    return _mean_over_ranks(loss_sum, setup.dist).item(), (x, y)


def clip_and_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  grad_clip: float) -> float:
    """Clip the gradient norm to ``grad_clip`` (0: no clipping), update the weights, clear the gradients.

    Returns the norm before clipping (NaN without clipping). With fp16 the scaler unscales the
    gradients first and skips the update when one is infinite.
    """
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip).item()
    else:
        norm = float("nan")
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm


def save_training_state(ckpt_path: Path | None, it: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                        history: History, batch: tuple[torch.Tensor, torch.Tensor], train_batches: BatchSource,
                        cfg: TrainConfig, setup: RunSetup, tokenizer=None) -> None:
    """Checkpoint the run after ``it`` steps (nothing if ``ckpt_path`` is None).

    Under DDP every rank must call it: rank 0 gathers each rank's own state and writes the file.
    """
    if ckpt_path is None:
        return
    ranks = _gather_to_master(rank_state(train_batches, batch, setup.device_type), setup.dist)
    if setup.dist.is_master:
        save_checkpoint(ckpt_path, checkpoint_state(model, optimizer, setup.scaler, cfg, it, history, ranks,
                                                     tokenizer))


def evaluate(model: nn.Module, eval_sources: dict[str, BatchSource], it: int, history: History, cfg: TrainConfig,
             setup: RunSetup, progress: bool = False) -> dict[str, float]:
    """Estimate the loss on every source after ``it`` steps; record it, and its time, in ``history``."""
    t0 = time.perf_counter()
    losses = estimate_loss(model, eval_sources, eval_batches(cfg), setup.autocast, setup.device, progress=progress)
    history.eval_seconds += time.perf_counter() - t0
    history.evals.append({"iter": it, **losses})
    return losses


def _finished(it: int, cfg: TrainConfig, trained_s: float) -> bool:
    return ((cfg.max_iters is not None and it >= cfg.max_iters)
            or (cfg.time_budget_s is not None and trained_s >= cfg.time_budget_s))


def _evaluation_due(it: int, cfg: TrainConfig, trained_s: float, history: History) -> bool:
    """Every ``eval_interval`` steps and at the end, once per step (a resumed run may have done it)."""
    already_done = bool(history.evals) and history.evals[-1]["iter"] == it
    return (it % cfg.eval_interval == 0 or _finished(it, cfg, trained_s)) and not already_done


def _restore_best(model: nn.Module, history: History, weights: dict | None, best_path: Path | None) -> None:
    """Put the weights of ``history.best_eval`` back into ``model`` (keep_best), if the run moved on since."""
    best = history.best_eval
    if best is None or best is history.evals[-1]:
        return
    if weights is None:  # a resumed run that has not improved since: the best is on disk
        if best_path is None or not best_path.exists():
            raise CheckpointError(f"keep_best: the best evaluation (step {best['iter']}) was before this resume "
                                  f"and {best_path or 'no best.pt'} is not there to restore it from")
        weights = read_checkpoint(best_path, MODEL_KEYS)["model"]
    _load_weights(model, weights, best_path or Path("best weights"))  # copied into the model's own tensors


# --- the loop -----------------------------------------------------------------------------

def train(
    model: nn.Module,
    train_batches: BatchSource,
    eval_sources: dict[str, BatchSource],
    config: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    tokenizer=None,
    progress: bool = True,
    on_eval: Callable[[int, dict], None] | None = None,
) -> History:
    """Train ``model`` in place and return its history.

    Evaluates at every ``eval_interval`` steps and at the end; with ``out_dir`` each
    evaluation also writes a checkpoint there. ``resume`` continues from that checkpoint
    exactly (same batches, same dropout masks, same losses as an uninterrupted run).
    ``cfg.keep_best``: a small corpus is overfitted long before the schedule ends, so the
    model ends with the weights of the lowest validation estimate (``history.best_eval``),
    also written to ``best.pt``; ``ckpt.pt`` still holds the last step, to resume from.
    SIGINT (Ctrl-C) or SIGTERM stops the run after the current step, writes a checkpoint of
    that step and raises ``TrainingInterrupted``. See ``set_up`` for the global state it sets.
    """
    cfg = config
    width = getattr(getattr(model, "config", None), "n_embd", None)
    setup = set_up(cfg, width)                            # device, precision, seed, process group
    raw_model = model.to(setup.device)                    # the weights (``model`` may get wrapped)
    optimizer = configure_adamw(raw_model, cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                setup.device_type)
    ckpt_path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    best_path = Path(out_dir) / BEST_CHECKPOINT_NAME if out_dir is not None else None
    best_weights = None  # a CPU copy of the weights at the best evaluation (keep_best)
    start, history, batch = 0, History(), None
    if resume:
        start, history, batch = restore(ckpt_path, raw_model, optimizer, train_batches, cfg, setup)
    model = wrap_model(raw_model, cfg, setup)
    x, y = batch if batch is not None else next_batch(train_batches, setup.device)
    tokens_per_step = x.numel() * cfg.grad_accum_steps * setup.dist.world_size
    flops_per_token = raw_model.flops_per_token(x.shape[1]) if hasattr(raw_model, "flops_per_token") else None
    trained_s = history.train_seconds  # the clock a time budget runs on
    show = progress and setup.dist.is_master
    bar = _progress_bar(total=cfg.max_iters if cfg.time_budget_s is None else None, initial=start,
                        disable=not show, desc=f"training ({_short_name(setup.precision.dtype)})", unit="it")
    postfix: dict[str, str] = {}
    it = start
    try:
        with StopOnSignal() as stop:
            while True:
                stopping = _any_rank(stop.requested, setup.dist, setup.device)  # all ranks stop together
                if not stopping and _evaluation_due(it, cfg, trained_s, history):
                    losses = evaluate(model, eval_sources, it, history, cfg, setup, progress=show)
                    postfix.update({k: f"{v:.4f}" for k, v in losses.items()})
                    bar.set_postfix(postfix)
                    save_training_state(ckpt_path, it, raw_model, optimizer, history, (x, y), train_batches,
                                        cfg, setup, tokenizer)
                    if cfg.keep_best and _any_rank(history.best_eval is history.evals[-1], setup.dist, setup.device):
                        best_weights = {k: v.detach().to("cpu", copy=True) for k, v in raw_model.state_dict().items()}
                        save_training_state(best_path, it, raw_model, optimizer, history, (x, y), train_batches,
                                            cfg, setup, tokenizer)
                    if on_eval is not None and setup.dist.is_master:
                        on_eval(it, losses)
                if stopping:  # Ctrl-C or SIGTERM during the last step: save this step, then stop
                    save_training_state(ckpt_path, it, raw_model, optimizer, history, (x, y), train_batches,
                                        cfg, setup, tokenizer)
                    raise TrainingInterrupted(it, ckpt_path, stop.signal_name or "a signal on another rank")
                if _finished(it, cfg, trained_s):
                    break

                t0 = time.perf_counter()
                lr = lr_at(it, cfg, trained_s / cfg.time_budget_s if cfg.time_budget_s else None)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, (x, y) = forward_backward(model, (x, y), train_batches, cfg, setup)
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss is {loss} at iteration {it}; stopped before updating the weights"
                        + (f" (last good checkpoint: {ckpt_path})" if ckpt_path is not None else ""))
                norm = clip_and_step(raw_model, optimizer, setup.scaler, cfg.grad_clip)
                if setup.device_type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                trained_s += dt
                tps = tokens_per_step / dt
                mfu = flops_per_token * tps / setup.peak_flops if (flops_per_token and setup.peak_flops) else None
                history.steps.append({"iter": it, "loss": loss, "lr": lr, "grad_norm": norm,
                                      "ms": dt * 1000, "tokens_per_s": tps, "mfu": mfu})
                postfix["loss"] = f"{loss:.4f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
                it += 1
        if cfg.keep_best:
            _restore_best(raw_model, history, best_weights, best_path)
    finally:
        bar.close()
        if setup.dist.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()
    return history
