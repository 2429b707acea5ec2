"""bf16 autocast against fp32 on this CPU, by model width: where does bf16 start to pay?

A CPU with bf16 matrix units (AVX512-BF16, AMX) multiplies bf16 matrices several times faster
than fp32, but autocast also casts activations and weights around every matmul, and torch's
bf16 attention kernel is slow for small heads (``nanogpt.cpu_tuning.cpu_attention`` keeps those in fp32).
For a narrow model those costs win. This script times full training steps (forward, backward,
AdamW) in fp32, with bf16 autocast as the course runs it, and with bf16 autocast that leaves
attention in bf16 too, alternated in one process, medians of ``--rounds``. Its crossover is
``nanogpt.precision.CPU_BF16_MIN_WIDTH``, which ``dtype="auto"`` uses; the third column tests
``nanogpt.cpu_tuning.CPU_BF16_ATTENTION_MIN_SIZE``.

    python benchmarks/cpu_bf16_widths.py --threads 2 --save
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch

import nanogpt.cpu_tuning
from nanogpt.bench import alternate, make_step
from nanogpt.model import GPT, GPTConfig
from nanogpt.presets import PRESETS
from nanogpt.runtime import describe_hardware
from nanogpt.precision import has_native_bf16

# (label, model, batch size): widths at one shape, then the course's two character presets.
SHAPES = [(f"{w} wide", GPTConfig(block_size=128, vocab_size=65, n_layer=4, n_head=4, n_embd=w), 16)
          for w in (64, 128, 192, 256, 384, 512)] + [
    ("shakespeare-char-cpu", PRESETS["shakespeare-char-cpu"].model, PRESETS["shakespeare-char-cpu"].train.batch_size),
    ("shakespeare-char", PRESETS["shakespeare-char"].model, 16),
]


def with_bf16_attention(step):
    """``step`` with every attention in bf16 under autocast, however small (see ``nanogpt.cpu_tuning.cpu_attention``)."""
    def run() -> float:
        saved, nanogpt.cpu_tuning.CPU_BF16_ATTENTION_MIN_SIZE = nanogpt.cpu_tuning.CPU_BF16_ATTENTION_MIN_SIZE, 0
        try:
            return step()
        finally:
            nanogpt.cpu_tuning.CPU_BF16_ATTENTION_MIN_SIZE = saved
    return run


def measure(config: GPTConfig, batch_size: int, rounds: int) -> dict:
    """Median seconds per training step in fp32, in bf16 autocast, and in bf16 with bf16 attention, alternated."""
    torch.manual_seed(0)
    model = GPT(config)
    x = torch.randint(0, config.vocab_size, (batch_size, config.block_size))
    y = torch.randint(0, config.vocab_size, (batch_size, config.block_size))
    steps = {"fp32": make_step(model, (x, y), "cpu"), "bf16": make_step(model, (x, y), "cpu", torch.bfloat16),
             "bf16_attn": with_bf16_attention(make_step(model, (x, y), "cpu", torch.bfloat16))}
    times = alternate(steps, repeats=rounds, warmup=2)
    ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
    return {"fp32_ms": round(ms["fp32"], 1), "bf16_ms": round(ms["bf16"], 1),
            "bf16_attn_bf16_ms": round(ms["bf16_attn"], 1), "bf16_speedup": round(ms["fp32"] / ms["bf16"], 3),
            "attention_in_fp32": nanogpt.cpu_tuning.too_small_for_cpu_bf16_attention(config.block_size,
                                                                                config.n_embd // config.n_head)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--save", action="store_true", help="write the record cpu-bf16-widths.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not has_native_bf16("cpu"):
        raise SystemExit("this CPU has no bf16 matrix units (or torch runs its AVX2 kernels): nothing to compare")
    rows = []
    for label, config, batch_size in SHAPES:
        row = {"label": label, "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
               "block_size": config.block_size, "batch_size": batch_size, **measure(config, batch_size, args.rounds)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.save:
        from nanogpt.course import write_result

        path = write_result("cpu-bf16-widths", {
            "title": "bf16 autocast vs fp32 on a CPU, by model width (training step)",
            "kind": "benchmark",
            "model": "GPT 4 layers, 4 heads, context 128, batch 16, widths 128-512; and the two character presets",
            "hardware": describe_hardware("cpu"), "device": "cpu", "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "command": f"python benchmarks/cpu_bf16_widths.py --threads {args.threads} --rounds {args.rounds} --save",
            "metrics": {f"bf16_speedup_{r['label'].replace(' wide', '')}": r["bf16_speedup"] for r in rows},
            "rows": rows,
        })
        print(f"record written to {path}" if path else "no record written: quick mode (NANOGPT_QUICK)")


if __name__ == "__main__":
    main()
