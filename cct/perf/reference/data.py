"""The reference input pipeline, written the way most training scripts do it.

A `torch.utils.data.DataLoader` over uint8 images (as torchvision's CIFAR dataset holds
them) with per-sample CPU transforms in the worker processes — padded random crop,
horizontal flip, to-float + normalise, random erasing (torchvision / timm semantics) — then
mixup / cutmix with label smoothing on the collated batch on the CPU, as timm's `Mixup`.
The same augmentation recipe as `cct.data.augment.DeviceAugment`, one sample at a time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cct.data.augment import AugmentSpec


class SampleTransform:
    """uint8 (C, H, W) -> normalised float32 (C, H, W), random per call."""

    def __init__(self, spec: AugmentSpec, mean: Sequence[float], std: Sequence[float]) -> None:
        self.spec = spec
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, img: Tensor) -> Tensor:
        s = self.spec
        C, H, W = img.shape
        if s.crop_padding > 0:  # RandomCrop(size, padding=p)
            p = s.crop_padding
            img = F.pad(img, (p, p, p, p))
            top = int(torch.randint(0, 2 * p + 1, (1,)))
            left = int(torch.randint(0, 2 * p + 1, (1,)))
            img = img[:, top : top + H, left : left + W]
        if s.flip and torch.rand(1) < 0.5:  # RandomHorizontalFlip
            img = img.flip(-1)
        x = img.float().div(255)  # ToTensor
        x = x.sub_(self.mean).div_(self.std)  # Normalize
        if s.erase_prob > 0 and random.random() < s.erase_prob:
            x = erase(x)
        return x


def erase(x: Tensor, min_area: float = 0.02, max_area: float = 1 / 3, min_aspect=0.3) -> Tensor:
    """timm's RandomErasing (mode="pixel"): up to 10 tries for a rectangle that fits."""
    C, H, W = x.shape
    log_ratio = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        area = random.uniform(min_area, max_area) * H * W
        aspect = math.exp(random.uniform(*log_ratio))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if w < W and h < H:
            top, left = random.randint(0, H - h), random.randint(0, W - w)
            x[:, top : top + h, left : left + w] = torch.empty((C, h, w)).normal_()
            break
    return x


class ImageDataset(Dataset):
    """In-memory uint8 images (N, C, H, W) and labels; the transform runs per sample."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Tensor], Tensor]
    ) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(torch.from_numpy(self.images[i])), int(self.labels[i])


class Mixup:
    """timm's Mixup in batch mode: one lambda per batch, cutmix or mixup with probability
    0.5 each, the batch mixed with its reverse, label smoothing folded into the targets."""

    def __init__(self, spec: AugmentSpec, num_classes: int) -> None:
        self.mixup, self.cutmix = spec.mixup, spec.cutmix
        self.smoothing, self.num_classes = spec.label_smoothing, num_classes

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        lam = 1.0
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or np.random.rand() < 0.5)
        if use_cutmix:
            lam = np.random.beta(self.cutmix, self.cutmix)
            (y0, y1, x0, x1), lam = self._box(x.shape[-2:], lam)
            x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
        elif self.mixup > 0:
            lam = float(np.random.beta(self.mixup, self.mixup))
            x_flipped = x.flip(0).mul_(1.0 - lam)  # before x changes in place
            x.mul_(lam).add_(x_flipped)
        return x, self._targets(y, lam)

    @staticmethod
    def _box(shape: torch.Size, lam: float) -> tuple[tuple[int, int, int, int], float]:
        H, W = shape
        ratio = math.sqrt(1 - lam)
        cut_h, cut_w = int(H * ratio), int(W * ratio)
        cy, cx = np.random.randint(0, H), np.random.randint(0, W)
        y0, y1 = np.clip(cy - cut_h // 2, 0, H), np.clip(cy + cut_h // 2, 0, H)
        x0, x1 = np.clip(cx - cut_w // 2, 0, W), np.clip(cx + cut_w // 2, 0, W)
        return (y0, y1, x0, x1), 1.0 - (y1 - y0) * (x1 - x0) / float(H * W)

    def _targets(self, y: Tensor, lam: float) -> Tensor:
        off = self.smoothing / self.num_classes
        on = 1.0 - self.smoothing + off
        y1 = torch.full((len(y), self.num_classes), off).scatter_(1, y.view(-1, 1), on)
        y2 = torch.full((len(y), self.num_classes), off).scatter_(1, y.flip(0).view(-1, 1), on)
        return y1 * lam + y2 * (1.0 - lam)


def make_loader(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    spec: AugmentSpec,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    transform: Callable[[AugmentSpec, Sequence[float], Sequence[float]], Any] = SampleTransform,
) -> DataLoader:
    """The training DataLoader timm and most scripts build (shuffled, the last partial batch
    dropped), with this module's per-sample transforms or another's (reference_randaugment's
    Pillow recipe)."""
    return DataLoader(
        ImageDataset(images, labels, transform(spec, mean, std)),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=True,
    )


def batches(loader: DataLoader) -> Iterator[tuple[Tensor, Tensor]]:
    """Batches forever, epoch after epoch, as an epoch loop would draw them."""
    while True:
        yield from loader
