"""The records never leave a utilisation ambiguous: MFU and matmul-rate utilisation under distinct keys.

Two figures divide a run's model FLOP/s by a peak, and the course keeps them apart by name:

- ``mfu`` (model FLOPs utilisation): against the data-sheet peak of the precision the run used;
  null where no data sheet is known (a CPU);
- ``matmul_rate_utilisation``: against this machine's measured matmul rate in that precision.

A metric that carries one carries the other (``x_mfu`` beside ``x_matmul_rate_utilisation``,
``mfu_bf16`` beside ``matmul_rate_utilisation_bf16``), and no other key names a utilisation.
"""
from __future__ import annotations

import json
import math
import re

import pytest

from nanogpt.course import records_dir, shown_path

MFU = "mfu"
RATE = "matmul_rate_utilisation"
# mfu, x_mfu, mfu_x, x_mfu_y, and the same with matmul_rate_utilisation.
NAMED = re.compile(rf"^(?:(?P<pre>.+)_)?(?P<what>{MFU}|{RATE})(?:_(?P<post>.+))?$")
AMBIGUOUS = re.compile(r"util|mfu", re.IGNORECASE)


def utilisation_problems(record: dict) -> list[str]:
    """What makes a record's utilisation figures ambiguous or one-sided (empty when none)."""
    metrics = record.get("metrics", {})
    found = []
    for key, value in metrics.items():
        match = NAMED.match(key)
        if not match:
            if AMBIGUOUS.search(key):
                found.append(f"{key}: a utilisation under neither name ({MFU!r}, {RATE!r})")
            continue
        other = MFU if match["what"] == RATE else RATE
        twin = "_".join(part for part in (match["pre"], other, match["post"]) if part)
        if twin not in metrics:
            found.append(f"{key} without {twin}")
        if value is None:
            if match["what"] == RATE or record.get("device") == "cuda":
                found.append(f"{key} is null: only MFU off a GPU (no data-sheet peak) may be")
        elif not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            found.append(f"{key} = {value!r} is not a positive number")
    return found


RECORDS = sorted(records_dir().glob("*.json"))


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_a_record_with_a_utilisation_carries_both_under_distinct_keys(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    for record in data if isinstance(data, list) else [data]:
        assert utilisation_problems(record) == []


def test_some_records_carry_both_utilisations():
    both = [p.name for p in RECORDS if any(NAMED.match(k) for k in json.loads(p.read_text())["metrics"])]
    assert {"bench-shakespeare-char-cuda.json", "gpu-recipe-ladder-cuda.json"} <= set(both)


def test_the_check_catches_an_ambiguous_or_one_sided_record():
    gpu = {"device": "cuda", "metrics": {
        "mfu": 0.5,                                   # no matmul_rate_utilisation beside it
        "bf16_mfu": 0.2, "bf16_matmul_rate_utilisation": 0.3,   # a pair: fine
        "tf32_matmul_rate_utilisation": 0.4, "tf32_mfu": None,  # null MFU on a GPU
        "model_flops_utilization": 0.1,               # a third name
    }}
    assert utilisation_problems(gpu) == [
        "mfu without matmul_rate_utilisation",
        "tf32_mfu is null: only MFU off a GPU (no data-sheet peak) may be",
        "model_flops_utilization: a utilisation under neither name ('mfu', 'matmul_rate_utilisation')",
    ]
    cpu = {"device": "cpu", "metrics": {"mfu": None, "matmul_rate_utilisation": 0.6}}
    assert utilisation_problems(cpu) == []


def test_shown_path_never_prints_a_machine_path(tmp_path, monkeypatch):
    assert shown_path(records_dir() / "x.json") == "nanogpt/course/records/x.json"
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "nanogpt-results" / "x.json") == "nanogpt-results/x.json"
    assert shown_path("/somewhere/else/y.json") == "y.json"
