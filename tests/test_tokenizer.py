"""Tokenizers: characters, the BPE trainer and GPT-2's BPE through tiktoken."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt.data import load_text
from nanogpt.tokenizer import BPETokenizer, CharTokenizer, GPT2Tokenizer, tokenizer_from_dict


@pytest.fixture(scope="module")
def text() -> str:
    return load_text()


@pytest.fixture(scope="module")
def chars(text) -> CharTokenizer:
    return CharTokenizer.from_text(text)


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer()


@pytest.fixture(scope="module")
def bpe(text) -> BPETokenizer:
    return BPETokenizer.train(text[:200_000], vocab_size=400)


def test_character_vocabulary(chars):
    assert chars.vocab_size == 65
    assert chars.chars[:3] == ["\n", " ", "!"]
    assert chars.encode("hii there") == [46, 47, 47, 1, 58, 46, 43, 56, 43]


def test_char_tokenizer_refuses_an_empty_text():
    with pytest.raises(ValueError, match="empty text"):
        CharTokenizer.from_text("")


@given(data=st.data())
def test_char_round_trip(chars, data):
    s = data.draw(st.text(alphabet=chars.chars, max_size=200))
    assert chars.decode(chars.encode(s)) == s


def test_unknown_character_error_names_character_and_position(chars):
    with pytest.raises(ValueError) as info:
        chars.encode("Hello, wörld™")
    message = str(info.value)
    assert "'ö' at position 8" in message and "'™' at position 12" in message
    assert "65-symbol vocabulary" in message
    assert not isinstance(info.value, KeyError)


def test_char_save_load(tmp_path, chars):
    chars.save(tmp_path / "vocab.json")
    loaded = CharTokenizer.load(tmp_path / "vocab.json")
    assert loaded.chars == chars.chars
    assert tokenizer_from_dict(chars.to_dict()).encode("ROMEO:") == chars.encode("ROMEO:")


def test_gpt2_counts_tiny_shakespeare(gpt2, text):
    ids = gpt2.encode(text)
    assert gpt2.vocab_size == 50_257
    assert len(ids) == 338_025
    assert round(len(text) / len(ids), 2) == 3.30
    assert gpt2.decode(ids) == text


def test_gpt2_is_the_genuine_tokenizer(gpt2):
    assert gpt2.encode("Hello, I am a language model,") == [15496, 11, 314, 716, 257, 3303, 2746, 11]


def test_gpt2_endoftext_handling(gpt2):
    with pytest.raises(ValueError):
        gpt2.encode("end<|endoftext|>")  # special tokens in text are refused unless allowed
    assert gpt2.encode("end<|endoftext|>", allow_endoftext=True)[-1] == 50256
    assert gpt2.encode_document("hi") == [50256] + gpt2.encode("hi")


def test_bpe_learns_the_requested_merges_most_frequent_first(bpe):
    assert bpe.vocab_size == 400 and len(bpe.merges) == 144
    assert sorted(bpe.merges.values()) == list(range(256, 400))
    assert bpe.token_bytes(256) == b" t"  # the most frequent pair in Shakespeare's chunks
    assert all(len(bpe.token_bytes(i)) >= 2 for i in range(256, 400))


def test_bpe_breaks_ties_as_its_docstring_says():
    """Among equally frequent pairs the one that entered the count table first wins: the text's pairs
    in the order they first occur; a pair whose count falls to zero while a merge re-counts a word
    re-enters at the end (so the rule is not "first occurrence in the merged text")."""
    words = r"\w+"  # one chunk per word, no spaces
    # ab ties cd: ab occurs first; reversed, cd occurs first
    assert BPETokenizer.train("ab cd", 257, pattern=words).token_bytes(256) == b"ab"
    assert BPETokenizer.train("cd ab", 257, pattern=words).token_bytes(256) == b"cd"
    # ab (2) is merged first; re-counting "abcd" takes bc and cd to zero, then adds X+c and cd back
    # at the end, behind ef: ef wins the three-way tie at 1 though "abcd" holds its two rivals earlier
    tok = BPETokenizer.train("abcd ab ef", 259, pattern=words)
    assert [tok.token_bytes(i) for i in (256, 257, 258)] == [b"ab", b"ef", b"abc"]
    doc = BPETokenizer.train.__doc__
    assert "first seen" not in doc and "entered the count table first" in doc


def test_bpe_round_trips_the_text_and_compresses_it(bpe, text):
    sample = text[200_000:260_000]  # text it was not trained on
    ids = bpe.encode(sample)
    assert bpe.decode(ids) == sample
    assert len(ids) < 0.7 * len(sample.encode("utf-8"))


@settings(max_examples=50, deadline=None)
@given(s=st.text(max_size=80))
def test_bpe_round_trips_any_unicode(bpe, s):
    assert bpe.decode(bpe.encode(s)) == s


def test_bpe_save_load(tmp_path, bpe, text):
    bpe.save(tmp_path / "bpe.json")
    loaded = BPETokenizer.load(tmp_path / "bpe.json")
    assert loaded.merges == bpe.merges
    assert loaded.encode(text[:2_000]) == bpe.encode(text[:2_000])
    with pytest.raises(ValueError, match="at least 256"):
        BPETokenizer.train("abc", vocab_size=100)
