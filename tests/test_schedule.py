"""The learning-rate schedule, evaluation sizes, and time-budget runs."""
from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest

import nanogpt.train
from nanogpt.schedule import (CALIBRATION_STEPS, RETIME_AT, calibration_steps, eval_batches, evaluations_left,
                              expected_train_seconds, fix_length, lr_at, planned_steps, retime_due)
from nanogpt.stopping import TrainingInterrupted
from nanogpt.train import TrainConfig
from train_helpers import run


def test_learning_rate_schedule():
    cfg = TrainConfig(max_iters=1000, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100)
    assert lr_at(0, cfg) == pytest.approx(1e-3 / 101)
    assert lr_at(99, cfg) == pytest.approx(1e-3 * 100 / 101)
    assert lr_at(100, cfg) == pytest.approx(1e-3)
    assert lr_at(550, cfg) == pytest.approx(5.5e-4)  # half way down the cosine
    assert lr_at(1000, cfg) == lr_at(5000, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(i, cfg) for i in range(100, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_a_run_without_a_step_cap_needs_a_time_budget():
    with pytest.raises(ValueError, match="time_budget_s"):
        TrainConfig(max_iters=None)
    with pytest.raises(ValueError, match="time_budget_s"):
        TrainConfig(time_budget_s=0)
    cfg = TrainConfig(max_iters=None, time_budget_s=10, warmup_iters=10)
    assert lr_at(5, cfg) == pytest.approx(1e-3 * 6 / 11)  # warmup needs no end
    assert lr_at(15, cfg) == pytest.approx(1e-3)           # timing the first steps: the top of the cosine
    assert lr_at(15, cfg, total_iters=15) == pytest.approx(1e-4)  # once fixed, the cosine ends there
    assert lr_at(12, cfg, total_iters=14) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 2)) * 9e-4)


def test_planned_steps_fill_the_budget_from_the_median_step_after_the_first_few():
    cfg = TrainConfig(max_iters=None, time_budget_s=1.0, warmup_iters=5)
    ms = [300.0, 90.0, 40.0] + [10.0, 12.0, 10.0, 11.0, 10.0] * 4  # slow first steps (allocation, compile)
    spent_s = sum(ms) / 1000                                        # 0.644 s of the budget
    assert planned_steps(cfg, len(ms), ms) == len(ms) + int((1.0 - spent_s) / 0.010)
    assert planned_steps(replace(cfg, max_iters=30), len(ms), ms) == 30  # max_iters caps it
    assert planned_steps(cfg, 5, [2000.0] * 5) == 5                      # the budget is spent: no more


def test_fix_length_waits_for_the_timing_steps_or_a_spent_budget():
    cfg = TrainConfig(max_iters=None, time_budget_s=1.0, warmup_iters=2)
    assert calibration_steps(cfg) == CALIBRATION_STEPS                    # at least this many, past warmup
    assert calibration_steps(replace(cfg, warmup_iters=100)) == 100
    assert fix_length(cfg, CALIBRATION_STEPS - 1, [5.0] * (CALIBRATION_STEPS - 1)) is None
    assert fix_length(cfg, CALIBRATION_STEPS, [5.0] * CALIBRATION_STEPS) == 200  # 0.1 s done, 0.9 s at 5 ms
    assert fix_length(cfg, 3, [400.0] * 3) == 3                           # spent before the timing ended


@pytest.fixture
def fake_clock(monkeypatch):
    """Every reading of the trainer's clock is 5 ms after the last: each step and evaluation takes 5 ms."""
    ticks = itertools.count()
    monkeypatch.setattr(nanogpt.train, "clock", lambda: next(ticks) * 0.005)


def test_a_time_budget_run_fixes_its_length_by_timing_and_ends_the_schedule(fake_clock):
    _, history = run(None, time_budget_s=0.5025, eval_interval=40, lr_decay_iters=None)
    # 20 timed steps of 5 ms leave 0.4025 s: 80 more steps.
    assert history.planned_iters == CALIBRATION_STEPS + 80 == len(history.steps)
    assert history.steps[-1]["lr"] == pytest.approx(lr_at(99, TrainConfig(max_iters=100, learning_rate=3e-3,
                                                                          warmup_iters=2)))
    assert history.steps[-1]["lr"] < 3e-3 * 0.11  # the cosine has (nearly) reached min_lr
    assert [e["iter"] for e in history.evals] == [0, 40, 80, 100]


def test_a_time_budget_run_repeats_and_resumes_exactly(fake_clock, tmp_path, monkeypatch):
    import os
    import signal

    from nanogpt import GPT

    budget = dict(time_budget_s=0.5025, eval_interval=40, lr_decay_iters=None)
    _, straight = run(None, **budget)
    _, again = run(None, **budget)
    assert again.column("loss") == straight.column("loss") and again.planned_iters == straight.planned_iters
    assert straight.length_fixed_at == [20, 40, 60]  # fixed, then re-timed at 10% and 50% of the budget
    for stop_at in (10, 50, 70):  # while timing its first steps, between the re-timings, after them
        forward, calls = GPT.forward, []

        def signalling_forward(self, *args, **kwargs):
            if self.training:
                calls.append(1)
                if len(calls) == stop_at:
                    os.kill(os.getpid(), signal.SIGINT)
            return forward(self, *args, **kwargs)

        monkeypatch.setattr(GPT, "forward", signalling_forward)
        with pytest.raises(TrainingInterrupted):
            run(None, out_dir=tmp_path / str(stop_at), **budget)
        monkeypatch.setattr(GPT, "forward", forward)
        _, resumed = run(None, out_dir=tmp_path / str(stop_at), resume=True, **budget)
        assert resumed.planned_iters == straight.planned_iters
        assert resumed.length_fixed_at == straight.length_fixed_at
        assert resumed.column("loss") == straight.column("loss")
        assert resumed.column("lr") == straight.column("lr")


def test_re_timing_waits_for_its_share_of_the_budget_and_fresh_steps():
    cfg = TrainConfig(max_iters=None, time_budget_s=10.0, warmup_iters=2)
    assert RETIME_AT == (0.1, 0.5)
    assert not retime_due(cfg, 100, 5.0, [])                       # the length was never fixed
    assert not retime_due(cfg, 30, 0.9, [20])                      # under 10% of the budget spent
    assert not retime_due(cfg, 20 + CALIBRATION_STEPS - 1, 1.0, [20])  # too few steps since the fix
    assert retime_due(cfg, 20 + CALIBRATION_STEPS, 1.0, [20])
    assert not retime_due(cfg, 200, 4.9, [20, 40]) and retime_due(cfg, 200, 5.0, [20, 40])
    assert not retime_due(cfg, 900, 9.0, [20, 40, 200])            # twice is all
    ms = [5.0] * 40 + [10.0] * 21
    assert planned_steps(cfg, 61, ms, since=40) == 61 + int((10.0 - sum(ms) / 1000) / 0.010)  # the recent steps' rate


def test_a_run_whose_steps_slow_down_still_ends_near_its_budget(monkeypatch):
    # Each reading of the clock is a tick later, and a step is timed between two readings: steps
    # take 2.5 ms until the clock reads 0.25 s (step 50), then 5 ms. Timed only at the start, the
    # run would plan 400 steps and take about 1.9 s; re-timed at 50% of the budget, it ends near 1 s.
    now = [0.0]

    def slowing_clock() -> float:
        now[0] += 0.0025 if now[0] < 0.25 else 0.005
        return now[0]

    monkeypatch.setattr(nanogpt.train, "clock", slowing_clock)
    _, history = run(None, time_budget_s=1.0, eval_interval=1000, lr_decay_iters=None)
    assert len(history.length_fixed_at) == 3 and history.length_fixed_at[0] == CALIBRATION_STEPS
    assert history.planned_iters == len(history.steps) < 250
    assert history.train_seconds == pytest.approx(1.0, abs=0.03)


def test_eval_batches_shrink_for_short_runs():
    assert eval_batches(TrainConfig(max_iters=5000, eval_iters=200)) == 200
    assert eval_batches(TrainConfig(max_iters=40, eval_iters=200)) == 20  # half the steps
    assert eval_batches(TrainConfig(max_iters=4, eval_iters=200)) == 10   # but at least 10
    assert eval_batches(TrainConfig(max_iters=4, eval_iters=3)) == 3      # never more than asked
    assert eval_batches(TrainConfig(max_iters=None, time_budget_s=60, eval_iters=200)) == 200


def test_the_run_times_its_first_steps_and_says_what_the_rest_will_take(fake_clock, capsys):
    _, history = run(100, eval_interval=40, progress=True)
    # Every step takes 5 ms on the fake clock: the 100 steps take 0.5 s, as the timing expected.
    assert history.expected_seconds == pytest.approx(history.train_seconds) == pytest.approx(0.5)
    err = capsys.readouterr()
    line = next(line for line in (err.out + err.err).splitlines() if line.startswith("timing:"))
    assert "5.0 ms a step" in line and "80 steps to go" in line
    assert evaluations_left(20, 100, 40) == 3 and evaluations_left(80, 100, 40) == 1
    assert evaluations_left(100, 100, 40) == 0 and evaluations_left(0, 80, 40) == 2


def test_expected_train_seconds_skips_the_first_steps_and_counts_the_rest_at_the_median():
    ms = [5000.0, 30.0, 20.0] + [10.0] * 17  # a first step that compiles
    assert expected_train_seconds(ms, 20, 120) == pytest.approx(sum(ms) / 1000 + 100 * 0.010)
