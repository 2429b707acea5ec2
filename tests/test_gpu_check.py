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


def test_dry_run_lists_the_five_steps_within_nine_minutes(tmp_path):
    done = gpu_check("--dry-run", "--logs", str(tmp_path / "logs"), NANOGPT_QUICK="1")
    assert done.returncode == 0, done.stderr
    steps = re.findall(r"^  step (\w+) \(timeout (\d+) s\): (.+)$", done.stdout, re.M)
    assert [name for name, _, _ in steps] == ["tests", "bench", "train", "chapter06", "chapter07"]
    commands = {name: shlex.split(cmd) for name, _, cmd in steps}
    tests = commands["tests"]
    assert tests[:3] == [sys.executable, "-m", "pytest"] and tests[-1] == "tests"
    assert tests[tests.index("-m", 3) + 1] == "not slow and not book"  # one argument, quoted
    bench = commands["bench"]
    assert bench[:3] == [sys.executable, "-m", "nanogpt"]
    args = build_parser().parse_args(bench[3:])
    assert args.device == "cuda" and args.save
    train, sample = " ".join(commands["train"]).split(" && ")
    for words in (train.split(), sample.split()):  # valid command lines for python -m nanogpt, on the GPU
        assert words[:3] == [sys.executable, "-m", "nanogpt"]
        assert build_parser().parse_args(words[3:]).device == "cuda"
    assert build_parser().parse_args(train.split()[3:]).preset in PRESETS
    for name, notebook in (("chapter06", "06_shakespeare_run"), ("chapter07", "07_gpu_training")):
        words = commands[name]  # a lone copy, executed elsewhere; the chapter in the repository is left as it is
        assert words[1].endswith("benchmarks/execute_notebook.py") and Path(words[1]).exists()
        assert Path(words[2]) == Path("chapters") / f"{notebook}.ipynb" and (ROOT / words[2]).exists()
        assert Path(words[3]) == tmp_path / "logs" / f"{notebook}.ipynb"
    assert "NANOGPT_QUICK unset" in done.stdout  # real outputs, not the CI budget
    assert f"records in {tmp_path / 'logs' / 'records'}" in done.stdout  # not in the package
    budget = int(re.search(r"total time allowed (\d+) s", done.stdout).group(1))
    assert budget <= NINE_MINUTES and sum(int(limit) for _, limit, _ in steps) <= NINE_MINUTES
    assert not (tmp_path / "logs").exists()  # a dry run writes nothing


def test_only_runs_the_named_steps_and_refuses_unknown_ones(tmp_path):
    done = gpu_check("--dry-run", "--only", "chapter07,bench")
    assert re.findall(r"^  step (\w+)", done.stdout, re.M) == ["bench", "chapter07"]  # the script's order
    done = gpu_check("--dry-run", "--only", "bench,nope")
    assert done.returncode == 2 and "unknown step 'nope'" in done.stderr


def test_execute_notebook_runs_a_lone_copy_in_an_empty_folder(tmp_path):
    import nbformat

    source = tmp_path / "src" / "probe.ipynb"
    source.parent.mkdir()
    (source.parent / "beside.txt").write_text("not visible from the run")
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, nanogpt\nprint(sorted(os.listdir('.')), nanogpt.__name__)")]), source)
    out = tmp_path / "out" / "probe.ipynb"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "execute_notebook.py"), str(source), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert nbformat.read(out, as_version=4).cells[0].outputs[0]["text"] == "[] nanogpt\n"
    assert "outputs" not in source.read_text() or '"outputs": []' in source.read_text()  # left as it was


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
