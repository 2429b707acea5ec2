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


def pytest_configure(config) -> None:
    # nbval resolves the sanitizer path against the working directory: make it absolute.
    if hasattr(config.option, "nbval_sanitize_with") and not config.option.nbval_sanitize_with:
        config.option.nbval_sanitize_with = str(ROOT / "tests" / "nbval_sanitize.cfg")
