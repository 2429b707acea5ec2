"""Causal self-attention, from the single head of the video to the fused production form.

- ``Head``: one head, explicit lower-triangular mask, scores scaled by 1/sqrt(head_size).
- ``MultiHeadAttention``: several ``Head``s side by side, concatenated, then projected.
- ``CausalSelfAttention``: the same computation with one fused q/k/v projection and
  ``F.scaled_dot_product_attention`` (flash attention where the device has it), plus an
  optional key/value cache for fast generation.

All three map (B, T, C) to (B, T, C).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


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
    """``n_head`` independent heads in parallel, concatenated and projected back to n_embd."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        head_size = n_embd // n_head
        self.heads = nn.ModuleList(Head(n_embd, head_size, block_size, dropout, bias) for _ in range(n_head))
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([h(x) for h in self.heads], dim=-1)  # (B, T, C)
        return self.dropout(self.proj(out))

    @torch.no_grad()
    def load_from_fused(self, fused: "CausalSelfAttention") -> "MultiHeadAttention":
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


class KVCache:
    """Keys and values of the positions seen so far, for every layer, preallocated."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_size: int,
                 device=None, dtype=None) -> None:
        shape = (batch_size, n_head, max_len, head_size)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0  # positions filled (the same in every layer once a forward finishes)
        self.max_len = max_len

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new (B, nh, t, hs) keys/values for ``layer``; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused q/k/v projection.

    Attention probabilities are not dropped out: on a CPU, ``scaled_dot_product_attention``
    with ``dropout_p > 0`` leaves its fast fused kernel for the slow math path, which
    materialises every (T, T) matrix. Regularisation comes from dropout on the output
    projection (and, in the model, on embeddings and the MLP), which keeps the fast path.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_embd, self.n_head = n_embd, n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs): heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            past = cache.length
            k, v = cache.append(layer, k, v)  # (B, nh, past+T, hs)
            if T == 1:  # one new query sees every cached position: no mask needed
                y = F.scaled_dot_product_attention(q, k, v)
            else:       # a prompt: query i sees keys up to past + i
                mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal softmax(q k^T / sqrt(hs)) for (..., T, hs) inputs: the maps the chapters plot."""
    T = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
