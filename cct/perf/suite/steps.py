"""One training step of each pipeline, as a closure the timers call.

`ours_step` is the engine's `Trainer.train_step`, what `fit` runs per batch (cct/engine.py):
a uint8 batch indexed on the device -> scheduled learning rate -> DeviceAugment -> forward under
autocast -> soft cross-entropy -> backward -> clipping if configured -> AdamW with the recipe's
parameter groups (fused on GPU). `reference_step` is a typical training script's:
the next DataLoader batch -> timm-style Mixup on the CPU -> copy to the device -> forward ->
soft-target cross-entropy -> backward -> `torch.optim.AdamW(model.parameters())` defaults.
Neither reads a value back to the host: the timers synchronise at the ends of a timed block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cct.config import OptimConfig
from cct.data.augment import AugmentSpec, DeviceAugment
from cct.device import autocast
from cct.engine import make_trainer
from cct.perf.reference.data import Mixup, batches
from cct.perf.workload import RECIPE_TRAIN_IMAGES

Step = Callable[[], None]


def ours_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    augment: AugmentSpec,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
    bf16: bool,
    compile: bool = False,
    optim: OptimConfig | None = None,
) -> Step:
    """The engine's step on random batches of uint8 `images` (N, C, H, W) already on the
    model's device, with the recipe's optimizer settings unless `optim` is given."""
    trainer = make_trainer(
        model,
        optim=optim or OptimConfig(),
        augment=DeviceAugment(augment, num_classes, mean, std),
        steps_per_epoch=RECIPE_TRAIN_IMAGES // batch_size,
        bf16=bf16,
        compile=compile,
    )

    def step() -> None:
        idx = torch.randint(
            0, len(labels), (batch_size,), generator=trainer.gen, device=images.device
        )
        trainer.train_step(images[idx], labels[idx])

    return step


def ours_data_step(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    augment: AugmentSpec,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
) -> Step:
    """Only the data part of `ours_step`: index a batch on the device and augment it."""
    gen = torch.Generator(device=images.device).manual_seed(0)
    transform = DeviceAugment(augment, num_classes, mean, std)

    def step() -> None:
        idx = torch.randint(0, len(labels), (batch_size,), generator=gen, device=images.device)
        transform(images[idx], labels[idx], gen)

    return step


def reference_step(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    *,
    mixup: Mixup,
    device: torch.device,
    bf16: bool,
) -> Step:
    """A typical script's step; the loader's workers stay alive between calls."""
    it = batches(loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.06)
    model.train()

    def step() -> None:
        x, y = next(it)
        x, target = mixup(x, y)
        x, target = x.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with autocast(device, bf16):
            logits = model(x)
        loss = torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def reference_data_step(
    loader: torch.utils.data.DataLoader, *, mixup: Mixup, device: torch.device
) -> Step:
    """Only the data part of `reference_step`: next batch, mixup, copy to the device."""
    it = batches(loader)

    def step() -> None:
        x, y = next(it)
        x, target = mixup(x, y)
        x.to(device, non_blocking=True), target.to(device, non_blocking=True)

    return step
