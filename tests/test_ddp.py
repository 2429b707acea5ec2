"""DDP under torchrun with two CPU processes (gloo), as ``nanogpt.course.ddp_demo`` runs it.

Two processes must take the same steps as one process with twice the accumulation, and a
two-process run stopped half way and resumed must equal one never stopped, bit for bit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
DEMO = ["-m", "nanogpt.course.ddp_demo"]


def _launch(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _losses(path: Path) -> list[float]:
    return json.loads(path.read_text())


def test_two_processes_match_one_process_with_double_accumulation(tmp_path):
    _launch([*TORCHRUN, *DEMO, str(tmp_path / "ddp.json"), "1"])
    _launch([sys.executable, *DEMO, str(tmp_path / "single.json"), "2"])
    ddp, single = _losses(tmp_path / "ddp.json"), _losses(tmp_path / "single.json")
    assert len(ddp) == len(single) == 8
    assert ddp == pytest.approx(single, abs=1e-5)
    assert ddp[-1] < ddp[0]


def test_two_process_resume_equals_an_uninterrupted_two_process_run(tmp_path):
    # Dropout makes each rank's RNG matter; DataLoaderLite makes each rank's position matter.
    ckpt = str(tmp_path / "ckpt")
    _launch([*TORCHRUN, *DEMO, str(tmp_path / "straight.json"), "1", "--dropout", "0.1"])
    _launch([*TORCHRUN, *DEMO, str(tmp_path / "half.json"), "1", "--dropout", "0.1", "--max-iters", "4",
             "--out-dir", ckpt])
    state = torch.load(Path(ckpt) / "ckpt.pt", weights_only=True)
    assert state["iter"] == 4
    rank0, rank1 = state["ranks"]  # one entry per rank, each its own
    assert not torch.equal(rank0["rng"]["torch"], rank1["rng"]["torch"])
    assert rank0["batches"]["position"] != rank1["batches"]["position"]
    assert not torch.equal(rank0["pending_batch"][0], rank1["pending_batch"][0])
    _launch([*TORCHRUN, *DEMO, str(tmp_path / "resumed.json"), "1", "--dropout", "0.1", "--out-dir", ckpt,
             "--resume"])
    straight, resumed = _losses(tmp_path / "straight.json"), _losses(tmp_path / "resumed.json")
    assert len(straight) == 8
    assert resumed == straight  # bit for bit
