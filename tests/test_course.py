"""The core a reader copies stays apart from what only the course needs (``nanogpt.course``)."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

import nanogpt.course

ROOT = Path(__file__).resolve().parent.parent
CORE = sorted((ROOT / "nanogpt").glob("*.py"))
OLD_IMPORTS = re.compile(r"^\s*(from nanogpt(\.|\s+import\s+)(results|notebook)\b"
                         r"|from nanogpt\.runtime import .*\b(is_quick|quick_or)\b"
                         r"|from nanogpt import .*\b(is_quick|quick_or)\b)", re.MULTILINE)


def test_course_exports_the_course_helpers():
    for name in ("is_quick", "quick_or", "show_source", "write_result", "load_results", "results_dir"):
        assert callable(getattr(nanogpt.course, name)), name
    assert not hasattr(nanogpt, "is_quick"), "quick mode is course-only: nanogpt.course.is_quick"


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_module_never_imports_the_course_at_module_level_nor_reads_quick_mode(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    for node in tree.body:  # module level only: a function may import a course helper on use
        if isinstance(node, ast.ImportFrom):
            module = ("." * node.level) + (node.module or "")
            assert "course" not in module.split("."), f"{path.name}: top-level import from {module}"
    reads = re.search(r"(environ|getenv)\W[^\n]*NANOGPT_QUICK", source)
    assert not reads, f"{path.name} reads NANOGPT_QUICK ({reads.group(0)}): use nanogpt.course.is_quick"


def python_sources():
    for path in sorted(ROOT.rglob("*.py")):
        if not {".venv", "_build", "build", ".git"} & set(path.relative_to(ROOT).parts):
            yield path, path.read_text(encoding="utf-8")
    for path in sorted([*ROOT.glob("chapters/*.ipynb"), *ROOT.glob("book/*.ipynb")]):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        yield path, "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_nothing_imports_the_old_module_paths():
    stale = [f"{path.relative_to(ROOT)}: {m.group(0).strip()}"
             for path, source in python_sources() for m in OLD_IMPORTS.finditer(source)]
    assert not stale, "moved to nanogpt.course:\n" + "\n".join(stale)
