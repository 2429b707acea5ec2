"""The trainer: schedule, reproducibility, exact resume, interruption, checkpoints, precision, evaluation.

The multi-process DDP tests are in test_ddp.py."""
from __future__ import annotations

import os
import pickle
import signal
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nanogpt import GPT, GPTConfig
from nanogpt.bigram import BigramLanguageModel
from nanogpt.data import RandomBatches
from nanogpt.train import (
    CheckpointError,
    NonFiniteLossError,
    Precision,
    TrainConfig,
    TrainingInterrupted,
    default_peak_flops,
    eval_batches,
    evaluate_full,
    load_checkpoint,
    loss_by_position,
    lr_at,
    precision_plan,
    resolve_dtype,
    save_checkpoint,
    set_up,
    train,
)

TINY = GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
# A learnable stream: mostly +5 steps modulo 37, with noise.
TOKENS = (torch.arange(5_000) * 5 + torch.randint(0, 3, (5_000,), generator=torch.Generator().manual_seed(0))) % 37


def run(max_iters: int | None, out_dir=None, resume=False, model_cls=GPT, model_config=TINY, evals=None,
        progress=False, **overrides):
    torch.manual_seed(0)
    model = model_cls(model_config)
    cfg = TrainConfig(**{**dict(max_iters=max_iters, batch_size=4, learning_rate=3e-3, warmup_iters=2,
                                lr_decay_iters=12, eval_interval=3, eval_iters=2, device="cpu"), **overrides})
    batches = RandomBatches(TOKENS, 4, 16, seed=3)
    evals = evals or {"train": RandomBatches(TOKENS, 4, 16, seed=1), "val": RandomBatches(TOKENS, 4, 16, seed=2)}
    history = train(model, batches, evals, cfg, out_dir=out_dir, resume=resume, progress=progress)
    return model, history


def test_learning_rate_schedule():
    cfg = TrainConfig(max_iters=1000, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100)
    assert lr_at(0, cfg) == pytest.approx(1e-3 / 101)
    assert lr_at(99, cfg) == pytest.approx(1e-3 * 100 / 101)
    assert lr_at(100, cfg) == pytest.approx(1e-3)
    assert lr_at(550, cfg) == pytest.approx(5.5e-4)  # half way down the cosine
    assert lr_at(1000, cfg) == lr_at(5000, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(i, cfg) for i in range(100, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


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


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run(4, out_dir=tmp_path, resume=True)


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


def test_evaluate_full_counts_every_position_once():
    torch.manual_seed(0)
    model = BigramLanguageModel(37)  # context-free, so windows cannot change any prediction
    tokens = TOKENS[:1_003]
    expected = F.cross_entropy(model(tokens[None, :-1])[0][0], tokens[1:]).item()
    assert evaluate_full(model, tokens, block_size=7, batch_size=5) == pytest.approx(expected, rel=1e-6)


def test_loss_by_position_splits_the_full_split_loss_by_context():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    tokens = TOKENS[: 16 * 20 + 1]  # 20 whole windows, no tail
    curve = loss_by_position(model, tokens, block_size=16, batch_size=6)
    assert curve.shape == (16,)
    assert curve.mean().item() == pytest.approx(evaluate_full(model, tokens, block_size=16), rel=1e-5)
    # By hand: the loss at position 3 of every window.
    x = tokens[:-1].view(20, 16)
    y = tokens[1:].view(20, 16)
    logits, _ = model(x)
    assert curve[3].item() == pytest.approx(F.cross_entropy(logits[:, 3], y[:, 3]).item(), rel=1e-5)


def test_time_budget_stops_on_time_and_ends_the_schedule():
    _, history = run(None, time_budget_s=1.5, eval_interval=10**6, lr_decay_iters=None)
    trained = sum(row["ms"] for row in history.steps) / 1000
    last_step_s = history.steps[-1]["ms"] / 1000
    assert 1.5 <= trained < 1.5 + last_step_s + 1e-9  # stopped at the first step past the budget
    assert history.steps[-1]["lr"] < 3e-3 * 0.15      # the cosine has (nearly) reached min_lr
    assert [e["iter"] for e in history.evals] == [0, len(history.steps)]
    with pytest.raises(ValueError, match="time_budget_s"):
        TrainConfig(time_budget_s=0)


@pytest.mark.parametrize("gpu,dtype,peak", [
    ("NVIDIA A100-SXM4-80GB", torch.float32, 156e12),   # fp32 runs on TF32 tensor cores
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.5e12),
    ("NVIDIA H200", torch.float16, 989.5e12),
    ("Tesla T4", torch.float16, 65e12),
    ("NVIDIA GeForce RTX 4090", torch.bfloat16, None),  # unknown: the caller passes a measured peak
])
def test_default_peak_flops_reads_the_data_sheet_table(gpu, dtype, peak, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: gpu)
    assert default_peak_flops("cuda", dtype) == peak
    assert default_peak_flops("cpu", torch.float32) is None


def test_a_run_without_a_step_cap_needs_a_time_budget():
    with pytest.raises(ValueError, match="time_budget_s"):
        TrainConfig(max_iters=None)
    cfg = TrainConfig(max_iters=None, time_budget_s=10, warmup_iters=10)
    assert lr_at(5, cfg) == pytest.approx(1e-3 * 6 / 11)  # warmup needs no end
    assert lr_at(50, cfg, time_fraction=1.0) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="time_fraction"):
        lr_at(50, cfg)  # after warmup, only the clock says where the cosine is


# --- interruption -------------------------------------------------------------------------

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


# --- checkpoints --------------------------------------------------------------------------

class RunsCode:
    """Pickles to a call of exec: loading it with plain pickle writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "shared" / "ckpt.pt"
    path.parent.mkdir()
    torch.save({"model": RunsCode(marker), "model_spec": {"class": "GPT", "config": TINY.to_dict()}}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="could run code"):
        run(4, out_dir=path.parent, resume=True)
    assert not marker.exists()
    # The payload is live: a loader without weights_only would have run it.
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(RunsCode(marker), f)
    pickle.loads((tmp_path / "plain.pkl").read_bytes())
    assert marker.read_text() == "pwned"


def test_no_unsafe_load_is_left_in_the_package():
    package = Path(__file__).resolve().parent.parent / "nanogpt"
    offenders = [str(p) for p in package.rglob("*.py") if "weights_only=False" in p.read_text(encoding="utf-8")]
    assert offenders == []


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("good")
    run(3, out_dir=folder)
    return (folder / "ckpt.pt").read_bytes()


@pytest.mark.parametrize("damage,message", [
    (lambda good: good[: len(good) // 2], "truncated"),
    (lambda good: b"", "truncated"),
    (lambda good: b"hello, I am a text file\n", "truncated or not a PyTorch checkpoint"),
    ("a list", "holds a list"),
    ("no keys", "lacks model, model_spec"),
], ids=["half-a-file", "empty", "text", "not-a-dict", "missing-keys"])
def test_unusable_files_raise_checkpoint_error(tmp_path, checkpoint_bytes, damage, message):
    path = tmp_path / "ckpt.pt"
    if damage == "a list":
        torch.save([1, 2, 3], path)
    elif damage == "no keys":
        torch.save({"iter": 3}, path)
    else:
        path.write_bytes(damage(checkpoint_bytes))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        run(6, out_dir=tmp_path, resume=True)


def test_weights_that_do_not_fit_their_spec_raise_checkpoint_error(tmp_path, checkpoint_bytes):
    (tmp_path / "ckpt.pt").write_bytes(checkpoint_bytes)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    state["model_spec"]["config"]["n_embd"] = 64  # the weights are still 32 wide
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path)


def test_resume_refuses_another_model_or_schedule_and_says_what_to_do(tmp_path):
    run(3, out_dir=tmp_path)
    wider = GPTConfig(**{**TINY.to_dict(), "n_embd": 64})
    with pytest.raises(CheckpointError, match=r"model n_embd: saved 32, now 64.*new --out"):
        run(6, out_dir=tmp_path, resume=True, model_config=wider)
    with pytest.raises(CheckpointError) as info:
        run(6, out_dir=tmp_path, resume=True, learning_rate=1e-3, lr_decay_iters=None)
    assert "learning_rate: saved 0.003, now 0.001" in str(info.value)
    assert "lr_decay_iters: saved 12, now 6" in str(info.value)  # the cosine would end elsewhere
    # Where to stop and how to evaluate may change.
    _, history = run(6, out_dir=tmp_path, resume=True, eval_interval=2, eval_iters=1)
    assert [e["iter"] for e in history.evals] == [0, 3, 4, 6]


def test_resume_refuses_a_checkpoint_of_another_number_of_processes(tmp_path):
    run(3, out_dir=tmp_path)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    state["ranks"] = state["ranks"] * 2  # as if two DDP processes had saved it
    torch.save(state, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="processes: saved by 2, now 1"):
        run(6, out_dir=tmp_path, resume=True)


def test_a_failed_save_leaves_no_temporary_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt.pt", {"iter": 1})
    with pytest.raises(Exception):  # a lambda cannot be pickled
        save_checkpoint(path, {"iter": 2, "oops": lambda: None})
    assert list(tmp_path.iterdir()) == [path]

    def half_a_file_then_disk_full(obj, f):
        f.write(b"PK\x03\x04 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_a_file_then_disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"iter": 3})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == [path]
    assert torch.load(path, weights_only=True) == {"iter": 1}


def test_save_flushes_to_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    save_checkpoint(tmp_path / "ckpt.pt", {"iter": 1})
    assert events[:2] == ["fsync", "replace"]   # the file's data is on disk before it gets the name
    if os.name == "posix":
        assert events == ["fsync", "replace", "fsync"]  # and then the folder's entry


# --- precision ----------------------------------------------------------------------------

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


def _pretend_gpu(monkeypatch, name: str, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    # Every GPU says yes when emulation counts, as CUDA does for a T4.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or capability >= (8, 0))


@pytest.mark.parametrize("name,capability,expected,peak", [
    ("Tesla T4", (7, 5), Precision(torch.float16, use_scaler=True, tf32=False), 65e12),
    ("NVIDIA A100-SXM4-40GB", (8, 0), Precision(torch.bfloat16, use_scaler=False, tf32=True), 312e12),
    ("NVIDIA H100 80GB HBM3", (9, 0), Precision(torch.bfloat16, use_scaler=False, tf32=True), 989.5e12),
])
def test_precision_plan_on_gpus(monkeypatch, name, capability, expected, peak):
    _pretend_gpu(monkeypatch, name, capability)
    plan = precision_plan("cuda")
    assert plan[:3] == expected[:3] and plan.reason  # dtype, scaler, TF32; and a reason to print
    assert resolve_dtype("cuda") == expected.dtype
    assert default_peak_flops("cuda", plan.dtype) == peak
    # An explicit dtype wins; fp16 always comes with the scaler; TF32 follows the GPU.
    assert precision_plan("cuda", "float16")[:3] == (torch.float16, True, expected.tf32)
    assert precision_plan("cuda", "float32")[:3] == (torch.float32, False, expected.tf32)
    # set_up applies the plan: the scaler, the TF32 switches and the MFU peak.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        setup = set_up(TrainConfig(device="cuda"))
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (expected.tf32,) * 2
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert setup.precision == plan
    assert setup.scaler.is_enabled() == expected.use_scaler
    assert setup.peak_flops == peak


@pytest.mark.parametrize("flags, width, expected", [
    ({"amx_bf16"}, 384, torch.bfloat16),     # AMX: bf16 at every width
    ({"amx_bf16"}, 64, torch.bfloat16),
    ({"avx512_bf16"}, 384, torch.bfloat16),  # AVX512-BF16 alone: from CPU_BF16_MIN_WIDTH
    ({"avx512_bf16"}, None, torch.bfloat16), # width unknown: the units decide
    ({"avx512_bf16"}, 128, torch.float32),   # narrower: not known to pay there
    (set(), 384, torch.float32),             # no bf16 units: bf16 would be emulated, slowly
    (set(), 128, torch.float32),
])
def test_precision_plan_on_cpu(monkeypatch, flags, width, expected):
    import nanogpt.train as T

    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: bool(flags))
    monkeypatch.setattr(T, "cpu_flags", lambda: {"avx512f", *flags})
    plan = precision_plan("cpu", width=width)
    assert (plan.dtype, plan.use_scaler, plan.tf32) == (expected, False, False)
    assert plan.reason.startswith("bf16" if expected == torch.bfloat16 else "fp32")
    assert resolve_dtype("cpu", "auto", width) == expected
    assert set_up(TrainConfig(device="cpu"), width).precision == plan
    # An explicit dtype wins on every CPU.
    assert precision_plan("cpu", "float32", width).dtype == torch.float32
    assert precision_plan("cpu", "bfloat16", width).dtype == torch.bfloat16
    assert precision_plan("cpu", "float16", width).use_scaler


@pytest.mark.slow
def test_bf16_training_matches_fp32_within_a_hundredth():
    # The same seeds, data and steps in fp32 and with bf16 autocast, scored on the whole
    # validation split in fp32: bf16's rounding must not cost the model its loss.
    from nanogpt.presets import prepare_char_data

    data = prepare_char_data()
    config = GPTConfig(block_size=32, vocab_size=data.tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=64)
    val = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = GPT(config)
        cfg = TrainConfig(max_iters=1000, batch_size=16, learning_rate=3e-3, warmup_iters=20, eval_interval=1000,
                          eval_iters=1, device="cpu", dtype=dtype)
        train(model, RandomBatches(data.train, 16, 32, seed=3), {"val": RandomBatches(data.val, 16, 32, seed=2)},
              cfg, progress=False)
        val[dtype] = evaluate_full(model, data.val[:20_000], 32)
    assert val["float32"] < 2.2  # past the bigram plateau (2.5), where small differences decide when it escapes
    assert abs(val["bfloat16"] - val["float32"]) < 0.01, val


# --- evaluation in proportion -------------------------------------------------------------

class CountingBatches(RandomBatches):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def next_batch(self):
        self.calls += 1
        return super().next_batch()


def test_eval_batches_shrink_for_short_runs():
    assert eval_batches(TrainConfig(max_iters=5000, eval_iters=200)) == 200
    assert eval_batches(TrainConfig(max_iters=40, eval_iters=200)) == 20  # half the steps
    assert eval_batches(TrainConfig(max_iters=4, eval_iters=200)) == 10   # but at least 10
    assert eval_batches(TrainConfig(max_iters=4, eval_iters=3)) == 3      # never more than asked
    assert eval_batches(TrainConfig(max_iters=None, time_budget_s=60, eval_iters=200)) == 200


def test_a_short_run_evaluates_in_proportion_shows_it_and_times_it(capsys):
    evals = {"train": CountingBatches(TOKENS, 4, 16, seed=1), "val": CountingBatches(TOKENS, 4, 16, seed=2)}
    _, history = run(4, evals=evals, eval_iters=200, eval_interval=100, progress=True)
    assert [e["iter"] for e in history.evals] == [0, 4]
    assert [source.calls for source in evals.values()] == [2 * 10, 2 * 10]  # not 2 * 200
    assert 0 < history.eval_seconds
    assert history.to_dict()["eval_seconds"] == history.eval_seconds
    assert "evaluating" in capsys.readouterr().err


# --- on a real GPU (skipped elsewhere) ----------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_precision_plan_on_this_gpu():
    native_bf16 = torch.cuda.get_device_capability() >= (8, 0)
    plan = precision_plan("cuda")
    assert plan.dtype == (torch.bfloat16 if native_bf16 else torch.float16)
    assert plan.use_scaler == (not native_bf16)


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


@pytest.mark.parametrize("capability, flags, native", [
    ("AVX512", {"avx512f", "avx512_bf16"}, True),
    ("AVX512", {"avx512f", "amx_bf16", "amx_tile"}, True),
    ("AVX512", {"avx512f"}, False),          # AVX-512 without bf16 instructions
    ("AVX2", {"avx2", "avx512_bf16"}, False),  # torch told to use its AVX2 kernels
    ("DEFAULT", set(), False),
])
def test_cpu_has_native_bf16_reads_capability_and_flags(monkeypatch, capability, flags, native):
    import nanogpt.train as T

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(T, "cpu_flags", lambda: flags)
    assert T.cpu_has_native_bf16() is native


# --- keep_best: end with the weights of the lowest validation estimate --------------------

MEMORISE = torch.randint(0, 37, (400,), generator=torch.Generator().manual_seed(5))  # noise: nothing to generalise
UNSEEN = torch.randint(0, 37, (400,), generator=torch.Generator().manual_seed(6))


def overfit(max_iters: int, out_dir=None, resume=False, **overrides):
    """A model that can only memorise: its val estimate is lowest at the start and worsens."""
    evals = {"train": RandomBatches(MEMORISE, 4, 16, seed=1), "val": RandomBatches(UNSEEN, 4, 16, seed=2)}
    torch.manual_seed(0)
    model = GPT(replace(TINY, dropout=0.0))
    cfg = TrainConfig(max_iters=max_iters, batch_size=4, learning_rate=1e-2, warmup_iters=1, lr_decay_iters=40,
                      eval_interval=10, eval_iters=4, device="cpu", **overrides)
    history = train(model, RandomBatches(MEMORISE, 4, 16, seed=3), evals, cfg, out_dir=out_dir, resume=resume,
                    progress=False)
    return model, history


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_keep_best_ends_with_the_best_weights_and_saves_them(tmp_path):
    last, _ = overfit(40, tmp_path / "last")
    model, history = overfit(40, tmp_path / "best", keep_best=True)
    best = history.best_eval
    assert history.evals[-1]["val"] > best["val"] and best["iter"] < 40  # the run overfitted past its best
    saved, _, state = load_checkpoint(tmp_path / "best" / "best.pt")
    assert state["iter"] == best["iter"] and weights_equal(model, saved)
    assert load_checkpoint(tmp_path / "best")[2]["iter"] == 40  # ckpt.pt: the last step, to resume from
    assert weights_equal(last, load_checkpoint(tmp_path / "best")[0])  # training itself is unchanged
    assert not weights_equal(model, last)
    assert not (tmp_path / "last" / "best.pt").exists()  # without keep_best: no best.pt, the last weights


def test_keep_best_after_a_resume_restores_the_best_from_disk(tmp_path):
    straight, _ = overfit(40, keep_best=True)
    overfit(20, tmp_path, keep_best=True)  # the best (step 0) is before the resume
    resumed, history = overfit(40, tmp_path, resume=True, keep_best=True)
    assert history.best_eval["iter"] < 20 and weights_equal(resumed, straight)


def test_best_eval_is_none_without_a_val_source():
    _, history = run(3, evals={"train": RandomBatches(TOKENS, 4, 16, seed=1)}, keep_best=True)
    assert history.best_eval is None  # and nothing to restore: the run ends as it is
