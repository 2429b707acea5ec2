"""Data: the real corpus, verified downloads, splits and both batch samplers."""
from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from nanogpt import data as D
from nanogpt.data import DataError, DataLoaderLite, RandomBatches, get_batch, load_text, train_val_split
from nanogpt.tokenizer import CharTokenizer, GPT2Tokenizer

SPEC = D.DATASETS["tinyshakespeare"]


@pytest.fixture(scope="module")
def text() -> str:
    return load_text("tinyshakespeare")


@pytest.fixture(scope="module")
def gpt2_tokens(text) -> torch.Tensor:
    return torch.tensor(GPT2Tokenizer().encode(text))


def test_tinyshakespeare_is_the_canonical_file(text):
    assert len(text) == 1_115_394
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == SPEC.sha256


def test_split_sizes(text):
    train, val = train_val_split(text)
    assert (len(train), len(val)) == (1_003_854, 111_540)
    assert train + val == text
    with pytest.raises(ValueError, match="train_fraction"):
        train_val_split(text, 1.5)


def test_get_batch_targets_are_inputs_shifted_by_one(text):
    data = torch.tensor(CharTokenizer.from_text(text).encode(text[:50_000]))
    x, y = get_batch(data, 8, 32, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Every row is a real window of the data: y's last token follows x's last token there.
    for row_x, row_y in zip(x, y):
        start = next(i for i in range(len(data) - 32) if torch.equal(data[i : i + 32], row_x))
        assert torch.equal(data[start + 1 : start + 33], row_y)


def test_get_batch_is_reproducible_with_a_seeded_generator():
    data = torch.arange(10_000)
    a = get_batch(data, 4, 16, generator=torch.Generator().manual_seed(42))
    b = get_batch(data, 4, 16, generator=torch.Generator().manual_seed(42))
    c = get_batch(data, 4, 16, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_random_batches_reset_and_state_round_trip():
    source = RandomBatches(torch.arange(5_000), 4, 8, seed=7)
    first = source.next_batch()[0]
    state = source.state_dict()
    second = source.next_batch()[0]
    source.load_state_dict(state)
    assert torch.equal(source.next_batch()[0], second)
    source.reset()
    assert torch.equal(source.next_batch()[0], first)


def test_dataloaderlite_epoch_visits_every_token_once(gpt2_tokens):
    B, T = 4, 32
    loader = DataLoaderLite(gpt2_tokens, B, T)
    n = loader.batches_per_epoch()
    assert len(gpt2_tokens) == 338_025 and n == 2_640
    xs, ys = zip(*(loader.next_batch() for _ in range(n)))
    seen = torch.cat([x.reshape(-1) for x in xs])
    targets = torch.cat([y.reshape(-1) for y in ys])
    assert torch.equal(seen, gpt2_tokens[: n * B * T])          # in order, each exactly once
    assert torch.equal(targets, gpt2_tokens[1 : n * B * T + 1])  # shifted by one
    assert loader.position == 0                                  # wrapped to the start
    assert torch.equal(loader.next_batch()[0], xs[0])


def test_dataloaderlite_shards_by_rank_cover_the_stream_like_one_process():
    tokens = torch.arange(1_000)
    single = DataLoaderLite(tokens, 2, 5)
    ranks = [DataLoaderLite(tokens, 2, 5, process_rank=r, num_processes=2) for r in range(2)]
    assert ranks[0].batches_per_epoch() == single.batches_per_epoch() // 2
    for _ in range(ranks[0].batches_per_epoch()):
        for r in ranks:  # rank 0 then rank 1 take what one process takes in two steps
            x, y = r.next_batch()
            sx, sy = single.next_batch()
            assert torch.equal(x, sx) and torch.equal(y, sy)
    with pytest.raises(ValueError, match="process_rank"):
        DataLoaderLite(tokens, 2, 5, process_rank=2, num_processes=2)


def test_dataloaderlite_moves_across_shards_and_resumes(tmp_path):
    paths = [D.write_tokens(tmp_path / f"s{i}.bin", np.arange(i * 100, i * 100 + 41)) for i in range(3)]
    loader = DataLoaderLite(paths, 2, 10)  # 20 tokens a step: 2 steps per 41-token shard
    firsts = [loader.next_batch()[0][0, 0].item() for _ in range(6)]
    assert firsts == [0, 20, 100, 120, 200, 220]
    state = loader.state_dict()
    expected = loader.next_batch()
    resumed = DataLoaderLite(paths, 2, 10)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.next_batch()[0], expected[0])


def test_token_shards_round_trip_and_reject_large_ids(tmp_path):
    tokens = np.array([0, 1, 50256, 65535])
    path = D.write_tokens(tmp_path / "t.bin", tokens)
    back = D.read_tokens(path)
    assert isinstance(back, np.memmap) and back.dtype == np.uint16
    assert back.tolist() == tokens.tolist()
    with pytest.raises(ValueError, match="uint16"):
        D.write_tokens(tmp_path / "bad.bin", [70_000])


def test_shards_refuse_ids_that_uint16_cannot_hold_before_storing_them(tmp_path):
    encode = {"ok": [1, 2, 3], "big": [4, 70_000], "negative": [-1]}.get
    for doc in ("big", "negative"):
        with pytest.raises(ValueError, match=r"token id (70000|-1) in document 1 is outside \[0, 65535\]"):
            D.tokenize_to_shards(["ok", doc], encode, tmp_path / doc, shard_tokens=4)
        stored = [D.read_tokens(p).tolist() for p in sorted((tmp_path / doc).glob("*.bin"))]
        assert 70_000 % 2**16 not in sum(stored, [])  # 70000 never became 4464


def test_tokenize_text_dataset_makes_one_document_per_file(tmp_path):
    enc = GPT2Tokenizer()
    texts = ["First file.\nTwo lines.\n", "Second file,\none more.\n", "Third."]
    files = []
    for i, t in enumerate(texts):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(t, encoding="utf-8")
    paths = D.tokenize_text_dataset(files, enc.enc.encode_ordinary, tmp_path / "shards", eot=enc.eot_token)
    stored = np.concatenate([D.read_tokens(p) for p in paths]).tolist()
    assert stored == sum((enc.encode_document(t) for t in texts), [])  # an <|endoftext|> before each file
    assert stored.count(enc.eot_token) == 3


def test_tokenize_text_dataset_through_hf_datasets(tmp_path, text):
    enc = GPT2Tokenizer()
    doc = text[:5_000]
    src = tmp_path / "doc.txt"
    src.write_text(doc, encoding="utf-8")
    paths = D.tokenize_text_dataset(src, enc.enc.encode_ordinary, tmp_path / "shards",
                                    shard_tokens=500, eot=enc.eot_token)
    stored = np.concatenate([D.read_tokens(p) for p in paths]).tolist()
    assert stored == enc.encode_document(doc)
    assert all(len(D.read_tokens(p)) == 500 for p in paths[:-1])


# --- download and verification -----------------------------------------------------------

def _serve(monkeypatch, payload: bytes, fail_after: int | None = None) -> None:
    """Make urlopen return ``payload`` (optionally dying after ``fail_after`` bytes)."""

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

        def read(self, n=-1):
            if fail_after is not None and self.tell() >= fail_after:
                raise ConnectionResetError("connection reset by peer")
            return super().read(min(n, fail_after - self.tell()) if fail_after is not None else n)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Response(payload))


def test_download_verifies_and_writes_atomically(tmp_path, monkeypatch):
    payload = b"To be, or not to be" * 100
    _serve(monkeypatch, payload)
    dest = tmp_path / "cache" / "x.txt"
    D.download("https://example.invalid/x.txt", dest, hashlib.sha256(payload).hexdigest(), progress=False)
    assert dest.read_bytes() == payload
    assert list(dest.parent.iterdir()) == [dest]  # no temporary file left behind


def test_checksum_mismatch_leaves_no_file(tmp_path, monkeypatch):
    _serve(monkeypatch, b"not shakespeare")
    dest = tmp_path / "x.txt"
    with pytest.raises(DataError, match="checksum mismatch"):
        D.download("https://example.invalid/x.txt", dest, SPEC.sha256, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_leaves_no_file_and_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path / "cache"))
    _serve(monkeypatch, b"x" * 10_000, fail_after=3_000)
    with pytest.raises(DataError) as info:
        D.dataset_path("tinyshakespeare")
    message = str(info.value)
    assert "could not download" in message and "connection reset" in message
    assert "NANOGPT_DATA_DIR/tinyshakespeare/input.txt" in message and SPEC.url in message
    cache = tmp_path / "cache" / "tinyshakespeare"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_data_dir_without_the_corpus_is_named_before_the_download_error(tmp_path, monkeypatch):
    folder = tmp_path / "no-such-folder"
    monkeypatch.setenv("NANOGPT_DATA_DIR", str(folder))
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path / "cache"))

    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        D.dataset_path("tinyshakespeare")
    first_line = str(info.value).splitlines()[0]  # what the command line shows
    assert first_line.startswith(f"NANOGPT_DATA_DIR is {folder}, a folder that does not exist: "
                                 "it has no tinyshakespeare/input.txt; could not download tinyshakespeare: ")
    assert "Temporary failure in name resolution" in first_line
    folder.mkdir()
    with pytest.raises(DataError, match=f"NANOGPT_DATA_DIR is {folder}: it has no tinyshakespeare/input.txt; "
                                        "tinyshakespeare is not available locally"):
        D.dataset_path("tinyshakespeare", allow_download=False)


def test_corrupt_files_are_detected_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "tinyshakespeare" / "input.txt"
    cached.parent.mkdir(parents=True)
    cached.write_text("First Citizen: truncated")
    monkeypatch.setenv("NANOGPT_DATA_DIR", str(tmp_path / "nothing-here"))
    with pytest.raises(DataError, match="corrupt"):
        D.dataset_path("tinyshakespeare")
    local = tmp_path / "local" / "tinyshakespeare" / "input.txt"
    local.parent.mkdir(parents=True)
    local.write_text("First Citizen: also truncated")
    monkeypatch.setenv("NANOGPT_DATA_DIR", str(tmp_path / "local"))
    with pytest.raises(DataError, match="corrupt"):
        D.dataset_path("tinyshakespeare")


def test_unknown_dataset_and_offline_mode(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="unknown dataset"):
        D.dataset_path("wikitext")
    monkeypatch.setenv("NANOGPT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path))
    with pytest.raises(DataError, match="not available locally"):
        D.dataset_path("tinyshakespeare", allow_download=False)
