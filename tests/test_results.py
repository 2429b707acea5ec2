"""Result records: the schema check, the loader and the writer the chapters share."""
from __future__ import annotations

import json

import pytest

from nanogpt.results import load_results, record_problems, write_result

GOOD = {"title": "t", "kind": "training", "model": "GPT", "hardware": "cpu", "device": "cpu", "torch": "2.13",
        "date": "2026-11-23", "command": "python -m nanogpt train", "metrics": {"val_loss": 1.5}}


def test_record_problems_names_what_is_wrong():
    assert record_problems(GOOD) == []
    bad = {**GOOD, "kind": "vibes", "date": "23/11/2026", "metrics": {"val_loss": float("nan")}}
    problems = " | ".join(record_problems(bad))
    assert "kind 'vibes'" in problems and "YYYY-MM-DD" in problems and "metrics.val_loss" in problems
    assert "missing 'hardware'" in record_problems({k: v for k, v in GOOD.items() if k != "hardware"})


def test_load_results_reads_records_and_lists_and_reports_the_rest(tmp_path):
    (tmp_path / "one.json").write_text(json.dumps(GOOD))
    (tmp_path / "many.json").write_text(json.dumps([GOOD, {**GOOD, "kind": "x"}]))
    (tmp_path / "broken.json").write_text("{not json")
    valid, skipped = load_results(tmp_path)
    assert [name for name, _ in valid] == ["many.json[0]", "one.json"]
    assert dict(skipped).keys() == {"broken.json", "many.json[1]"}


def test_write_result_validates_and_skips_quick_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_QUICK", "1")
    assert write_result("r", GOOD, tmp_path) is None and not list(tmp_path.iterdir())
    monkeypatch.setenv("NANOGPT_QUICK", "0")
    record = {k: v for k, v in GOOD.items() if k != "date"}
    path = write_result("r", record, tmp_path)
    assert json.loads(path.read_text())["date"]  # filled in
    with pytest.raises(ValueError, match="breaks the schema"):
        write_result("bad", {**GOOD, "metrics": []}, tmp_path)
