"""The models: config validation, sizes, attention forms, generation, GPT-2 weights."""
from __future__ import annotations

import math

import pytest
import torch

from nanogpt import GPT, PRESETS, GPTConfig
from nanogpt.attention import CausalSelfAttention, MultiHeadAttention
from nanogpt.bigram import BigramLanguageModel, CountingBigram, uniform_loss
from nanogpt.data import load_text, train_val_split
from nanogpt.tokenizer import CharTokenizer

TINY = GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


@pytest.mark.parametrize("field,value,match", [
    ("n_embd", 33, "divisible by n_head"),
    ("n_layer", 0, "n_layer must be a positive integer"),
    ("block_size", -4, "block_size must be a positive integer"),
    ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
    ("vocab_size", 2.5, "vocab_size must be a positive integer"),
])
def test_config_rejects_bad_values_by_name(field, value, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**TINY.to_dict(), field: value})


def test_shakespeare_preset_size():
    model = GPT(PRESETS["shakespeare-char"].model)
    assert model.num_params() == 10_770_816  # ~10.8M, as in the video
    assert model.num_params(non_embedding=True) == 10_770_816 - 65 * 384 - 256 * 384


def test_gpt2_preset_size():
    model = GPT(PRESETS["gpt2"].model)
    # GPT-2 small: 124M with the 50,257-token table; padding to 50,304 adds 47 * 768.
    assert model.num_params() == 124_439_808 + 47 * 768


def test_weights_are_tied_and_initialised_like_gpt2():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=500, n_layer=8, n_head=4, n_embd=256))
    assert model.lm_head.weight is model.transformer.wte.weight
    std = model.transformer.h[0].mlp.c_fc.weight.std().item()
    resid_std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02) < 0.001
    assert abs(resid_std - 0.02 / math.sqrt(2 * 8)) < 0.0005


def test_forward_shapes_and_initial_loss_near_uniform():
    torch.manual_seed(0)
    model = GPT(TINY)
    idx, targets = torch.randint(0, 37, (2, 3, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 16, 37)
    assert abs(loss.item() - math.log(37)) < 0.1
    logits, loss = model(idx)
    assert loss is None and logits.shape == (3, 16, 37)


def test_too_long_sequence_is_a_clear_error():
    with pytest.raises(ValueError, match="longer than block_size=16"):
        GPT(TINY)(torch.zeros(1, 17, dtype=torch.long))


def test_naive_and_fused_attention_compute_the_same_function():
    torch.manual_seed(0)
    fused = CausalSelfAttention(32, 4, dropout=0.2, bias=True).eval()
    naive = MultiHeadAttention(32, 4, block_size=16, dropout=0.2, bias=True).eval().load_from_fused(fused)
    x = torch.randn(2, 16, 32)
    torch.testing.assert_close(naive(x), fused(x), rtol=1e-6, atol=1e-6)


def test_naive_and_fused_gpt_agree_with_the_same_weights():
    from nanogpt.attention import naive_twin

    torch.manual_seed(0)
    fused = GPT(GPTConfig(**{**TINY.to_dict(), "dropout": 0.2})).eval()
    naive = naive_twin(fused).eval()
    assert type(naive.transformer.h[0].attn).__name__ == "MultiHeadAttention"
    assert not naive.uses_fused_attention() and fused.uses_fused_attention()
    idx = torch.randint(0, 37, (2, 16))
    torch.testing.assert_close(naive(idx)[0], fused(idx)[0], rtol=1e-5, atol=1e-5)


def test_naive_twin_computes_the_same_function_in_training_mode_too():
    """No dropout on attention probabilities in the twin: same dropout masks, same loss."""
    from nanogpt.attention import naive_twin

    torch.manual_seed(0)
    fused = GPT(GPTConfig(**{**TINY.to_dict(), "dropout": 0.2})).train()
    naive = naive_twin(fused).train()
    idx, targets = torch.randint(0, 37, (2, 16)), torch.randint(0, 37, (2, 16))
    torch.manual_seed(7)
    loss_fused = fused(idx, targets)[1]
    torch.manual_seed(7)
    loss_naive = naive(idx, targets)[1]
    torch.testing.assert_close(loss_naive, loss_fused, rtol=1e-5, atol=1e-5)
    torch.manual_seed(8)  # other masks give another loss: dropout really is active
    assert abs(fused(idx, targets)[1].item() - loss_fused.item()) > 1e-4


def test_top_k_below_one_is_a_clear_error():
    model = GPT(TINY).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="top_k must be a whole number >= 1"):
            model.generate(prompt, 1, top_k=bad)
    assert model.generate(prompt, 2, top_k=1).shape == (1, 3)


def test_attention_maps_are_taken_in_eval_mode_and_restore_the_mode():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY.to_dict(), "dropout": 0.5})).train()
    idx = torch.randint(0, 37, (1, 16))
    first, second = model.attention_maps(idx), model.attention_maps(idx)
    assert model.training  # restored
    assert torch.equal(first, second)  # no dropout inside: the same maps every time
    assert first.shape == (TINY.n_layer, TINY.n_head, 16, 16)
    torch.testing.assert_close(first.sum(-1), torch.ones(TINY.n_layer, TINY.n_head, 16))


def _as_hf_state(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights laid out as Hugging Face's GPT-2 stores them (Conv1D weights transposed)."""
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    return {k: (v.t() if k.endswith(conv1d) else v).clone() for k, v in model.state_dict().items()}


def test_load_hf_state_dict_fills_every_parameter_or_refuses():
    torch.manual_seed(0)
    source, target = GPT(TINY), GPT(TINY)
    target.load_hf_state_dict(_as_hf_state(source))
    idx = torch.randint(0, 37, (1, 16))
    torch.testing.assert_close(target(idx)[0], source(idx)[0])
    incomplete = _as_hf_state(source)
    del incomplete["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(KeyError, match=r"transformer\.h\.1\.mlp\.c_fc\.bias"):
        GPT(TINY).load_hf_state_dict(incomplete)


def test_generate_crops_context_and_cache_gives_the_same_tokens():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    prompt = torch.randint(0, 37, (2, 3))
    kwargs = dict(max_new_tokens=40, temperature=0.9, top_k=10)  # 43 tokens > block_size 16
    cached = model.generate(prompt, generator=torch.Generator().manual_seed(5), use_cache=True, **kwargs)
    uncached = model.generate(prompt, generator=torch.Generator().manual_seed(5), use_cache=False, **kwargs)
    assert cached.shape == (2, 43)
    assert torch.equal(cached[:, :3], prompt)
    assert torch.equal(cached, uncached)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 1, temperature=0)


def test_top_k_one_is_greedy():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    prompt = torch.randint(0, 37, (1, 4))
    out = model.generate(prompt, 1, top_k=1, generator=torch.Generator().manual_seed(0))
    assert out[0, -1].item() == model(prompt)[0][0, -1].argmax().item()


def test_flops_per_token_follows_6n_plus_attention():
    model = GPT(TINY)
    n = model.num_params() - 16 * 32  # position table excluded
    assert model.flops_per_token() == 6 * n + 12 * 2 * 2 * 16 * 16
    assert model.estimate_mfu(tokens_per_second=1000, peak_flops=model.flops_per_token() * 2000) == 0.5


def test_from_pretrained_matches_hugging_face_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=101, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=100, eos_token_id=100)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 101, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, rtol=1e-5, atol=1e-5)


# --- bigram ---------------------------------------------------------------------------------

def test_counting_bigram_is_the_optimum_a_trained_table_approaches():
    text = load_text()
    tok = CharTokenizer.from_text(text)
    train, val = train_val_split(torch.tensor(tok.encode(text)))
    counting = CountingBigram(tok.vocab_size).fit(train)
    assert 2.40 < counting.loss(val) < 2.55
    assert abs(uniform_loss(65) - 4.174) < 1e-3
    # The counted table, loaded as a model, reproduces the counted loss exactly.
    model = counting.as_model()
    _, loss = model(val[None, :-1], val[None, 1:])
    assert abs(loss.item() - counting.loss(val)) < 1e-4
    # A few hundred gradient steps move a random table towards it.
    torch.manual_seed(0)
    learned = BigramLanguageModel(tok.vocab_size)
    opt = torch.optim.AdamW(learned.parameters(), lr=0.1)
    for _ in range(300):
        ix = torch.randint(len(train) - 1, (4096,))
        _, loss = learned(train[ix][:, None], train[ix + 1][:, None])
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, val_loss = learned(val[None, :-1], val[None, 1:])
    assert val_loss.item() < counting.loss(val) + 0.05


def test_attention_maps_are_causal_distributions():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    maps = model.attention_maps(torch.randint(0, 37, (1, 10)))
    assert maps.shape == (2, 2, 10, 10)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, 10))
    assert torch.all(maps.triu(diagonal=1) == 0)


def test_attention_dropout_acts_in_training_only_and_the_twin_keeps_it():
    from nanogpt.attention import naive_twin

    with pytest.raises(ValueError, match="attn_dropout"):
        GPTConfig(attn_dropout=1.0)
    torch.manual_seed(0)
    plain = GPT(TINY)
    dropped = GPT(GPTConfig(**{**TINY.to_dict(), "attn_dropout": 0.5}))
    dropped.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 37, (2, 16))
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped(idx)[0], plain(idx)[0])  # evaluation: no dropout, the same function
    dropped.train()
    torch.manual_seed(1)
    first = dropped(idx)[0]
    torch.manual_seed(2)
    assert not torch.allclose(first, dropped(idx)[0])  # training: attention probabilities dropped at random
    twin = naive_twin(dropped)
    assert all(head.dropout.p == 0.5 for head in twin.transformer.h[0].attn.heads)


def test_gelu_choice_is_checked_and_exact_differs_from_tanh():
    with pytest.raises(ValueError, match="gelu"):
        GPTConfig(gelu="relu")
    torch.manual_seed(0)
    tanh = GPT(TINY).eval()
    exact = GPT(GPTConfig(**{**TINY.to_dict(), "gelu": "exact"})).eval()
    exact.load_state_dict(tanh.state_dict())
    idx = torch.randint(0, 37, (2, 16))
    a, b = tanh(idx)[0], exact(idx)[0]
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # the two forms agree to about 1e-3


