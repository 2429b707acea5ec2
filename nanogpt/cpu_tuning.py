"""What the trainer changes in a model to train it fast on a CPU; the weights stay the same.

Two stand-ins, each measured with 2 threads and torch 2.13:
- ``FastCPUDropout`` for ``nn.Dropout``: ``F.dropout`` draws its mask with ``bernoulli_``,
  several times slower on a CPU than ``torch.rand`` (about a fifth of a bf16 training step of
  the 10.8M model on an Intel Xeon with AMX).
- attention in fp32 under CPU bf16 autocast when the heads are small: PyTorch's fused CPU
  attention kernel is slow in bf16 for short contexts and narrow heads. On an Intel Xeon with
  AMX, a 5 x 128 model's step (context 128, heads of 32) took 20.2 ms in bf16 with attention
  in fp32, 34.7 ms with it in bf16 and 27.5 ms all in fp32 (benchmarks/cpu_bf16_widths.py).

``tune_for_cpu(model)`` swaps both in; ``train`` calls it when it trains on a CPU.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Below this many query positions x head dimensions, CPU bf16 autocast runs attention in fp32.
# The 10.8M model's heads (context 256, 64 wide) were level either way, so they stay in bf16.
CPU_BF16_ATTENTION_MIN_SIZE = 256 * 64


class FastCPUDropout(nn.Dropout):
    """``nn.Dropout``, with a faster mask on a CPU: keep where ``torch.rand(...) >= p``.

    Training zeroes each element with probability ``p`` and scales the rest by 1 / (1 - p),
    as ``nn.Dropout``; the mask kept for the backward pass is a bool, 1 byte an element
    instead of 4. Off the CPU it is ``nn.Dropout``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0.0 < self.p < 1.0 or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand(x.shape) >= self.p  # same shape as x, bool: True with probability 1 - p
        return x.mul(keep).mul_(1.0 / (1.0 - self.p))


def too_small_for_cpu_bf16_attention(seq_len: int, head_size: int) -> bool:
    """Whether a (.., seq_len, head_size) attention problem runs in fp32 under CPU bf16 autocast."""
    return seq_len * head_size < CPU_BF16_ATTENTION_MIN_SIZE


def cpu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, in fp32 when CPU bf16 autocast would make it slow.

    q, k, v are (B, nh, T, hs); the result is (B, nh, T, hs), in fp32 when the inputs were cast.
    """
    small = too_small_for_cpu_bf16_attention(q.shape[-2], q.shape[-1])
    if q.device.type == "cpu" and small and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def tune_for_cpu(model: nn.Module) -> nn.Module:
    """Swap the CPU stand-ins into ``model`` in place (and return it).

    Every ``nn.Dropout`` becomes a ``FastCPUDropout`` of the same ``p``; every module with an
    ``attend`` kernel (``CausalSelfAttention``) gets ``cpu_attention``. Neither has weights, so
    the state dict, and any checkpoint, is unchanged.
    """
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Dropout:
                setattr(module, name, FastCPUDropout(child.p))
        if hasattr(module, "attend"):
            module.attend = cpu_attention
    return model
