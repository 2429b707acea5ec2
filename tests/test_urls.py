"""One repository URL, one version, one set of install commands, everywhere they are written.

The URL is declared once, as ``repository.url`` in ``_config.yml`` (the launch buttons read it
there); the version once, as ``nanogpt.__version__``. Every chapter's first cell installs the
package from that URL at the tag ``v<version>`` with the extras the chapter imports, and the
set-up commands in README.md, CONTRIBUTING.md, book/intro.md, book/setup.md and .ci/run are
the same command.

A fork changes ``repository.url``; these tests then name every place that still says the old
one. ``python tests/test_urls.py`` rewrites the notebooks' install cells to match.
"""
from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
URL = CONFIG["repository"]["url"].rstrip("/")
REPO_NAME = URL.rsplit("/", 1)[-1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")) + [ROOT / "book" / "results.ipynb"]
DOCS = ["README.md", "CONTRIBUTING.md", "book/intro.md", "book/setup.md"]
# The environment every document tells a reader to create (from the repository root).
SETUP_COMMAND = "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -r requirements.txt -e ."
# A chapter that imports one of these needs the package's [hf] extra.
HF_MODULES = ("datasets", "transformers")


def package_version() -> str:
    """``nanogpt.__version__``, read without importing the package."""
    tree = ast.parse((ROOT / "nanogpt" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("nanogpt/__init__.py sets no __version__")


VERSION = package_version()


def code_sources(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def extras_needed(nb: dict) -> str:
    """``[hf]`` when any code cell imports datasets or transformers, else nothing."""
    pattern = re.compile(rf"^\s*(?:import|from)\s+({'|'.join(HF_MODULES)})\b", re.MULTILINE)
    return "[hf]" if any(pattern.search(src) for src in code_sources(nb)[1:]) else ""


def install_cell(extras: str) -> str:
    """The first cell of every notebook: installs this version of the package, only in Colab."""
    return (
        "# In Colab, install the course package (this chapter's version); elsewhere this does nothing.\n"
        "import sys\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q",\n'
        f'                    "nanogpt-from-scratch{extras} @ git+{URL}@v{VERSION}"], check=True)'
    )


def fenced_blocks(text: str, languages: tuple[str, ...] = ("bash", "sh", "console", "")) -> list[str]:
    """The bodies of the Markdown code fences in those languages (indented fences too)."""
    found = re.findall(r"^[ \t]*```(\w*)[ \t]*\n(.*?)^[ \t]*```", text, re.MULTILINE | re.DOTALL)
    return [body for lang, body in found if lang in languages]


def command_lines(text: str, fences: bool = True) -> list[str]:
    lines = [l for b in fenced_blocks(text) for l in b.splitlines()] if fences else text.splitlines()
    return [" ".join(l.split()) for l in lines if l.strip() and not l.strip().startswith("#")]


# ------------------------------------------------------------------------------------ the URL


def test_the_url_is_a_github_repository_and_the_launch_buttons_use_it():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", URL), (
        f"_config.yml repository.url should be https://github.com/OWNER/NAME, not {URL!r}")
    assert CONFIG["launch_buttons"].get("colab_url") == "https://colab.research.google.com"
    assert CONFIG["repository"].get("branch"), "_config.yml repository.branch: the branch the launch buttons open"
    assert CONFIG["repository"].get("path_to_book", "") == "", "the repository root is the book root"
    assert CONFIG["html"].get("use_repository_button") is True


def test_pyproject_reads_the_version_from_the_package():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^dynamic = \["version"\]', text, re.MULTILINE), "pyproject.toml: dynamic = [\"version\"]"
    assert re.search(r'^version = \{ ?attr = "nanogpt.__version__" ?\}', text, re.MULTILINE)
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION


@pytest.mark.parametrize("doc", DOCS)
def test_each_document_names_the_repository_url(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert URL in text, f"{doc} never names the repository ({URL}, from _config.yml repository.url)"


@pytest.mark.parametrize("path", [*DOCS, "_config.yml", "pyproject.toml",
                                  *(str(p.relative_to(ROOT)) for p in NOTEBOOKS)])
def test_no_other_address_for_the_repository(path):
    """Every GitHub address of this course (by its name, or the name the course began with) is URL."""
    text = (ROOT / path).read_text(encoding="utf-8")
    names = {REPO_NAME.lower(), "nanogpt-from-scratch"}
    stale = []
    for match in re.finditer(r"https?://(?:www\.)?(github\.com|raw\.githubusercontent\.com)/([\w.-]+)/([\w.-]+)", text):
        host, owner, name = match.groups()
        if not ({owner.lower(), name.lower().removesuffix(".git")} & names):
            continue  # someone else's repository (karpathy/nanoGPT, nbval, ...)
        if host == "raw.githubusercontent.com":
            stale.append(f"{match.group(0)} (a file fetched from the repository: ship it in the package instead)")
        elif f"https://github.com/{owner}/{name.removesuffix('.git')}" != URL:
            stale.append(match.group(0))
    assert not stale, f"{path} names the repository differently from _config.yml ({URL}): {stale}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_notebook_fetches_files_from_the_repository(path):
    """A chapter runs from a lone copy: what it needs ships in the package, not in the repository."""
    owner = URL.split("/")[-2]
    for i, src in enumerate(code_sources(json.loads(path.read_text(encoding="utf-8")))):
        for needle in (f"raw.githubusercontent.com/{owner}/", '"tests/', "'tests/"):
            assert needle not in src, (
                f"{path.name}, code cell {i}: {needle!r}: a lone chapter (Colab) has no repository files; "
                "ship the file in the package (e.g. python -m nanogpt.course.ddp_demo)")


# ------------------------------------------------------------------------- the install cells


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_pins_this_version_with_the_extras_the_notebook_needs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = nb["cells"][0]
    expected = install_cell(extras_needed(nb))
    assert first["cell_type"] == "code" and "".join(first["source"]) == expected, (
        f"{path.name}: the first cell should be exactly\n{expected}\n"
        f"(rewrite every notebook's install cell with: python tests/test_urls.py)")
    assert "remove-input" in first["metadata"].get("tags", []), f"{path.name}: tag the install cell remove-input"


def test_the_changelog_has_an_entry_for_this_version_at_its_top():
    versions = re.findall(r"^## (\d+\.\d+\.\d+) \(\d{4}-\d{2}-\d{2}\)$",
                          (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.MULTILINE)
    assert versions and versions[0] == VERSION, f"CHANGELOG.md's newest entry is {versions[:1]}, the package is {VERSION}"
    as_tuples = [tuple(map(int, v.split("."))) for v in versions]
    assert as_tuples == sorted(as_tuples, reverse=True) and len(set(versions)) == len(versions)


def test_contributing_shows_the_install_cell():
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    shown = [b.rstrip("\n") for b in fenced_blocks(text, ("python",))]
    cell = install_cell("")
    dedented = ["\n".join(l[2:] if l.startswith("  ") else l for l in b.splitlines()) for b in shown]
    assert cell in shown or cell in dedented, f"CONTRIBUTING.md should show the install cell:\n{cell}"


# ----------------------------------------------------------------------- the set-up commands


@pytest.mark.parametrize("doc", DOCS)
def test_every_document_sets_up_with_the_same_command(doc):
    lines = command_lines((ROOT / doc).read_text(encoding="utf-8"))
    setups = [l for l in lines if "pip install" in l]
    assert setups, f"{doc} shows no set-up command (expected: {SETUP_COMMAND})"
    assert set(setups) == {SETUP_COMMAND}, f"{doc}: set-up commands {setups} differ from {SETUP_COMMAND!r}"
    clones = [l for l in lines if l.startswith("git clone")]
    assert all(c == f"git clone {URL}" for c in clones), f"{doc}: {clones} should be 'git clone {URL}'"
    for clone in clones:
        after = lines[lines.index(clone) + 1]
        assert after == f"cd {REPO_NAME}", f"{doc}: after {clone!r} comes 'cd {REPO_NAME}', not {after!r}"


def test_ci_sets_up_as_the_documents_say():
    lines = command_lines((ROOT / ".ci" / "run").read_text(encoding="utf-8"), fences=False)
    setups = [l.replace(" -q ", " ") for l in lines if "pip install" in l]
    assert setups == [SETUP_COMMAND], f".ci/run sets up with {setups}, the documents with {SETUP_COMMAND!r}"


def test_the_fenced_block_parser_finds_commands():
    """The checks above are only as good as the extraction: it must see indented fences too."""
    text = "x\n```bash\ngit clone U\ncd N\n```\n- item:\n  ```bash\n  pip install a  b\n  ```\n"
    assert command_lines(text) == ["git clone U", "cd N", "pip install a b"]


def rewrite_install_cells() -> list[str]:
    """Set every notebook's first cell to the install cell; returns the notebooks changed."""
    changed = []
    for path in NOTEBOOKS:
        raw = path.read_text(encoding="utf-8")
        nb = json.loads(raw)
        first = nb["cells"][0]
        cell = install_cell(extras_needed(nb))
        if first["cell_type"] != "code" or "google.colab" not in "".join(first["source"]):
            raise SystemExit(f"{path}: the first cell is not an install cell; add one by hand")
        lines = cell.split("\n")
        source = [line + "\n" for line in lines[:-1]] + [lines[-1]]
        tags = first["metadata"].setdefault("tags", [])
        if first["source"] != source or "remove-input" not in tags:
            first["source"] = source
            if "remove-input" not in tags:
                tags.append("remove-input")
            ascii_only = raw.isascii()
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=ascii_only) + "\n", encoding="utf-8")
            changed.append(str(path.relative_to(ROOT)))
    return changed


if __name__ == "__main__":
    print("rewrote:", *rewrite_install_cells() or ["nothing"], sep="\n  ")
    sys.exit(0)
