"""Typed, frozen configuration for models, data and training.

Defaults live here and only here. Every config can be built from a plain dict
(`from_dict`), which rejects unknown keys and wrong types naming the key, and turned
back into one (`to_dict`) so Ray workers can rebuild it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

PosEmbedding = Literal["learnable", "sine", "none"]
ConvBlockNorm = Literal["batch", "group", "none"]
ConvBlockAct = Literal["relu", "gelu"]
DatasetName = Literal["digits", "synthetic", "cifar10", "cifar100", "flowers102"]
DeviceName = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "bf16", "fp32"]
FinalWeights = Literal["final", "best"]
# The SHP analysis' choices, stated once here, the lowest layer: analysis/shp checks them, the
# sweep file's `analysis:` section and `python -m analysis.shp` offer them.
ShpUnits = Literal["heads", "nodes", "ff"]
ShpPooling = Literal["mean", "seqpool"]
ShpFit = Literal["fast", "faithful"]
SHP_THRESHOLD = 0.3  # binarisation threshold of the normalised field matrices (SPEC 4.4)


class ConfigError(ValueError):
    """A config value or key is invalid; the message names it."""


@dataclass(frozen=True)
class ModelConfig:
    # None means "the variant's own value" (see cct/models/registry.py).
    variant: str = "cct_7_3x1_32"
    num_heads: int | None = None
    head_dim: int | None = None
    attn_dim: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    mlp_ratio: float | None = None
    conv_blocks: int | None = None
    conv_block_norm: ConvBlockNorm | None = None
    conv_block_act: ConvBlockAct | None = None
    tokenizer_layers: int | None = None
    tokenizer_kernel: int | None = None
    pos_embedding: PosEmbedding | None = None
    attn_dropout: float | None = None
    drop_path: float | None = None
    dropout: float | None = None

    def overrides(self) -> dict[str, Any]:
        """The fields set explicitly (not None), minus the variant name."""
        return {
            k: v for k, v in dataclasses.asdict(self).items() if k != "variant" and v is not None
        }


@dataclass(frozen=True)
class AugmentConfig:
    # None means "the dataset's default" (see DATASETS in cct/data/sources.py).
    crop_padding: int | None = None
    flip: bool | None = None
    mixup: float | None = None
    cutmix: float | None = None
    erase_prob: float | None = None
    label_smoothing: float | None = None


@dataclass(frozen=True)
class DataConfig:
    dataset: DatasetName = "digits"
    root: str = "~/.cache/cct-data"
    download: bool = True
    val_size: int | None = None  # None: the dataset's default (5,000 for CIFAR)
    split_seed: int = 0
    img_size: int | None = None  # None: the dataset's native size
    # synthetic only
    synthetic_train: int = 2048
    synthetic_test: int = 512
    synthetic_classes: int = 10
    synthetic_size: int = 16
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 300
    batch_size: int = 128
    lr: float = 6e-4
    min_lr: float = 1e-5
    weight_decay: float = 6e-2
    warmup_epochs: float = 10.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float | None = None


@dataclass(frozen=True)
class CheckpointEvery:
    """How often a run saves a resumable checkpoint: after `epochs` epochs or `minutes`
    minutes since the last one, whichever comes first; the last epoch is always saved.
    Each save is the weights plus AdamW's two moments (3x the model), so every epoch
    would upload 300 of them in a 300-epoch run; a resume repeats at most the epochs
    since the last save."""

    epochs: int = 10
    minutes: float = 10.0


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    device: DeviceName = "auto"
    precision: Precision = "auto"
    compile: bool = False
    final_weights: FinalWeights = "final"
    max_epochs_without_gain: int | None = None
    eval_every: int = 1
    checkpoint_every: CheckpointEvery = field(default_factory=CheckpointEvery)
    latency_runs: int = 100

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a nested dict; raises ConfigError listing every problem."""
        errors: list[str] = []
        cfg = _build(cls, d, "", errors)
        if errors:
            raise ConfigError("; ".join(errors))
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **flat: Any) -> TrainConfig:
        """A copy with dotted keys replaced, e.g. replace(**{"optim.lr": 1e-3})."""
        d = self.to_dict()
        for key, value in flat.items():
            set_dotted(d, key, value)
        return TrainConfig.from_dict(d)


# --------------------------------------------------------------------------------------
# dict <-> dataclass, strictly typed


def parse_override(item: str) -> tuple[list[str], Any]:
    """One `--set dotted.key=value` -> (the key's parts, the value read as YAML); the one
    parser of `--set` for every command. ConfigError names the item."""
    import yaml

    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set {item!r}: expected dotted.key=value, e.g. optim.lr=1.0e-3")
    try:
        return parts, yaml.safe_load(text)
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())
        raise ConfigError(f"--set {item!r}: the value does not parse as YAML: {msg}") from None


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> flat dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def field_types(cls: type) -> dict[str, Any]:
    """Dotted key -> annotated type, for every leaf of a config dataclass."""
    out: dict[str, Any] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            for k, v in field_types(t).items():
                out[f"{f.name}.{k}"] = v
        else:
            out[f.name] = t
    return out


def _build(cls: type, d: Any, prefix: str, errors: list[str]) -> Any:
    if not isinstance(d, dict):
        errors.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {d!r}")
        return cls()
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key not in names:
            errors.append(f"{prefix}{key}: unknown key (valid keys: {', '.join(sorted(names))})")
            continue
        t = hints[key]
        if dataclasses.is_dataclass(t):
            kwargs[key] = _build(t, value, f"{prefix}{key}.", errors)
        else:
            problem = check_value(t, value)
            if problem:
                errors.append(f"{prefix}{key}: {problem}")
            else:
                kwargs[key] = float(value) if _is_float_type(t) and value is not None else value
    return cls(**kwargs)


def _is_float_type(t: Any) -> bool:
    return t is float or (_is_optional(t) and float in get_args(t))


def _is_optional(t: Any) -> bool:
    return get_origin(t) in (Union, types.UnionType) and type(None) in get_args(t)


def check_value(t: Any, value: Any) -> str | None:
    """None when `value` fits type `t`, else a short description of the problem."""
    origin = get_origin(t)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(t):
            return None
        problems = [check_value(a, value) for a in get_args(t) if a is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if origin is Literal:
        choices = get_args(t)
        if value in choices and type(value) is type(choices[0]):
            return None
        return f"invalid value {value!r} (choose from {', '.join(map(str, choices))})"
    if value is None:
        return "must not be null"
    if t is bool:
        return None if isinstance(value, bool) else f"expected true/false, got {value!r}"
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return None
        return f"expected an integer, got {value!r}"
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        if isinstance(value, str) and _looks_like_float(value):
            return (
                f"got the string {value!r}: YAML reads exponent numbers without a dot as text,"
                f" write {_float_hint(value)}"
            )
        return f"expected a number, got {value!r}"
    if t is str:
        return None if isinstance(value, str) else f"expected a string, got {value!r}"
    if t is typing.Any:
        return None
    return None


def _looks_like_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _float_hint(s: str) -> str:
    mantissa, _, exponent = s.lower().partition("e")
    if exponent and "." not in mantissa:
        return f"{mantissa}.0e{exponent}"
    return str(float(s))
