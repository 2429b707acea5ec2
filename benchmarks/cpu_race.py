"""The 10-minute CPU race: train a candidate preset for a wall-clock budget, score it on the
full validation split, print one JSON line.

Training runs on the trainer's time budget: it times its warmup and fixes the number of steps
that fill the budget (re-timed on the way), and the cosine follows the steps (evaluation time
is not counted). The races recorded before 2026-12-06 ran an earlier form whose cosine followed
the clock. On a shared machine the clock is noisy, so ``--steps`` trains a fixed number of steps
instead: those that fit the budget by ``benchmarks/cpu_step_rates.py``, which times the
candidates alternated in one process. Used to tune the ``shakespeare-char-cpu`` preset; its
results are shown in chapter 06.

    python benchmarks/cpu_race.py --budget 600 --n-layer 4 --n-embd 192 --block 128 --batch 32 --lr 2e-3
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from nanogpt.model import GPTConfig
from nanogpt.presets import PRESETS, RunPreset, prepare_char_data, train_preset
from nanogpt.evaluate import evaluate_full
from nanogpt.precision import dtype_name, resolve_dtype
from nanogpt.train import TrainConfig


def candidate(args) -> RunPreset:
    model = GPTConfig(block_size=args.block, vocab_size=65, n_layer=args.n_layer, n_head=args.n_head,
                      n_embd=args.n_embd, dropout=args.dropout, bias=args.bias, gelu=args.gelu)
    min_lr = args.lr / 10 if args.min_lr is None else args.min_lr
    length = (dict(max_iters=args.steps, lr_decay_iters=args.steps, time_budget_s=None) if args.steps
              else dict(max_iters=None, time_budget_s=args.budget))
    train = TrainConfig(**length, batch_size=args.batch, learning_rate=args.lr, min_lr=min_lr,
                        warmup_iters=args.warmup, weight_decay=args.weight_decay, beta2=0.99,
                        eval_interval=10**9, eval_iters=1, device="cpu",
                        dtype=args.dtype, compile=args.compile, seed=args.seed)
    return RunPreset("candidate", model, train, "sweep candidate")


def _true_or_false(text: str) -> bool:
    if text not in ("True", "False"):
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return text == "True"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=float, default=600.0, help="seconds of training (not counting evaluation)")
    p.add_argument("--steps", type=int, default=None,
                   help="train exactly this many steps instead (the steps that fit the budget, timed apart), "
                        "so that candidates compare without the noise of a shared machine's clock")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--from-json", default=None, help="save an earlier run's printed JSON line (with --label)")
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=192)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=None, help="where the cosine ends (default: lr / 10)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--bias", type=_true_or_false, default=True, help="biases in Linears and LayerNorms: True or False")
    p.add_argument("--gelu", choices=["tanh", "exact"], default="tanh")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="the initialisation's and the batches' seed")
    p.add_argument("--compile", type=_true_or_false, default=False, help="torch.compile the model: True or False")
    p.add_argument("--dtype", default="auto", help="auto (nanogpt.precision.precision_plan), float32 or bfloat16")
    p.add_argument("--preset", default=None, help="score a named preset as it is instead")
    p.add_argument("--label", default=None, help="name of the candidate in the sweep table")
    p.add_argument("--out", default=None, help="folder for the trained model's checkpoint (ckpt.pt)")
    p.add_argument("--save", action="store_true", help="write the result as the record cpu-race-<label>.json (nanogpt.course.results_dir())")
    args = p.parse_args()
    if args.from_json:  # record a run whose JSON line was kept
        summary = json.loads(open(args.from_json).read())
        summary.setdefault("budget_s", summary["config"].pop("budget", args.budget))
        summary["config"].pop("preset", None)
        summary["label"] = args.label or summary.get("label", "candidate")
        save(summary)
        return
    torch.set_num_threads(args.threads)
    data = prepare_char_data()
    preset = PRESETS[args.preset] if args.preset else candidate(args)
    t0 = time.perf_counter()
    model, history, _ = train_preset(preset, progress=False, data=data, out_dir=args.out)
    train_s = history.train_seconds
    iters = len(history.steps)
    val = evaluate_full(model, data.val, preset.model.block_size)  # in fp32
    m, t = preset.model, preset.train
    summary = {"label": args.label or args.preset or "candidate",
               "config": {"n_layer": m.n_layer, "n_head": m.n_head, "n_embd": m.n_embd, "block": m.block_size,
                          "batch": t.batch_size, "lr": t.learning_rate, "min_lr": t.min_lr, "warmup": t.warmup_iters,
                          "dropout": m.dropout, "bias": m.bias, "gelu": m.gelu, "weight_decay": t.weight_decay, "threads": args.threads,
                          "dtype": t.dtype, "compile": bool(t.compile), "seed": t.seed},
               "budget_s": None if args.steps else args.budget, "iters": iters, "params": model.num_params(),
               "wall_s": round(time.perf_counter() - t0, 1), "train_s": round(train_s, 1),
               "final_train_loss": round(history.steps[-1]["loss"], 4), "val_full": round(val, 4),
               "trained_in": dtype_name(resolve_dtype("cpu", t.dtype, m.n_embd))}
    print(json.dumps(summary))
    if args.save:
        save(summary)


def save(summary: dict) -> None:
    """Write one race result as a record for the results page (and chapter 06)."""
    from nanogpt.course import write_result
    from nanogpt.runtime import describe_hardware

    c = summary["config"]
    torch.set_num_threads(c["threads"])  # so the hardware line states the run's thread count
    path = write_result(f"cpu-race-{summary['label']}", {
        "title": f"10-minute CPU race: {summary['label']}",
        "description": ("trained for the time budget" if summary["budget_s"] else
                        f"trained for a fixed {summary['iters']:,} steps (--steps), so that candidates compare "
                        "step for step, free of the machine's clock; its wall time is not the measure"),
        "kind": "training",
        "model": f"GPT {c['n_layer']}x{c['n_embd']}, {c['n_head']} heads, context {c['block']}, "
                 f"{summary['params']:,} params" + ("" if c.get("bias", True) else ", no biases")
                 + (", exact GELU" if c.get("gelu") == "exact" else ""),
        "hardware": describe_hardware("cpu"), "device": "cpu", "torch": torch.__version__,
        "command": "python benchmarks/cpu_race.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in c.items())
            + (f" --budget {summary['budget_s']:g}" if summary["budget_s"] else f" --steps {summary['iters']}"),
        "metrics": {"val_loss": summary["val_full"], "wall_time_s": summary["wall_s"],
                    "train_time_s": summary["train_s"], "iterations": summary["iters"],
                    "final_train_loss": summary["final_train_loss"], "batch_size": c["batch"],
                    "learning_rate": c["lr"], "dropout": c["dropout"], "threads": c["threads"],
                    "autocast": summary.get("trained_in", c.get("dtype", "float32")),
                    "steps_per_s": round(summary["iters"] / summary["train_s"], 2),
                    # a fixed number of steps (--steps): those that fit the budget by cpu_step_rates.py
                    "fixed_steps": summary["budget_s"] is None,
                    "tokens_per_s": round(summary["iters"] * c["batch"] * c["block"] / summary["train_s"], 1)},
    })
    print(f"record written to {path}" if path else "no record written: quick mode (NANOGPT_QUICK)")


if __name__ == "__main__":
    main()
