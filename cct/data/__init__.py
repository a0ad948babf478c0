"""Datasets as uint8 tensors on the device, fixed-seed splits, and device-side augmentation."""

from cct.data.augment import AugmentSpec, DeviceAugment, normalize, resolve_augment
from cct.data.loader import DeviceData, epoch_indices, eval_batches, load_dataset
from cct.data.sources import DATASETS, DatasetError
from cct.data.splits import split_hash

__all__ = [
    "DATASETS",
    "AugmentSpec",
    "DatasetError",
    "DeviceAugment",
    "DeviceData",
    "epoch_indices",
    "eval_batches",
    "load_dataset",
    "normalize",
    "resolve_augment",
    "split_hash",
]
