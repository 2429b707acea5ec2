"""benchmarks/gpu_check.sh, up to the point where it needs a GPU: its plan, its set-up, its refusals, its timeouts."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
import time
import sys
from pathlib import Path

import pytest
import torch

from nanogpt.cli import build_parser
from nanogpt.presets import PRESETS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
NINE_MINUTES = 9 * 60


def gpu_check(*args: str, isolated_pip: bool = False, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("NANOGPT_DATA_DIR", "TIKTOKEN_CACHE_DIR")}
    if isolated_pip:  # none of this machine's pip configuration (its indexes, wheel folders, constraints)
        environ = {k: v for k, v in environ.items() if not k.startswith("PIP_")}
        environ["PIP_CONFIG_FILE"] = os.devnull
    environ.update({"PYTHON": sys.executable, **env})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=environ)


def test_dry_run_lists_the_five_steps_within_nine_minutes(tmp_path):
    done = gpu_check("--dry-run", "--logs", str(tmp_path / "logs"), NANOGPT_QUICK="1")
    assert done.returncode == 0, done.stderr
    steps = re.findall(r"^  step (\w+) \(timeout (\d+) s\): (.+)$", done.stdout, re.M)
    assert [name for name, _, _ in steps] == ["tests", "bench", "train", "chapter06", "chapter07"]
    setup = int(re.search(r"^  set-up \(timeout (\d+) s\): install what is missing into (.+) from ", done.stdout, re.M).group(1))
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
    assert budget <= NINE_MINUTES and setup + sum(int(limit) for _, limit, _ in steps) <= budget
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


# The set-up and refusal paths, on this CPU machine. Each runs the real script; nothing here uses
# the network: the set-up installs into a throwaway venv from a folder of wheels made here.

SETUP = ROOT / "benchmarks" / "gpu_check_setup.py"


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel: one module that knows it is a fake, and its metadata."""
    import base64
    import hashlib
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    module, dist_info = name.replace("-", "_"), f"{name.replace('-', '_')}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"FAKE = True\n__version__ = {version!r}\n",
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\n"
                                 f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist_info}/RECORD,,")
    wheel = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return wheel


def throwaway_venv(tmp_path: Path, hide: tuple[str, ...] = ()) -> Path:
    """A venv (no pip of its own, made in a second) that sees this environment's packages, torch
    among them, through a site folder of links, minus the nanogpt install and the ``hide``
    distributions: the "bare GPU machine" a set-up starts from. Returns its python."""
    import sysconfig
    import venv

    venv.EnvBuilder(with_pip=False, symlinks=True).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = Path(sysconfig.get_paths()["purelib"])
    shown = tmp_path / "site"
    shown.mkdir()
    for entry in ours.iterdir():
        key = entry.name.lower().replace("-", "_")
        if "nanogpt" in key or any(key == h or key.startswith(h + "_") or key.startswith(h + ".")
                                   for h in hide):
            continue
        (shown / entry.name).symlink_to(entry)
    Path(purelib, "zz_course_site.pth").write_text(f"import site; site.addsitedir({str(shown)!r})\n")
    return python


def torch_of(python: Path) -> tuple[str, str]:
    code = "import importlib.metadata as m, importlib.util as u; print(m.version('torch'), u.find_spec('torch').origin)"
    return tuple(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True,
                                cwd=tempfile.gettempdir()).stdout.split())



def test_the_requirements_cover_the_package_s_dependencies():
    import importlib.util
    import tomllib

    spec = importlib.util.spec_from_file_location("gpu_check_setup", SETUP)
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(declared) - {d for d in declared if d.startswith("torch")} <= set(setup.REQUIREMENTS)
    assert not any(r.startswith("torch") for r in setup.REQUIREMENTS)  # the check never installs torch


@pytest.mark.slow
def test_setup_only_installs_what_is_missing_from_local_wheels_and_keeps_torch(tmp_path):
    python = throwaway_venv(tmp_path, hide=("hypothesis",))
    before = torch_of(python)
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "hypothesis", "6.999.0")
    done = gpu_check("--setup-only", "--logs", str(tmp_path / "logs"), PYTHON=str(python),
                     GPU_CHECK_WHEELS=str(wheels), GPU_CHECK_REQUIRE_GPU="1", isolated_pip=True)  # no GPU needed for the set-up
    assert done.returncode == 0, done.stdout + (tmp_path / "logs" / "setup.log").read_text()
    log = (tmp_path / "logs" / "setup.log").read_text()
    assert "--no-index --find-links " + str(wheels) in log and "hypothesis>=6.100" in log
    assert torch_of(python) == before and Path(before[1]).resolve() == Path(torch.__file__).resolve()
    found = subprocess.run([str(python), "-c", "import nanogpt, hypothesis; print(nanogpt.__file__, hypothesis.FAKE)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert found.stdout.split() == [str(ROOT / "nanogpt" / "__init__.py"), "True"], found.stderr
    environment = (tmp_path / "logs" / "environment.txt").read_text()
    assert f"torch: {before[0]}" in environment and f"python: {sys.version.split()[0]}" in environment
    assert "hypothesis==6.999.0" in environment and "torch==" in (tmp_path / "logs" / "pip-freeze.txt").read_text()
    summary = (tmp_path / "logs" / "summary.txt").read_text()
    assert re.search(r"^step setup: ok, took \d+ s", summary, re.M) and "set-up only" in summary
    assert "step tests" not in summary and not (tmp_path / "logs" / "data.log").exists()


@pytest.mark.slow
def test_setup_refuses_a_package_that_would_replace_torch(tmp_path):
    python = throwaway_venv(tmp_path, hide=("hypothesis",))
    before = torch_of(python)
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "hypothesis", "6.999.0", requires=("torch>=99",))
    make_wheel(wheels, "torch", "99.0")  # on offer, and it would satisfy hypothesis: the constraint must refuse it
    done = gpu_check("--setup-only", "--logs", str(tmp_path / "logs"), PYTHON=str(python),
                     GPU_CHECK_WHEELS=str(wheels), isolated_pip=True)
    assert done.returncode == 2
    assert "the set-up failed, nothing was run" in done.stderr
    assert torch_of(python) == before
    assert f"constraint) torch=={before[0]}" in (tmp_path / "logs" / "setup.log").read_text()  # ours, not pip's config
    assert re.search(r"^step setup: FAILED", (tmp_path / "logs" / "summary.txt").read_text(), re.M)


def test_a_python_without_torch_is_refused_before_anything_is_written(tmp_path):
    import venv

    venv.EnvBuilder(with_pip=False).create(tmp_path / "bare")
    done = gpu_check("--setup-only", "--logs", str(tmp_path / "logs"), PYTHON=str(tmp_path / "bare" / "bin" / "python"))
    assert done.returncode == 2
    assert done.stderr.startswith("gpu_check: error: no torch in ") and "CUDA build of torch" in done.stderr
    assert not (tmp_path / "logs").exists()


def test_missing_data_stops_the_check_before_its_first_step(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = gpu_check("--logs", str(tmp_path / "logs"), GPU_CHECK_REQUIRE_GPU="0", NANOGPT_DATA_DIR=str(empty),
                     NANOGPT_CACHE_DIR=str(empty), TIKTOKEN_CACHE_DIR=str(empty))
    assert done.returncode == 2
    assert "data missing, nothing was run" in done.stderr
    assert "Tiny Shakespeare is not on this machine" in done.stderr and "GPT-2's BPE files are not in" in done.stderr
    summary = (tmp_path / "logs" / "summary.txt").read_text()
    assert re.search(r"^step setup: ok", summary, re.M) and re.search(r"^step data: MISSING", summary, re.M)
    assert "step tests" not in summary and not (tmp_path / "logs" / "tests.log").exists()
    assert (tmp_path / "logs" / "environment.txt").exists()


SLEEPER = """\
import os, pathlib, subprocess, time
child = subprocess.Popen(["sleep", "300"], start_new_session=True)  # escapes the kernel's process group too
pathlib.Path({pids!r}).write_text(f"{{os.getpid()}} {{child.pid}}")
time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def sleeping_notebook(path: Path, pids: Path) -> Path:
    import nbformat

    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(SLEEPER.format(pids=str(pids)))]), path)
    return path


@pytest.mark.slow  # a kernel starts: about 13 s
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes through /proc")
def test_a_timed_out_chapter_s_kernel_and_its_children_are_killed(tmp_path):
    pids = tmp_path / "pids"
    notebook = sleeping_notebook(tmp_path / "sleeper.ipynb", pids)
    log = tmp_path / "step.log"
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_step.py"), "--timeout", "12", "--grace", "3",
                           "--log", str(log), "--", sys.executable, str(ROOT / "benchmarks" / "execute_notebook.py"),
                           str(notebook), str(tmp_path / "out.ipynb")], capture_output=True, text=True, timeout=90)
    assert done.returncode == 124, log.read_text()
    assert time.monotonic() - t0 < 40
    kernel, grandchild = map(int, pids.read_text().split())  # the kernel ran the cell before the limit
    assert not alive(kernel) and not alive(grandchild), log.read_text()
    assert "timed out after 12 s" in log.read_text()
    assert (tmp_path / "out.ipynb").exists()  # what ran is saved


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes through /proc")
def test_a_timed_out_step_is_killed_and_recorded_in_the_summary(tmp_path):
    pids = tmp_path / "pids"
    chapters = tmp_path / "chapters"
    sleeping_notebook(chapters / "06_shakespeare_run.ipynb", pids)
    done = gpu_check("--only", "chapter06", "--chapters", str(chapters), "--logs", str(tmp_path / "logs"),
                     GPU_CHECK_REQUIRE_GPU="0", GPU_CHECK_BUDGET_S="25", GPU_CHECK_GRACE_S="3")
    assert done.returncode == 1
    summary = (tmp_path / "logs" / "summary.txt").read_text()
    limit = int(re.search(r"^step chapter06: TIMED OUT after (\d+) s", summary, re.M).group(1))
    assert 0 < limit < 25 and "were killed" in summary
    kernel, grandchild = map(int, pids.read_text().split())
    assert not alive(kernel) and not alive(grandchild)
