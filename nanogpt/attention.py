"""Causal self-attention as the video writes it: the teaching forms beside the production one.

- ``Head``: one head, explicit lower-triangular mask, scores scaled by 1/sqrt(head_size).
- ``MultiHeadAttention``: several ``Head``s side by side, concatenated, then projected.
- ``CausalSelfAttention`` (defined in ``model.py``, re-exported here): the same computation
  with one fused q/k/v projection and ``F.scaled_dot_product_attention`` (flash attention
  where the device has it), plus an optional key/value cache for fast generation.
- ``naive_twin``: a copy of a ``GPT`` whose blocks use ``MultiHeadAttention`` with the same
  weights, for comparing the two forms.

All map (B, T, C) to (B, T, C).

Dropout: the video drops out attention *probabilities* inside each ``Head``; the fused
``CausalSelfAttention`` does not (it would leave the fast kernel), and drops out only its
output projection. ``MultiHeadAttention(attn_dropout=0.0)`` computes exactly the fused
function, in training too; ``naive_twin`` builds it that way.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import GPT, CausalSelfAttention, KVCache, attention_weights  # noqa: F401  (re-exported)


class Head(nn.Module):
    """One head of causal self-attention, written out step by step."""

    def __init__(self, n_embd: int, head_size: int, block_size: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=bias)
        self.query = nn.Linear(n_embd, head_size, bias=bias)
        self.value = nn.Linear(n_embd, head_size, bias=bias)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        k = self.key(x)    # (B, T, hs)
        q = self.query(x)  # (B, T, hs)
        # Affinities: how much each position attends to each earlier one.
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5          # (B, T, T)
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))  # no looking ahead
        wei = F.softmax(wei, dim=-1)
        wei = self.dropout(wei)
        v = self.value(x)  # (B, T, hs)
        return wei @ v     # (B, T, hs)


class MultiHeadAttention(nn.Module):
    """``n_head`` independent heads in parallel, concatenated and projected back to n_embd.

    ``dropout`` applies to the output projection and, unless ``attn_dropout`` says otherwise,
    to each head's attention probabilities (the video's form).
    """

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0, bias: bool = False,
                 attn_dropout: float | None = None):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        head_size = n_embd // n_head
        attn_dropout = dropout if attn_dropout is None else attn_dropout
        self.heads = nn.ModuleList(Head(n_embd, head_size, block_size, attn_dropout, bias) for _ in range(n_head))
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([h(x) for h in self.heads], dim=-1)  # (B, T, C)
        return self.dropout(self.proj(out))

    @torch.no_grad()
    def load_from_fused(self, fused: CausalSelfAttention) -> "MultiHeadAttention":
        """Copy the weights of a ``CausalSelfAttention`` so both compute the same function."""
        C = fused.n_embd
        hs = C // fused.n_head
        w_q, w_k, w_v = fused.c_attn.weight.split(C, dim=0)  # each (C, C): rows are output features
        b = fused.c_attn.bias.split(C) if fused.c_attn.bias is not None else (None, None, None)
        for i, head in enumerate(self.heads):
            rows = slice(i * hs, (i + 1) * hs)
            for layer, w, bias in ((head.query, w_q, b[0]), (head.key, w_k, b[1]), (head.value, w_v, b[2])):
                layer.weight.copy_(w[rows])
                if layer.bias is not None:
                    layer.bias.copy_(bias[rows])
        self.proj.weight.copy_(fused.c_proj.weight)
        if self.proj.bias is not None:
            self.proj.bias.copy_(fused.c_proj.bias)
        return self


def naive_twin(model: GPT) -> GPT:
    """A copy of ``model`` whose blocks use the video's ``MultiHeadAttention``, same weights.

    The heads drop out attention probabilities as ``model`` does (``config.attn_dropout``), so
    the twin computes the same function in evaluation, and in training too when that is 0;
    only the speed of the attention differs. The KV cache needs the fused form, so the twin generates without it.
    """
    cfg = model.config
    twin = copy.deepcopy(model)
    for block in twin.transformer.h:
        fused = block.attn
        heads = MultiHeadAttention(cfg.n_embd, cfg.n_head, cfg.block_size, cfg.dropout, cfg.bias,
                                   attn_dropout=cfg.attn_dropout)
        block.attn = heads.to(fused.c_attn.weight.device).load_from_fused(fused)
    return twin
