"""What each dataset looks like to a model, known without loading it: (classes, channels,
image size). Lets configs be validated before any data is read or Ray starts."""

from __future__ import annotations

from cct.config import DataConfig

_NATIVE = {
    "digits": (10, 1, 8),
    "cifar10": (10, 3, 32),
    "cifar100": (100, 3, 32),
    "flowers102": (102, 3, 224),
}


def dataset_shape(cfg: DataConfig) -> tuple[int, int, int]:
    if cfg.dataset in ("synthetic", "synthetic_groups"):
        return cfg.synthetic_classes, 3, cfg.img_size or cfg.synthetic_size
    classes, channels, size = _NATIVE[cfg.dataset]
    return classes, channels, cfg.img_size or size
