"""The trainer's CPU stand-ins: a faster dropout mask, fp32 attention for small heads under bf16."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from nanogpt import GPT, GPTConfig
from nanogpt.cpu_tuning import CPU_BF16_ATTENTION_MIN_SIZE, FastCPUDropout, cpu_attention, tune_for_cpu


def test_dropout_keeps_each_element_with_probability_one_minus_p_and_scales_it():
    drop = FastCPUDropout(0.25).train()
    x = torch.ones(400, 500, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)  # the gradient flows where the mask kept
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # the mask comes from torch's generator: seeded runs repeat
    assert torch.equal(drop.eval()(x), x)


def test_dropout_saves_a_bool_mask_for_backward():
    saved = []
    x = torch.randn(64, 64, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        FastCPUDropout(0.2).train()(x)
    assert [t.dtype for t in saved] == [torch.bool]  # 1 byte an element; F.dropout keeps x's dtype


def test_attention_runs_small_heads_in_fp32_under_cpu_bf16_autocast_and_large_ones_in_bf16():
    torch.manual_seed(0)
    small = [torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3)]   # 16 x 8 < the threshold
    reference = torch.nn.functional.scaled_dot_product_attention(*small, is_causal=True)
    assert torch.equal(cpu_attention(*small, is_causal=True), reference)           # no autocast: untouched
    with torch.autocast("cpu", torch.bfloat16):
        y = cpu_attention(*[t.to(torch.bfloat16) for t in small], is_causal=True)
    assert y.dtype == torch.float32                                              # computed in fp32
    assert torch.allclose(y, reference, atol=3e-2)                               # from bf16-rounded inputs
    y.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in small)

    T, hs = 256, CPU_BF16_ATTENTION_MIN_SIZE // 256                              # at the threshold: bf16
    large = [torch.randn(1, 1, T, hs, dtype=torch.bfloat16) for _ in range(3)]
    with torch.autocast("cpu", torch.bfloat16):
        assert cpu_attention(*large, is_causal=True).dtype == torch.bfloat16


def test_gpt_trains_under_cpu_bf16_autocast_with_fp32_attention():
    torch.manual_seed(0)
    model = tune_for_cpu(GPT(GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32)))
    x = torch.randint(0, 65, (4, 16))
    with torch.autocast("cpu", torch.bfloat16):
        logits, loss = model(x, x)
    loss.backward()
    assert logits.dtype == torch.bfloat16 and math.isfinite(loss.item())
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_tune_for_cpu_swaps_dropout_and_attention_and_keeps_the_weights():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32, dropout=0.1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert tune_for_cpu(model) is model
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(type(m) is FastCPUDropout and m.p == 0.1 for m in drops)
    assert all(block.attn.attend is cpu_attention for block in model.transformer.h)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    x = torch.randint(0, 65, (2, 16))
    model.eval()
    tuned_logits = model(x)[0]
    plain = GPT(model.config)
    plain.load_state_dict(before)
    torch.testing.assert_close(tuned_logits, plain.eval()(x)[0])  # the same function in eval mode
