"""Every chapter runs alone against the built wheel, on a second CPU personality.

This is the reader's situation in Colab: one notebook, no repository around it, and the
package installed from a wheel (not this checkout). The package is built once per worker
(``pip wheel``), installed with ``pip install --target`` into a temporary folder that is put
first on ``PYTHONPATH``; each notebook is copied alone into an empty folder and checked with
nbval there, with an empty pytest configuration so that nothing of the repository applies.

It also runs the notebooks under other CPU settings than the main nbval run (which uses one
thread and, on this machine, AVX-512 kernels): PyTorch's AVX2 kernels, MKL limited to AVX2 and
two threads. A printed float whose last digits depend on the machine fails here, as it would
on a reader's machine.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")) + [ROOT / "book" / "results.ipynb"]
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
# What the wheel is built from: the package and the files its metadata names.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "nanogpt")


def second_personality() -> dict[str, str]:
    """CPU settings that differ from the main run's (one thread, the best vector kernels).

    ``OMP_WAIT_POLICY=PASSIVE`` changes no result: it makes idle OpenMP threads sleep instead
    of spinning, which on a 2-core machine shared with the other test worker is the difference
    between seconds and minutes per chapter.
    """
    env = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
           "OMP_WAIT_POLICY": "PASSIVE"}
    if platform.machine().lower() in {"x86_64", "amd64"}:
        env["ATEN_CPU_CAPABILITY"] = "avx2"
    return env


def setuptools_major() -> int:
    """The installed setuptools' major version (0 when there is none); pyproject.toml needs 77."""
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return 0


@pytest.fixture(scope="session")
def wheel_site(tmp_path_factory) -> Path:
    """The package built as a wheel and installed into a folder of its own; returns that folder."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a copy, so building leaves nothing behind in the checkout
    source.mkdir()
    for name in WHEEL_SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # Build with the environment's setuptools when it is recent enough (offline); else pip fetches one.
    isolation = ["--no-build-isolation"] if setuptools_major() >= 77 else []
    built = subprocess.run([*pip, "wheel", str(source), "--no-deps", *isolation, "-w", str(work / "dist")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    wheels = list((work / "dist").glob("nanogpt_from_scratch-*.whl"))
    assert len(wheels) == 1, wheels
    site = work / "site"
    installed = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheels[0])],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, f"pip install --target failed:\n{installed.stdout}\n{installed.stderr}"
    return site


def lone_env(site: Path) -> dict[str, str]:
    """The environment of the lone run: the wheel first on the path, quick mode, local data."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "NANOGPT_", "COV_")) and k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.update(PYTHONPATH=str(site), NANOGPT_QUICK="1", PYTHONDONTWRITEBYTECODE="1", **second_personality())
    for name in ("NANOGPT_DATA_DIR", "NANOGPT_CACHE_DIR", "TIKTOKEN_CACHE_DIR"):  # as conftest.py sets them
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_alone_against_the_wheel(notebook, wheel_site, tmp_path):
    folder = tmp_path / "lone"
    folder.mkdir()
    copy = folder / notebook.name
    shutil.copy(notebook, copy)
    (folder / "pytest.ini").write_text("[pytest]\n")  # no pyproject, no conftest: nothing of the repo
    env = lone_env(wheel_site)

    where = subprocess.run(
        [sys.executable, "-c", "import nanogpt, torch; print(nanogpt.__file__); print(torch.backends.cpu.get_cpu_capability())"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    package_file, capability = where.stdout.split()
    assert Path(package_file).is_relative_to(wheel_site), (
        f"`import nanogpt` found {package_file}, not the wheel in {wheel_site}: the checkout leaks in")
    if "ATEN_CPU_CAPABILITY" in env:
        assert capability.lower() == env["ATEN_CPU_CAPABILITY"], capability

    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", str(copy), "-c", str(folder / "pytest.ini"),
         "--rootdir", str(folder), "-p", "no:cacheprovider", "-p", "no:xdist", "--nbval-sanitize-with", str(SANITIZE),
         "-q", "-x", "--tb=short"],
        cwd=folder, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (
        f"{notebook.relative_to(ROOT)} copied alone, against the wheel, with "
        f"{' '.join(f'{k}={v}' for k, v in second_personality().items())}:\n{proc.stdout[-8000:]}\n{proc.stderr[-2000:]}")
    assert not (folder / "nanogpt-results").exists(), "a quick run wrote a result"
