"""Show the package's source inline in a chapter, so the text and the code never drift apart."""
from __future__ import annotations

import inspect


def show_source(obj) -> "object":
    """The source of a package function or class, syntax-highlighted in a notebook.

    Chapters build a piece inline, then import the real one and show it with this.
    """
    from IPython.display import Code  # IPython is there whenever a notebook runs

    return Code(inspect.getsource(obj), language="python")
