"""Data-parallel training under ``torchrun``: the process group and the reductions the loop needs.

``torchrun --nproc_per_node=N -m nanogpt train ...`` starts N processes and describes them in
the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``). Each joins one process group (NCCL
on GPUs, gloo on CPUs), trains on its own batches, and DDP averages the gradients. Everything
here is a no-op in a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class DistInfo:
    """This process's place in the group."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    initialized_here: bool = False  # this process joined the group, so it leaves it at the end

    @property
    def is_master(self) -> bool:
        return self.rank == 0


def setup_distributed(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (if any).

    NCCL on GPUs, gloo on CPUs. Without ``WORLD_SIZE`` > 1 this is a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    initialized = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        initialized = True
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistInfo(rank, local_rank, world, initialized)


def leave_distributed(dist_info: DistInfo) -> None:
    """Leave the process group, if ``setup_distributed`` joined it."""
    if dist_info.initialized_here:
        import torch.distributed as dist

        dist.destroy_process_group()


def mean_over_ranks(value: torch.Tensor, dist_info: DistInfo) -> torch.Tensor:
    """The mean of ``value`` over all ranks: all-reduce a sum, then divide (gloo lacks ReduceOp.AVG)."""
    if dist_info.world_size == 1:
        return value
    import torch.distributed as dist

    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist_info.world_size


def any_rank(flag: bool, dist_info: DistInfo, device: str) -> bool:
    """True on every rank if ``flag`` is True on any, so that all ranks act at the same step."""
    if dist_info.world_size == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_to_master(obj, dist_info: DistInfo) -> list | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None on the other ranks)."""
    if dist_info.world_size == 1:
        return [obj]
    import torch.distributed as dist

    gathered = [None] * dist_info.world_size if dist_info.is_master else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered
