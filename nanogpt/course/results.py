"""Measured results: the JSON records behind the book's results page.

Every figure the course reports is written by the script or chapter that measured it, as
one JSON file (one record, or a list of records)::

    {"title": str, "kind": "training" | "benchmark" | "closed-form", "model": str,
     "hardware": str, "device": str, "torch": str, "date": "YYYY-MM-DD", "command": str,
     "metrics": {"wall_time_s": float, "val_loss": float, "tokens_per_s": float, ...}}

Every metric is optional, and any other named figure may be added (``records/README.md``).

The course's own records ship inside the package (``records/``), so a chapter copied alone
next to an installed package still shows them. New records never go into an installed
package: see ``results_dir``.
"""
from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path

from .quick import is_quick

KINDS = ("training", "benchmark", "closed-form")
REQUIRED = ("title", "kind", "model", "hardware", "device", "torch", "date", "command", "metrics")
MAIN_METRICS = ("wall_time_s", "val_loss", "tokens_per_s")
# Where write_result writes outside a source checkout, relative to the working directory.
LOCAL_RESULTS = "nanogpt-results"


def records_dir() -> Path:
    """The course's own records, shipped with the package (read-only once installed)."""
    return Path(__file__).resolve().parent / "records"


def source_checkout() -> Path | None:
    """The course repository's root when the package runs from a checkout of it, else None.

    A checkout has the course's ``pyproject.toml`` beside the ``nanogpt`` folder; an
    installed package sits in ``site-packages``, which has none (and a ``nanogpt/`` copied
    into another project sits beside that project's own).
    """
    root = Path(__file__).resolve().parent.parent.parent
    try:
        return root if 'name = "nanogpt-from-scratch"' in (root / "pyproject.toml").read_text(encoding="utf-8") else None
    except OSError:
        return None


def results_dir() -> Path:
    """Where ``write_result`` saves a record.

    ``$NANOGPT_RESULTS_DIR`` when set; else, in a source checkout, the course's ``records/``
    (a new record becomes part of the course when committed); else ``./nanogpt-results`` in
    the working directory, never inside an installed package.
    """
    if os.environ.get("NANOGPT_RESULTS_DIR"):
        return Path(os.environ["NANOGPT_RESULTS_DIR"]).expanduser()
    if source_checkout() is not None:
        return records_dir()
    return Path.cwd() / LOCAL_RESULTS


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def record_problems(record) -> list[str]:
    """What is wrong with one record (an empty list when it follows the schema)."""
    if not isinstance(record, dict):
        return ["not a JSON object"]
    found = [f"missing {key!r}" for key in REQUIRED if key not in record]
    for key in REQUIRED[:-1]:
        if key in record and not (isinstance(record[key], str) and record[key].strip()):
            found.append(f"{key!r} must be a non-empty string")
    if "kind" in record and record["kind"] not in KINDS:
        found.append(f"kind {record['kind']!r} is not one of {', '.join(KINDS)}")
    if isinstance(record.get("date"), str):
        try:
            datetime.date.fromisoformat(record["date"])
        except ValueError:
            found.append(f"date {record['date']!r} is not YYYY-MM-DD")
    metrics = record.get("metrics")
    if "metrics" in record and not isinstance(metrics, dict):
        found.append("'metrics' must be an object")
    elif isinstance(metrics, dict):
        for key in MAIN_METRICS:
            if key in metrics and not _is_number(metrics[key]):
                found.append(f"metrics.{key} must be a finite number")
    return found


def load_results(folder: str | Path | None = None) -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    """All records in ``folder``: ``(valid, skipped)``, as ``(name, record)`` and ``(name, reason)``.

    ``name`` is the file name, with ``[i]`` for the i-th record of a list. Without a folder:
    the course's records, then the reader's own (``results_dir()``, when that is elsewhere
    and exists), named with their folder's path so the two never mix.
    """
    if folder is not None:
        return _load_folder(Path(folder))
    valid, skipped = _load_folder(records_dir())
    own = results_dir()
    if own.is_dir() and own.resolve() != records_dir():
        more_valid, more_skipped = _load_folder(own, prefix=f"{own}/")
        valid, skipped = valid + more_valid, skipped + more_skipped
    return valid, skipped


def _load_folder(folder: Path, prefix: str = "") -> tuple[list[tuple[str, dict]], list[tuple[str, str]]]:
    valid, skipped = [], []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            skipped.append((prefix + path.name, f"unreadable JSON: {err}"))
            continue
        for i, record in enumerate(data if isinstance(data, list) else [data]):
            name = prefix + (f"{path.name}[{i}]" if isinstance(data, list) else path.name)
            problems = record_problems(record)
            if problems:
                skipped.append((name, "; ".join(problems)))
            else:
                valid.append((name, record))
    return valid, skipped


def shown_path(path: str | Path) -> str:
    """``path`` as a chapter prints it: never a machine's absolute path.

    Relative to the course checkout when inside it (``nanogpt/course/records/x.json``), else to
    the working directory when inside that (``nanogpt-results/x.json``), else the bare name.
    """
    path = Path(path).resolve()
    for base in (source_checkout(), Path.cwd()):
        if base is not None:
            try:
                return path.relative_to(base.resolve()).as_posix()
            except ValueError:
                pass
    return path.name


def write_result(name: str, record: dict, folder: str | Path | None = None) -> Path | None:
    """Save a measured record as ``<folder>/<name>.json`` and return its path.

    ``folder`` defaults to ``results_dir()``. The date is filled in when missing. Skipped
    under ``NANOGPT_QUICK`` (a shrunk run is not a result: returns None); a record that
    breaks the schema is refused with a ``ValueError``.
    """
    if is_quick():
        return None
    record = {"date": datetime.date.today().isoformat(), **record}
    problems = record_problems(record)
    if problems:
        raise ValueError(f"result {name!r} breaks the schema: {'; '.join(problems)}")
    folder = Path(folder) if folder is not None else results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
