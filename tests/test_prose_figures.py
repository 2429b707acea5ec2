"""Figures in a chapter's prose come from its outputs, so text and measurement cannot drift.

A precise figure in a markdown cell (three or more decimals, as losses are quoted, or a
percentage with decimals) must appear in an output of the same notebook, or be glued
(``{glue:text}``), or stand on a line that labels it as quoted or cites its source. The
few illustrative numbers of worked examples are listed below with the reason.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")) + [ROOT / "book" / "results.ipynb"]
FIGURE = re.compile(r"(?<![\w.])(\d+\.\d{3,}|\d+\.\d+(?=\s?%))(?![\w])")
SOURCED = re.compile(r"quoted|\{cite|README|paper|data sheet|whitepaper", re.IGNORECASE)
# Numbers that are inputs of a worked example or an exercise, not measurements.
ILLUSTRATIVE = {
    "03_bigram": {"0.001": "an exercise's smoothing range"},
    "07_gpu_training": {"0.09": "47 padding rows over 50,257: arithmetic on the vocabulary sizes"},
    "08_deterministic_training": {"0.0001": "an example probability", "0.0099": "0.01 - 0.0001, worked out"},
}


def outputs_text(nb: dict) -> str:
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            if "text" in out:
                parts.append("".join(out["text"]))
            for value in out.get("data", {}).values():
                if isinstance(value, (str, list)):
                    parts.append("".join(value))
    return "\n".join(parts)


def unsupported_figures(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    printed = outputs_text(nb)
    allowed = ILLUSTRATIVE.get(path.stem, {})
    found = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for line in "".join(cell["source"]).splitlines():
            if SOURCED.search(line):
                continue
            for figure in FIGURE.findall(line):
                if figure not in printed and figure not in allowed:
                    found.append(f"cell {index}: {figure} in {line.strip()[:100]!r}")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_precise_figure_in_the_prose_is_an_output(path):
    assert unsupported_figures(path) == [], (
        "glue these figures from the cell that computes them, print them, or label them as quoted")


def test_the_check_catches_a_figure_typed_into_the_prose(tmp_path):
    nb = {"cells": [
        {"cell_type": "code", "source": [], "outputs": [{"output_type": "stream", "name": "stdout",
                                                         "text": ["val loss 1.5216\n"]}]},
        {"cell_type": "markdown", "source": ["The run reached 1.5216, then 1.4999 (typed in)."]},
        {"cell_type": "markdown", "source": ["nanoGPT's README quotes 1.4697."]},
    ]}
    path = tmp_path / "99_example.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    assert unsupported_figures(path) == ["cell 1: 1.4999 in 'The run reached 1.5216, then 1.4999 (typed in).'"]
