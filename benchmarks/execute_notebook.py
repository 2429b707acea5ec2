"""Execute a chapter as a reader would in Colab: a lone copy, run top to bottom in an empty folder.

    python benchmarks/execute_notebook.py chapters/06_shakespeare_run.ipynb OUT.ipynb [--workdir DIR]

The executed notebook (outputs and widget state) is written to OUT.ipynb; the chapter itself is
left as it is. It runs in DIR (default: a new empty temporary folder), so it can read nothing
from the repository but the installed ``nanogpt`` package. Needs only nbclient and ipykernel
(``jupyter nbconvert`` is not required), which is what a bare GPU machine can be given.
"""
from __future__ import annotations

import argparse
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
        client = NotebookClient(nb, timeout=None, kernel_name="python3", store_widget_state=True,
                                resources={"metadata": {"path": str(cwd)}})
        t0 = time.perf_counter()
        try:
            client.execute()
        finally:  # a failed run is saved too: its outputs show where and why
            out.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out)
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("out", type=Path, help="where to write the executed notebook")
    parser.add_argument("--workdir", type=Path, help="folder to run in (default: a new empty one)")
    args = parser.parse_args(argv)
    seconds = execute(args.notebook, args.out, args.workdir)
    print(f"executed {args.notebook} in {seconds:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
