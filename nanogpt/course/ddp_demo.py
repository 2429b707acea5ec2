"""Chapter 07's DDP demo: a tiny GPT trained by two processes, or by one with twice the accumulation.

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m nanogpt.course.ddp_demo ddp.json 1
    python -m nanogpt.course.ddp_demo single.json 2

Each run writes its loss at every step to the JSON file (rank 0 writes). With dropout 0 the two
agree: two ranks with one micro-batch each take the same step as one process with two
micro-batches, because ``DataLoaderLite`` hands rank r every other chunk of the token stream.

``--out-dir`` checkpoints the run and ``--resume`` continues it: under DDP too, a run stopped
half way and resumed gives the same losses as one never stopped (each rank restores its own
dropout RNG, data position and pending batch).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from nanogpt.data import DataLoaderLite, RandomBatches
from nanogpt.model import GPT, GPTConfig
from nanogpt.train import TrainConfig, train

TOTAL_ITERS = 8  # the schedule's length; --max-iters may stop earlier (and --resume go on)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanogpt.course.ddp_demo", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="JSON file for the loss history (written by rank 0)")
    parser.add_argument("grad_accum", type=int, help="micro-batches per step on each process")
    parser.add_argument("--max-iters", type=int, default=TOTAL_ITERS, help="stop after this many steps")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--out-dir", type=Path, default=None, help="checkpoint folder")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out-dir")
    args = parser.parse_args(argv)

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    noise = torch.randint(0, 3, (20_000,), generator=torch.Generator().manual_seed(0))
    tokens = (torch.arange(20_000) * 5 + noise) % 37  # learnable: mostly +5 steps
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=32, dropout=args.dropout))
    loader = DataLoaderLite(tokens, 4, 16, process_rank=rank, num_processes=world)
    config = TrainConfig(max_iters=args.max_iters, lr_decay_iters=TOTAL_ITERS, batch_size=4,
                         grad_accum_steps=args.grad_accum, learning_rate=3e-3, warmup_iters=2,
                         eval_interval=100, eval_iters=1, device="cpu",
                         dtype="float32")  # the chapter prints these losses: the same on every CPU, no bf16
    history = train(model, loader, {"val": RandomBatches(tokens, 4, 16, seed=1)}, config,
                    out_dir=args.out_dir, resume=args.resume, progress=False)
    if rank == 0:
        args.out.write_text(json.dumps(history.column("loss")))


if __name__ == "__main__":
    main()
