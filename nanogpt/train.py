"""One training loop for every model in the course.

AdamW with decay/no-decay groups, linear warmup then cosine decay, gradient accumulation,
clipping, periodic evaluation, mixed precision chosen by the device, optional
``torch.compile``, atomic checkpoints that resume exactly, and DDP under ``torchrun``.

A model is anything with ``forward(idx, targets) -> (logits, loss)``. Batches come from any
object with ``next_batch() -> (x, y)`` (``RandomBatches`` or ``DataLoaderLite``); evaluation
sources also need ``reset()`` so every evaluation sees the same batches.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn as nn

from .runtime import pick_device


class BatchSource(Protocol):
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class TrainConfig:
    """How to train: schedule, batch, optimiser, evaluation and hardware settings."""

    max_iters: int = 5000
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
    eval_iters: int = 200
    device: str = "auto"
    dtype: str = "auto"              # auto | float32 | bfloat16 | float16
    compile: bool = False
    seed: int = 1337
    peak_flops: float | None = None  # for MFU; None: a known GPU's data-sheet peak, else no MFU
    time_budget_s: float | None = None  # train for this many seconds (max_iters is then a cap)

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum_steps", "eval_interval", "eval_iters"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.max_iters < 0:
            raise ValueError(f"TrainConfig.max_iters must be >= 0, got {self.max_iters}")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig.learning_rate must be positive, got {self.learning_rate}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"TrainConfig.time_budget_s must be positive, got {self.time_budget_s}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"TrainConfig.dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")


def lr_at(it: int, cfg: TrainConfig, time_fraction: float | None = None) -> float:
    """Learning rate at step ``it``: linear warmup, cosine decay to ``min_lr``, then flat.

    With a time budget, ``time_fraction`` (the share of the budget already spent) drives the
    cosine instead of the step count, so the schedule ends when the time does.
    """
    min_lr = cfg.learning_rate / 10 if cfg.min_lr is None else cfg.min_lr
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if time_fraction is not None:
        progress = min(max(time_fraction, 0.0), 1.0)
    elif it >= decay_iters:
        return min_lr
    else:
        progress = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - min_lr)


def configure_adamw(model: nn.Module, weight_decay: float, learning_rate: float,
                    betas: tuple[float, float], device_type: str,
                    implementation: str | None = None) -> torch.optim.AdamW:
    """AdamW that decays matrices (matmul weights, embeddings) but not biases or LayerNorm gains.

    ``implementation``: "for-loop", "foreach" or "fused"; by default fused on CUDA and CPU,
    where its one pass over every parameter is several times faster than the per-parameter
    loop (measured 6x for the optimizer step of the 10.8M model on a 2-core CPU).
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


def resolve_dtype(device_type: str, requested: str = "auto") -> torch.dtype:
    """bf16 on GPUs that support it, fp16 on older GPUs (with a gradient scaler), fp32 on CPU.

    On CPUs without bf16 matrix units, bf16 runs far slower than fp32, so ``auto`` keeps fp32.
    """
    if requested != "auto":
        return getattr(torch, requested)
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def autocast(device_type: str, dtype: torch.dtype):
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

@torch.no_grad()
def estimate_loss(model: nn.Module, sources: dict[str, BatchSource], eval_iters: int,
                  ctx=None, device: str | torch.device | None = None) -> dict[str, float]:
    """Mean loss over ``eval_iters`` batches of each source, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    out = {}
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
        out[split] = losses.mean().item()
    model.train(was_training)
    return out


@torch.no_grad()
def evaluate_full(model: nn.Module, tokens: torch.Tensor, block_size: int, batch_size: int = 32,
                  device: str | torch.device = "cpu") -> float:
    """Mean loss over every position of ``tokens``, in consecutive windows of ``block_size``.

    Unlike ``estimate_loss`` (a random sample of windows), this covers the whole split once.
    """
    was_training = model.training
    model.eval()
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    n_windows = (len(tokens) - 1) // block_size
    total, count = 0.0, 0
    starts = torch.arange(n_windows) * block_size
    offsets = torch.arange(block_size)
    for i in range(0, n_windows, batch_size):
        ix = starts[i : i + batch_size, None] + offsets
        x, y = tokens[ix].to(device), tokens[ix + 1].to(device)
        _, loss = model(x, y)
        total += loss.item() * y.numel()
        count += y.numel()
    tail = len(tokens) - 1 - n_windows * block_size  # positions left after the last full window
    if tail > 0:
        x = tokens[-tail - 1 : -1][None].to(device)
        y = tokens[-tail:][None].to(device)
        _, loss = model(x, y)
        total += loss.item() * tail
        count += tail
    model.train(was_training)
    return total / count


# --- history ------------------------------------------------------------------------------

@dataclass
class History:
    """What a run measured: one row per optimiser step and one per evaluation."""

    steps: list[dict] = field(default_factory=list)  # iter, loss, lr, ms, tokens_per_s, mfu
    evals: list[dict] = field(default_factory=list)  # iter, train, val (one key per source)

    def column(self, key: str, table: str = "steps") -> list:
        return [row[key] for row in getattr(self, table)]

    def to_dict(self) -> dict:
        return asdict(self)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before the next update."""


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


# --- checkpoints --------------------------------------------------------------------------

CHECKPOINT_NAME = "ckpt.pt"


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write atomically: to a temporary file, then rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def model_spec(model: nn.Module) -> dict:
    """What ``build_model`` needs to recreate ``model``'s architecture."""
    if hasattr(model, "config") and hasattr(model.config, "to_dict"):
        return {"class": type(model).__name__, "config": model.config.to_dict()}
    if hasattr(model, "vocab_size"):
        return {"class": type(model).__name__, "config": {"vocab_size": model.vocab_size}}
    raise ValueError(f"cannot describe a {type(model).__name__} for a checkpoint")


def build_model(spec: dict) -> nn.Module:
    from .bigram import BigramLanguageModel
    from .model import GPT, GPTConfig

    if spec["class"] == "GPT":
        return GPT(GPTConfig.from_dict(spec["config"]))
    if spec["class"] == "BigramLanguageModel":
        return BigramLanguageModel(spec["config"]["vocab_size"])
    raise ValueError(f"unknown model class {spec['class']!r} in checkpoint")


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """Load ``path`` (a file, or a folder holding ckpt.pt): returns (model, tokenizer, state)."""
    from .tokenizer import tokenizer_from_dict

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=device, weights_only=False)
    model = build_model(state["model_spec"])
    model.load_state_dict(state["model"])
    model.to(device)
    tokenizer = tokenizer_from_dict(state["tokenizer"]) if state.get("tokenizer") else None
    return model, tokenizer, state


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
    """
    cfg = config
    device = pick_device(cfg.device)
    device_type = torch.device(device).type
    dist_info = setup_distributed(device_type)
    if cfg.time_budget_s is not None and dist_info.world_size > 1:
        raise ValueError("time_budget_s is for single-process runs: under DDP the ranks' clocks "
                         "could stop them at different steps; use max_iters")
    if device_type == "cuda" and dist_info.world_size > 1:
        device = f"cuda:{dist_info.local_rank}"
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls on Ampere and newer
        torch.backends.cudnn.allow_tf32 = True
    dtype = resolve_dtype(device_type, cfg.dtype)
    ctx = autocast(device_type, dtype)
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)
    peak = cfg.peak_flops or default_peak_flops(device_type, dtype)

    torch.manual_seed(cfg.seed + dist_info.rank)
    model.to(device)
    raw_model = model
    optimizer = configure_adamw(raw_model, cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    history = History()
    start = 0
    ckpt_path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    if resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt_path}")
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["iter"]
        history = History(**state["history"])
        torch.set_rng_state(state["rng"]["torch"])
        if device_type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        if hasattr(train_batches, "load_state_dict") and state.get("batches") is not None:
            train_batches.load_state_dict(state["batches"])

    if cfg.compile:
        model = torch.compile(model)
    if dist_info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[dist_info.local_rank] if device_type == "cuda" else None)

    def checkpoint(it: int, x: torch.Tensor, y: torch.Tensor) -> None:
        if ckpt_path is None or not dist_info.is_master:
            return
        save_checkpoint(ckpt_path, {
            "model": raw_model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "model_spec": model_spec(raw_model),
            "train_config": asdict(cfg),
            "iter": it,
            "history": history.to_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None},
            "batches": train_batches.state_dict() if hasattr(train_batches, "state_dict") else None,
            "pending_batch": (x.cpu(), y.cpu()),  # already fetched, not yet trained on
            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
        })

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = train_batches.next_batch()  # sources may live on the CPU: move to the model
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    if resume and state.get("pending_batch") is not None:
        x, y = (t.to(device) for t in state["pending_batch"])
    else:
        x, y = next_batch()
    tokens_per_step = x.numel() * cfg.grad_accum_steps * dist_info.world_size
    flops_per_token = raw_model.flops_per_token(x.shape[1]) if hasattr(raw_model, "flops_per_token") else None

    from tqdm.auto import tqdm

    budget = cfg.time_budget_s
    # Training time so far (steps only, not evaluations): the clock a time budget runs on.
    trained_s = sum(row["ms"] for row in history.steps) / 1000

    def finished(it: int) -> bool:
        return it >= cfg.max_iters or (budget is not None and trained_s >= budget)

    bar = tqdm(total=None if budget else cfg.max_iters, initial=start,
               disable=not progress or not dist_info.is_master, desc="training", unit="it", dynamic_ncols=True)
    postfix: dict[str, str] = {}
    it = start
    try:
        while True:
            if (it % cfg.eval_interval == 0 or finished(it)) and not (resume and it == start):
                losses = estimate_loss(model, eval_sources, cfg.eval_iters, ctx, device)
                history.evals.append({"iter": it, **losses})
                postfix.update({k: f"{v:.4f}" for k, v in losses.items()})
                bar.set_postfix(postfix)
                checkpoint(it, x, y)
                if on_eval is not None and dist_info.is_master:
                    on_eval(it, losses)
            if finished(it):
                break

            t0 = time.perf_counter()
            lr = lr_at(it, cfg, trained_s / budget if budget else None)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum_steps):
                if dist_info.world_size > 1:
                    # Under DDP, all-reduce gradients only on the last micro-step.
                    model.require_backward_grad_sync = micro == cfg.grad_accum_steps - 1
                with ctx:
                    _, loss = model(x, y)
                    loss = loss / cfg.grad_accum_steps  # the sum over micro-steps is the mean
                x, y = next_batch()  # fetch the next batch while the GPU works
                scaler.scale(loss).backward()
                loss_sum += loss.detach()
            if dist_info.world_size > 1:
                import torch.distributed as dist

                dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
            step_loss = loss_sum.item()
            if not math.isfinite(step_loss):
                raise NonFiniteLossError(
                    f"loss is {step_loss} at iteration {it}; stopped before updating the weights"
                    + (f" (last good checkpoint: {ckpt_path})" if ckpt_path is not None else "")
                )
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip).item()
            else:
                norm = float("nan")
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if device_type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            trained_s += dt
            tps = tokens_per_step / dt
            mfu = flops_per_token * tps / peak if (flops_per_token and peak) else None
            history.steps.append({"iter": it, "loss": step_loss, "lr": lr, "grad_norm": norm,
                                  "ms": dt * 1000, "tokens_per_s": tps, "mfu": mfu})
            postfix["loss"] = f"{step_loss:.4f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            it += 1
    finally:
        bar.close()
        if dist_info.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()
    return history
