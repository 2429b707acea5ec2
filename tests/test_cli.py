"""The command line: the main job end to end, and one-line errors for bad arguments."""
from __future__ import annotations

import subprocess
import sys

import pytest


def nanogpt(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nanogpt", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_data_command_reports_the_corpus():
    done = nanogpt("data")
    assert done.returncode == 0, done.stderr
    for figure in ("1,115,394", "65 characters", "338,025", "3.30", "1,003,854 / 111,540"):
        assert figure in done.stdout


@pytest.mark.parametrize("args,message", [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--max-iters", "-5"], "--max-iters: must be a non-negative integer"),
    (["sample", "--checkpoint", "/no/such/dir"], "no checkpoint at /no/such/dir"),
    (["sample"], "the following arguments are required: --checkpoint"),
    (["train", "--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_arguments_give_one_line_errors(args, message):
    done = nanogpt(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"nanogpt: error: {message}"] or (
        len(done.stderr.strip().splitlines()) == 1 and message in done.stderr)


def test_train_resume_and_sample(tmp_path):
    out = tmp_path / "run"
    done = nanogpt("train", "--max-iters", "2", "--eval-iters", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "CPU-sized preset 'shakespeare-char-cpu'" in done.stdout
    assert (out / "ckpt.pt").exists() and (out / "summary.json").exists()
    done = nanogpt("train", "--max-iters", "3", "--eval-iters", "1", "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr
    done = nanogpt("sample", "--checkpoint", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "50",
                   "--temperature", "0.8", "--top-k", "10")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ROMEO:") and len(done.stdout.rstrip("\n")) == len("ROMEO:") + 50
