"""Test settings shared by the unit tests and the notebook checks (nbval)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SHARED_DATA = ROOT.parent / "shared" / "data"

# Point the course at the local data beside the checkout (as CI has it), unless the caller chose.
if SHARED_DATA.is_dir():
    os.environ.setdefault("NANOGPT_DATA_DIR", str(SHARED_DATA))
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED_DATA / "tiktoken"))
# Notebooks run with the small iteration budget unless NANOGPT_QUICK=0 is given.
os.environ.setdefault("NANOGPT_QUICK", "1")
# pytest runs two workers (one per core here); one thread each avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile``, except that each lone-chapter test is a work unit of its own.

    Notebooks and test files stay whole on one worker (an nbval notebook's cells share a
    kernel; a file's session fixtures are built once), while the lone-chapter runs, one per
    notebook, spread over the workers instead of queueing on one.
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduler(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith("tests/test_lone_chapters.py::"):
                return nodeid
            return super()._split_scope(nodeid)

    return Scheduler(config, log)


def pytest_configure(config) -> None:
    # nbval resolves the sanitizer path against the working directory: make it absolute.
    if hasattr(config.option, "nbval_sanitize_with") and not config.option.nbval_sanitize_with:
        config.option.nbval_sanitize_with = str(ROOT / "tests" / "nbval_sanitize.cfg")
