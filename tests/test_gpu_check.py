"""benchmarks/gpu_check.sh, up to the point where it needs a GPU: its plan and its refusal."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanogpt.cli import build_parser
from nanogpt.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
NINE_MINUTES = 9 * 60


def gpu_check(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("NANOGPT_DATA_DIR", "TIKTOKEN_CACHE_DIR")}
    environ.update({"PYTHON": sys.executable, **env})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=environ)


def test_dry_run_lists_the_four_steps_within_nine_minutes(tmp_path):
    done = gpu_check("--dry-run", "--logs", str(tmp_path / "logs"), NANOGPT_QUICK="1")
    assert done.returncode == 0, done.stderr
    steps = re.findall(r"^  step (\w+) \(timeout (\d+) s\): (.+)$", done.stdout, re.M)
    assert [name for name, _, _ in steps] == ["train", "bench", "chapter06", "chapter07"]
    commands = {name: shlex.split(cmd) for name, _, cmd in steps}
    for name in ("train", "bench"):  # valid command lines for python -m nanogpt, on the GPU
        words = commands[name]
        assert words[:3] == [sys.executable, "-m", "nanogpt"]
        args = build_parser().parse_args(words[3:])
        assert args.device == "cuda"
    train = build_parser().parse_args(commands["train"][3:])
    assert train.preset == "shakespeare-char" and train.max_iters is None and train.preset in PRESETS  # full size
    assert build_parser().parse_args(commands["bench"][3:]).save
    for name, notebook in (("chapter06", "06_shakespeare_run"), ("chapter07", "07_gpu_training")):
        words = commands[name]
        assert words[1:4] == ["-m", "jupyter", "nbconvert"] and "--execute" in words and "--inplace" in words
        assert (ROOT / words[-1]) == ROOT / "chapters" / f"{notebook}.ipynb" and (ROOT / words[-1]).exists()
    assert "NANOGPT_QUICK unset" in done.stdout  # real outputs, not the CI budget
    budget = int(re.search(r"total time allowed (\d+) s", done.stdout).group(1))
    assert budget <= NINE_MINUTES and sum(int(limit) for _, limit, _ in steps) <= NINE_MINUTES
    assert not (tmp_path / "logs").exists()  # a dry run writes nothing


def test_dry_run_uses_the_shared_data_folder_when_there_is_one():
    shared = ROOT.parent / "shared" / "data"
    if not shared.is_dir():
        pytest.skip("no ../shared/data beside this checkout")
    done = gpu_check("--dry-run")
    assert f"NANOGPT_DATA_DIR={ROOT}/../shared/data" in done.stdout
    assert f"TIKTOKEN_CACHE_DIR={ROOT}/../shared/data/tiktoken" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_stops_at_once_with_a_clear_message(tmp_path):
    done = gpu_check("--logs", str(tmp_path / "logs"))
    assert done.returncode == 2
    assert done.stderr.startswith("gpu_check: error: no CUDA GPU: ")
    assert "torch.cuda.is_available() is False" in done.stderr and "--dry-run" in done.stderr
    assert "step " not in done.stdout and not (tmp_path / "logs").exists()


def test_unknown_arguments_are_refused():
    done = gpu_check("--fast")
    assert done.returncode == 2 and "unknown argument '--fast'" in done.stderr
