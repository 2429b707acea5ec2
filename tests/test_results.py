"""Result records: the schema check, the loader and the writer the chapters share, and where
records live (shipped in the package) and go (never into an installed package)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nanogpt.course import load_results, records_dir, results_dir, write_result
from nanogpt.course.results import record_problems, source_checkout

ROOT = Path(__file__).resolve().parent.parent

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


def test_the_course_records_ship_in_the_package_and_follow_the_schema():
    """Every nanogpt/course/records/*.json is a record (or list) the results page can show."""
    assert records_dir() == ROOT / "nanogpt" / "course" / "records"
    valid, skipped = load_results(records_dir())
    assert valid, f"no records in {records_dir()}"
    assert not skipped, "records that break records/README.md's schema:\n" + json.dumps(dict(skipped), indent=1)
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"nanogpt.course" = ["records/*.json", "records/README.md"]' in pyproject, "ship the records as package data"


def test_in_this_checkout_records_are_written_beside_the_course_records(monkeypatch):
    monkeypatch.delenv("NANOGPT_RESULTS_DIR", raising=False)
    assert source_checkout() == ROOT
    assert results_dir() == records_dir()


WRITE = """
import json, os
from nanogpt.course import load_results, records_dir, results_dir, write_result
record = {"title": "t", "kind": "training", "model": "GPT", "hardware": "cpu", "device": "cpu",
          "torch": "2.13", "command": "c", "metrics": {"val_loss": 1.5}}
path = write_result("mine", record)
names = [name for name, _ in load_results()[0]]
print(json.dumps({"path": str(path), "records": str(records_dir()), "names": names}))
"""


def write_from_a_copy(tmp_path: Path, layout: str, env: dict | None = None) -> dict:
    """Copy nanogpt/course (under an empty nanogpt/) as ``layout`` has it, call write_result there."""
    home = tmp_path / layout
    package = home / "nanogpt"
    shutil.copytree(ROOT / "nanogpt" / "course", package / "course", ignore=shutil.ignore_patterns("__pycache__"))
    (package / "__init__.py").write_text("")
    if layout == "checkout":
        shutil.copy(ROOT / "pyproject.toml", home / "pyproject.toml")
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    run_env = {k: v for k, v in os.environ.items() if k not in ("NANOGPT_RESULTS_DIR", "PYTHONPATH")}
    run_env.update(PYTHONPATH=str(home), NANOGPT_QUICK="0", **(env or {}))
    proc = subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(WRITE)], cwd=work, env=run_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    out["work"], out["home"] = work, home
    return out


def test_write_result_in_a_source_checkout_writes_to_its_records(tmp_path):
    out = write_from_a_copy(tmp_path, "checkout")
    assert Path(out["path"]) == out["home"] / "nanogpt" / "course" / "records" / "mine.json"
    assert Path(out["path"]).is_file() and not (out["work"] / "nanogpt-results").exists()
    assert out["names"].count("mine.json") == 1  # one folder: read once


def test_write_result_from_an_installed_package_writes_to_the_working_directory(tmp_path):
    out = write_from_a_copy(tmp_path, "site-packages")
    assert Path(out["path"]) == out["work"] / "nanogpt-results" / "mine.json"
    assert Path(out["path"]).is_file()
    assert not (out["home"] / "nanogpt" / "course" / "records" / "mine.json").exists(), "wrote into the package"
    shipped = [p.name for p in (out["home"] / "nanogpt" / "course" / "records").glob("*.json")]
    names = out["names"]
    assert set(shipped) <= set(names), "the shipped records are read too"
    assert names[-1] == f"{out['work'] / 'nanogpt-results'}/mine.json", names  # the reader's own, by path


def test_write_result_goes_where_nanogpt_results_dir_says(tmp_path):
    chosen = tmp_path / "chosen"
    out = write_from_a_copy(tmp_path, "site-packages", env={"NANOGPT_RESULTS_DIR": str(chosen)})
    assert Path(out["path"]) == chosen / "mine.json" and Path(out["path"]).is_file()
    assert not (out["work"] / "nanogpt-results").exists()


def test_gpu_variant_study_saves_a_record_of_a_run_stopped_early(tmp_path, monkeypatch):
    """benchmarks/shakespeare_gpu_variants.py --records-from: estimates of a cut-short run become a valid record."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "variants", Path(__file__).resolve().parents[1] / "benchmarks" / "shakespeare_gpu_variants.py")
    variants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(variants)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "preset.json").write_text(json.dumps({
        "variant": "preset", "label": "as the preset", "change": {}, "device": "cuda", "hardware": "a GPU",
        "torch": "2.x", "eval_iters": 50, "stopped_at": 260,
        "evals": [{"iter": 0, "train": 4.3, "val": 4.3}, {"iter": 125, "train": 1.5, "val": 1.6},
                  {"iter": 250, "train": 1.1, "val": 1.7}]}))
    monkeypatch.setenv("NANOGPT_RESULTS_DIR", str(tmp_path / "records"))
    monkeypatch.delenv("NANOGPT_QUICK", raising=False)
    assert variants.main(["--records-from", str(runs), "--sharing", "3"]) == 0
    (name, record), = load_results(tmp_path / "records")[0]
    assert name == "shakespeare-char-variant-preset.json" and record["device"] == "cuda"
    assert record["metrics"] == {"best_val_estimate": 1.6, "best_val_iter": 125, "last_eval_iter": 250,
                                 "last_val_estimate": 1.7, "last_train_estimate": 1.1, "eval_iters": 50,
                                 "runs_sharing_the_gpu": 3, "stopped_at_step": 260}
    assert "val_loss" not in record["metrics"]  # no full-split score for a run that never finished


def _benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_rates_give_each_candidate_the_steps_that_fit_its_budget(tmp_path, monkeypatch, capsys):
    """benchmarks/cpu_step_rates.py: one JSON line and a valid record, steps = budget / median step."""
    rates = _benchmark("cpu_step_rates")
    monkeypatch.setenv("NANOGPT_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("NANOGPT_QUICK", raising=False)
    monkeypatch.setattr("sys.argv", ["cpu_step_rates.py", "--budget", "2", "--candidates", "L1:1:2", "L2:2:2",
                                     "--rounds", "1", "--steps-per-round", "2", "--threads", "1", "--save"])
    rates.main()
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    for label in ("L1", "L2"):
        ms, first = line["ms_per_step"][label], line["first_step_s"][label]
        assert line["steps_in_budget"][label] == pytest.approx((2 - first) * 1000 / ms, rel=0.05)  # printed rounded
    (name, record), = load_results(tmp_path)[0]
    assert name == "cpu-step-rates.json" and record["metrics"]["steps_in_budget_L2"] == line["steps_in_budget"]["L2"]
    assert "--candidates L1:1:2 L2:2:2" in record["command"]
