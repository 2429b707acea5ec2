"""How long a run trains and at what learning rate: warmup, cosine, and a time budget.

The learning rate warms up linearly, then follows a cosine down to ``min_lr``. A run with a
time budget times its warmup and then fixes its number of steps, re-timing it twice on the
way; between those points the schedule is a function of the step alone, and the points are
kept in the run's history, so a resumed run follows it exactly.
"""
from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .train import TrainConfig

# A time-budget run times its first steps (all of warmup, at least this many), skipping the
# first few (allocation, compilation), then fixes its number of steps from the median.
CALIBRATION_STEPS = 20
CALIBRATION_SKIP = 3
# Twenty steps are a small sample, and a shared machine's speed drifts over minutes: the run
# fixes its length again when these fractions of the budget are spent, from the steps since
# it last did.
RETIME_AT = (0.1, 0.5)


def calibration_steps(cfg: TrainConfig) -> int:
    """Steps a time-budget run takes before it fixes its length (its lr does not depend on it)."""
    return max(cfg.warmup_iters, CALIBRATION_STEPS)


def lr_at(it: int, cfg: TrainConfig, total_iters: int | None = None) -> float:
    """Learning rate at step ``it``: linear warmup, cosine decay to ``min_lr``, then flat.

    The cosine ends at ``lr_decay_iters``, else ``max_iters``; a time-budget run passes the
    ``total_iters`` it fixed by timing (until then, past warmup, the cosine has not started).
    """
    min_lr = cfg.learning_rate / 10 if cfg.min_lr is None else cfg.min_lr
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    decay_iters = total_iters if cfg.time_budget_s is not None else (cfg.lr_decay_iters or cfg.max_iters)
    if decay_iters is None:
        return cfg.learning_rate  # still timing the first steps: the top of the cosine
    if it >= decay_iters:
        return min_lr
    progress = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - min_lr)


def median_step_s(step_ms: list[float]) -> float:
    """The median step in seconds, after the first ``CALIBRATION_SKIP`` (allocation, warm-up, compilation)."""
    return statistics.median(step_ms[CALIBRATION_SKIP:] or step_ms) / 1000


def planned_steps(cfg: TrainConfig, done: int, step_ms: list[float], since: int = 0) -> int:
    """How many steps a time-budget run takes in all, from the times of its ``done`` steps so far.

    The median step fills the rest of the budget: of all steps after the first
    ``CALIBRATION_SKIP``, or of those from step ``since`` on. ``max_iters``, if set, caps the total.
    """
    spent_s = sum(step_ms) / 1000
    step_s = statistics.median(step_ms[since:]) / 1000 if since else median_step_s(step_ms)
    left = max(0, math.floor((cfg.time_budget_s - spent_s) / step_s))
    total = done + left
    return min(total, cfg.max_iters) if cfg.max_iters is not None else total


def fix_length(cfg: TrainConfig, done: int, step_ms: list[float]) -> int | None:
    """A time-budget run's number of steps, once its ``done`` steps (timed ``step_ms``) suffice.

    None while it is still timing its first ``calibration_steps``; a budget spent before that
    ends the run where it is.
    """
    if sum(step_ms) / 1000 >= cfg.time_budget_s:
        return done
    return planned_steps(cfg, done, step_ms) if done >= calibration_steps(cfg) else None


def retime_due(cfg: TrainConfig, done: int, spent_s: float, fixed_at: list[int]) -> bool:
    """Whether a time-budget run whose length was fixed at the steps ``fixed_at`` reaches its next
    re-timing point (``RETIME_AT``) after ``done`` steps and ``spent_s`` seconds of them, with at
    least ``CALIBRATION_STEPS`` timed since the last fix."""
    retimed = len(fixed_at) - 1
    return (bool(fixed_at) and retimed < len(RETIME_AT) and done - fixed_at[-1] >= CALIBRATION_STEPS
            and spent_s >= RETIME_AT[retimed] * cfg.time_budget_s)


def evaluations_left(done: int, total: int, eval_interval: int) -> int:
    """Loss estimates after step ``done`` up to the end at ``total``: every ``eval_interval`` and the last."""
    if total <= done:
        return 0
    return total // eval_interval - done // eval_interval + (1 if total % eval_interval else 0)


def expected_train_seconds(step_ms: list[float], done: int, total: int) -> float:
    """Seconds of training steps a run takes in all: those spent, and the rest at the median step
    of this process (after its first ``CALIBRATION_SKIP``: allocation, warm-up, compilation)."""
    return sum(step_ms) / 1000 + (total - done) * median_step_s(step_ms)


def duration(seconds: float) -> str:
    """``seconds`` in words: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds:.0f} seconds"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"


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
