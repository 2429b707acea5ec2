"""The training loop: reproducibility, exact resume, interruption, fp16 scaling, evaluation cadence.

The multi-process DDP tests are in test_ddp.py."""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import replace

import pytest
import torch

from nanogpt import GPT
from nanogpt.checkpoint import load_checkpoint
from nanogpt.data import RandomBatches
from nanogpt.stopping import NonFiniteLossError, TrainingInterrupted
from nanogpt.train import TrainConfig, set_up, train
from train_helpers import TINY, TOKENS, needs_cuda, run


def test_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="float8")


def test_same_seed_same_history_and_loss_goes_down():
    _, a = run(12)
    _, b = run(12)
    assert a.column("loss") == b.column("loss")
    assert a.evals == b.evals
    assert [e["iter"] for e in a.evals] == [0, 3, 6, 9, 12]
    assert a.evals[-1]["train"] < a.evals[0]["train"] - 0.1


def test_resume_continues_exactly(tmp_path):
    _, straight = run(12)
    run(6, out_dir=tmp_path)                       # stop half way (the schedule is the same)
    model, resumed = run(12, out_dir=tmp_path, resume=True)
    assert resumed.column("loss") == straight.column("loss")  # dropout masks and batches too
    assert resumed.evals == straight.evals
    loaded, _, state = load_checkpoint(tmp_path)
    assert state["iter"] == 12
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def timed_precision(monkeypatch, fp32_ms: float, bf16_ms: float) -> list:
    """A CPU with bf16 units whose timed training step takes these milliseconds; returns the timings."""
    import nanogpt.precision as P
    import nanogpt.train as T

    timings = []

    def timer(model, batch_size, steps=3):
        def time_step(dtype):
            timings.append(dtype)
            return (bf16_ms if dtype == torch.bfloat16 else fp32_ms) / 1000
        return time_step

    monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(T, "cpu_step_timer", timer)
    return timings


def test_a_timed_precision_is_printed_kept_and_resumed_as_it_was(tmp_path, monkeypatch, capsys):
    timed_precision(monkeypatch, fp32_ms=30.0, bf16_ms=20.0)
    _, straight = run(12, progress=True)
    line = "precision: bf16 autocast: a step took 20.0 ms in bf16 and 30.0 ms in fp32 here (1.50x)"
    assert line in capsys.readouterr().out
    assert straight.notes == [line] and straight.autocast == "bfloat16"
    run(6, out_dir=tmp_path)
    timings = timed_precision(monkeypatch, fp32_ms=20.0, bf16_ms=30.0)  # timed now, fp32 would win
    _, resumed = run(12, out_dir=tmp_path, resume=True)
    assert timings == []                                  # a resume does not time again ...
    assert resumed.autocast == "bfloat16"                 # ... it trains as its checkpoint's run did
    assert resumed.column("loss") == straight.column("loss") and resumed.notes == [line]


def test_a_precision_not_timed_is_not_noted(monkeypatch):
    timings = timed_precision(monkeypatch, fp32_ms=30.0, bf16_ms=20.0)
    _, forced = run(3, dtype="float32")
    assert timings == [] and forced.notes == [] and forced.autocast == "float32"


class ExplodingGPT(GPT):
    """A GPT whose 8th training forward returns a NaN loss."""

    calls = 0

    def forward(self, idx, targets=None, cache=None):
        logits, loss = super().forward(idx, targets, cache)
        if self.training:
            self.calls += 1
            if self.calls >= 8:
                loss = loss * float("nan")
        return logits, loss


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match="at iteration 7"):
        run(12, out_dir=tmp_path, model_cls=ExplodingGPT)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["iter"] == 6
    model = GPT(TINY)
    model.load_state_dict(state["model"])
    _, loss = model(TOKENS[:16][None], TOKENS[1:17][None])
    assert torch.isfinite(loss)
    assert not list(tmp_path.glob("*.tmp"))


def _signal_during_training_forward(monkeypatch, signum: int, call: int, times: int = 1) -> None:
    """Make the ``call``-th training forward pass send this process ``signum`` (``times`` times)."""
    forward, calls = GPT.forward, []

    def signalling_forward(self, *args, **kwargs):
        if self.training:
            calls.append(1)
            if len(calls) == call:
                for _ in range(times):
                    os.kill(os.getpid(), signum)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GPT, "forward", signalling_forward)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_current_step_and_resume_loses_nothing(tmp_path, monkeypatch, signum):
    _, straight = run(12)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _signal_during_training_forward(monkeypatch, signum, call=5)  # in the middle of step 4 (0-based)
    with pytest.raises(TrainingInterrupted) as info:
        run(12, out_dir=tmp_path)
    monkeypatch.undo()
    assert isinstance(info.value, KeyboardInterrupt)
    assert info.value.iter == 5                               # step 4 finished; not an evaluation step
    assert info.value.checkpoint == tmp_path / "ckpt.pt"
    assert signal.Signals(signum).name in str(info.value)
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # the previous handlers are back
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter"] == 5
    _, resumed = run(12, out_dir=tmp_path, resume=True)
    assert resumed.column("loss") == straight.column("loss")  # bit for bit
    assert resumed.evals == straight.evals


def test_interrupted_without_out_dir_reports_no_checkpoint(monkeypatch):
    _signal_during_training_forward(monkeypatch, signal.SIGINT, call=2)
    with pytest.raises(TrainingInterrupted) as info:
        run(12)
    assert (info.value.iter, info.value.checkpoint) == (2, None)


def test_a_second_signal_stops_at_once(tmp_path, monkeypatch):
    _signal_during_training_forward(monkeypatch, signal.SIGINT, call=5, times=2)
    with pytest.raises(KeyboardInterrupt) as info:
        run(12, out_dir=tmp_path)
    assert not isinstance(info.value, TrainingInterrupted)
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter"] == 3  # the last evaluation's
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_training_in_another_thread_leaves_the_signal_handlers_alone():
    before = signal.getsignal(signal.SIGINT)
    errors = []
    thread = threading.Thread(target=lambda: errors.extend([None]) if run(2) else None)
    thread.start()
    thread.join()
    assert errors == [None]  # it trained (signal.signal would have raised ValueError off the main thread)
    assert signal.getsignal(signal.SIGINT) is before


def _overflow_fp16_gradients_at(monkeypatch, call: int) -> None:
    """Make the ``call``-th training forward's loss so large that its fp16 gradients overflow."""
    forward, calls = GPT.forward, []

    def overflowing_forward(self, *args, **kwargs):
        logits, loss = forward(self, *args, **kwargs)
        if self.training:
            calls.append(1)
            if len(calls) == call:
                loss = loss * 1e30  # still finite in fp32; its gradients are not in fp16
        return logits, loss

    monkeypatch.setattr(GPT, "forward", overflowing_forward)


def test_fp16_resume_restores_the_grad_scaler(tmp_path, monkeypatch):
    _overflow_fp16_gradients_at(monkeypatch, call=3)  # step 2 is skipped and the loss scale halves
    _, straight = run(12, dtype="float16")
    _overflow_fp16_gradients_at(monkeypatch, call=3)
    run(6, out_dir=tmp_path, dtype="float16")
    monkeypatch.undo()
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["scaler"]["scale"] == 2.0**15
    _, resumed = run(12, out_dir=tmp_path, resume=True, dtype="float16")
    assert resumed.column("loss") == straight.column("loss")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["scaler"]["scale"] == 2.0**15  # not reset to 2**16


class CountingBatches(RandomBatches):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def next_batch(self):
        self.calls += 1
        return super().next_batch()


def test_a_short_run_evaluates_in_proportion_shows_it_and_times_it(capsys):
    evals = {"train": CountingBatches(TOKENS, 4, 16, seed=1), "val": CountingBatches(TOKENS, 4, 16, seed=2)}
    _, history = run(4, evals=evals, eval_iters=200, eval_interval=100, progress=True)
    assert [e["iter"] for e in history.evals] == [0, 4]
    assert [source.calls for source in evals.values()] == [2 * 10, 2 * 10]  # not 2 * 200
    assert 0 < history.eval_seconds
    assert history.to_dict()["eval_seconds"] == history.eval_seconds
    assert "evaluating" in capsys.readouterr().err


@needs_cuda
@pytest.mark.parametrize("dtype", ["auto", "float16"])
def test_cuda_resume_continues_the_run(tmp_path, dtype):
    # The CUDA RNG state and the scaler come back from the checkpoint. Attention backward kernels
    # may add in a different order from run to run, hence a tolerance instead of bit equality.
    _, straight = run(12, device="cuda", dtype=dtype)
    run(6, out_dir=tmp_path, device="cuda", dtype=dtype)
    _, resumed = run(12, out_dir=tmp_path, resume=True, device="cuda", dtype=dtype)
    assert resumed.column("loss") == pytest.approx(straight.column("loss"), rel=1e-3)
    model, _, state = load_checkpoint(tmp_path, device="cuda")
    assert state["iter"] == 12 and next(model.parameters()).is_cuda


def test_a_model_handed_in_eval_mode_still_trains_with_dropout():
    _, in_training_mode = run(6)
    torch.manual_seed(0)
    model = GPT(TINY).eval()  # as after a generation or an evaluation
    cfg = TrainConfig(max_iters=6, batch_size=4, learning_rate=3e-3, warmup_iters=2, lr_decay_iters=12,
                      eval_interval=3, eval_iters=2, device="cpu")
    evals = {"train": RandomBatches(TOKENS, 4, 16, seed=1), "val": RandomBatches(TOKENS, 4, 16, seed=2)}
    history = train(model, RandomBatches(TOKENS, 4, 16, seed=3), evals, cfg, progress=False)
    assert history.column("loss") == in_training_mode.column("loss")  # dropout was on, as in the other run


def test_under_ddp_every_rank_records_the_mean_of_the_ranks_estimates(monkeypatch):
    import nanogpt.train as T
    from nanogpt.distributed import DistInfo

    cfg = TrainConfig(max_iters=4, batch_size=4, eval_iters=2, device="cpu")
    setup = replace(set_up(cfg), dist=DistInfo(rank=1, world_size=2))
    other_rank = torch.tensor([1.0, 3.0])  # the other rank's train and val estimates
    monkeypatch.setattr(T, "mean_over_ranks", lambda value, dist: (value + other_rank) / dist.world_size)
    history = T.History()
    torch.manual_seed(0)
    model = GPT(TINY)
    evals = {"train": RandomBatches(TOKENS, 4, 16, seed=1), "val": RandomBatches(TOKENS, 4, 16, seed=2)}
    mine = T.estimate_loss(model, evals, 2)
    losses = T.evaluate(model, evals, 0, history, cfg, setup)
    assert losses == pytest.approx({"train": (mine["train"] + 1) / 2, "val": (mine["val"] + 3) / 2})
    assert history.evals == [{"iter": 0, **losses}]
