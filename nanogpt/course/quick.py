"""Quick mode: the small budgets the course's notebooks run with in CI.

``NANOGPT_QUICK=1`` shrinks iteration counts and sample sizes so every chapter runs in
minutes; this module is the one place the variable is read. The core package never reads
it: a copied ``model.py`` or ``train.py`` trains for exactly what it is told.
"""
from __future__ import annotations

import os


def is_quick() -> bool:
    """True when ``NANOGPT_QUICK`` asks for the small CI budget."""
    return os.environ.get("NANOGPT_QUICK", "").strip().lower() in {"1", "true", "yes", "on"}


def quick_or(full: int, quick: int) -> int:
    """``full`` normally, ``quick`` under ``NANOGPT_QUICK=1`` (iteration counts, sample sizes)."""
    return quick if is_quick() else full
