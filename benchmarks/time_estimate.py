"""How close is the time a run predicts after timing its first steps to the time it takes?

``train`` times its first ``CALIBRATION_STEPS`` steps (skipping the first few: warm-up) and keeps
the training time it then expects in ``History.expected_seconds``. This script trains a preset for
a fixed number of steps, ``--rounds`` times, and records the expected and the actual seconds of
training steps (evaluation is timed apart and not part of either).

    python benchmarks/time_estimate.py --preset shakespeare-char-cpu --steps 2000 --rounds 3 --save
"""
from __future__ import annotations

import argparse
import statistics

import torch

from nanogpt.presets import PRESETS, prepare_char_data, train_preset
from nanogpt.runtime import describe_hardware, pick_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="shakespeare-char-cpu")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", action="store_true", help="write the record time-estimate-<device>.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device()
    preset, data = PRESETS[args.preset], prepare_char_data()
    runs = []
    for r in range(args.rounds):
        _, history, _ = train_preset(preset, device=device, max_iters=args.steps, data=data, progress=False,
                                     eval_iters=10)
        ratio = history.train_seconds / history.expected_seconds
        runs.append({"expected_s": round(history.expected_seconds, 2), "actual_s": round(history.train_seconds, 2),
                     "actual_over_expected": round(ratio, 4)})
        print(f"round {r + 1}: expected {history.expected_seconds:.1f} s after 20 steps, took "
              f"{history.train_seconds:.1f} s ({ratio - 1:+.1%})", flush=True)
    worst = max(abs(run["actual_over_expected"] - 1) for run in runs)
    print(f"largest error: {worst:.1%} on {describe_hardware(device)}")
    if args.save:
        from nanogpt.course import shown_path, write_result

        path = write_result(f"time-estimate-{device}", {
            "title": f"Time a run expects after 20 timed steps, against the time it takes ({preset.name}, "
                     f"{args.steps:,} steps)",
            "kind": "benchmark", "model": preset.description, "hardware": describe_hardware(device),
            "device": device, "torch": torch.__version__,
            "command": f"python benchmarks/time_estimate.py --preset {preset.name} --steps {args.steps} "
                       f"--rounds {args.rounds} --threads {args.threads} --save",
            "metrics": {"rounds": runs, "largest_error": round(worst, 4),
                        "median_actual_over_expected": round(statistics.median(r["actual_over_expected"]
                                                                               for r in runs), 4)},
        })
        print("record written to", shown_path(path) if path else "nowhere (quick mode)")


if __name__ == "__main__":
    main()
