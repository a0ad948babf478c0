"""Typed, frozen configuration for models, data and training.

Defaults live here and only here. Every config can be built from a plain dict
(`from_dict`), which rejects unknown keys and wrong types naming the key, and turned
back into one (`to_dict`) so Ray workers can rebuild it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

PosEmbedding = Literal["learnable", "sine", "none"]
ConvBlockNorm = Literal["batch", "group", "none"]
ConvBlockAct = Literal["relu", "gelu"]
DatasetName = Literal["digits", "synthetic", "cifar10", "cifar100", "flowers102"]
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


class ConfigError(ValueError):
    """A config value or key is invalid; the message names it."""


# --------------------------------------------------------------------------------------
# ranges: stated once, on the fields, and read by every check (the sweep validator, the
# model factory, augmentation, TrainConfig.from_dict)


@dataclass(frozen=True)
class Range:
    """The numbers a field accepts: from `low` (excluded when low_open) to `high`
    (excluded when high_open; None: no upper end)."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = True

    def problem(self, v: Any) -> str | None:
        """None when `v` is in range, else "must be ..., got v"."""
        above = v > self.low if self.low_open else v >= self.low
        below = self.high is None or (v < self.high if self.high_open else v <= self.high)
        if above and below:
            return None
        if self.high is not None:
            return f"must be in {self}, got {v!r}"
        return f"must be {'>' if self.low_open else 'at least'} {self.low:g}, got {v!r}"

    def __str__(self) -> str:
        high = "inf" if self.high is None else f"{self.high:g}"
        ends = ("(" if self.low_open else "[", ")" if self.high_open else "]")
        return f"{ends[0]}{self.low:g}, {high}{ends[1]}"


def at_least(n: float) -> dict[str, Range]:
    """Field metadata: the value must be >= n."""
    return {"range": Range(n)}


def within(
    low: float, high: float, *, low_open: bool = False, high_open: bool = True
) -> dict[str, Range]:
    """Field metadata: the value must lie between low and high ([low, high) by default)."""
    return {"range": Range(low, high, low_open=low_open, high_open=high_open)}


POSITIVE = {"range": Range(0, low_open=True)}  # field metadata: the value must be > 0
FRACTION = within(0, 1)  # [0, 1): a probability that must leave something (dropout, smoothing)
PROBABILITY = within(0, 1, high_open=False)  # [0, 1]
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
    return {key: t for key, (t, _) in _leaves(cls).items()}


def field_ranges(cls: type) -> dict[str, Range]:
    """Dotted key -> Range, for every leaf of a config dataclass that states one."""
    return {key: r for key, (_, r) in _leaves(cls).items() if r is not None}


def _leaves(cls: type) -> dict[str, tuple[Any, Range | None]]:
    out: dict[str, tuple[Any, Range | None]] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out.update({f"{f.name}.{k}": v for k, v in _leaves(t).items()})
        else:
            out[f.name] = (t, f.metadata.get("range"))
    return out


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a config: its dotted key, what is wrong, and the value given."""

    key: str
    message: str
    value: Any = field(default=None, compare=False, repr=False)

    def under(self, prefix: str) -> Problem:
        """The same problem, its key under `prefix` (e.g. "base")."""
        key = f"{prefix}.{self.key}" if self.key else prefix
        return Problem(key, self.message, self.value)

    def __str__(self) -> str:
        return f"{self.key or 'config'}: {self.message}"


def unknown_key(key: str, valid: Iterable[str], name: str | None = None) -> Problem:
    """'<key>: unknown key', a close match if any, and the valid keys; `name` is the part
    of `key` that the valid keys spell (default: its last part)."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name or key.rsplit(".", 1)[-1], valid, n=1)
    hint = f", did you mean {close[0]!r}?" if close else ""
    return Problem(key, f"unknown key{hint} (valid keys: {', '.join(valid)})")


Check = Callable[[Any], "str | None"]


def read_fields(
    cls: type,
    raw: Any,
    *,
    own: Iterable[str] = (),
    checks: Mapping[str, Check] | None = None,
    ranges: bool = True,
) -> tuple[dict[str, Any], list[Problem]]:
    """The one reader of a plain mapping into a config dataclass: every key is checked
    against its field's type (check_value), then its range (field metadata "range"), then
    `checks` (dotted key -> extra check); nested dataclasses are read the same way and
    built. Returns the valid values, ready for `cls(**values)` (float fields as floats;
    a bad or unknown key is left out, so its default stands), and every Problem, keyed
    relative to `cls`. Keys in `own` are the caller's to check: passed through as given;
    ranges=False checks keys and types only.
    A null section reads as an empty one (YAML's `model:` with nothing under it)."""
    problems: list[Problem] = []
    values = _read(cls, raw, "", set(own), checks or {}, ranges, problems)
    return values, problems


def _read(
    cls: type,
    raw: Any,
    prefix: str,
    own: set[str],
    checks: Mapping[str, Check],
    ranges: bool,
    out: list[Problem],
) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        out.append(Problem(prefix.rstrip("."), f"expected a mapping, got {raw!r}", raw))
        return {}
    hints, fields = _schema(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key in own:
            values[key] = value
        elif key not in fields:
            out.append(unknown_key(full, fields))
        elif dataclasses.is_dataclass(hints[key]):
            t = hints[key]
            values[key] = t(**_read(t, value, f"{full}.", set(), checks, ranges, out))
        else:
            valid = fields[key].metadata.get("range") if ranges else None
            problem = _check_leaf(hints[key], value, valid)
            if problem is None and value is not None and full in checks:
                problem = checks[full](value)
            if problem:
                out.append(Problem(full, problem, value))
            else:
                values[key] = normalise(hints[key], value)
    return values


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    # Resolving the annotations is most of a read's cost: once per class.
    return get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _check_leaf(t: Any, value: Any, valid: Range | None) -> str | None:
    """Type first (check_value), then range; None when fine."""
    problem = check_value(t, value)
    if problem is None and valid is not None and value is not None:
        problem = valid.problem(value)
    return problem


def normalise(t: Any, value: Any) -> Any:
    """Float fields get floats, so `lr: 1` and `lr: 1.0` mean (and hash) the same."""
    number = isinstance(value, int) and not isinstance(value, bool)
    return float(value) if number and _is_float_type(t) else value


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
