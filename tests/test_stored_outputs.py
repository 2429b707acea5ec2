"""The book shows no machine's paths: no stored output holds an absolute path.

A chapter's committed outputs are what the book renders. A path such as ``/work/main/...``,
``/tmp/torchinductor_root`` or ``C:\\Users\\...`` says where one machine kept its files, not
anything a reader needs; chapters print paths relative to the chapter or the repository
(``nanogpt.course.shown_path``), or not at all.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")) + [ROOT / "book" / "results.ipynb"]
# An absolute path: a POSIX root folder that holds users' or scratch files, or a Windows drive.
ABSOLUTE = re.compile(
    r"(?<![\w./~-])/(?:work|tmp|home|root|Users|mnt|var/folders|private|content|opt|srv|scratch)/[\w.~-]"
    r"|(?<![\w'])[A-Za-z]:\\\\?[\w .~-]+\\"  # C:\Users\..., not the bytes b'd:\n' of a tokenizer demo
)
# Text outputs only: images are bytes, and a widget's state is not shown as text.
TEXT_TYPES = ("text/plain", "text/markdown", "text/html", "text/latex")


def stored_texts(nb: dict):
    """(cell index, text) for every text a code cell's outputs store."""
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        for out in cell.get("outputs", []):
            if "text" in out:
                yield index, "".join(out["text"])
            if out.get("output_type") == "error":
                yield index, "\n".join(out.get("traceback", []))
            for kind, value in out.get("data", {}).items():
                if kind in TEXT_TYPES:
                    yield index, "".join(value) if isinstance(value, list) else str(value)


def absolute_paths(nb: dict) -> list[str]:
    found = []
    for index, text in stored_texts(nb):
        for line in text.splitlines():
            if ABSOLUTE.search(line):
                found.append(f"cell {index}: {line.strip()[:120]}")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_stored_output_shows_an_absolute_path(path):
    assert absolute_paths(json.loads(path.read_text(encoding="utf-8"))) == [], (
        "print paths relative to the chapter or the repository (nanogpt.course.shown_path), then re-execute")


def test_the_check_catches_machine_paths():
    def nb(*texts):
        return {"cells": [{"cell_type": "code", "source": [], "outputs": [
            {"output_type": "stream", "name": "stdout", "text": [t]} for t in texts]}]}

    caught = nb("written to /work/main/nanogpt/course/records/x.json\n", "cache in /tmp/torchinductor_root\n",
                "tokenized into /tmp/shakespeare_gpt2_29_tvcea\n", "saved to C:\\Users\\me\\out\n",
                "home: /home/reader/.cache/nanogpt\n")
    assert len(absolute_paths(caught)) == 5
    fine = nb("written to nanogpt/course/records/x.json\n", "checkpoint: out/06_shakespeare/ckpt.pt\n",
              "ratio 3/4, 50,304/128, 1e-3/2 and a URL https://github.com/karpathy/nanoGPT/tree/master\n",
              "resuming: cannot resume from <out>/ckpt.pt\n", "merge b'd' + b':\\n' -> b'd:\\n'\n")
    assert absolute_paths(fine) == []
