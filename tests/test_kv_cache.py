"""The key/value cache chapter 09 teaches: exact at the prompt and past block_size, sized as taught."""
from __future__ import annotations

import pytest
import torch

from nanogpt import GPT, GPTConfig
from nanogpt.model import KVCache

TINY = GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=4, n_embd=32, dropout=0.0)


def _model(dtype=torch.float64) -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).to(dtype).eval()


def _cache(batch: int, dtype=torch.float64) -> KVCache:
    return KVCache(TINY.n_layer, batch, TINY.n_head, TINY.block_size, TINY.head_size, dtype=dtype)


@pytest.mark.parametrize("chunks", [[10], [6, 3, 1], [1] * 10, [4, 6]])
def test_chunks_through_the_cache_give_the_uncached_logits(chunks):
    """A prompt in one piece, or in pieces after `past` cached positions (the shifted mask)."""
    model = _model()
    idx = torch.randint(0, TINY.vocab_size, (2, sum(chunks)), generator=torch.Generator().manual_seed(1))
    cache, start, pieces = _cache(2), 0, []
    with torch.no_grad():
        full, _ = model(idx)
        for n in chunks:
            pieces.append(model(idx[:, start:start + n], cache=cache)[0])
            start += n
    assert cache.length == sum(chunks)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-12, atol=1e-12)


def test_cache_memory_is_two_layers_batch_heads_positions_head_size_numbers():
    for dtype, nbytes in [(torch.float32, 4), (torch.bfloat16, 2)]:
        cache = _cache(3, dtype)
        allocated = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
        assert allocated == 2 * TINY.n_layer * 3 * TINY.n_head * TINY.block_size * TINY.head_size * nbytes


def test_cache_refuses_more_positions_than_it_holds():
    model, cache = _model(), _cache(1)
    with torch.no_grad():
        model(torch.zeros(1, TINY.block_size, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="longer than block_size"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="KV cache holds"):
        cache.append(0, torch.zeros(1, TINY.n_head, 1, TINY.head_size, dtype=torch.float64),
                     torch.zeros(1, TINY.n_head, 1, TINY.head_size, dtype=torch.float64))


@pytest.mark.parametrize("prompt_len", [1, TINY.block_size, TINY.block_size + 5])
def test_cached_generation_equals_uncached_before_and_past_block_size(prompt_len):
    """Same seed, same tokens: while the cache applies, and in generate's fallback after it."""
    model = _model(torch.float32)
    prompt = torch.randint(0, TINY.vocab_size, (2, prompt_len), generator=torch.Generator().manual_seed(2))
    runs = [model.generate(prompt, 3 * TINY.block_size, generator=torch.Generator().manual_seed(3), use_cache=c)
            for c in (True, False)]
    assert runs[0].shape == (2, prompt_len + 3 * TINY.block_size)
    assert torch.equal(runs[0], runs[1])
