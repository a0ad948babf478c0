"""Size and speed of a model: parameters, MACs (with and without the attention matmuls),
batch-1 latency and large-batch throughput. Torch only, so it runs on a bare GPU machine."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from cct.config import TrainConfig
from cct.data.shapes import dataset_shape
from cct.device import autocast, sync
from cct.models import create_model
from cct.models.layers import Attention


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class Macs:
    without_attn_matmuls: int  # convs and linear layers only (the CCT authors' convention)
    attn_matmuls: int  # Q K^T and A V

    @property
    def total(self) -> int:
        return self.without_attn_matmuls + self.attn_matmuls


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> Macs:
    """Multiply-accumulates of one forward pass of one image, counted by hooks on a real
    forward (so conv blocks, any tokenizer and any attention width are covered)."""
    layer_macs, attn_macs = [0], [0]

    def on_conv(m: nn.Conv2d, inp, out) -> None:
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        layer_macs[0] += out[0].numel() * k

    def on_linear(m: nn.Linear, inp, out) -> None:
        layer_macs[0] += out[0].numel() * m.in_features

    def on_attention(m: Attention, inp, out) -> None:
        n = inp[0].shape[1]
        attn_macs[0] += 2 * n * n * m.num_heads * m.head_dim  # QK^T and AV

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(on_conv))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(on_linear))
        elif isinstance(m, Attention):
            handles.append(m.register_forward_hook(on_attention))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return Macs(layer_macs[0], attn_macs[0])


@dataclass(frozen=True)
class Price:
    """What a configuration costs before it is trained: its size and MACs, the latter as
    the `macs` objective counts them (without the attention matmuls)."""

    params: int
    macs: int
    macs_with_attn: int


def price_config(cfg: TrainConfig) -> Price:
    """Parameters and MACs of `cfg`'s model, built on the meta device: shapes without
    weights or data: under a second for a CCT-7 (on 2 cores), and no memory."""
    classes, channels, size = dataset_shape(cfg.data)
    with torch.device("meta"):
        model = create_model(
            cfg.model.variant,
            num_classes=classes,
            in_channels=channels,
            img_size=size,
            **cfg.model.overrides(),
        )
    macs = count_macs(model, (channels, size, size))
    return Price(
        params=count_params(model), macs=macs.without_attn_matmuls, macs_with_attn=macs.total
    )


@torch.no_grad()
def time_forward(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    batch_size: int,
    runs: int = 100,
    warmup: int = 10,
    bf16: bool = False,
) -> list[float]:
    """Wall time in seconds of each of `runs` forward passes, device synchronised."""
    device = next(model.parameters()).device
    x = torch.randn(batch_size, *input_shape, device=device)
    was_training = model.training
    model.eval()
    times = []
    with autocast(device, bf16):
        for i in range(warmup + runs):
            sync(device)
            t0 = time.perf_counter()
            model(x)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    model.train(was_training)
    return times


@dataclass(frozen=True)
class SpeedReport:
    latency_ms: float  # median batch-1 forward
    throughput: float  # images/s at `batch_size`, median
    batch_size: int
    runs: int
    device: str
    precision: str

    def to_dict(self) -> dict:
        return asdict(self)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def measure_speed(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    *,
    batch_size: int = 256,
    runs: int = 100,
    bf16: bool = False,
) -> SpeedReport:
    device = next(model.parameters()).device
    latency = statistics.median(
        time_forward(model, input_shape, batch_size=1, runs=runs, bf16=bf16)
    )
    batch_runs = max(5, runs // 10)
    per_batch = statistics.median(
        time_forward(
            model,
            input_shape,
            batch_size=batch_size,
            runs=batch_runs,
            warmup=2,
            bf16=bf16,
        )
    )
    return SpeedReport(
        latency_ms=latency * 1e3,
        throughput=batch_size / per_batch,
        batch_size=batch_size,
        runs=runs,
        device=device_name(device),
        precision="bf16" if bf16 else "fp32",
    )
