"""One training loop for every model in the course: AdamW, warmup and cosine, gradient
accumulation, clipping, evaluation, mixed precision, ``torch.compile``, exact resumes, DDP.

A model is anything with ``forward(idx, targets) -> (logits, loss)``; batch sources have
``next_batch() -> (x, y)`` (evaluation sources also ``reset()``). Read top to bottom:
``TrainConfig``, ``History``, the ``Run`` state, then the pieces ``train`` calls in order.
Beside it: ``schedule.py``, ``checkpoint.py``, ``precision.py``, ``distributed.py``,
``evaluate.py``, ``stopping.py``.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .checkpoint import (BEST_CHECKPOINT_NAME, CHECKPOINT_NAME, CheckpointError, load_weights, model_spec, new_run_id,
                         rank_state, resume_state, save_checkpoint)
from .cpu_tuning import tune_for_cpu
from .distributed import any_rank, gather_to_master, leave_distributed, mean_over_ranks
from .evaluate import BatchSource, best_evaluation, estimate_loss, progress_bar
from .model import configure_adamw
from .precision import cpu_step_timer, dtype_name, short_name
from .runtime import RunSetup, set_up, with_recorded_precision, wrap_model
from .schedule import (CALIBRATION_STEPS, duration, eval_batches, evaluations_left, median_step_s,
                       expected_train_seconds, fix_length, lr_at, planned_steps, retime_due)
from .stopping import NonFiniteLossError, StopOnSignal, TrainingInterrupted

clock = time.perf_counter  # what steps and evaluations are timed with (a test may replace it)

# --- configuration and schedule -----------------------------------------------------------


@dataclass
class TrainConfig:
    """How to train: schedule, batch, optimiser, evaluation and hardware settings."""

    max_iters: int | None = 5000     # optimiser steps; None: as many as time_budget_s allows
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
    compile: bool | None = None      # torch.compile; None: on CUDA GPUs that can (runtime.compile_plan)
    seed: int = 1337
    peak_flops: float | None = None  # for MFU; None: a known GPU's data-sheet peak, else no MFU
    time_budget_s: float | None = None  # train about this many seconds: the step count is fixed by timing warmup
    keep_best: bool = False          # end with the weights of the lowest val estimate (saved as best.pt), as nanoGPT

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum_steps", "eval_interval", "eval_iters"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.max_iters is not None and self.max_iters < 0:
            raise ValueError(f"TrainConfig.max_iters must be >= 0 (or None with a time budget), got {self.max_iters}")
        for name in ("learning_rate", "time_budget_s"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"TrainConfig.dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.max_iters is None and self.time_budget_s is None:
            raise ValueError("TrainConfig.max_iters=None means no step cap, so the run needs a time_budget_s: "
                             "set max_iters to a number of steps, or time_budget_s to a number of seconds")


# --- what a run measured ------------------------------------------------------------------

@dataclass
class History:
    """What a run measured: one row per optimiser step and one per evaluation."""

    steps: list[dict] = field(default_factory=list)  # iter, loss, lr, grad_norm, ms, tokens_per_s, mfu
    evals: list[dict] = field(default_factory=list)  # iter, train, val (one key per source)
    eval_seconds: float = 0.0                        # wall time spent in evaluations (not in "ms")
    planned_iters: int | None = None                 # a time-budget run's length, fixed by timing its warmup, re-timed
    length_fixed_at: list[int] = field(default_factory=list)  # the steps at which it was fixed, then re-timed
    expected_seconds: float | None = None            # training-step seconds the run expected, after timing them
    notes: list[str] = field(default_factory=list)   # what chose the run's settings, in words (a preset sizing itself)
    autocast: str | None = None                      # the dtype it trains in: "float32", "bfloat16" or "float16"

    def column(self, key: str, table: str = "steps") -> list:
        return [row[key] for row in getattr(self, table)]

    @property
    def train_seconds(self) -> float:
        """Seconds spent in training steps (evaluations not counted)."""
        return sum(row["ms"] for row in self.steps) / 1000

    @property
    def best_eval(self) -> dict | None:
        """The evaluation with the lowest validation estimate (None without a ``val`` source)."""
        return best_evaluation(self.evals)

    def to_dict(self) -> dict:
        return asdict(self)


# --- the run's state ---------------------------------------------------------------------

@dataclass
class Run:
    """One run's state: what the loop reads and updates, and what a checkpoint saves."""

    cfg: TrainConfig
    setup: RunSetup
    model: nn.Module                  # the weights; ``wrapped`` may add compile and DDP around them
    optimizer: torch.optim.Optimizer
    train_batches: BatchSource
    out_dir: Path | None
    tokenizer: object = None
    run_id: str = field(default_factory=new_run_id)
    it: int = 0                       # optimiser steps done
    history: History = field(default_factory=History)
    batch: tuple[torch.Tensor, torch.Tensor] | None = None  # the next batch to train on
    best_weights: dict | None = None  # a CPU copy of the weights at the best evaluation (keep_best)

    @property
    def total_iters(self) -> int | None:
        """The run's length: ``max_iters``, or a time-budget run's once it has timed its warmup."""
        return self.history.planned_iters if self.cfg.time_budget_s is not None else self.cfg.max_iters

    def evaluation_due(self) -> bool:
        """Every ``eval_interval`` steps and at the end, once per step (a resumed run may have done it)."""
        already_done = bool(self.history.evals) and self.history.evals[-1]["iter"] == self.it
        return (self.it % self.cfg.eval_interval == 0 or self.it == self.total_iters) and not already_done

    def path(self, name: str = CHECKPOINT_NAME) -> Path | None:
        return self.out_dir / name if self.out_dir is not None else None

    def save(self, name: str = CHECKPOINT_NAME) -> None:
        """Checkpoint the run after ``self.it`` steps (nothing without ``out_dir``). Under DDP every
        rank calls it: rank 0 gathers each rank's RNG, data position and pending batch, and writes."""
        if self.out_dir is None:
            return
        ranks = gather_to_master(rank_state(self.train_batches, self.batch, self.setup.device_type), self.setup.dist)
        if self.setup.dist.is_master:
            save_checkpoint(self.path(name), {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.setup.scaler.state_dict(),  # fp16 loss scale ({} when the scaler is off)
                "model_spec": model_spec(self.model),
                "train_config": asdict(self.cfg),
                "iter": self.it,
                "history": self.history.to_dict(),
                "ranks": ranks,
                "tokenizer": self.tokenizer.to_dict() if self.tokenizer is not None else None,
                "run_id": self.run_id,
            })

    def keep_as_best(self) -> None:
        """Remember the current weights as the best so far, in memory and as best.pt."""
        self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.save(BEST_CHECKPOINT_NAME)


def restore(run: Run) -> None:
    """Load ``run``'s checkpoint into its model, optimiser, scaler, RNG, batch source and state.

    ``resume_state`` checks the checkpoint first, and raises ``CheckpointError`` before anything
    is touched if it is unreadable, from a different run, or lacks best weights keep_best needs.
    """
    cfg, setup, ckpt_path = run.cfg, run.setup, run.path()
    state, best_weights = resume_state(ckpt_path, run.model, asdict(cfg), setup.dist.world_size, cfg.keep_best)
    try:
        history = History(**state["history"])
        run.optimizer.load_state_dict(state["optimizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"the optimiser state or history in {ckpt_path} does not fit this run: {e}") from e
    load_weights(run.model, state["model"], ckpt_path)
    if setup.scaler.is_enabled() and state["scaler"]:
        setup.scaler.load_state_dict(state["scaler"])
    mine = state["ranks"][setup.dist.rank]
    torch.set_rng_state(mine["rng"]["torch"])
    if setup.device_type == "cuda" and mine["rng"]["cuda"] is not None:
        torch.cuda.set_rng_state(mine["rng"]["cuda"])
    if hasattr(run.train_batches, "load_state_dict") and mine["batches"] is not None:
        run.train_batches.load_state_dict(mine["batches"])
    run.batch = tuple(t.to(setup.device) for t in mine["pending_batch"])
    run.it, run.history, run.best_weights = state["iter"], history, best_weights
    run.run_id = state.get("run_id") or run.run_id


# --- one step, one evaluation -------------------------------------------------------------

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
    return mean_over_ranks(loss_sum, setup.dist).item(), (x, y)


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


def evaluate(model: nn.Module, eval_sources: dict[str, BatchSource], it: int, history: History, cfg: TrainConfig,
             setup: RunSetup, progress: bool = False) -> dict[str, float]:
    """Estimate the loss on every source after ``it`` steps; record it, and its time, in ``history``.
    Under DDP the ranks' estimates are averaged, so every rank records (and keeps) the same best."""
    t0 = clock()
    losses = estimate_loss(model, eval_sources, eval_batches(cfg), setup.autocast, setup.device, progress=progress)
    if setup.dist.world_size > 1:
        mean = mean_over_ranks(torch.tensor(list(losses.values()), device=setup.device), setup.dist)
        losses = dict(zip(losses, mean.tolist()))
    history.eval_seconds += clock() - t0
    history.evals.append({"iter": it, **losses})
    return losses


def _timing_line(run: Run, start: int, with_mfu: bool) -> str:
    """What the steps this process has timed say the run will take, in one line; the expected
    seconds of training steps go into the run's history."""
    rows = run.history.steps[start - run.it:]
    ms = [row["ms"] for row in rows]
    expected = expected_train_seconds(ms, run.it - start, run.total_iters - start)
    run.history.expected_seconds = run.history.train_seconds - sum(ms) / 1000 + expected
    per_eval = run.history.eval_seconds / max(1, len(run.history.evals))
    evals = evaluations_left(run.it, run.total_iters, run.cfg.eval_interval) * per_eval
    mfu = f", MFU {statistics.median(row['mfu'] for row in rows):.0%}" if with_mfu else ""
    return (f"timing: {median_step_s(ms) * 1000:.1f} ms a step{mfu} (the first took {ms[0] / 1000:.1f} s, "
            f"{'compiling and ' if run.setup.compile else ''}warming up); {run.total_iters - run.it:,} steps to go: "
            f"about {duration(expected - sum(ms) / 1000)} of training and {duration(evals)} of loss estimates")


def _fix_length(run: Run, spent_s: float, bar, show: bool) -> None:
    """A time-budget run's length: fixed once its first steps are timed, then re-timed at
    ``RETIME_AT`` from the steps since it was last fixed (the points go into its history)."""
    history, first = run.history, run.history.planned_iters is None
    if not first and not retime_due(run.cfg, run.it, spent_s, history.length_fixed_at):
        return
    ms = history.column("ms")
    since = None if first else history.length_fixed_at[-1]
    length = fix_length(run.cfg, run.it, ms) if first else planned_steps(run.cfg, run.it, ms, since=since)
    if length is None:
        return
    if not first and show:
        bar.write(f"re-timed at {spent_s:.0f} s: {statistics.median(ms[since:]):.1f} ms a step "
                  f"over the last {run.it - since:,} steps; {length:,} steps in all (was {history.planned_iters:,})")
    history.planned_iters = length
    history.length_fixed_at.append(run.it)
    bar.total = run.total_iters  # once known, the bar shows the time left


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
    notes: list[str] | None = None,
) -> History:
    """Train ``model`` in place and return its history.

    Evaluates every ``eval_interval`` steps and at the end, each time writing ``ckpt.pt`` to
    ``out_dir``, from which ``resume`` continues exactly (same batches, dropout masks, losses).
    ``keep_best``: the model ends with the weights of the lowest val estimate (also best.pt).
    ``time_budget_s``: the run times its warmup, then fixes its length (``planned_iters``), and
    re-times it at ``schedule.RETIME_AT``.
    ``notes`` (what chose the run's settings) go into the history, and so into the checkpoint.
    On a CPU the model gets ``tune_for_cpu``'s stand-ins. SIGINT or SIGTERM stops it after a
    whole step, saved, with ``TrainingInterrupted``. ``set_up`` says what global state it sets.
    """
    cfg = config
    timer = None if resume else cpu_step_timer(model, cfg.batch_size)  # a resume keeps its checkpoint's precision
    setup = set_up(cfg, getattr(getattr(model, "config", None), "n_embd", None), timer)
    model.to(setup.device).train()
    if setup.device_type == "cpu":
        tune_for_cpu(model)
    optimizer = configure_adamw(model, cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                setup.device_type)
    run = Run(cfg, setup, model, optimizer, train_batches, Path(out_dir) if out_dir is not None else None, tokenizer)
    run.history.notes = list(notes or [])
    show = progress and setup.dist.is_master
    if resume:
        restore(run)
        setup = run.setup = with_recorded_precision(setup, cfg.dtype, run.history.autocast)
    else:
        if run.out_dir is not None and setup.dist.is_master:
            run.path(BEST_CHECKPOINT_NAME).unlink(missing_ok=True)  # a fresh run: an old best.pt is not its best
        if setup.precision.timed:  # the plan could not say which: the timing decided here
            run.history.notes.append(f"precision: {setup.precision.reason}")
            if show:
                print(f"precision: {setup.precision.reason}")
    run.history.autocast = dtype_name(setup.precision.dtype)
    wrapped = wrap_model(model, setup)
    start, timed = run.it, False  # this process times its first CALIBRATION_STEPS steps
    run.batch = run.batch or next_batch(train_batches, setup.device)
    tokens_per_step = run.batch[0].numel() * cfg.grad_accum_steps * setup.dist.world_size
    mfu_of = model.estimate_mfu if (hasattr(model, "estimate_mfu") and setup.peak_flops) else None
    bar = progress_bar(total=run.total_iters, initial=run.it, disable=not show, unit="it",
                       desc=f"training ({short_name(setup.precision.dtype)})")
    postfix: dict[str, str] = {}
    spent_s = run.history.train_seconds
    try:
        with StopOnSignal() as stop:
            while True:
                if cfg.time_budget_s is not None:
                    _fix_length(run, spent_s, bar, show)
                stopping = any_rank(stop.requested, setup.dist, setup.device)  # all ranks stop together
                if not stopping and run.evaluation_due():
                    losses = evaluate(wrapped, eval_sources, run.it, run.history, cfg, setup, progress=show)
                    postfix.update({k: f"{v:.4f}" for k, v in losses.items()})
                    bar.set_postfix(postfix)
                    run.save()
                    if cfg.keep_best and run.history.best_eval is run.history.evals[-1]:
                        run.keep_as_best()
                    if on_eval is not None and setup.dist.is_master:
                        on_eval(run.it, losses)
                if stopping:  # Ctrl-C or SIGTERM during the last step: save this step, then stop
                    run.save()
                    raise TrainingInterrupted(run.it, run.path(), stop.signal_name or "a signal on another rank")
                if run.total_iters is not None and run.it >= run.total_iters:
                    break

                t0 = clock()
                lr = lr_at(run.it, cfg, run.history.planned_iters)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, run.batch = forward_backward(wrapped, run.batch, train_batches, cfg, setup)
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss is {loss} at iteration {run.it}; stopped before updating the weights"
                        + (f" (last good checkpoint: {run.path()})" if run.out_dir is not None else ""))
                norm = clip_and_step(model, optimizer, setup.scaler, cfg.grad_clip)
                if setup.device_type == "cuda":
                    torch.cuda.synchronize()
                dt = clock() - t0
                spent_s += dt
                tps = tokens_per_step / dt
                run.history.steps.append({"iter": run.it, "loss": loss, "lr": lr, "grad_norm": norm, "ms": dt * 1000,
                                          "tokens_per_s": tps,
                                          "mfu": mfu_of(tps, setup.peak_flops, run.batch[0].shape[1]) if mfu_of else None})
                postfix["loss"] = f"{loss:.4f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
                run.it += 1
                if not timed and run.it - start >= CALIBRATION_STEPS and run.total_iters is not None:
                    timed, line = True, _timing_line(run, start, mfu_of is not None)
                    if show:
                        bar.write(line)
        best = run.history.best_eval
        if cfg.keep_best and best is not None and best is not run.history.evals[-1]:
            load_weights(model, run.best_weights, run.path(BEST_CHECKPOINT_NAME) or "the best weights")
    finally:
        bar.close()
        leave_distributed(setup.dist)
    return run.history
