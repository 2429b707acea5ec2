"""Tiny models, data and runs the trainer's tests share."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from nanogpt import GPT, GPTConfig
from nanogpt.data import RandomBatches
from nanogpt.train import TrainConfig, train

TINY = GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=32, dropout=0.1)


# A learnable stream: mostly +5 steps modulo 37, with noise.
TOKENS = (torch.arange(5_000) * 5 + torch.randint(0, 3, (5_000,), generator=torch.Generator().manual_seed(0))) % 37


def run(max_iters: int | None, out_dir=None, resume=False, model_cls=GPT, model_config=TINY, evals=None,
        progress=False, **overrides):
    torch.manual_seed(0)
    model = model_cls(model_config)
    cfg = TrainConfig(**{**dict(max_iters=max_iters, batch_size=4, learning_rate=3e-3, warmup_iters=2,
                                lr_decay_iters=12, eval_interval=3, eval_iters=2, device="cpu"), **overrides})
    batches = RandomBatches(TOKENS, 4, 16, seed=3)
    evals = evals or {"train": RandomBatches(TOKENS, 4, 16, seed=1), "val": RandomBatches(TOKENS, 4, 16, seed=2)}
    history = train(model, batches, evals, cfg, out_dir=out_dir, resume=resume, progress=progress)
    return model, history


MEMORISE = torch.randint(0, 37, (400,), generator=torch.Generator().manual_seed(5))  # noise: nothing to generalise


UNSEEN = torch.randint(0, 37, (400,), generator=torch.Generator().manual_seed(6))


def overfit(max_iters: int, out_dir=None, resume=False, **overrides):
    """A model that can only memorise: its val estimate is lowest at the start and worsens."""
    evals = {"train": RandomBatches(MEMORISE, 4, 16, seed=1), "val": RandomBatches(UNSEEN, 4, 16, seed=2)}
    torch.manual_seed(0)
    model = GPT(replace(TINY, dropout=0.0))
    cfg = TrainConfig(max_iters=max_iters, batch_size=4, learning_rate=1e-2, warmup_iters=1, lr_decay_iters=40,
                      eval_interval=10, eval_iters=4, device="cpu", **overrides)
    history = train(model, RandomBatches(MEMORISE, 4, 16, seed=3), evals, cfg, out_dir=out_dir, resume=resume,
                    progress=False)
    return model, history


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
