"""The ablation ladder of "Let's build GPT": the Transformer assembled one idea at a time.

``LadderLM(vocab_size, block_size, n_embd, n_head, n_layer, stage)`` is a language model
built only from the package's own pieces (``Head``, ``MultiHeadAttention``, ``MLP``,
``Block``, ``nn.LayerNorm``). Each stage adds one thing to the one before:

==================  ====================================================================
``bigram-embed``    token + position embeddings -> ``lm_head``. Each position still sees
                    only its own token: a bigram model with an embedding in the middle.
``one-head``        one ``Head`` of self-attention, head_size = n_embd: tokens can look back.
``multi-head``      ``MultiHeadAttention``: n_head heads of n_embd / n_head, concatenated
                    and projected.
``+feedforward``    + the position-wise ``MLP`` after attention: communicate, then compute.
``blocks``          n_layer of those (attention, MLP) pairs stacked: no residual, no norm.
``+residual``       each sub-layer adds to a residual stream: ``x = x + f(x)``.
``+layernorm``      pre-LayerNorm ``Block``s and a final LayerNorm: the GPT architecture.
``+dropout``        the same with dropout (on embeddings, attention weights and outputs).
==================  ====================================================================

Conventions (kept the same at every stage so that only the named idea changes):

- Linear layers and LayerNorms have biases (``GPTConfig.bias=True``, as GPT-2).
- ``lm_head`` is a separate ``nn.Linear`` with a bias, as in the video; ``GPT`` instead ties
  it to the token embedding and has no bias. So the ``+layernorm`` stage has exactly
  ``vocab_size * n_embd + vocab_size`` more parameters than the ``GPT`` of the same config.
- Weights keep PyTorch's default initialisation, as in the video (``GPT`` uses std 0.02).
- ``n_layer`` is used from ``blocks`` on; ``dropout`` only by ``+dropout``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import Head, MultiHeadAttention
from ..model import MLP, Block, GPTConfig, sample_next_token

STAGES: tuple[str, ...] = (
    "bigram-embed", "one-head", "multi-head", "+feedforward", "blocks", "+residual", "+layernorm", "+dropout",
)


def video_heads(config: GPTConfig) -> MultiHeadAttention:
    """The video's multi-head attention for ``config`` (dropout on probabilities and output)."""
    return MultiHeadAttention(config.n_embd, config.n_head, config.block_size, config.dropout, config.bias)


class PlainBlock(nn.Module):
    """Attention then MLP, with or without residual connections, and no LayerNorm."""

    def __init__(self, config: GPTConfig, residual: bool):
        super().__init__()
        self.attn = video_heads(config)
        self.mlp = MLP(config)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        if self.residual:
            x = x + self.attn(x)  # the residual stream carries x past each sub-layer
            return x + self.mlp(x)
        return self.mlp(self.attn(x))  # each layer must pass everything through itself


class LadderLM(nn.Module):
    """One rung of the ladder (see the module docstring). ``forward(idx, targets) -> (logits, loss)``."""

    def __init__(self, vocab_size: int, block_size: int, n_embd: int, n_head: int, n_layer: int,
                 stage: str, dropout: float = 0.2):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
        self.stage, self.vocab_size, self.block_size = stage, vocab_size, block_size
        level = STAGES.index(stage)
        config = GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                           n_embd=n_embd, dropout=dropout if stage == "+dropout" else 0.0, bias=True)
        self.config = config
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(config.dropout)
        if stage == "bigram-embed":
            self.blocks = nn.Identity()
        elif stage == "one-head":
            self.blocks = Head(n_embd, n_embd, block_size, bias=True)  # head_size = n_embd
        elif stage == "multi-head":
            self.blocks = MultiHeadAttention(n_embd, n_head, block_size, bias=True)
        elif stage == "+feedforward":
            self.blocks = PlainBlock(config, residual=False)  # one attention + one MLP
        elif stage in ("blocks", "+residual"):
            self.blocks = nn.Sequential(*(PlainBlock(config, residual=stage == "+residual") for _ in range(n_layer)))
        else:  # "+layernorm", "+dropout": GPT's own pre-LN Block, with the video's heads inside
            self.blocks = nn.Sequential(*(Block(config, attn=video_heads(config)) for _ in range(n_layer)))
        self.ln_f = nn.LayerNorm(n_embd) if level >= STAGES.index("+layernorm") else nn.Identity()
        self.lm_head = nn.Linear(n_embd, vocab_size)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        if T > self.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size={self.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.token_embedding(idx) + self.position_embedding(pos))  # (B, T, C)
        x = self.blocks(x)                        # (B, T, C)
        logits = self.lm_head(self.ln_f(x))       # (B, T, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T), cropping to block_size."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.block_size:])
            idx = torch.cat((idx, sample_next_token(logits[:, -1, :], temperature, top_k, generator)), dim=1)
        return idx
