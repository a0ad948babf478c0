"""load_dataset: one dataset as uint8 tensors on the device, split and described; and the
index streams the trainer iterates (shuffled, rank-sharded train batches; fixed-order eval)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cct.config import DataConfig
from cct.data.augment import AugmentSpec, resolve_augment
from cct.data.sources import DATASETS, DatasetError, Part
from cct.data.splits import holdout, split_hash


@dataclass
class DeviceData:
    """A split dataset resident on one device. Ids index the source (see sources.py) and
    are ascending within each split, which fixes the sample order of logged logits."""

    name: str
    train_x: Tensor  # uint8 (N, C, H, W)
    train_y: Tensor  # int64 (N,)
    train_ids: Tensor  # int64 (N,)
    val_x: Tensor
    val_y: Tensor
    val_ids: Tensor
    test_x: Tensor
    test_y: Tensor
    test_ids: Tensor
    num_classes: int
    in_channels: int
    img_size: int
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    augment: AugmentSpec
    split_hash: str


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, C, h, w) -> uint8 (N, C, size, size), bilinear with antialiasing."""
    out = []
    for chunk in torch.from_numpy(x).split(4096):  # bounded float memory for 60k images
        y = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True)
        out.append(y.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out).numpy()


def _splits(
    cfg: DataConfig,
    raw_train: Part,
    raw_val: Part | None,
    raw_test: Part | None,
    val_default: int | None,
    test_default: int | None,
) -> tuple[Part, Part, Part]:
    train = raw_train
    if raw_test is None:  # no official test split (digits): hold one out first, stream 0
        keep, held = holdout(train.y, test_default or 0, cfg.split_seed, stream=0)
        train, test = train.take(keep), train.take(held)
    else:
        test = raw_test
    if raw_val is not None and cfg.val_size is None:  # the official validation split
        return train, raw_val, test
    if raw_val is not None:  # an explicit val_size re-splits the official train + val pool
        order = np.argsort(np.concatenate([train.ids, raw_val.ids]), kind="stable")
        train = Part(
            np.concatenate([train.x, raw_val.x])[order],
            np.concatenate([train.y, raw_val.y])[order],
            np.concatenate([train.ids, raw_val.ids])[order],
        )
    size = cfg.val_size if cfg.val_size is not None else val_default
    if size is None:
        size = len(train.y) // 10
    try:
        keep, held = holdout(train.y, size, cfg.split_seed, stream=1)
    except ValueError as e:
        raise DatasetError(f"{cfg.dataset}: val_size={size}: {e}") from e
    return train.take(keep), train.take(held), test


def load_dataset(cfg: DataConfig, device: torch.device | str = "cpu") -> DeviceData:
    """Read (and if allowed download) `cfg.dataset`, split it with `cfg.split_seed`, resize to
    `cfg.img_size` if given, and move the uint8 images to `device`.

    img_size on a fixed-size dataset (digits, synthetic, CIFAR) resizes every image once at
    load time (bilinear, antialiased); flowers102 is decoded at img_size (default 224).
    """
    src = DATASETS.get(cfg.dataset)
    if src is None:
        raise DatasetError(f"unknown dataset {cfg.dataset!r} (choose from {', '.join(DATASETS)})")
    if cfg.img_size is not None and cfg.img_size < 4:
        raise DatasetError(f"{cfg.dataset}: img_size must be >= 4, got {cfg.img_size}")
    raw = src.read(cfg)
    train, val, test = _splits(cfg, raw.train, raw.val, raw.test, src.val_size, src.test_size)

    size = raw.train.x.shape[-1]
    if cfg.img_size is not None and cfg.img_size != size:
        size = cfg.img_size
        for p in (train, val, test):
            p.x = _resize(p.x, size)

    if raw.mean is None or raw.std is None:  # small datasets: statistics of the train split
        px = train.x.astype(np.float64) / 255.0
        mean = tuple(float(v) for v in px.mean(axis=(0, 2, 3)))
        std = tuple(max(float(v), 1e-3) for v in px.std(axis=(0, 2, 3)))
    else:
        mean, std = raw.mean, raw.std

    def dev(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return DeviceData(
        name=cfg.dataset,
        train_x=dev(train.x),
        train_y=dev(train.y.astype(np.int64)),
        train_ids=dev(train.ids.astype(np.int64)),
        val_x=dev(val.x),
        val_y=dev(val.y.astype(np.int64)),
        val_ids=dev(val.ids.astype(np.int64)),
        test_x=dev(test.x),
        test_y=dev(test.y.astype(np.int64)),
        test_ids=dev(test.ids.astype(np.int64)),
        num_classes=raw.num_classes,
        in_channels=train.x.shape[1],
        img_size=size,
        mean=mean,
        std=std,
        augment=resolve_augment(cfg.augment, src.augment(size), size),
        split_hash=split_hash(cfg.dataset, cfg.split_seed, val.ids, test.ids),
    )


# --------------------------------------------------------------------------------------
# batch index streams


def eval_batches(x_uint8: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive slices in the stored order; the last batch may be short."""
    for i in range(0, x_uint8.shape[0], batch_size):
        yield x_uint8[i : i + batch_size], y[i : i + batch_size]


def _epoch_seed(seed: int, epoch: int) -> int:
    # hash rather than seed + epoch, so (seed 0, epoch 1) and (seed 1, epoch 0) differ
    digest = hashlib.sha256(f"cct-epoch:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def epoch_indices(
    n: int,
    *,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    batch_size: int,
    device: torch.device | str,
) -> Tensor:
    """(steps, batch_size) int64 indices into the training set for this rank and epoch.

    One permutation of range(n) seeded by (seed, epoch) — drawn on the CPU, so identical on
    every rank and device — cut into global batches of batch_size * world_size (the tail that
    does not fill one is dropped); rank r takes the r-th slice of each. A 2-rank run therefore
    sees the same global batches as a 1-rank run with twice the batch size.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    global_batch = batch_size * world_size
    steps = n // global_batch
    if steps == 0:
        raise ValueError(
            f"{n} training samples do not fill one global batch of {global_batch}"
            f" (batch_size {batch_size} x world_size {world_size})"
        )
    g = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    perm = torch.randperm(n, generator=g)[: steps * global_batch]
    # (steps, world_size, batch_size) -> this rank's (steps, batch_size)
    return perm.view(steps, world_size, batch_size)[:, rank].contiguous().to(device)
