"""The trainer: schedule, reproducibility, exact resume, divergence, evaluation, DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nanogpt import GPT, GPTConfig
from nanogpt.bigram import BigramLanguageModel
from nanogpt.data import RandomBatches
from nanogpt.train import NonFiniteLossError, TrainConfig, evaluate_full, load_checkpoint, lr_at, train

TINY = GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
# A learnable stream: mostly +5 steps modulo 37, with noise.
TOKENS = (torch.arange(5_000) * 5 + torch.randint(0, 3, (5_000,), generator=torch.Generator().manual_seed(0))) % 37


def run(max_iters: int, out_dir=None, resume=False, model_cls=GPT, **overrides):
    torch.manual_seed(0)
    model = model_cls(TINY)
    cfg = TrainConfig(**{**dict(max_iters=max_iters, batch_size=4, learning_rate=3e-3, warmup_iters=2,
                                lr_decay_iters=12, eval_interval=3, eval_iters=2, device="cpu"), **overrides})
    batches = RandomBatches(TOKENS, 4, 16, seed=3)
    evals = {"train": RandomBatches(TOKENS, 4, 16, seed=1), "val": RandomBatches(TOKENS, 4, 16, seed=2)}
    history = train(model, batches, evals, cfg, out_dir=out_dir, resume=resume, progress=False)
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
    state = torch.load(tmp_path / "ckpt.pt", weights_only=False)
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


def _launch(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_ddp_two_processes_match_one_process_with_double_accumulation(tmp_path):
    worker = str(Path(__file__).with_name("ddp_worker.py"))
    _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             worker, str(tmp_path / "ddp.json"), "1"])
    _launch([sys.executable, worker, str(tmp_path / "single.json"), "2"])
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    single = json.loads((tmp_path / "single.json").read_text())
    assert len(ddp) == len(single) == 8
    assert ddp == pytest.approx(single, abs=1e-5)
    assert ddp[-1] < ddp[0]


def test_time_budget_stops_on_time_and_ends_the_schedule():
    _, history = run(10**6, time_budget_s=1.5, eval_interval=10**6, lr_decay_iters=None)
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
    from nanogpt.train import default_peak_flops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: gpu)
    assert default_peak_flops("cuda", dtype) == peak
    assert default_peak_flops("cpu", torch.float32) is None
