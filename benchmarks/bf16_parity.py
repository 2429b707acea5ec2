"""Does bf16 autocast cost a CPU-trained model its loss? The same run twice, fp32 and bf16.

Trains the course's full Shakespeare model (6 layers, 384 wide, context 256), or another
character preset's model (``--preset``), from the same seed on the same batches, once in fp32
and once with bf16 autocast, and scores both on the whole validation split (in fp32) at the same
steps. The claim ``dtype="auto"`` rests on: the two curves stay within 0.01 of each other. For
scale, a third run trains fp32 again on other batches (another seed): how far apart two equally
good runs land. A smaller version of this check is a unit test (``tests/test_precision.py``); this
is the figure at model size, with its timing.

    python benchmarks/bf16_parity.py --steps 300 --batch 16 --save
    python benchmarks/bf16_parity.py --preset shakespeare-char-cpu --steps 3000 --batch 6 --score-every 1000 --save
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from nanogpt.data import RandomBatches
from nanogpt.model import GPT
from nanogpt.presets import PRESETS, prepare_char_data
from nanogpt.runtime import describe_hardware
from nanogpt.evaluate import evaluate_full
from nanogpt.train import TrainConfig, train


def run(preset_name: str, dtype: str, steps: int, batch_size: int, score_every: int, data, batch_seed: int = 3) -> dict:
    """Train one copy; return its full-split validation loss at every ``score_every`` steps."""
    preset = PRESETS[preset_name]
    config = preset.model
    torch.manual_seed(0)
    model = GPT(config)
    cfg = TrainConfig(max_iters=steps, batch_size=batch_size, learning_rate=preset.train.learning_rate,
                      min_lr=preset.train.min_lr, warmup_iters=steps // 10, lr_decay_iters=steps,
                      weight_decay=preset.train.weight_decay, beta2=preset.train.beta2,
                      eval_interval=score_every, eval_iters=1, device="cpu", dtype=dtype)
    curve: dict[int, float] = {}

    def score(it: int, losses: dict) -> None:  # after each scheduled evaluation: the whole split
        curve[it] = evaluate_full(model, data.val, config.block_size)

    t0 = time.perf_counter()
    history = train(model, RandomBatches(data.train, batch_size, config.block_size, seed=batch_seed),
                    {"val": RandomBatches(data.val, batch_size, config.block_size, seed=2)},
                    cfg, progress=False, on_eval=score)
    return {"val_full": curve, "median_step_ms": round(statistics.median(history.column("ms")), 1),
            "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="shakespeare-char", choices=["shakespeare-char", "shakespeare-char-cpu"],
                   help="whose model and learning rates to train")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--score-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", action="store_true", help="write the record bf16-parity.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = prepare_char_data()
    runs = {}
    for name, dtype, batch_seed in (("float32", "float32", 3), ("bfloat16", "bfloat16", 3),
                                    ("float32, other batches", "float32", 4)):
        runs[name] = run(args.preset, dtype, args.steps, args.batch, args.score_every, data, batch_seed)
        print(name, json.dumps(runs[name]), flush=True)
    fp32, bf16, other = runs["float32"], runs["bfloat16"], runs["float32, other batches"]
    gaps = {it: bf16["val_full"][it] - fp32["val_full"][it] for it in fp32["val_full"]}
    worst = max(abs(g) for g in gaps.values())
    seed_gap = max(abs(other["val_full"][it] - fp32["val_full"][it]) for it in fp32["val_full"])
    print(f"largest |bf16 - fp32| on the full validation split: {worst:.4f} "
          f"({'within' if worst <= 0.01 else 'outside'} 0.01); two fp32 runs on other batches: {seed_gap:.4f}; "
          f"step {fp32['median_step_ms']:.0f} ms fp32, {bf16['median_step_ms']:.0f} ms bf16")
    if args.save:
        from nanogpt.course import write_result

        config = PRESETS[args.preset].model
        name = "bf16-parity" if args.preset == "shakespeare-char" else f"bf16-parity-{args.preset}"
        path = write_result(name, {
            "title": "bf16 autocast vs fp32 training on a CPU: same seed, same batches, full-split val loss",
            "kind": "training",
            "model": f"GPT {config.n_layer}x{config.n_embd}, context {config.block_size} (the {args.preset} model), "
                     f"batch {args.batch}, {args.steps} steps",
            "hardware": describe_hardware("cpu"), "device": "cpu", "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "command": f"python benchmarks/bf16_parity.py --preset {args.preset} --steps {args.steps} --batch {args.batch} "
                       f"--score-every {args.score_every} --threads {args.threads} --save",
            "metrics": {"val_loss": round(bf16["val_full"][args.steps], 4),
                        "val_loss_fp32": round(fp32["val_full"][args.steps], 4),
                        "max_abs_gap": round(worst, 4), "max_abs_gap_fp32_other_batches": round(seed_gap, 4),
                        "step_ms_fp32": fp32["median_step_ms"], "step_ms_bf16": bf16["median_step_ms"],
                        "bf16_speedup": round(fp32["median_step_ms"] / bf16["median_step_ms"], 3),
                        "threads": args.threads},
            "curves": {"steps": sorted(gaps), "fp32": [round(fp32["val_full"][i], 4) for i in sorted(gaps)],
                       "bf16": [round(bf16["val_full"][i], 4) for i in sorted(gaps)],
                       "fp32_other_batches": [round(other["val_full"][i], 4) for i in sorted(gaps)]},
        })
        print(f"record written to {path}" if path else "no record written: quick mode (NANOGPT_QUICK)")


if __name__ == "__main__":
    main()
