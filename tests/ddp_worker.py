"""Trains a tiny GPT on a fixed token stream and writes its loss history (rank 0).

Run under torchrun (2 processes, gloo) or alone with twice the gradient accumulation:
test_train.py checks the two give the same losses.
"""
import json
import os
import sys

import torch

from nanogpt import GPT, DataLoaderLite, GPTConfig
from nanogpt.data import RandomBatches
from nanogpt.train import TrainConfig, train

out_path, grad_accum = sys.argv[1], int(sys.argv[2])
rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
noise = torch.randint(0, 3, (20_000,), generator=torch.Generator().manual_seed(0))
tokens = (torch.arange(20_000) * 5 + noise) % 37  # learnable: mostly +5 steps
torch.manual_seed(0)
model = GPT(GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
loader = DataLoaderLite(tokens, 4, 16, process_rank=rank, num_processes=world)
config = TrainConfig(max_iters=8, batch_size=4, grad_accum_steps=grad_accum, learning_rate=3e-3,
                     warmup_iters=2, eval_interval=100, eval_iters=1, device="cpu")
history = train(model, loader, {"val": RandomBatches(tokens, 4, 16, seed=1)}, config, progress=False)
if rank == 0:
    with open(out_path, "w") as f:
        json.dump(history.column("loss"), f)
