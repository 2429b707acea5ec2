"""Notebook helpers: show the package's source inline, and put computed figures into the text."""
from __future__ import annotations

import inspect


def show_source(obj) -> "object":
    """The source of a package function or class, syntax-highlighted in a notebook.

    Chapters build a piece inline, then import the real one and show it with this.
    """
    from IPython.display import Code  # IPython is there whenever a notebook runs

    return Code(inspect.getsource(obj), language="python")


def glue(name: str, value, display: bool = True) -> None:
    """Make ``value`` quotable in the chapter's text as ``{glue:text}`name```.

    myst-nb's ``glue`` where it is installed (the course environment, the book); elsewhere,
    as in Colab, nothing: the chapter prints its figures anyway.
    """
    try:
        from myst_nb import glue as myst_glue

        myst_glue(name, value, display=display)
    except ImportError:  # no myst-nb, or one without its own needs (docutils)
        return
