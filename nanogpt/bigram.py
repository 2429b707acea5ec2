"""The bigram baseline: predict the next token from the current one alone.

Two ways to get the same model:

- ``BigramLanguageModel`` learns a vocab x vocab table of logits by gradient descent;
- ``CountingBigram`` counts pairs and normalises: the closed-form maximum-likelihood answer.

Trained long enough, the first approaches the second's loss: the best any model that sees one
token of context can do.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import sample_next_token


class BigramLanguageModel(nn.Module):
    """Row ``i`` of the table holds the logits of the token that follows token ``i``."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.token_embedding_table(idx)  # (B, T, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, self.vocab_size), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Append ``max_new_tokens`` tokens to ``idx`` (B, T); only the last token matters."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -1:])
            idx = torch.cat((idx, sample_next_token(logits[:, -1, :], temperature, top_k, generator)), dim=1)
        return idx


class CountingBigram:
    """Maximum-likelihood bigram from pair counts, with add-``smoothing`` so no pair has p=0."""

    def __init__(self, vocab_size: int, smoothing: float = 1.0):
        self.vocab_size = vocab_size
        self.smoothing = smoothing
        self.counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)

    def fit(self, tokens: torch.Tensor) -> "CountingBigram":
        """Count every (current, next) pair in a 1-D token tensor."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        pairs = tokens[:-1] * self.vocab_size + tokens[1:]
        self.counts += torch.bincount(pairs, minlength=self.vocab_size**2).view(self.vocab_size, self.vocab_size)
        return self

    @property
    def probs(self) -> torch.Tensor:
        """(vocab, vocab) next-token probabilities; row i given current token i."""
        c = self.counts.double() + self.smoothing
        return c / c.sum(dim=1, keepdim=True)

    def loss(self, tokens: torch.Tensor) -> float:
        """Mean negative log-likelihood (nats) of every next token in ``tokens``."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        return float(-self.probs.log()[tokens[:-1], tokens[1:]].mean())

    def as_model(self) -> BigramLanguageModel:
        """The counted table as a ``BigramLanguageModel`` (logits = log-probabilities)."""
        model = BigramLanguageModel(self.vocab_size)
        with torch.no_grad():
            model.token_embedding_table.weight.copy_(self.probs.log().float())
        return model


def uniform_loss(vocab_size: int) -> float:
    """Cross-entropy of guessing uniformly: -ln(1/vocab), the loss an untrained model starts near."""
    return math.log(vocab_size)
