"""The device side of every run, training and benchmarks alike: which number format the
forward pass uses, the TF32 switch, and waiting for queued work before reading a clock."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


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


def sync(device: torch.device) -> None:
    """Wait for the work queued on `device` (timing only: training never waits)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
