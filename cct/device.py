"""The device side of every run, training and benchmarks alike: which device "auto" means,
which number format the forward pass uses, the TF32 switch, how the CPU's allocator keeps
freed memory, and waiting for queued work before reading a clock."""

from __future__ import annotations

import ctypes
import os
from contextlib import AbstractContextManager, nullcontext

import torch

from cct.config import ConfigError


class DeviceUnavailable(ConfigError, RuntimeError):
    """The device asked for is not there (a ConfigError for the CLIs' one-line errors; a
    RuntimeError as it always was)."""


def resolve_device(name: str | torch.device, *, with_index: bool = False) -> torch.device:
    """The device `name` ("auto", "cpu", "cuda", "cuda:1") asks for: "auto" is CUDA when a GPU
    is visible, else the CPU. with_index gives an index-less CUDA device the current one
    (that starts CUDA: not for a rank that has yet to pick its GPU)."""
    if str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {str(name)!r}: no CUDA device is visible")
    if with_index and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def use_bf16(precision: str, device: torch.device) -> bool:
    """`precision` ("auto", "bf16", "fp32") -> whether to run under bf16 autocast.

    "auto" is bf16 on CUDA (tensor cores) and fp32 elsewhere: CPU bf16 is often slower.
    """
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, bf16: bool) -> AbstractContextManager:
    """bf16 autocast on `device`, or nothing: the float32 path stays free of autocast."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def allow_tf32(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA: what the float32 parts of a step run in."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# glibc's mallopt parameters (malloc.h) and the values set: allocations up to glibc's cap on
# the mmap threshold (32 MiB on 64-bit) come from the heap, and up to 256 MiB freed at its top
# stays there.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_UP_TO_BYTES, KEEP_FREED_BYTES = 32 << 20, 256 << 20
USER_MALLOC_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")
_kept = False


def keep_freed_memory(device: torch.device) -> bool:
    """On the CPU, have glibc keep freed memory for the next step instead of handing it back.

    By default glibc unmaps a freed block of a few MiB (or trims it off the heap), so each
    step's batch-sized tensors come back as fresh pages that the kernel zeroes one page fault
    at a time: the augmentation's resized crop spent half its time there. A process that
    trains reuses the same sizes every step, so keeping them costs little resident memory.
    Left alone where the user set glibc's malloc variables, and a no-op off glibc. Returns
    whether the setting is in force."""
    global _kept
    if device.type != "cpu" or any(v in os.environ for v in USER_MALLOC_SETTINGS):
        return False
    if not _kept:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc and musl (a no-op)
        if mallopt is None:
            return False
        _kept = bool(mallopt(M_MMAP_THRESHOLD, HEAP_UP_TO_BYTES)) and bool(
            mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)
        )
    return _kept


def sync(device: torch.device) -> None:
    """Wait for the work queued on `device` (timing only: training never waits)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
