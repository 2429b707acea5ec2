"""Tokenizers: characters, a small byte-level BPE trainer, and GPT-2's BPE via tiktoken.

All three share one interface: ``encode(text) -> list[int]``, ``decode(ids) -> str`` and
``vocab_size``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence


class CharTokenizer:
    """One token per character, vocabulary = the sorted set of characters in a text."""

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars: list[str] = sorted(set(chars))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.itos = dict(enumerate(self.chars))

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The tokenizer whose vocabulary is every character that occurs in ``text``."""
        if not text:
            raise ValueError("CharTokenizer.from_text got an empty text: there are no characters to "
                             "build a vocabulary from (is the corpus file empty?)")
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError:
            unknown = [(i, ch) for i, ch in enumerate(text) if ch not in self.stoi]
            shown = ", ".join(f"{ch!r} at position {i}" for i, ch in unknown[:5])
            more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise ValueError(
                f"{len(unknown)} character(s) not in the {self.vocab_size}-symbol vocabulary: {shown}{more}"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": "char", "chars": self.chars}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["chars"])

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class GPT2Tokenizer:
    """GPT-2's byte-level BPE (50,257 tokens) through ``tiktoken``.

    Offline, ``TIKTOKEN_CACHE_DIR`` must point at a folder holding tiktoken's cached
    GPT-2 files; online, tiktoken downloads and caches them itself.
    """

    def __init__(self, name: str = "gpt2") -> None:
        import tiktoken

        self.name = name
        self.enc = tiktoken.get_encoding(name)
        self.eot_token: int = self.enc.eot_token  # <|endoftext|> = 50256

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def encode(self, text: str, *, allow_endoftext: bool = False) -> list[int]:
        """Encode text; ``<|endoftext|>`` in the text is an error unless allowed."""
        allowed = {"<|endoftext|>"} if allow_endoftext else set()
        return self.enc.encode(text, allowed_special=allowed)

    def encode_document(self, text: str) -> list[int]:
        """``<|endoftext|>`` followed by the document's tokens: how GPT-2 delimits documents."""
        return [self.eot_token] + self.enc.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode([int(i) for i in ids])

    def to_dict(self) -> dict:
        return {"kind": "tiktoken", "name": self.name}

    def __repr__(self) -> str:
        return f"GPT2Tokenizer({self.name!r}, vocab_size={self.vocab_size})"


# GPT-2's pre-tokenisation pattern: text is split into chunks (words, numbers, punctuation,
# spaces) and merges never cross a chunk boundary.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class BPETokenizer:
    """A small byte-level BPE, trained from scratch: what tiktoken's GPT-2 encoding does.

    Tokens 0-255 are the raw bytes; each merge adds one token that stands for a pair of
    existing tokens. ``merges`` maps a pair to its new id, in the order learnt.
    """

    def __init__(self, merges: dict[tuple[int, int], int] | None = None, pattern: str = GPT2_SPLIT_PATTERN):
        import regex  # ships with tiktoken

        self.pattern = pattern
        self._split = regex.compile(pattern)
        self.merges: dict[tuple[int, int], int] = dict(merges or {})
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        for (a, b), idx in sorted(self.merges.items(), key=lambda kv: kv[1]):
            self.vocab[idx] = self.vocab[a] + self.vocab[b]

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges)

    @classmethod
    def train(cls, text: str, vocab_size: int, *, pattern: str = GPT2_SPLIT_PATTERN) -> "BPETokenizer":
        """Learn ``vocab_size - 256`` merges, most frequent adjacent pair first.

        Ties go to the pair that entered the count table first (``max`` keeps the first of equal
        counts, in the Counter's order): the text's pairs in the order they first occur, then the
        pairs merges create, in the order they are counted. A pair whose count falls to zero while
        a merge re-counts a word re-enters at the end, so the winner is not always the pair that
        occurs first in the merged text; it is always the same one for the same text.
        """
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be at least 256 (the bytes), got {vocab_size}")
        tok = cls(pattern=pattern)
        # Work on unique chunks with their counts: the same word is merged once, not per use.
        chunk_counts = Counter(tok._split.findall(text))
        words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
        counts = list(chunk_counts.values())
        pair_counts: Counter = Counter()
        where: dict[tuple[int, int], set[int]] = {}
        for w, (ids, c) in enumerate(zip(words, counts)):
            for pair in zip(ids, ids[1:]):
                pair_counts[pair] += c
                where.setdefault(pair, set()).add(w)
        for new_id in range(256, vocab_size):
            if not pair_counts:
                break
            best = max(pair_counts.items(), key=lambda kv: kv[1])[0]
            tok.merges[best] = new_id
            tok.vocab[new_id] = tok.vocab[best[0]] + tok.vocab[best[1]]
            for w in list(where.get(best, ())):
                ids, c = words[w], counts[w]
                for pair in zip(ids, ids[1:]):  # remove this word's old pairs ...
                    pair_counts[pair] -= c
                    if pair_counts[pair] <= 0:
                        del pair_counts[pair]
                words[w] = ids = _merge(ids, best, new_id)
                for pair in zip(ids, ids[1:]):  # ... and add its new ones
                    pair_counts[pair] += c
                    where.setdefault(pair, set()).add(w)
            where.pop(best, None)
        return tok

    def _encode_chunk(self, ids: list[int]) -> list[int]:
        while len(ids) >= 2:
            # Apply the earliest-learnt merge present, as training did.
            pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, float("inf")))
            if pair not in self.merges:
                break
            ids = _merge(ids, pair, self.merges[pair])
        return ids

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for chunk in self._split.findall(text):
            out.extend(self._encode_chunk(list(chunk.encode("utf-8"))))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.vocab[int(i)] for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, idx: int) -> bytes:
        """The bytes a token stands for."""
        return self.vocab[idx]

    def to_dict(self) -> dict:
        return {"kind": "bpe", "pattern": self.pattern, "merges": [[a, b, i] for (a, b), i in self.merges.items()]}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls({(a, b): i for a, b, i in d["merges"]}, pattern=d["pattern"])

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def _merge(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids`` by ``new_id``."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def tokenizer_from_dict(d: dict):
    """Rebuild a tokenizer saved with ``to_dict`` (used by checkpoints)."""
    kind = d.get("kind")
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "tiktoken":
        return GPT2Tokenizer(d["name"])
    if kind == "bpe":
        return BPETokenizer({(a, b): i for a, b, i in d["merges"]}, pattern=d["pattern"])
    raise ValueError(f"unknown tokenizer kind {kind!r}")
