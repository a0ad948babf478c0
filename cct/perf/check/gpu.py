"""The few CUDA calls the GPU check makes, behind one small seam so its logic runs on a CPU.

`CudaGpu` is the real device. `CpuStandIn` answers the same questions on the CPU (gloo for
NCCL, no memory counters): it exists so the check's cases, runner and report are tested on
machines without a GPU, and is chosen only by `CCT_CHECK_CPU_STANDIN=1`, never silently.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch

STANDIN_ENV = "CCT_CHECK_CPU_STANDIN"


class Gpu(Protocol):
    device: torch.device
    dist_backend: str  # the collective backend DDP uses on this device

    def name(self) -> str: ...

    def synchronize(self) -> None: ...

    def reset_peak(self) -> None: ...

    def peak_mb(self) -> float | None: ...


class CudaGpu:
    dist_backend = "nccl"

    def __init__(self, index: int = 0) -> None:
        self.device = torch.device("cuda", index)

    def name(self) -> str:
        return torch.cuda.get_device_name(self.device)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**20


class CpuStandIn:
    dist_backend = "gloo"
    device = torch.device("cpu")

    def name(self) -> str:
        return "CPU stand-in (CCT_CHECK_CPU_STANDIN=1)"

    def synchronize(self) -> None:
        pass

    def reset_peak(self) -> None:
        pass

    def peak_mb(self) -> float | None:
        return None


def standin_requested() -> bool:
    return os.environ.get(STANDIN_ENV) == "1"


def find_gpu() -> Gpu | None:
    """The device the check runs on: the first CUDA GPU, the CPU stand-in when asked for,
    or None when there is no GPU."""
    if standin_requested():
        return CpuStandIn()
    if torch.cuda.is_available():
        return CudaGpu(0)
    return None
