"""The GPU check's set-up, on a machine that has Python and a CUDA build of torch and nothing else.

    python benchmarks/gpu_check_setup.py install        # the package and what the check runs
    python benchmarks/gpu_check_setup.py data           # Tiny Shakespeare and GPT-2's BPE files, offline
    python benchmarks/gpu_check_setup.py record DIR     # DIR/environment.txt and DIR/pip-freeze.txt

``install`` puts into *this* Python, without ever replacing its torch: the package from this
checkout (``pip install --no-deps -e .``, so torch is not even looked at) and whichever of
``REQUIREMENTS`` are missing or too old, with a constraint that pins the installed torch
(``torch==<its version>``), so a package that asks for another torch fails instead of replacing
it. The wheels come from a local folder when there is one (``$GPU_CHECK_WHEELS``, else ``.whl/``
in the repository root: ``pip install --no-index --find-links``, for machines without network;
fill it elsewhere with ``pip download -d .whl <the requirements>``), else from the package index.
Afterwards it checks that torch is the same version at the same place.

``data`` checks, before any step runs, that the files the steps read are on this machine:
Tiny Shakespeare in ``$NANOGPT_DATA_DIR`` or the course's cache (never downloaded here), and
GPT-2's BPE files in tiktoken's cache (``$TIKTOKEN_CACHE_DIR``), loaded with the network cut off.

Only the standard library and pip at module level: ``install`` runs before anything else is there.
Exit status 0 when all is well, 2 with one clear message otherwise.
"""
from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What the check runs, beside torch: the package's runtime dependencies (pyproject.toml's,
# torch apart), what the unit tests import, and what chapters 06 and 07 import in their kernel.
REQUIREMENTS = {
    "numpy>=1.26": "the package",
    "tiktoken>=0.7": "the package",
    "tqdm>=4.66": "the package",
    "pytest>=8": "the tests step",
    "pytest-xdist>=3.6": "the tests step (-n 8)",
    "hypothesis>=6.100": "the tests step",
    "pyyaml": "the tests step (tests/test_urls.py)",
    "nbformat": "the tests step and the chapters",
    "nbclient": "the chapters (benchmarks/execute_notebook.py)",
    "ipykernel": "the chapters' kernel",
    "matplotlib>=3.8": "chapters 06 and 07",
    "ipywidgets>=8.1": "chapter 06",
    "datasets>=3.0": "chapter 07",
}
SETUPTOOLS_FOR_EDITABLE = "77"  # pyproject.toml's build requirement


class SetupError(Exception):
    """A reason the check cannot go on, in one message."""


def _requirement(spec: str):
    from pip._vendor.packaging.requirements import Requirement  # pip's own parser: no extra package

    return Requirement(spec)


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def missing_requirements(specs=REQUIREMENTS) -> list[str]:
    """The requirements this Python does not satisfy (absent, or a version outside the range)."""
    missing = []
    for spec in specs:
        req = _requirement(spec)
        version = installed_version(req.name)
        if version is None or (req.specifier and not req.specifier.contains(version, prereleases=True)):
            missing.append(spec)
    return missing


def torch_identity(python: str = sys.executable) -> dict:
    """torch's version and where it is imported from, as a fresh interpreter sees them (no import of torch)."""
    code = ("import importlib.metadata as m, importlib.util as u, json\n"
            "spec = u.find_spec('torch')\n"
            "print(json.dumps({'version': m.version('torch') if spec else None,"
            " 'location': spec.origin if spec else None}))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise SetupError(f"could not ask {python} about torch:\n{out.stderr.strip()}")
    return json.loads(out.stdout)


def wheel_source() -> tuple[list[str], str]:
    """pip's index options and a sentence saying where the wheels come from."""
    folder = os.environ.get("GPU_CHECK_WHEELS") or str(ROOT / ".whl")
    if Path(folder).is_dir():
        return ["--no-index", "--find-links", folder], f"the local wheels in {folder} (no index)"
    return ["--retries", "1", "--timeout", "20"], "the package index (no local wheel folder at " + folder + ")"


def package_is_this_checkout() -> bool:
    """Whether ``import nanogpt``, from a folder outside the repository, finds this checkout's package."""
    code = "import importlib.util as u; s = u.find_spec('nanogpt'); print(s.origin if s else '')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir())
    origin = out.stdout.strip()
    return bool(origin) and Path(origin).resolve() == (ROOT / "nanogpt" / "__init__.py").resolve()


def pip(args: list[str]) -> None:
    command = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *args]
    print("$ " + " ".join(command), flush=True)
    done = subprocess.run(command)
    if done.returncode != 0:
        raise SetupError(f"pip failed (exit {done.returncode}): {' '.join(command)}")


def install() -> None:
    if importlib.util.find_spec("pip") is None:
        raise SetupError(f"{sys.executable} has no pip: run `{sys.executable} -m ensurepip` first")
    before = torch_identity()
    if before["version"] is None:
        raise SetupError(f"{sys.executable} has no torch: install a CUDA build of torch first "
                         "(https://pytorch.org/get-started/locally/); the check never installs torch itself")
    print(f"torch {before['version']} at {before['location']}: kept as it is")
    index, where = wheel_source()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(f"torch=={before['version']}\n")
        missing = missing_requirements()
        if missing:
            print(f"installing {len(missing)} missing requirement(s) from {where}: {' '.join(missing)}")
            pip([*index, "-c", str(constraints), *missing])
        else:
            print("every requirement is already installed")
        if package_is_this_checkout():
            print(f"the nanogpt package already imports from {ROOT}")
        else:
            setuptools = installed_version("setuptools")
            isolation = []
            if setuptools and int(setuptools.split(".")[0]) >= int(SETUPTOOLS_FOR_EDITABLE):
                isolation = ["--no-build-isolation"]  # build with the setuptools that is here: offline
            print(f"installing the package from {ROOT} (editable, --no-deps)")
            pip([*index, *isolation, "--no-deps", "-e", str(ROOT)])
    after = torch_identity()
    if after != before:
        raise SetupError(f"the set-up changed torch: {before} before, {after} after; "
                         "restore the CUDA build and look for the package that asked for another torch")
    still_missing = missing_requirements()
    if still_missing:
        raise SetupError("still missing after the set-up: " + " ".join(still_missing))
    if not package_is_this_checkout():
        raise SetupError(f"`import nanogpt` still does not find {ROOT / 'nanogpt'}")
    print(f"set-up done: torch {after['version']} unchanged; nanogpt from {ROOT}")


def check_data() -> None:
    """The corpus and the tokenizer files, found locally with the network cut off."""
    import socket

    def offline(*args, **kwargs):
        raise OSError("gpu_check: the data check does not use the network")

    socket.socket.connect = offline  # type: ignore[method-assign]
    socket.create_connection = offline  # type: ignore[assignment]
    socket.getaddrinfo = offline  # type: ignore[assignment]

    from nanogpt.data import DataError, dataset_path

    problems = []
    try:
        path = dataset_path("tinyshakespeare", allow_download=False)
        print(f"Tiny Shakespeare: {path} (sha256 checked)")
    except DataError as exc:
        problems.append(f"Tiny Shakespeare is not on this machine: {exc}\n"
                        "  Point NANOGPT_DATA_DIR at a folder holding tinyshakespeare/input.txt, or run "
                        f"`{sys.executable} -m nanogpt data` once where there is network.")
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    where = f"TIKTOKEN_CACHE_DIR={cache}" if cache else "tiktoken's default cache (TIKTOKEN_CACHE_DIR is unset)"
    try:
        import tiktoken

        tiktoken.get_encoding("gpt2")
        print(f"GPT-2's BPE files: in {where}")
    except Exception as exc:  # tiktoken reports a missing file as whatever the download raised
        problems.append(f"GPT-2's BPE files are not in {where} (tiktoken tried to download them: "
                        f"{type(exc).__name__})\n"
                        "  Copy a tiktoken cache that holds them and point TIKTOKEN_CACHE_DIR at it, or run "
                        f"`{sys.executable} -c \"import tiktoken; tiktoken.get_encoding('gpt2')\"` "
                        "with TIKTOKEN_CACHE_DIR set, where there is network.")
    if problems:
        raise SetupError("data missing, nothing was run:\n" + "\n".join(problems))


RELEVANT = ("torch", "triton", "nvidia-", "numpy", "tiktoken", "tqdm", "pytest", "hypothesis", "pyyaml",
            "nbformat", "nbclient", "ipykernel", "ipython", "jupyter-client", "matplotlib", "ipywidgets",
            "datasets", "transformers", "setuptools", "pip", "nanogpt-from-scratch")


def record(folder: Path) -> None:
    """What the check ran with: Python, torch, CUDA, the GPU and driver, the git commit, the packages."""
    folder.mkdir(parents=True, exist_ok=True)
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"], capture_output=True, text=True)
    (folder / "pip-freeze.txt").write_text(freeze.stdout or freeze.stderr)
    lines = [f"recorded {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')} on {platform.node()}",
             f"platform: {platform.platform()}",
             f"python: {sys.version.split()[0]} ({sys.executable})"]
    git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=40"],
                         capture_output=True, text=True)
    lines.append(f"checkout: {ROOT} at {git.stdout.strip() or 'unknown (not a git checkout)'}")
    try:
        import torch

        lines += [f"torch: {torch.__version__} ({Path(torch.__file__).parent})",
                  f"torch CUDA: {torch.version.cuda}, cuDNN: {torch.backends.cudnn.version()}"]
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                lines.append(f"GPU {i}: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                             f"compute capability {props.major}.{props.minor}")
        else:
            lines.append("GPU: none visible to torch")
    except Exception as exc:  # the record is written even when torch is broken: that is worth knowing
        lines.append(f"torch: cannot be imported ({type(exc).__name__}: {exc})")
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True) if _which("nvidia-smi") else None
    lines.append(f"driver (nvidia-smi): {smi.stdout.strip() if smi and smi.returncode == 0 else 'n/a'}")
    lines.append("packages (pip freeze, the relevant ones; all of them in pip-freeze.txt):")
    for line in freeze.stdout.splitlines():
        name = line.split("==")[0].split(" @ ")[0].strip().lower().replace("_", "-")
        prefixes = [p if p.endswith("-") else p + "-" for p in RELEVANT]
        if line.startswith("-e ") or "nanogpt" in name or name in RELEVANT or name.startswith(tuple(prefixes)):
            lines.append(f"  {line}")
    (folder / "environment.txt").write_text("\n".join(lines) + "\n")
    print(f"environment recorded in {folder / 'environment.txt'}")


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv == ["install"]:
            install()
        elif argv == ["data"]:
            check_data()
        elif len(argv) == 2 and argv[0] == "record":
            record(Path(argv[1]))
        else:
            print(__doc__.split("\n\n")[1], file=sys.stderr)
            return 2
    except SetupError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
