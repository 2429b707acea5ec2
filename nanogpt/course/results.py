"""Measured results: the JSON records behind the book's results page.

Every figure the course reports is written by the script or chapter that measured it, as
``book/results/<name>.json`` (one record, or a list of records)::

    {"title": str, "kind": "training" | "benchmark" | "closed-form", "model": str,
     "hardware": str, "device": str, "torch": str, "date": "YYYY-MM-DD", "command": str,
     "metrics": {"wall_time_s": float, "val_loss": float, "tokens_per_s": float, ...}}

Every metric is optional, and any other named figure may be added.
"""
from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path

KINDS = ("training", "benchmark", "closed-form")
REQUIRED = ("title", "kind", "model", "hardware", "device", "torch", "date", "command", "metrics")
MAIN_METRICS = ("wall_time_s", "val_loss", "tokens_per_s")


def results_dir() -> Path:
    """``$NANOGPT_RESULTS_DIR``, else ``book/results`` beside the package."""
    if os.environ.get("NANOGPT_RESULTS_DIR"):
        return Path(os.environ["NANOGPT_RESULTS_DIR"]).expanduser()
    return Path(__file__).resolve().parent.parent / "book" / "results"


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

    ``name`` is the file name, with ``[i]`` for the i-th record of a list.
    """
    folder = Path(folder) if folder is not None else results_dir()
    valid, skipped = [], []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            skipped.append((path.name, f"unreadable JSON: {err}"))
            continue
        for i, record in enumerate(data if isinstance(data, list) else [data]):
            name = f"{path.name}[{i}]" if isinstance(data, list) else path.name
            problems = record_problems(record)
            if problems:
                skipped.append((name, "; ".join(problems)))
            else:
                valid.append((name, record))
    return valid, skipped


def write_result(name: str, record: dict, folder: str | Path | None = None) -> Path | None:
    """Save a measured record as ``<folder>/<name>.json`` (the date is filled in when missing).

    Skipped under ``NANOGPT_QUICK`` (a shrunk run is not a result); a record that breaks
    the schema is refused with a ``ValueError``.
    """
    from .runtime import is_quick

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
