"""Tokenizers: characters, the BPE trainer and GPT-2's BPE through tiktoken."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt.data import load_text
from nanogpt.tokenizer import BPETokenizer, CharTokenizer, GPT2Tokenizer, tokenizer_from_dict

TEXT = load_text()
CHARS = CharTokenizer.from_text(TEXT)
GPT2 = GPT2Tokenizer()
BPE = BPETokenizer.train(TEXT[:200_000], vocab_size=400)


def test_character_vocabulary():
    assert CHARS.vocab_size == 65
    assert CHARS.chars[:3] == ["\n", " ", "!"]
    assert CHARS.encode("hii there") == [46, 47, 47, 1, 58, 46, 43, 56, 43]


@given(st.text(alphabet=CHARS.chars, max_size=200))
def test_char_round_trip(s):
    assert CHARS.decode(CHARS.encode(s)) == s


def test_unknown_character_error_names_character_and_position():
    with pytest.raises(ValueError) as info:
        CHARS.encode("Hello, wörld™")
    message = str(info.value)
    assert "'ö' at position 8" in message and "'™' at position 12" in message
    assert "65-symbol vocabulary" in message
    assert not isinstance(info.value, KeyError)


def test_char_save_load(tmp_path):
    CHARS.save(tmp_path / "vocab.json")
    loaded = CharTokenizer.load(tmp_path / "vocab.json")
    assert loaded.chars == CHARS.chars
    assert tokenizer_from_dict(CHARS.to_dict()).encode("ROMEO:") == CHARS.encode("ROMEO:")


def test_gpt2_counts_tiny_shakespeare():
    ids = GPT2.encode(TEXT)
    assert GPT2.vocab_size == 50_257
    assert len(ids) == 338_025
    assert round(len(TEXT) / len(ids), 2) == 3.30
    assert GPT2.decode(ids) == TEXT


def test_gpt2_is_the_genuine_tokenizer():
    assert GPT2.encode("Hello, I am a language model,") == [15496, 11, 314, 716, 257, 3303, 2746, 11]


def test_gpt2_endoftext_handling():
    with pytest.raises(ValueError):
        GPT2.encode("end<|endoftext|>")  # special tokens in text are refused unless allowed
    assert GPT2.encode("end<|endoftext|>", allow_endoftext=True)[-1] == 50256
    assert GPT2.encode_document("hi") == [50256] + GPT2.encode("hi")


def test_bpe_learns_the_requested_merges_most_frequent_first():
    assert BPE.vocab_size == 400 and len(BPE.merges) == 144
    assert sorted(BPE.merges.values()) == list(range(256, 400))
    assert BPE.token_bytes(256) == b" t"  # the most frequent pair in Shakespeare's chunks
    assert all(len(BPE.token_bytes(i)) >= 2 for i in range(256, 400))


def test_bpe_round_trips_the_text_and_compresses_it():
    sample = TEXT[200_000:260_000]  # text it was not trained on
    ids = BPE.encode(sample)
    assert BPE.decode(ids) == sample
    assert len(ids) < 0.7 * len(sample.encode("utf-8"))


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=80))
def test_bpe_round_trips_any_unicode(s):
    assert BPE.decode(BPE.encode(s)) == s


def test_bpe_save_load(tmp_path):
    BPE.save(tmp_path / "bpe.json")
    loaded = BPETokenizer.load(tmp_path / "bpe.json")
    assert loaded.merges == BPE.merges
    assert loaded.encode(TEXT[:2_000]) == BPE.encode(TEXT[:2_000])
    with pytest.raises(ValueError, match="at least 256"):
        BPETokenizer.train("abc", vocab_size=100)
