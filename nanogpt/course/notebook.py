"""Small helpers for the chapters: show package source inline, save measured results."""
from __future__ import annotations

import inspect

from .results import write_result  # noqa: F401  (chapters call it from here)


def show_source(obj) -> "object":
    """The source of a package function or class, syntax-highlighted in a notebook.

    Chapters build a piece inline, then import the real one and show it with this, so
    the text and the package never drift apart.
    """
    from IPython.display import Code  # IPython is there whenever a notebook runs

    return Code(inspect.getsource(obj), language="python")

