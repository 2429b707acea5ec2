"""Execute a chapter as a reader would in Colab: a lone copy, run top to bottom in an empty folder.

    python benchmarks/execute_notebook.py chapters/06_shakespeare_run.ipynb OUT.ipynb [--workdir DIR]

The executed notebook (outputs and widget state) is written to OUT.ipynb; the chapter itself is
left as it is. It runs in DIR (default: a new empty temporary folder), so it can read nothing
from the repository but the installed ``nanogpt`` package. Needs only nbclient and ipykernel
(``jupyter nbconvert`` is not required), which is what a bare GPU machine can be given.

Stopped by SIGINT or SIGTERM (``run_step.py`` sends SIGINT when a step runs out of time), it
saves what ran so far and kills the kernel's whole process group before it exits: the kernel
runs in a session of its own, so nothing else would stop it.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path


def execute(notebook: Path, out: Path, workdir: Path | None = None) -> float:
    """Run every cell of ``notebook`` in ``workdir``, save the result to ``out``; return the seconds taken."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    with tempfile.TemporaryDirectory(prefix="chapter_") as tmp:
        cwd = workdir or Path(tmp)
        cwd.mkdir(parents=True, exist_ok=True)
        kernel_pids: list[int] = []

        def remember_kernel(**kwargs) -> None:
            provisioner = getattr(client.km, "provisioner", None)
            pid = getattr(provisioner, "pid", None) or getattr(getattr(provisioner, "process", None), "pid", None)
            if pid:
                kernel_pids.append(pid)

        client = NotebookClient(nb, timeout=None, kernel_name="python3", store_widget_state=True,
                                resources={"metadata": {"path": str(cwd)}}, on_notebook_start=remember_kernel)
        t0 = time.perf_counter()
        try:
            client.execute()
        finally:  # a failed or stopped run is saved too: its outputs show where and why
            out.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out)
            for pid in kernel_pids:
                kill_process_group(pid)
        return time.perf_counter() - t0


def kill_process_group(pid: int) -> None:
    """SIGKILL the process group ``pid`` leads (a kernel is its session's leader), if it still exists."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(signum, frame):
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("out", type=Path, help="where to write the executed notebook")
    parser.add_argument("--workdir", type=Path, help="folder to run in (default: a new empty one)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)  # as SIGINT: unwind, save the notebook, kill the kernel
    seconds = execute(args.notebook, args.out, args.workdir)
    print(f"executed {args.notebook} in {seconds:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
