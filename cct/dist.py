"""Rank helpers. Works under torchrun, under Ray Train (which initialises the process group
itself) and in a plain single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cct.device import resolve_device


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> tuple[Rank, torch.device]:
    """Join the process group if the environment asks for one; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device).type == "cuda"  # DeviceUnavailable: cuda asked, none seen
    dev = torch.device(
        f"cuda:{local_rank % max(1, torch.cuda.device_count())}" if use_cuda else "cpu"
    )
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if dist.is_initialized():
        return Rank(dist.get_rank(), dist.get_world_size(), local_rank), dev
    return Rank(0, 1, 0), dev


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a no-op alone). Sums, never averages of averages."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
