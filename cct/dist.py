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


def setup(device: str | torch.device = "auto") -> tuple[Rank, torch.device]:
    """Join the process group if the environment asks for one; pick this rank's device.

    `device` is a config choice ("auto", "cpu", "cuda": from LOCAL_RANK, as under torchrun)
    or a torch.device a scheduler already assigned (Ray Train's workers), used as given.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if isinstance(device, torch.device):
        dev = device
    else:
        use_cuda = resolve_device(device).type == "cuda"  # DeviceUnavailable: cuda, none seen
        dev = torch.device(
            f"cuda:{local_rank % max(1, torch.cuda.device_count())}" if use_cuda else "cpu"
        )
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        global _created
        _created = True
    if dist.is_initialized():
        return Rank(dist.get_rank(), dist.get_world_size(), local_rank), dev
    return Rank(0, 1, 0), dev


# True once setup() created the process group (torchrun), not when a scheduler did (Ray Train).
_created = False


def teardown() -> None:
    """Leave the process group setup() created, together with the other ranks.

    Without it a rank that finishes first exits with the group alive, and gloo's threads can
    abort that process at interpreter exit ("terminate called without an active exception").
    """
    global _created
    if _created and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _created = False


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a no-op alone). Sums, never averages of averages."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
