"""Data: find or download the corpus, split it, and serve batches.

Two ways to feed a language model:

- ``get_batch`` samples random windows (what the Shakespeare video does);
- ``DataLoaderLite`` walks the token stream in order, B*T tokens at a time, and can be
  sharded across processes for DDP (what the GPT-2 reproduction does).

Large corpora are stored as uint16 token shards read back with ``numpy.memmap``.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .runtime import cache_dir, data_dir


@dataclass(frozen=True)
class RemoteFile:
    """A corpus file with a canonical URL and the checksum that identifies it."""

    name: str
    filename: str
    url: str
    sha256: str
    n_chars: int


DATASETS: dict[str, RemoteFile] = {
    "tinyshakespeare": RemoteFile(
        name="tinyshakespeare",
        filename="input.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        n_chars=1_115_394,
    ),
}


class DataError(RuntimeError):
    """A corpus file could not be found, downloaded or verified."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manual_instructions(spec: RemoteFile) -> str:
    return (
        f"To provide it by hand, download {spec.url}\n"
        f"and save it as $NANOGPT_DATA_DIR/{spec.name}/{spec.filename} "
        f"(sha256 {spec.sha256})."
    )


def download(url: str, dest: Path, sha256: str, *, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically and verify its sha256.

    The bytes go to a temporary file beside ``dest``, which is renamed into place only
    after the checksum matches; on any failure the temporary file is removed, so no
    partial or corrupt file is ever left at ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}")
            try:
                while block := response.read(1 << 16):
                    out.write(block)
                    digest.update(block)
                    if bar is not None:
                        bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
        if digest.hexdigest() != sha256:
            raise DataError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest.hexdigest()}"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def dataset_path(name: str = "tinyshakespeare", *, allow_download: bool = True) -> Path:
    """Path of a verified local copy of corpus ``name``.

    Looks in ``$NANOGPT_DATA_DIR/<name>/``, then in the user cache, then downloads into
    the cache. A file whose checksum does not match is reported, never silently used.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    local = data_dir()
    if local is not None:
        candidate = local / spec.name / spec.filename
        if candidate.exists():
            actual = sha256_of(candidate)
            if actual != spec.sha256:
                raise DataError(
                    f"{candidate} is corrupt or not {spec.name}: sha256 {actual}, expected {spec.sha256}.\n"
                    + _manual_instructions(spec)
                )
            return candidate
    cached = cache_dir() / spec.name / spec.filename
    if cached.exists():
        actual = sha256_of(cached)
        if actual == spec.sha256:
            return cached
        raise DataError(
            f"cached file {cached} is corrupt (sha256 {actual}, expected {spec.sha256}); "
            "delete it to download it again.\n" + _manual_instructions(spec)
        )
    # Say first where the reader pointed us, then what the download said.
    missing = ""
    if local is not None:
        absent = "" if local.is_dir() else ", a folder that does not exist"
        missing = f"NANOGPT_DATA_DIR is {local}{absent}: it has no {spec.name}/{spec.filename}; "
    if not allow_download:
        raise DataError(f"{missing}{spec.name} is not available locally.\n" + _manual_instructions(spec))
    try:
        return download(spec.url, cached, spec.sha256)
    except (urllib.error.URLError, OSError, DataError) as exc:
        raise DataError(f"{missing}could not download {spec.name}: {exc}\n" + _manual_instructions(spec)) from exc


def load_text(name: str = "tinyshakespeare") -> str:
    """The whole corpus as one string (Tiny Shakespeare: 1,115,394 characters)."""
    return dataset_path(name).read_text(encoding="utf-8")


def train_val_split(data, train_fraction: float = 0.9):
    """First ``train_fraction`` of a sequence for training, the rest for validation."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n = int(train_fraction * len(data))
    return data[:n], data[n:]


def get_batch(
    data: torch.Tensor,
    batch_size: int,
    block_size: int,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``block_size`` tokens; targets are inputs shifted by one.

    Returns ``x, y`` of shape (B, T), int64, on ``device``.
    """
    if len(data) <= block_size:
        raise ValueError(f"data has {len(data)} tokens, need more than block_size={block_size}")
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    x = data[ix[:, None] + offsets].long()      # (B, T)
    y = data[ix[:, None] + offsets + 1].long()  # (B, T)
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


class RandomBatches:
    """``get_batch`` with its own seeded generator: a reproducible, resumable stream of batches.

    ``reset`` re-seeds, so an evaluation that resets first always sees the same batches.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, block_size: int, *, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        self.data, self.B, self.T, self.seed, self.device = data, batch_size, block_size, seed, device
        self.generator = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        self.generator.manual_seed(self.seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return get_batch(self.data, self.B, self.T, generator=self.generator, device=self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def _length(source) -> int:
    """Tokens in a source, without loading a shard file."""
    return len(read_tokens(source)) if isinstance(source, (str, Path)) else len(source)


def _as_tokens(source) -> torch.Tensor:
    """A 1-D int64 tensor from a tensor, an array, a list or a uint16 shard path."""
    if isinstance(source, (str, Path)):
        source = read_tokens(source)
    if isinstance(source, np.ndarray):
        return torch.from_numpy(source.astype(np.int64))
    return torch.as_tensor(source, dtype=torch.long)


class DataLoaderLite:
    """Sequential batches of B*T tokens, as in the GPT-2 reproduction.

    Each call to ``next_batch`` takes the next B*T+1 tokens so that targets are the inputs
    shifted by one. With ``num_processes`` > 1, process ``rank`` takes every
    ``num_processes``-th chunk, so the ranks together cover the stream once. At the end of
    a shard it moves to the next one (wrapping to the first).
    """

    def __init__(
        self,
        sources: torch.Tensor | np.ndarray | Sequence,
        batch_size: int,
        block_size: int,
        *,
        process_rank: int = 0,
        num_processes: int = 1,
    ) -> None:
        if not 0 <= process_rank < num_processes:
            raise ValueError(f"process_rank {process_rank} not in [0, {num_processes})")
        if isinstance(sources, (torch.Tensor, np.ndarray)) or (
            isinstance(sources, Sequence) and sources and isinstance(sources[0], int)
        ):
            sources = [sources]
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("DataLoaderLite needs at least one token source")
        self.B, self.T = batch_size, block_size
        self.rank, self.world = process_rank, num_processes
        self.reset()

    @property
    def tokens_per_step(self) -> int:
        """Tokens consumed by all processes together in one step."""
        return self.B * self.T * self.world

    def batches_per_epoch(self, shard: int = 0) -> int:
        """Steps before this loader leaves shard ``shard`` (the tail shorter than a step is skipped)."""
        n = len(self.tokens) if shard == self.shard else _length(self.sources[shard])
        return (n - 1) // self.tokens_per_step

    def reset(self, shard: int = 0) -> None:
        """Go back to the start of shard ``shard``."""
        self.shard = shard
        self.tokens = _as_tokens(self.sources[shard])
        if self.batches_per_epoch(shard) < 1:
            raise ValueError(
                f"shard {shard} has {len(self.tokens)} tokens, fewer than one step "
                f"(B*T*processes+1 = {self.tokens_per_step + 1})"
            )
        self.position = self.B * self.T * self.rank

    def state_dict(self) -> dict:
        """Where the loader stands, so a resumed run continues with the next batch."""
        return {"shard": self.shard, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.reset(state["shard"])
        self.position = state["position"]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) pair, each of shape (B, T)."""
        B, T = self.B, self.T
        chunk = self.tokens[self.position : self.position + B * T + 1]
        x = chunk[:-1].view(B, T)  # inputs
        y = chunk[1:].view(B, T)   # targets: the next token at every position
        self.position += self.tokens_per_step
        # Stay in this shard only if every rank can still take a full step (+1 target token).
        start_of_next_step = self.position - B * T * self.rank
        if start_of_next_step + self.tokens_per_step + 1 > len(self.tokens):
            self.reset((self.shard + 1) % len(self.sources))
        return x, y


# --- token shards -------------------------------------------------------------------------

TOKEN_DTYPE = np.uint16  # GPT-2's 50,257 ids fit in two bytes
MAX_TOKEN_ID = int(np.iinfo(TOKEN_DTYPE).max)  # 65,535


def _check_token_range(ids: np.ndarray, where: str = "") -> None:
    """Refuse ids that uint16 cannot hold, before they are stored (70000 would wrap to 4464)."""
    if ids.size and (ids.min() < 0 or ids.max() > MAX_TOKEN_ID):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise ValueError(f"token id {bad}{where} is outside [0, {MAX_TOKEN_ID}]: ids must fit in uint16 to be "
                         "stored in shards; use a tokenizer with at most 65,536 tokens")


def write_tokens(path: str | Path, tokens) -> Path:
    """Store tokens as raw uint16, written atomically."""
    array = np.asarray(tokens)
    _check_token_range(array)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    array.astype(TOKEN_DTYPE).tofile(tmp)
    os.replace(tmp, path)
    return path


def read_tokens(path: str | Path) -> np.memmap:
    """Memory-map a uint16 token shard: nothing is read until it is indexed."""
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def tokenize_to_shards(
    documents: Iterable[str],
    encode: Callable[[str], list[int]],
    out_dir: str | Path,
    *,
    shard_tokens: int = 100_000_000,
    prefix: str = "shard",
    eot: int | None = None,
) -> list[Path]:
    """Encode documents into consecutive shards of ``shard_tokens`` tokens each.

    ``eot`` (GPT-2's ``<|endoftext|>``, 50256) is put before every document so the model
    sees where one ends and the next begins. Returns the shard paths in order. An id that
    does not fit in uint16 raises ``ValueError`` before it is stored.
    """
    out_dir = Path(out_dir)
    buffer = np.empty(shard_tokens, dtype=TOKEN_DTYPE)
    filled, paths = 0, []

    def flush(n: int) -> None:
        paths.append(write_tokens(out_dir / f"{prefix}_{len(paths):06d}.bin", buffer[:n]))

    for n_doc, doc in enumerate(documents):
        ids = ([eot] if eot is not None else []) + list(encode(doc))
        ids = np.asarray(ids, dtype=np.int64)
        _check_token_range(ids, f" in document {n_doc}")
        while len(ids):
            take = min(shard_tokens - filled, len(ids))
            buffer[filled : filled + take] = ids[:take]
            filled, ids = filled + take, ids[take:]
            if filled == shard_tokens:
                flush(filled)
                filled = 0
    if filled:
        flush(filled)
    return paths


def tokenize_text_dataset(
    data_files: str | Path | Sequence[str | Path],
    encode: Callable[[str], list[int]],
    out_dir: str | Path,
    *,
    shard_tokens: int = 100_000_000,
    eot: int | None = None,
) -> list[Path]:
    """Tokenize local text files through Hugging Face ``datasets`` into uint16 shards.

    Each file is one document (``eot`` goes before each), in the order given. Needs the
    ``datasets`` package (the course environment has it). For the hub, readers online use
    ``load_dataset(name, streaming=True)`` and ``tokenize_to_shards`` the same way.
    """
    from datasets import load_dataset  # optional dependency, imported on use

    files = [str(data_files)] if isinstance(data_files, (str, Path)) else [str(f) for f in data_files]
    records = load_dataset("text", data_files=files, split="train", sample_by="document")  # a record per file
    documents = (record["text"] for record in records)
    return tokenize_to_shards(documents, encode, out_dir, shard_tokens=shard_tokens, eot=eot)
