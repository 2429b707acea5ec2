"""Loss estimates of a language model: a sample of batches, or every position of a split.

A model is anything with ``forward(idx, targets) -> (logits, loss)``; batch sources have
``next_batch() -> (x, y)`` and, to give every estimate the same batches, ``reset()``.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F


class BatchSource(Protocol):
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...


def progress_bar(**kwargs):
    """A tqdm bar that fits the terminal or notebook it is shown in."""
    from tqdm.auto import tqdm

    return tqdm(dynamic_ncols=True, **kwargs)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (no dropout) and without gradients; its mode comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def estimate_loss(model: nn.Module, sources: dict[str, BatchSource], eval_iters: int,
                  ctx=None, device: str | torch.device | None = None, *,
                  progress: bool = False) -> dict[str, float]:
    """Mean loss over ``eval_iters`` batches of each source, in eval mode (no dropout)."""
    out = {}
    bar = progress_bar(total=eval_iters * len(sources), desc="evaluating", unit="batch", leave=False,
                       disable=not progress)
    try:
        with evaluating(model):
            for split, source in sources.items():
                if hasattr(source, "reset"):
                    source.reset()
                losses = torch.zeros(eval_iters)
                for k in range(eval_iters):
                    x, y = source.next_batch()
                    if device is not None:
                        x, y = x.to(device), y.to(device)
                    with ctx or nullcontext():
                        _, loss = model(x, y)
                    losses[k] = loss.item()
                    bar.update(1)
                out[split] = losses.mean().item()
    finally:
        bar.close()
    return out


def best_evaluation(evals: list[dict]) -> dict | None:
    """The evaluation with the lowest ``val`` estimate (None when none has one)."""
    with_val = [e for e in evals if "val" in e]
    return min(with_val, key=lambda e: e["val"]) if with_val else None


def _windows(tokens: torch.Tensor, block_size: int, batch_size: int):
    """Batches of consecutive, non-overlapping windows over ``tokens``: (inputs, targets), each (b, block_size)."""
    n_windows = (len(tokens) - 1) // block_size
    starts = torch.arange(n_windows) * block_size
    offsets = torch.arange(block_size)
    for i in range(0, n_windows, batch_size):
        ix = starts[i : i + batch_size, None] + offsets
        yield tokens[ix], tokens[ix + 1]


def _as_split(tokens: torch.Tensor) -> torch.Tensor:
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() != 1 or len(tokens) < 2:
        raise ValueError(f"a split to score needs a 1-D run of at least 2 tokens (one to predict from, "
                         f"one to predict), got shape {tuple(tokens.shape)}")
    return tokens


def evaluate_full(model: nn.Module, tokens: torch.Tensor, block_size: int, batch_size: int = 32,
                  device: str | torch.device = "cpu") -> float:
    """Mean loss over every position of ``tokens``, in consecutive windows of ``block_size``.

    Unlike ``estimate_loss`` (a random sample of windows), this covers the whole split once.
    """
    tokens = _as_split(tokens)
    total, count = 0.0, 0
    with evaluating(model):
        for x, y in _windows(tokens, block_size, batch_size):
            _, loss = model(x.to(device), y.to(device))
            total += loss.item() * y.numel()
            count += y.numel()
        tail = (len(tokens) - 1) % block_size  # positions left after the last full window
        if tail > 0:
            x = tokens[-tail - 1 : -1][None].to(device)
            y = tokens[-tail:][None].to(device)
            _, loss = model(x, y)
            total += loss.item() * tail
            count += tail
    return total / count


def loss_by_position(model: nn.Module, tokens: torch.Tensor, block_size: int, batch_size: int = 32,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Mean loss at each position 0 .. block_size-1 of the windows ``evaluate_full`` scores.

    Position t is predicted from t + 1 characters of context, so the curve shows what the
    context is worth, and why the first positions of every window weigh on the full-split loss.
    Returns a (block_size,) tensor.
    """
    tokens = _as_split(tokens)
    if len(tokens) <= block_size:
        raise ValueError(f"loss_by_position needs more than block_size={block_size} tokens "
                         f"(one full window and its targets), got {len(tokens)}")
    total, windows = torch.zeros(block_size), 0
    with evaluating(model):
        for x, y in _windows(tokens, block_size, batch_size):
            logits, _ = model(x.to(device))
            losses = F.cross_entropy(logits.transpose(1, 2).float(), y.to(device), reduction="none")  # (b, T)
            total += losses.sum(0).cpu()
            windows += len(y)
    return total / windows
