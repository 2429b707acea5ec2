"""The core modules work as lone copies, as a reader lifts them into a project of their own.

Each test copies a file (or the whole ``nanogpt/`` folder) into an empty folder and runs it
in a fresh interpreter that cannot see this repository: ``python -S`` skips site-packages'
start-up hooks (the editable install of ``nanogpt`` is one), and ``PYTHONPATH`` holds only
the copy's folder and site-packages itself, for torch and the other dependencies.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nanogpt"
SITE_PACKAGES = sysconfig.get_paths()["purelib"]

NO_PACKAGE = """
import importlib.util
assert importlib.util.find_spec("nanogpt") is None, "the nanogpt package leaked into the lone copy's run"
"""


def run_alone(folder: Path, code: str, timeout: float = 300) -> str:
    """Run ``code`` with only ``folder`` (and the dependencies) importable; returns stdout."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{folder}:{SITE_PACKAGES}", "OMP_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(code)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"the lone copy failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def copy_alone(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    for name in names:
        shutil.copy(PACKAGE / name, folder / name)
    return folder


def test_run_alone_hides_the_repository(tmp_path):
    """The harness itself: without the copy, neither the package nor this checkout is importable."""
    out = run_alone(tmp_path, NO_PACKAGE + f"""
import sys
print([p for p in sys.path if p.rstrip("/") == {str(ROOT)!r}])
""")
    assert out.strip() == "[]"


def test_model_py_alone_trains_and_generates_with_the_kv_cache(tmp_path):
    folder = copy_alone(tmp_path, "model.py")
    out = run_alone(folder, NO_PACKAGE + """
import torch
from model import GPT, GPTConfig

torch.manual_seed(0)
config = GPTConfig(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
model = GPT(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
x = torch.randint(0, 32, (4, 16))
y = torch.roll(x, -1, dims=1)
_, before = model(x, y)
before.backward()
optimizer.step()
optimizer.zero_grad()
_, after = model(x, y)
assert after.item() < before.item(), (before.item(), after.item())

model.eval()
prompt = torch.zeros((1, 3), dtype=torch.long)
cached = model.generate(prompt, max_new_tokens=8, generator=torch.Generator().manual_seed(1))
uncached = model.generate(prompt, max_new_tokens=8, generator=torch.Generator().manual_seed(1), use_cache=False)
assert cached.shape == (1, 11) and torch.equal(cached, uncached), (cached, uncached)
print("ok")
""")
    assert out.strip() == "ok"


def test_tokenizer_py_alone_round_trips_and_trains_bpe(tmp_path):
    folder = copy_alone(tmp_path, "tokenizer.py")
    out = run_alone(folder, NO_PACKAGE + """
from tokenizer import BPETokenizer, CharTokenizer

text = "to be, or not to be: that is the question"
chars = CharTokenizer.from_text(text)
assert chars.decode(chars.encode(text)) == text and chars.vocab_size == len(set(text))
bpe = BPETokenizer.train(text * 3, vocab_size=260)
assert bpe.vocab_size == 260 and bpe.decode(bpe.encode(text)) == text
assert len(bpe.encode(text)) < len(text.encode())
print("ok")
""")
    assert out.strip() == "ok"


def test_ridge_py_alone_fits_a_tiny_model(tmp_path):
    folder = copy_alone(tmp_path, "ridge.py")
    out = run_alone(folder, NO_PACKAGE + """
import math
import torch
from ridge import RidgeConfig, RidgeLM

tokens = torch.tensor([0, 1, 2, 3] * 50)  # a cycle: the next token is determined by the last one
model = RidgeLM(RidgeConfig(vocab_size=4, context=2, embed_dim=4, hidden=32))
model.fit(tokens, progress=False)
loss = model.loss(tokens)
assert math.isfinite(loss) and loss < math.log(4), loss
print("ok")
""")
    assert out.strip() == "ok"


def test_the_whole_package_folder_alone_builds_and_trains_a_gpt(tmp_path):
    folder = tmp_path / "project"
    shutil.copytree(PACKAGE, folder / "nanogpt", ignore=shutil.ignore_patterns("__pycache__"))
    out = run_alone(folder, f"""
import torch
import nanogpt
from nanogpt import GPT, GPTConfig, CharTokenizer

assert nanogpt.__file__.startswith({str(folder)!r}), nanogpt.__file__
tok = CharTokenizer.from_text("hello world")
ids = torch.tensor([tok.encode("hello worl")])
model = GPT(GPTConfig(block_size=16, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
_, loss = model(ids[:, :-1], ids[:, 1:])
loss.backward()
optimizer.step()
assert torch.isfinite(loss)
print("ok")
""")
    assert out.strip() == "ok"
