"""Typed, frozen configuration for models, data and training.

Defaults live here and only here. Every config can be built from a plain dict
(`from_dict`), which rejects unknown keys and wrong types naming the key, and turned
back into one (`to_dict`) so Ray workers can rebuild it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from cct.typed_reader import (
    FRACTION,
    POSITIVE,
    PROBABILITY,
    ConfigError,
    Range,
    at_least,
    read_fields,
    set_dotted,
    within,
)

PosEmbedding = Literal["learnable", "sine", "none"]
ConvBlockNorm = Literal["batch", "group", "none"]
ConvBlockAct = Literal["relu", "gelu"]
DatasetName = Literal[
    "digits", "synthetic", "synthetic_groups", "cifar10", "cifar100", "flowers102"
]
DeviceName = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "bf16", "fp32"]
FinalWeights = Literal["final", "best"]
# Augmentation recipes (SPEC 3): the CCT authors' 300-epoch CIFAR config (RandomResizedCrop,
# RandAugment) and their older 200-epoch examples (4-pixel padded crop).
AugmentRecipe = Literal["cct300", "cct200"]
CropKind = Literal["pad", "resized"]
# The SHP analysis' choices, stated once here, the lowest layer: analysis/shp checks them, the
# sweep file's `analysis:` section and `python -m analysis.shp` offer them.
ShpUnits = Literal["heads", "nodes", "ff"]
ShpPooling = Literal["mean", "seqpool"]
ShpFit = Literal["fast", "faithful"]
SHP_THRESHOLD = 0.3  # binarisation threshold of the normalised field matrices (SPEC 4.4)


# The SHP binarisation threshold: in (0, 1] so all-zero units stay zero (SPEC 4.4).
SHP_THRESHOLD_RANGE = Range(0, 1, low_open=True, high_open=False)


@dataclass(frozen=True)
class ModelConfig:
    # None means "the variant's own value" (see cct/models/registry.py).
    variant: str = "cct_7_3x1_32"
    num_heads: int | None = field(default=None, metadata=at_least(1))
    head_dim: int | None = field(default=None, metadata=at_least(1))
    attn_dim: int | None = field(default=None, metadata=at_least(1))
    embed_dim: int | None = field(default=None, metadata=at_least(1))
    depth: int | None = field(default=None, metadata=at_least(1))
    mlp_ratio: float | None = field(default=None, metadata=POSITIVE)
    conv_blocks: int | None = field(default=None, metadata=at_least(0))  # <= depth: registry
    conv_block_norm: ConvBlockNorm | None = None
    conv_block_act: ConvBlockAct | None = None
    tokenizer_layers: int | None = field(default=None, metadata=at_least(1))
    tokenizer_kernel: int | None = field(default=None, metadata=at_least(1))
    pos_embedding: PosEmbedding | None = None
    attn_dropout: float | None = field(default=None, metadata=FRACTION)
    drop_path: float | None = field(default=None, metadata=FRACTION)
    dropout: float | None = field(default=None, metadata=FRACTION)

    def overrides(self) -> dict[str, Any]:
        """The fields set explicitly (not None), minus the variant name."""
        return {
            k: v for k, v in dataclasses.asdict(self).items() if k != "variant" and v is not None
        }


@dataclass(frozen=True)
class AugmentConfig:
    # None means "the recipe's value": `recipe`'s when set, else the dataset's own defaults
    # (see DATASETS in cct/data/sources.py; CIFAR's is cct300).
    recipe: AugmentRecipe | None = None
    crop: CropKind | None = None  # padded shift, or RandomResizedCrop
    crop_padding: int | None = field(default=None, metadata=at_least(0))
    # RandomResizedCrop's smallest area fraction, up to 1.0
    crop_scale_min: float | None = field(
        default=None, metadata=within(0, 1, low_open=True, high_open=False)
    )
    flip: bool | None = None
    mixup: float | None = field(default=None, metadata=at_least(0))  # a Beta alpha
    cutmix: float | None = field(default=None, metadata=at_least(0))  # a Beta alpha
    erase_prob: float | None = field(default=None, metadata=PROBABILITY)
    label_smoothing: float | None = field(default=None, metadata=FRACTION)
    randaugment: str | None = None  # timm's policy string, e.g. rand-m9-mstd0.5-inc1; "" off


@dataclass(frozen=True)
class DataConfig:
    dataset: DatasetName = "digits"
    root: str = "~/.cache/cct-data"
    download: bool = True
    # None: the dataset's default (5,000 for CIFAR)
    val_size: int | None = field(default=None, metadata=at_least(1))
    split_seed: int = field(default=0, metadata=at_least(0))
    img_size: int | None = field(default=None, metadata=at_least(1))  # None: native size
    # synthetic only
    synthetic_train: int = field(default=2048, metadata=at_least(1))
    synthetic_test: int = field(default=512, metadata=at_least(1))
    synthetic_classes: int = field(default=10, metadata=at_least(2))
    synthetic_size: int = field(default=16, metadata=at_least(1))
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = field(default=300, metadata=at_least(1))
    batch_size: int = field(default=128, metadata=at_least(1))
    lr: float = field(default=6e-4, metadata=POSITIVE)
    min_lr: float = field(default=1e-5, metadata=at_least(0))
    weight_decay: float = field(default=6e-2, metadata=at_least(0))
    warmup_epochs: float = field(default=10.0, metadata=at_least(0))
    warmup_lr: float = field(default=1e-6, metadata=at_least(0))  # the warmup starts here (timm's)
    # the last epochs held at min_lr (timm's cooldown)
    cooldown_epochs: float = field(default=0.0, metadata=at_least(0))
    beta1: float = field(default=0.9, metadata=FRACTION)
    beta2: float = field(default=0.999, metadata=FRACTION)
    grad_clip: float | None = field(default=None, metadata=POSITIVE)


@dataclass(frozen=True)
class CheckpointEvery:
    """How often a run saves a resumable checkpoint: after `epochs` epochs or `minutes`
    minutes since the last one, whichever comes first; the last epoch is always saved.
    Each save is the weights plus AdamW's two moments (3x the model), so every epoch
    would upload 300 of them in a 300-epoch run; a resume repeats at most the epochs
    since the last save."""

    epochs: int = field(default=10, metadata=at_least(1))
    minutes: float = field(default=10.0, metadata=POSITIVE)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = field(default=0, metadata=at_least(0))
    device: DeviceName = "auto"
    precision: Precision = "auto"
    compile: bool = False
    final_weights: FinalWeights = "final"
    max_epochs_without_gain: int | None = field(default=None, metadata=at_least(1))
    eval_every: int = field(default=1, metadata=at_least(1))
    checkpoint_every: CheckpointEvery = field(default_factory=CheckpointEvery)
    latency_runs: int = field(default=100, metadata=at_least(1))
    # Start from these weights (epoch 1, a fresh optimizer): a state dict in the CCT authors'
    # layout (cct/models/authors.py), or one of our checkpoint folders. A resume ignores it.
    init_from: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a nested dict; raises ConfigError listing every problem. Checks keys
        and types only: the ranges are the sweep validator's (a run by hand may freeze the
        weights with optim.lr=0), and the model factory and augmentation check their own."""
        values, problems = read_fields(cls, d, ranges=False)
        if problems:
            raise ConfigError("; ".join(map(str, problems)))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **flat: Any) -> TrainConfig:
        """A copy with dotted keys replaced, e.g. replace(**{"optim.lr": 1e-3})."""
        d = self.to_dict()
        for key, value in flat.items():
            set_dotted(d, key, value)
        return TrainConfig.from_dict(d)
