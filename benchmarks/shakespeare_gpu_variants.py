"""Why does the GPU preset overfit? Train shakespeare-char variants that differ in one setting.

    python benchmarks/shakespeare_gpu_variants.py VARIANT [VARIANT ...] [--out DIR] [--eval-iters N]

Variants (each the ``shakespeare-char`` preset, 5,000 steps, with one change):

- ``preset``: as it is (dropout 0.2 on embeddings, attention output and MLP output);
- ``attn-dropout``: also dropout 0.2 on attention probabilities, as nanoGPT;
- ``nanogpt``: that, and no biases (nanoGPT's ``train_shakespeare_char.py``: ``bias=False``).

Each variant writes ``DIR/<variant>.json`` after every loss estimate, scores the whole
validation split at the end and saves a record (``shakespeare-char-variant-<variant>``) for
the results page. A run stopped early (Ctrl-C, or ``timeout -s INT``) keeps what it measured:
``--records-from DIR`` turns those files into records. Several variants can share one GPU as
separate processes (a model this small leaves most of it idle); ``--sharing N`` says so in
the record, since the seconds then count the neighbours' work too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from nanogpt import pick_device
from nanogpt.presets import PRESETS, prepare_char_data, train_preset
from nanogpt.runtime import describe_hardware
from nanogpt.evaluate import evaluate_full
from nanogpt.stopping import TrainingInterrupted
from nanogpt.train import History

VARIANTS = {
    "preset": ("as the preset", {}),
    "attn-dropout": ("attention dropout 0.2", {"attn_dropout": 0.2}),
    "nanogpt": ("attention dropout 0.2, no biases (nanoGPT)", {"attn_dropout": 0.2, "bias": False}),
}


def run_variant(name: str, out: Path, eval_iters: int, device: str, max_iters: int | None = None) -> dict:
    """Train one variant; return (and keep writing) its summary."""
    label, change = VARIANTS[name]
    base = PRESETS["shakespeare-char"]
    preset = replace(base, model=replace(base.model, **change))
    data = prepare_char_data()
    result = {"variant": name, "label": label, "change": change, "device": device,
              "hardware": describe_hardware(device), "torch": torch.__version__, "eval_iters": eval_iters, "evals": []}
    path = out / f"{name}.json"
    t0 = time.perf_counter()

    def keep(it: int, losses: dict) -> None:
        result["evals"].append({"iter": it, "seconds": round(time.perf_counter() - t0, 1),
                                **{k: round(v, 4) for k, v in losses.items()}})
        path.write_text(json.dumps(result, indent=1) + "\n")

    try:
        model, history, data = train_preset(preset, device=device, data=data, max_iters=max_iters,
                                            eval_iters=eval_iters, progress=False, on_eval=keep)
    except TrainingInterrupted as stop:  # keep the estimates made so far
        result["stopped_at"] = stop.iter
        path.write_text(json.dumps(result, indent=1) + "\n")
        return result
    wall = time.perf_counter() - t0
    result.update(
        wall_time_s=round(wall, 1), train_time_s=round(history.train_seconds, 1),
        val_loss_full=round(evaluate_full(model, data.val, preset.model.block_size, device=device), 4),
        train_loss_full=round(evaluate_full(model, data.train[:len(data.val)], preset.model.block_size,
                                            device=device), 4),
        parameters=model.num_params())
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def save_record(result: dict, sharing: int = 1) -> Path | None:
    """The results page's record of one variant (also of one stopped early, from its estimates)."""
    from nanogpt.course import write_result

    best = History(evals=result["evals"]).best_eval
    last = result["evals"][-1]
    metrics = {"best_val_estimate": best["val"], "best_val_iter": best["iter"], "last_eval_iter": last["iter"],
               "last_val_estimate": last["val"], "last_train_estimate": last["train"],
               "eval_iters": result["eval_iters"], "runs_sharing_the_gpu": sharing}
    if "val_loss_full" in result:
        metrics.update(val_loss=result["val_loss_full"], train_loss_full=result["train_loss_full"],
                       wall_time_s=result["wall_time_s"], train_time_s=result["train_time_s"])
    else:
        metrics["stopped_at_step"] = result["stopped_at"]
    return write_result(f"shakespeare-char-variant-{result['variant']}", {
        "title": f"GPU overfitting study: shakespeare-char, {result['label']}",
        "kind": "training", "model": f"GPT 6 layers x 384 ({result['label']})",
        "hardware": result["hardware"], "device": result["device"], "torch": result["torch"],
        "command": f"python benchmarks/shakespeare_gpu_variants.py {result['variant']}",
        "metrics": metrics, "curves": result["evals"]})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help=f"any of: {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=Path("out/shakespeare_variants"))
    parser.add_argument("--eval-iters", type=int, default=50,
                        help="batches per loss estimate (the preset's 200 cost a third of the run)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-iters", type=int, default=None, help="shorten the runs (a smoke test)")
    parser.add_argument("--sharing", type=int, default=1, help="how many such runs share the GPU")
    parser.add_argument("--records-from", type=Path, help="only save records from the JSON files in this folder")
    args = parser.parse_args(argv)
    if args.records_from:
        for path in sorted(args.records_from.glob("*.json")):
            print(f"{path.name}: record {save_record(json.loads(path.read_text()), args.sharing)}")
        return 0
    if not args.variants or set(args.variants) - set(VARIANTS):
        parser.error(f"name variants from {', '.join(VARIANTS)}, or give --records-from DIR")
    args.out.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)
    for name in args.variants:
        r = run_variant(name, args.out, args.eval_iters, device, args.max_iters)
        saved = save_record(r, args.sharing)
        best = History(evals=r["evals"]).best_eval
        ended = (f"val (full split) {r['val_loss_full']:.4f}, train {r['train_loss_full']:.4f}, {r['wall_time_s']:.0f} s"
                 if "val_loss_full" in r else f"stopped at step {r['stopped_at']:,}")
        print(f"{name:13s} {ended}; best estimate {best['val']:.4f} at step {best['iter']:,}; record {saved}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
