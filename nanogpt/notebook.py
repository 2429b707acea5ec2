"""Small helpers for the chapters: show package source inline, describe the hardware."""
from __future__ import annotations

import inspect


def show_source(obj) -> "object":
    """The source of a package function or class, syntax-highlighted in a notebook.

    Chapters build a piece inline, then import the real one and show it with this, so
    the text and the package never drift apart.
    """
    from IPython.display import Code  # IPython is there whenever a notebook runs

    return Code(inspect.getsource(obj), language="python")


def write_result(name: str, record: dict, folder: str | None = None) -> "Path | None":
    """Save a measured figure for the book's results page as ``book/results/<name>.json``.

    Skipped under ``NANOGPT_QUICK`` (a shrunk run is not a result). ``record`` follows the
    schema in ``book/results/README.md``; the date is filled in when missing.
    """
    import datetime
    import json
    from pathlib import Path

    from .runtime import is_quick

    if is_quick():
        return None
    root = Path(folder) if folder else Path(__file__).resolve().parent.parent / "book" / "results"
    root.mkdir(parents=True, exist_ok=True)
    record = {"date": datetime.date.today().isoformat(), **record}
    path = root / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
