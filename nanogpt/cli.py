"""Command line: ``python -m nanogpt {data,train,sample,bench}``.

Bad arguments, missing data and unreadable checkpoints give an error and exit status 2,
never a traceback: the whole message, whose later lines often say how to fix it (the URL to
download, the file to save). Ctrl-C during ``train`` saves a checkpoint and prints the
command that resumes it; the exit status is 128 + the signal's number, as a shell reports a
process killed by it: 130 for Ctrl-C (SIGINT), 143 for SIGTERM (what batch schedulers send).
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped a command; the message says what was kept and what to run next."""

    def __init__(self, message: str, signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.signal_name = signal_name


def interrupted_status(signal_name: str | None) -> int:
    """128 + the signal's number (SIGINT 130, SIGTERM 143); 130 when the signal is not known."""
    try:
        return 128 + signal.Signals[signal_name or "SIGINT"].value
    except KeyError:  # e.g. "a signal on another rank"
        return 128 + signal.SIGINT.value


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors on one line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"nanogpt: error: {message}\n")


def _count(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return n


def _at_least_one(value: str) -> int:
    """A count where 0 means nothing to do: batches per estimate, steps to time, threads."""
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return n


def _positive_float(value: str) -> float:
    x = float(value)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return x


def cmd_data(args: argparse.Namespace) -> None:
    import torch

    from .data import dataset_path, train_val_split
    from .tokenizer import CharTokenizer, GPT2Tokenizer

    path = dataset_path(args.dataset)
    text = path.read_text(encoding="utf-8")
    chars = CharTokenizer.from_text(text)
    gpt2 = GPT2Tokenizer()
    n_gpt2 = len(gpt2.encode(text))
    train, val = train_val_split(torch.tensor(chars.encode(text)))
    print(f"file            {path}")
    print(f"characters      {len(text):,}")
    print(f"vocabulary      {chars.vocab_size} characters: {''.join(chars.chars)!r}")
    print(f"GPT-2 tokens    {n_gpt2:,} ({len(text) / n_gpt2:.2f} characters per token)")
    print(f"train / val     {len(train):,} / {len(val):,} characters (90/10)")


def resume_command(args: argparse.Namespace, out_dir: Path) -> str:
    """The ``train`` command that continues this run from its checkpoint."""
    words = ["python", "-m", "nanogpt", "train", "--preset", args.preset, "--device", args.device,
             "--out", str(out_dir)]
    if args.max_iters is not None:
        words += ["--max-iters", str(args.max_iters)]
    if args.eval_iters is not None:
        words += ["--eval-iters", str(args.eval_iters)]
    return shlex.join(words + ["--resume"])


def cmd_train(args: argparse.Namespace) -> None:
    import json

    from .presets import describe_plan, resolve_preset, train_preset
    from .runtime import pick_device
    from .evaluate import evaluate_full
    from .stopping import TrainingInterrupted

    device = pick_device(args.device)
    preset, note = resolve_preset(args.preset, device, explicit_device=args.device != "auto")
    if note:
        print(note)
    print(describe_plan(preset, device, max_iters=args.max_iters, eval_iters=args.eval_iters))
    out_dir = Path(args.out or f"out/{preset.name}")
    print(f"training {preset.name} ({preset.description}) on {device}; checkpoints in {out_dir}", flush=True)
    t0 = time.perf_counter()
    try:
        model, history, data = train_preset(preset, device=device, max_iters=args.max_iters, out_dir=out_dir,
                                            resume=args.resume, eval_iters=args.eval_iters)
    except TrainingInterrupted as stop:
        kept = (f"checkpoint at step {stop.iter} saved to {stop.checkpoint}" if stop.checkpoint is not None
                else "no checkpoint was saved")
        raise Interrupted(f"interrupted by {stop.signal_name} at step {stop.iter}: {kept}; resume with: "
                          f"{resume_command(args, out_dir)}", stop.signal_name) from None
    wall = time.perf_counter() - t0
    final, best = history.evals[-1], history.best_eval
    kept_best = preset.train.keep_best and best is not None and best is not final
    if kept_best:
        print(f"kept the weights of step {best['iter']:,} (val estimate {best['val']:.4f}, the lowest; "
              f"{out_dir / 'best.pt'}); the last step's state is in {out_dir / 'ckpt.pt'}")
    trained_s = history.train_seconds
    print(f"done in {wall:.0f} s ({trained_s:.0f} s of training steps, {history.eval_seconds:.0f} s of loss estimates): "
          f"train loss {final['train']:.4f}, val loss {final['val']:.4f} (estimates from random batches)")
    print(f"scoring the whole validation split ({len(data.val):,} characters)...", flush=True)
    t_full = time.perf_counter()
    val_full = evaluate_full(model, data.val, preset.model.block_size, device=device)
    full_s = time.perf_counter() - t_full
    kept = f" (the weights of step {best['iter']:,})" if kept_best else ""
    print(f"validation loss on the full split{kept}: {val_full:.4f} ({full_s:.1f} s)")
    summary = {"preset": preset.name, "device": device, "parameters": model.num_params(),
               "iterations": history.steps[-1]["iter"] + 1 if history.steps else 0,
               "wall_time_s": round(wall + full_s, 1), "train_time_s": round(trained_s, 1),
               "eval_time_s": round(history.eval_seconds, 1), "train_loss": round(final["train"], 4),
               "val_loss": round(final["val"], 4), "val_loss_full": round(val_full, 4),
               "full_eval_time_s": round(full_s, 1),
               "kept_step": (best if kept_best else final)["iter"]}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"sample with: python -m nanogpt sample --checkpoint {out_dir}  (the folder: the weights the run kept)")


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from .checkpoint import load_checkpoint
    from .runtime import pick_device

    device = pick_device(args.device)
    model, tokenizer, state = load_checkpoint(args.checkpoint, device)
    print(f"sampling from the weights of step {state.get('iter', 0):,}", file=sys.stderr)
    if tokenizer is None:
        raise ValueError(f"checkpoint {args.checkpoint} holds no tokenizer")
    model.eval()
    prompt = tokenizer.encode(args.prompt) if args.prompt else [tokenizer.encode("\n")[0]]
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         generator=generator)
    print(tokenizer.decode(out[0].tolist()))


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import main as bench_main

    bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m nanogpt", description="nanoGPT from scratch: data, training, sampling.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("data", help="find or download the corpus and report its statistics")
    p.add_argument("--dataset", default="tinyshakespeare")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a preset, writing checkpoints")
    p.add_argument("--preset", default="shakespeare-char")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps")
    p.add_argument("--max-iters", type=_count, default=None, help="shorten the run (the schedule follows)")
    p.add_argument("--out", default=None, help="checkpoint folder (default out/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--eval-iters", type=_at_least_one, default=None, help="batches per loss estimate")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a checkpoint file or the folder holding ckpt.pt")
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=_at_least_one, default=500)
    p.add_argument("--temperature", type=_positive_float, default=0.8)
    p.add_argument("--top-k", type=_at_least_one, default=None, help="sample from the k likeliest tokens")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("bench", help="measure matmul throughput, training speed, memory and generation")
    p.add_argument("--preset", default="shakespeare-char")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--steps", type=_at_least_one, default=5, help="timed training steps per variant")
    p.add_argument("--threads", type=_at_least_one, default=None, help="pin torch's thread count")
    p.add_argument("--save", action="store_true", help="write the figures as a record for the results page")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip the torch.compile steps (they take a while to compile)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .data import DataError
    from .stopping import NonFiniteLossError

    try:
        args.func(args)
    except (ValueError, FileNotFoundError, DataError, ImportError, NonFiniteLossError) as exc:
        # CheckpointError is a ValueError: unreadable, truncated or mismatched checkpoints land here.
        # The whole message: its later lines are often the fix (DataError: the URL and where to save it).
        print(f"nanogpt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        message = str(exc) if isinstance(exc, Interrupted) else "interrupted"
        print(f"nanogpt: error: {message}", file=sys.stderr)
        return interrupted_status(getattr(exc, "signal_name", None))
    return 0
