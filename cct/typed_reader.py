"""A strict reader of plain dicts into frozen dataclasses, and back: the one place that
knows how a config dict is typed and checked (unknown keys named with the valid ones, wrong
types, ranges stated on the fields, PyYAML's "5e-4" strings). The schema it reads lives in
cct/config.py; search_spaces/ reads sweep files with it too."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


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
# --------------------------------------------------------------------------------------
# dict <-> dataclass, strictly typed


def parse_override(item: str) -> tuple[list[str], Any]:
    """One `--set dotted.key=value` -> (the key's parts, the value read as YAML); the one
    parser of `--set` for every command. ConfigError names the item."""
    # deferred: optional: cct runs on a bare GPU box with torch alone; PyYAML reads --set values
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


def python_value(v: Any) -> Any:
    """A numpy scalar as the Python value it holds (Tune can hand back numpy scalars; the
    strict reader and Optuna's JSON journal want Python ones); anything else unchanged."""
    return v.item() if type(v).__module__ == "numpy" and hasattr(v, "item") else v


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
        # PyYAML reads an exponent without its sign as text too: 5.0e7 is a string
        sign = "" if exponent[0] in "+-" else "+"
        return f"{mantissa}.0e{sign}{exponent}"
    return str(float(s))
