"""What the suite measures: the model cases, the in-memory data both pipelines read, and the
training step of each pipeline on that data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cct.data.augment import AugmentSpec, recipe_augment
from cct.data.sources import CIFAR10_MEAN, CIFAR10_STD
from cct.perf.reference.data import Mixup, SampleTransform, make_loader
from cct.perf.reference.model import reference_model
from cct.perf.suite.steps import Step, ours_data_step, ours_step, reference_step

NUM_CLASSES = 10
# --quick: every case shrunk to a few-thousand-parameter model on 16 px images.
QUICK_OVERRIDES = {"embed_dim": 32, "depth": 4}
QUICK_IMG_SIZE = 16


@dataclass(frozen=True)
class Case:
    key: str  # short id, used in row keys
    name: str  # what the table says
    variant: str
    overrides: dict[str, Any] = field(default_factory=dict)
    # Training batch on a CPU: the 256-token models are ~8x slower there, and a small batch
    # keeps the CPU suite within minutes. A GPU runs every case at 128.
    cpu_batch: int = 128


CASES = [
    Case("cct_7_3x1_32", "cct_7_3x1_32", "cct_7_3x1_32", cpu_batch=8),
    Case(
        "lsmha_32x8",
        "cct_7_3x1_32 LS-MHA 32 heads x 8",
        "cct_7_3x1_32",
        {"num_heads": 32, "head_dim": 8},
        cpu_batch=8,
    ),
    Case("conv3", "cct_7_3x1_32 conv_blocks=3", "cct_7_3x1_32", {"conv_blocks": 3}, cpu_batch=8),
    Case("cct_7_3x2_32", "cct_7_3x2_32", "cct_7_3x2_32"),
]
# One trial of a small sweep (the sharing rows): 64 tokens, 2 blocks 128 wide.
SMALL_TRIAL = Case("small", "cct_2_3x2_32", "cct_2_3x2_32")


@dataclass
class Data:
    """CIFAR-shaped random uint8 images (the values do not change the cost), as a numpy
    array for the reference's Dataset and as a tensor on the device for ours."""

    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64
    device_images: torch.Tensor
    device_labels: torch.Tensor
    # the padded-crop recipe the reference loader implements; the cct300 rows set their own
    augment: AugmentSpec = recipe_augment("cct200", 32)
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def random_data(n: int, img_size: int, device: torch.device, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, img_size, img_size), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, n, dtype=np.int64)
    return Data(
        images, labels, torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
    )


def model_pair(case: Case, *, img_size: int, quick: bool, device: torch.device):
    """(ours, reference) of a case on `device`, same weights, same parameter count."""
    overrides = {**case.overrides, **(QUICK_OVERRIDES if quick else {})}
    torch.manual_seed(0)
    ref, ours = reference_model(
        case.variant, num_classes=NUM_CLASSES, img_size=img_size, **overrides
    )
    return ours.to(device), ref.to(device)


def reference_loader(
    data: Data, *, batch_size: int, num_workers: int, transform: Any = SampleTransform
) -> DataLoader:
    """The reference's DataLoader over `data` (pinned memory when the device is a GPU), with
    reference_data's per-sample transforms unless `transform` names another."""
    return make_loader(
        data.images,
        data.labels,
        spec=data.augment,
        mean=data.mean,
        std=data.std,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=data.device_images.device.type == "cuda",
        transform=transform,
    )


def our_data_step(data: Data, *, batch_size: int) -> Step:
    """The engine's data part alone (a batch indexed and augmented) on `data`'s device tensors."""
    return ours_data_step(
        data.device_images,
        data.device_labels,
        augment=data.augment,
        num_classes=NUM_CLASSES,
        mean=data.mean,
        std=data.std,
        batch_size=batch_size,
    )


def our_training_step(
    model: torch.nn.Module, data: Data, *, batch_size: int, bf16: bool, compile: bool = False
) -> Step:
    """The engine's step on `data`'s device tensors."""
    return ours_step(
        model,
        data.device_images,
        data.device_labels,
        augment=data.augment,
        num_classes=NUM_CLASSES,
        mean=data.mean,
        std=data.std,
        batch_size=batch_size,
        bf16=bf16,
        compile=compile,
    )


def reference_training_step(
    model: torch.nn.Module, data: Data, *, batch_size: int, bf16: bool, num_workers: int
) -> Step:
    """A typical script's step on `data`'s numpy images; the DataLoader's workers live as
    long as the step closure."""
    loader = reference_loader(data, batch_size=batch_size, num_workers=num_workers)
    device = data.device_images.device
    return reference_step(
        model, loader, mixup=Mixup(data.augment, NUM_CLASSES), device=device, bf16=bf16
    )
