"""Model shapes a sweep can produce, checked before any trial starts.

Every combination of the searched model (and dataset) keys goes through
cct.models.resolve_settings, the same function that builds the model, so `conv_blocks`
above `depth`, attention widths that heads do not divide and images too small for the
tokenizer are caught here instead of in trial 37.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from cct.config import ConfigError, DataConfig, TrainConfig
from cct.data.shapes import dataset_shape as cct_dataset_shape
from cct.models.registry import resolve_settings
from cct.typed_reader import Problem, flatten
from search_spaces.spec import Domain

MAX_COMBINATIONS = 10_000  # above this only the extremes of each domain are checked
MAX_REPORTED = 3  # failing combinations spelled out; the rest are counted
DATA_SHAPE_KEYS = ("data.dataset", "data.img_size", "data.synthetic_classes", "data.synthetic_size")


def dataset_shape(data: Mapping[str, Any]) -> tuple[int, int, int]:
    """(classes, channels, image size) from flat `data.*` values, without loading data."""
    cfg = DataConfig(
        dataset=data["data.dataset"],
        img_size=data["data.img_size"],
        synthetic_classes=data["data.synthetic_classes"],
        synthetic_size=data["data.synthetic_size"],
    )
    return cct_dataset_shape(cfg)


def _shape_keys(key: str) -> bool:
    return key.startswith("model.") or key in DATA_SHAPE_KEYS


def _candidates(d: Domain) -> list[Any]:
    if d.values is not None:
        return list(d.values)
    if d.kind == "randint":
        return list(range(int(d.low), int(d.high) + 1))
    return [d.low, d.high]  # continuous: the two ends


def _extremes(values: list[Any]) -> list[Any]:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    others = [v for v in values if v not in numbers]
    ends = [min(numbers), max(numbers)] if numbers else []
    return list(dict.fromkeys(ends)) + others


def check_shapes(
    base: TrainConfig, search: Mapping[str, Domain]
) -> tuple[list[Problem], int | None]:
    """Errors for impossible model shapes, and the smallest depth any trial can have."""
    keys = sorted(k for k in search if _shape_keys(k))
    choices = [_candidates(search[k]) for k in keys]
    total = math.prod(len(c) for c in choices)
    if total > MAX_COMBINATIONS:
        choices = [_extremes(c) for c in choices]
    fixed = flatten(base.to_dict())
    errors: list[Problem] = []
    failing = 0
    depths: list[int] = []
    for combo in itertools.product(*choices):
        values = {**fixed, **dict(zip(keys, combo, strict=True))}
        try:
            depths.append(_resolve(values).depth)
        except ConfigError as e:
            failing += 1
            if failing <= MAX_REPORTED:
                errors += _describe(keys, combo, str(e))
    if failing > MAX_REPORTED:
        checked = math.prod(len(c) for c in choices)
        errors.append(
            Problem(
                "search",
                f"{failing - MAX_REPORTED} more of the {checked} combinations checked"
                " cannot work either",
            )
        )
    return errors, (min(depths) if depths else None)


def _resolve(values: Mapping[str, Any]) -> Any:
    classes, channels, size = dataset_shape(values)
    model = {
        k[len("model.") :]: v
        for k, v in values.items()
        if k.startswith("model.") and k != "model.variant" and v is not None
    }
    return resolve_settings(
        values["model.variant"],
        num_classes=classes,
        in_channels=channels,
        img_size=size,
        **model,
    )


def _describe(keys: list[str], combo: tuple[Any, ...], message: str) -> list[Problem]:
    # resolve_settings joins several problems with "; ": one line each.
    problems = message.split("; ")
    if not keys:
        return [Problem("base", p) for p in problems]
    combo_text = ", ".join(f"{k}={v!r}" for k, v in zip(keys, combo, strict=True))
    return [Problem("search", f"the combination {combo_text} cannot work: {p}") for p in problems]
