"""How many training steps of each CPU race candidate fit a budget, timed alternated in one process.

A shared machine's speed drifts over minutes, so races timed one after another compare hours as
much as models. Here every candidate's step (``nanogpt.bench.make_step``: the trainer's step,
CPU stand-ins and AdamW included) runs in turn, round after round, and the median of each fixes
its steps for ``benchmarks/cpu_race.py --steps``. Prints one JSON line.

    python benchmarks/cpu_step_rates.py --budget 600 --candidates L4:4:6 L5:5:6 L4-B4:4:4
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace

import torch

from nanogpt.bench import alternate, make_step
from nanogpt.model import GPT
from nanogpt.presets import PRESETS
from nanogpt.runtime import describe_hardware


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=float, default=600.0)
    p.add_argument("--candidates", nargs="+", default=["L4:4:6", "L5:5:6"],
                   help="label:layers:batch, on the shakespeare-char-cpu preset's model otherwise")
    p.add_argument("--compile", nargs="*", default=[], help="labels of candidates to time under torch.compile too")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps-per-round", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", action="store_true", help="write the result as the record cpu-step-rates.json")
    p.add_argument("--from-json", default=None, help="save an earlier run's printed JSON line (with its arguments)")
    args = p.parse_args()
    if args.from_json:
        save(json.loads(open(args.from_json).read()), args)
        return
    torch.set_num_threads(args.threads)
    preset = PRESETS["shakespeare-char-cpu"].model
    steps, first_s = {}, {}
    for spec in args.candidates:
        label, layers, batch = spec.split(":")
        for compiled in (False, True) if label in args.compile else (False,):
            torch.manual_seed(0)
            model = GPT(replace(preset, n_layer=int(layers)))
            x = torch.randint(0, preset.vocab_size, (int(batch), preset.block_size))
            step = make_step(torch.compile(model) if compiled else model, (x, x), "cpu")
            name = label + ("+compile" if compiled else "")
            first_s[name] = step()  # allocation, and for a compiled model the compiling
            steps[name] = step

    def rounds_of(step):
        return lambda: sum(step() for _ in range(args.steps_per_round)) / args.steps_per_round

    times = alternate({k: rounds_of(f) for k, f in steps.items()}, repeats=args.rounds)
    ms = {k: statistics.median(v) * 1000 for k, v in times.items()}
    result = {"hardware": describe_hardware("cpu"), "budget_s": args.budget, "threads": args.threads,
              "ms_per_step": {k: round(v, 2) for k, v in ms.items()},
              "first_step_s": {k: round(v, 1) for k, v in first_s.items()},
              # the first step's time (compiling, for a compiled model) is spent from the budget
              "steps_in_budget": {k: int((args.budget - first_s[k]) * 1000 / v) for k, v in ms.items()}}
    print(json.dumps(result))
    if args.save:
        save(result, args)


def save(result: dict, args: argparse.Namespace) -> None:
    """Write the step rates as the record cpu-step-rates.json (nanogpt.course.results_dir())."""
    from nanogpt.course import write_result

    path = write_result("cpu-step-rates", {
        "title": "CPU race candidates: training steps that fit the budget, alternated",
        "kind": "benchmark", "model": "the shakespeare-char-cpu model at each candidate's depth and batch",
        "hardware": result["hardware"], "device": "cpu", "torch": torch.__version__,
        "command": "python benchmarks/cpu_step_rates.py --budget {:g} --candidates {} --compile {} --rounds {} "
                   "--threads {} --save".format(args.budget, " ".join(args.candidates), " ".join(args.compile),
                                                args.rounds, args.threads),
        "metrics": {"threads": args.threads, "budget_s": args.budget,
                    **{f"ms_per_step_{k}": v for k, v in result["ms_per_step"].items()},
                    **{f"first_step_s_{k}": v for k, v in result["first_step_s"].items()},
                    **{f"steps_in_budget_{k}": v for k, v in result["steps_in_budget"].items()}},
    })
    print(f"record written to {path}" if path else "no record written: quick mode (NANOGPT_QUICK)")


if __name__ == "__main__":
    main()
