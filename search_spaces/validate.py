"""Raw YAML -> SweepSpec, collecting every problem in the file before anything runs.

Each message is "<dotted key>: <what is wrong, with the value>", so a user can fix the whole
file in one go. Types are checked with cct.config.check_value (which also catches PyYAML
reading `5e-4` as a string); impossible model shapes with cct.models.resolve_settings.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import yaml

from cct.config import (
    ConfigError,
    ShpFit,
    ShpPooling,
    ShpUnits,
    TrainConfig,
    check_value,
    field_types,
    parse_override,
    set_dotted,
)
from cct.models.registry import variant_names
from search_spaces.shapes import check_shapes
from search_spaces.spec import (
    AnalysisSpec,
    AshaSpec,
    Domain,
    Mode,
    Objective,
    ResourcesSpec,
    SearcherName,
    SpecError,
    SweepSpec,
    TrackingSpec,
    TuneSpec,
)

TOP_KEYS = "name base search tune resources tracking storage_path keep_checkpoints analysis".split()
KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
OPTUNA = ("optuna-tpe", "optuna-nsga2")
TRAIN_TYPES = field_types(TrainConfig)
Check = Callable[[Any], "str | None"]

# --------------------------------------------------------------------------------------
# value ranges, shared by base values, searched values and the other sections


def _at_least(n: int) -> Check:
    return lambda v: None if v >= n else f"must be at least {n}, got {v!r}"


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"must be > 0, got {v!r}"


def _in_range(lo: float, hi: float, hi_open: bool = True, lo_open: bool = False) -> Check:
    text = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def check(v: Any) -> str | None:
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return None if ok else f"must be in {text}, got {v!r}"

    return check


def _known_variant(v: Any) -> str | None:
    known = variant_names()
    return None if v in known else f"unknown variant {v!r} (known: {', '.join(known)})"


# TrainConfig leaves (dotted, without "base."). Model shapes are checked as a whole later.
RANGES: dict[str, Check] = {
    "seed": _at_least(0),
    "max_epochs_without_gain": _at_least(1),
    "eval_every": _at_least(1),
    "latency_runs": _at_least(1),
    "optim.epochs": _at_least(1),
    "optim.batch_size": _at_least(1),
    "optim.lr": _positive,
    "optim.min_lr": _at_least(0),
    "optim.weight_decay": _at_least(0),
    "optim.warmup_epochs": _at_least(0),
    "optim.beta1": _in_range(0, 1),
    "optim.beta2": _in_range(0, 1),
    "optim.grad_clip": _positive,
    "data.split_seed": _at_least(0),
    "data.val_size": _at_least(1),
    "data.img_size": _at_least(1),
    "data.synthetic_train": _at_least(1),
    "data.synthetic_test": _at_least(1),
    "data.synthetic_classes": _at_least(2),
    "data.synthetic_size": _at_least(1),
    "data.augment.crop_padding": _at_least(0),
    "data.augment.mixup": _at_least(0),
    "data.augment.cutmix": _at_least(0),
    "data.augment.erase_prob": _in_range(0, 1, hi_open=False),
    "data.augment.label_smoothing": _in_range(0, 1),
    "model.variant": _known_variant,
    "model.num_heads": _at_least(1),
    "model.head_dim": _at_least(1),
    "model.attn_dim": _at_least(1),
    "model.embed_dim": _at_least(1),
    "model.depth": _at_least(1),
    "model.mlp_ratio": _positive,
    "model.conv_blocks": _at_least(0),
    "model.tokenizer_layers": _at_least(1),
    "model.tokenizer_kernel": _at_least(1),
    "model.attn_dropout": _in_range(0, 1),
    "model.drop_path": _in_range(0, 1),
    "model.dropout": _in_range(0, 1),
}


def _check_leaf(t: Any, value: Any, check: Check | None) -> str | None:
    """Type first (check_value), then range; None when fine."""
    problem = check_value(t, value)
    if problem is None and check is not None and value is not None:
        problem = check(value)
    return problem


def _is_float_key(t: Any) -> bool:
    return check_value(t, 0.5) is None


def _is_int_key(t: Any) -> bool:
    return check_value(t, 1) is None and not _is_float_key(t)


def _normalise(t: Any, value: Any) -> Any:
    # Float fields get floats, so `lr: 1` and `lr: 1.0` mean (and hash) the same.
    if _is_float_key(t) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _unknown(key: str, valid: Iterable[str], name: str | None = None) -> str:
    """'<key>: unknown key', a close match if any, and the valid keys; `name` is the part
    of `key` that the valid keys spell (default: its last part)."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name or key.rsplit(".", 1)[-1], valid, n=1)
    hint = f", did you mean {close[0]!r}?" if close else ""
    return f"{key}: unknown key{hint} (valid keys: {', '.join(valid)})"


# --------------------------------------------------------------------------------------
# reading the file and applying --set


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            first = seen.setdefault(key, key_node.start_mark.line)
        except TypeError:
            continue  # unhashable key: construct_mapping reports it
        if first != key_node.start_mark.line:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {first + 1})",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict[str, Any]:
    """The file's top-level mapping; SpecError for a missing, empty or unparsable file."""
    if not path.exists():
        raise SpecError([f"{path}: no such sweep file"])
    if not path.is_file():
        raise SpecError([f"{path}: not a file"])
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({e.context})" if e.context else ""
        raise SpecError([f"{path}: YAML does not parse{where}: {e.problem}{context}"]) from None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise SpecError([f"{path}: cannot read: {e}"]) from None
    if raw is None:
        raise SpecError([f"{path}: the sweep file is empty"])
    if not isinstance(raw, dict):
        raise SpecError(
            [f"{path}: expected a mapping with sections {', '.join(TOP_KEYS)}, got {raw!r}"]
        )
    return raw


_TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `raw` with each "dotted.key=value" set (value read as YAML). Under `search`
    the rest of the key is one searched key; `search.KEY=null` stops searching KEY. Keys of
    the training config (model., data., optim., seed, ...) may leave out `base.`."""
    raw = copy.deepcopy(raw)
    errors = []
    for item in overrides:
        try:
            parts, value = parse_override(item)
        except ConfigError as e:
            errors.append(str(e))
            continue
        if parts[0] == "search" and len(parts) > 1:
            parts = ["search", ".".join(parts[1:])]
        elif parts[0] in _TRAIN_KEYS:
            parts = ["base", *parts]  # shorthand: --set optim.lr=... means base.optim.lr
        node = raw
        for i, p in enumerate(parts[:-1]):
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                where = ".".join(parts[: i + 1])
                errors.append(f"--set {item!r}: {where} is {node[p]!r}, not a section")
                break
            node = node[p]
        else:
            if parts[0] == "search" and value is None:
                node.pop(parts[-1], None)
            else:
                node[parts[-1]] = value
    if errors:
        raise SpecError(errors)
    return raw


# --------------------------------------------------------------------------------------
# sections


def build_spec(
    raw: Mapping[str, Any], *, source: str, cwd: Path, default_storage: str | None = None
) -> SweepSpec:
    """Validate every section and their combinations; SpecError lists all problems.
    `default_storage` is where results go when the file names no storage_path (else
    <cwd>/ray_results)."""
    errors: list[str] = []
    errors += [_unknown(str(k), TOP_KEYS) for k in raw if k not in TOP_KEYS]
    top_level_ok = not errors  # a misspelt section would make the others look empty
    name = _parse_name(raw.get("name"), errors)
    # Sections parse independently; each keeps its valid part, so the checks across
    # sections below still run and a file's problems all come out in one go.
    base = _parse_base(raw.get("base"), errors)
    search = _parse_search(raw.get("search"), errors)
    # Shapes only from a clean model/data part: a typo there would cause follow-on noise.
    shapes_ok = top_level_ok and _clean(
        errors, "base:", "base.model", "base.data", "search:", "search.model", "search.data"
    )
    epochs = base.optim.epochs if _clean(errors, "base:", "base.optim") else None
    tune = _parse_tune(raw.get("tune"), base, epochs, errors)
    resources = _parse_resources(raw.get("resources"), errors)
    tracking = _parse_tracking(raw.get("tracking"), errors)
    storage_path = _parse_storage_path(raw.get("storage_path", default_storage), cwd, errors)
    keep = _scalar(raw, "keep_checkpoints", int, 2, _at_least(1), errors)
    analysis = _parse_analysis(raw.get("analysis"), errors)

    _check_searcher(search, tune, top_level_ok and _clean(errors, "search"), errors)
    _check_device(base, resources, errors)
    if shapes_ok:
        shape_errors, min_depth = check_shapes(base, search)
        errors += shape_errors
        if min_depth is not None:
            _check_blocks(analysis, min_depth, errors)
    if errors:
        raise SpecError(errors)
    return SweepSpec(
        name=name,
        base=base,
        search=tuple(sorted(search.items())),
        tune=tune,
        resources=resources,
        tracking=tracking,
        storage_path=storage_path,
        keep_checkpoints=keep,
        analysis=analysis,
        source=source,
    )


def _clean(errors: list[str], *prefixes: str) -> bool:
    return not any(e.startswith(prefixes) for e in errors)


def _mapping(raw: Any, key: str, errors: list[str]) -> dict[str, Any] | None:
    """A section's mapping ({} when absent), or None after reporting a non-mapping."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append(f"{key}: expected a mapping, got {raw!r}")
        return None
    return raw


def _scalar(
    section: Mapping[str, Any],
    key: str,
    t: Any,
    default: Any,
    check: Check | None,
    errors: list[str],
    prefix: str = "",
) -> Any:
    if key not in section:
        return default
    value = section[key]
    problem = _check_leaf(t, value, check)
    if problem:
        errors.append(f"{prefix}{key}: {problem}")
        return default
    return _normalise(t, value)


def _fields(
    raw: Any, prefix: str, schema: Mapping[str, tuple[Any, Any, Check | None]], errors: list[str]
) -> dict[str, Any]:
    """Type- and range-checked values of a flat section: schema is key -> (type, default,
    check); a bad value is reported and replaced by its default. Keys the caller parses
    itself have type None and come back untouched."""
    section = _mapping(raw, prefix, errors) or {}
    errors += [_unknown(f"{prefix}.{k}", schema) for k in section if k not in schema]
    out = {}
    for key, (t, default, check) in schema.items():
        if t is None:
            out[key] = section.get(key, default)
        else:
            out[key] = _scalar(section, key, t, default, check, errors, f"{prefix}.")
    return out


def _parse_name(value: Any, errors: list[str]) -> str:
    if value is None:
        errors.append(
            "name: missing (it names the sweep, its Ray results and its MLflow experiment)"
        )
        return ""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        errors.append(f"name: {value!r} may only use letters, digits, '_', '.' and '-'")
        return ""
    return value


def _parse_base(raw: Any, errors: list[str]) -> TrainConfig:
    """The base config from its valid leaves (defaults for the rest)."""
    section = _mapping(raw, "base", errors)
    flat: dict[str, Any] = {}
    _walk_base(section or {}, "", flat, errors)
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        set_dotted(nested, key, value)
    return TrainConfig.from_dict(nested)  # cannot fail: every leaf was checked


def _walk_base(section: Mapping[str, Any], prefix: str, flat: dict[str, Any], errors: list[str]):
    children = {k[len(prefix) :].split(".")[0] for k in TRAIN_TYPES if k.startswith(prefix)}
    for key, value in section.items():
        full = f"{prefix}{key}"
        if full in TRAIN_TYPES:
            problem = _check_leaf(TRAIN_TYPES[full], value, RANGES.get(full))
            if problem and isinstance(value, dict) and set(value) & set(KINDS):
                problem += f" (searched values go under search: as {full}: ...)"
            if problem:
                errors.append(f"base.{full}: {problem}")
            else:
                flat[full] = _normalise(TRAIN_TYPES[full], value)
        elif key in children:
            sub = _mapping(value, f"base.{full}", errors)
            if sub is not None:
                _walk_base(sub, f"{full}.", flat, errors)
        else:
            errors.append(_unknown(f"base.{full}", children))


def _parse_search(raw: Any, errors: list[str]) -> dict[str, Domain]:
    """The valid searched keys; the others are reported."""
    section = _mapping(raw, "search", errors) or {}
    out = {}
    for key, value in section.items():
        domain = _parse_domain(str(key), value, errors)
        if domain is not None:
            out[str(key)] = domain
    return out


def _valid_search_keys(key: str) -> list[str]:
    # Name the keys of the section the user was aiming at, else every leaf.
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    same = [k for k in TRAIN_TYPES if section and k.startswith(section)]
    return same or list(TRAIN_TYPES)


def _parse_domain(key: str, value: Any, errors: list[str]) -> Domain | None:
    where = f"search.{key}"
    if key not in TRAIN_TYPES:
        errors.append(_unknown(where, _valid_search_keys(key), name=key))
        return None
    if not isinstance(value, dict) or len(value) != 1:
        errors.append(
            f"{where}: expected one domain such as {{choice: [a, b]}} or {{uniform: [low, high]}}"
            f" (kinds: {', '.join(KINDS)}), got {value!r}"
        )
        return None
    ((kind, args),) = value.items()
    if kind not in KINDS:
        errors.append(f"{where}: unknown domain kind {kind!r} (valid kinds: {', '.join(KINDS)})")
        return None
    t, check = TRAIN_TYPES[key], RANGES.get(key)
    if kind in ("choice", "grid"):
        return _parse_values(where, kind, args, t, check, errors)
    return _parse_bounds(key, kind, args, t, check, errors)


def _parse_values(
    where: str, kind: str, args: Any, t: Any, check: Check | None, errors: list[str]
) -> Domain | None:
    if not isinstance(args, list) or not args:
        errors.append(f"{where}: {kind} needs a non-empty list of values, got {args!r}")
        return None
    ok = True
    for v in args:
        problem = _check_leaf(t, v, check)
        if problem:
            errors.append(f"{where}: {kind} value: {problem}")
            ok = False
    values = [_normalise(t, v) for v in args]
    dupes = sorted({repr(v) for i, v in enumerate(values) if v in values[:i]})
    if dupes:
        errors.append(f"{where}: {kind} lists {', '.join(dupes)} more than once")
        ok = False
    return Domain(kind, values=tuple(values)) if ok else None


def _parse_bounds(
    key: str, kind: str, args: Any, t: Any, check: Check | None, errors: list[str]
) -> Domain | None:
    where = f"search.{key}"
    if not isinstance(args, list) or len(args) != 2:
        errors.append(f"{where}: {kind} needs [low, high], got {args!r}")
        return None
    if kind == "randint" and not _is_int_key(t):
        errors.append(f"{where}: randint draws integers, but {key} is not an integer key")
        return None
    if kind != "randint" and not _is_float_key(t):
        hint = "; use randint" if _is_int_key(t) else "; use choice"
        errors.append(f"{where}: {kind} draws real numbers, but {key} is not a float{hint}")
        return None
    problems = []
    for side, v in zip(("low", "high"), args, strict=True):
        # check_value gives the "write 5.0e-4" hint for strings
        problem = check_value(int if kind == "randint" else float, v)
        if problem is None and check is not None:
            problem = check(v)
        if problem:
            problems.append(f"{where}: {kind} {side}: {problem}")
    if problems:
        errors.extend(problems)
        return None
    low, high = args
    if kind == "loguniform" and low <= 0:
        errors.append(f"{where}: loguniform low must be > 0, got {low!r}")
        return None
    if low >= high:
        errors.append(f"{where}: {kind} low {low!r} must be below high {high!r}")
        return None
    if kind != "randint":
        low, high = float(low), float(high)
    return Domain(kind, low=low, high=high)


def _parse_tune(raw: Any, base: TrainConfig, epochs: int | None, errors: list[str]) -> TuneSpec:
    d = TuneSpec()  # the defaults live in the dataclass only
    schema = {
        "searcher": (SearcherName, d.searcher, None),
        "objectives": (None, dict(d.objectives), None),
        "num_samples": (int, d.num_samples, _at_least(1)),
        "scheduler": (None, d.scheduler, None),
        "seeds": (None, d.seeds, None),
        "time_budget_s": (float | None, d.time_budget_s, _positive),
        "max_epochs_without_gain": (int | None, d.max_epochs_without_gain, _at_least(1)),
        "searcher_seed": (int, d.searcher_seed, _at_least(0)),
    }
    f = _fields(raw, "tune", schema, errors)
    objectives = _parse_objectives(f["objectives"], errors)
    scheduler = _parse_scheduler(f["scheduler"], epochs, errors)
    seeds = _parse_seeds(f["seeds"], errors)
    if f["max_epochs_without_gain"] is not None:
        if base.max_epochs_without_gain is not None:
            errors.append(
                f"tune.max_epochs_without_gain: {f['max_epochs_without_gain']!r} is also set as"
                f" base.max_epochs_without_gain={base.max_epochs_without_gain!r}; set it once"
            )
    return TuneSpec(
        searcher=f["searcher"],
        objectives=objectives,
        num_samples=f["num_samples"],
        scheduler=scheduler,
        seeds=seeds,
        time_budget_s=f["time_budget_s"],
        max_epochs_without_gain=f["max_epochs_without_gain"],
        searcher_seed=f["searcher_seed"],
    )


def _parse_objectives(raw: Any, errors: list[str]) -> tuple[tuple[str, str], ...]:
    default = (("val_accuracy", "max"),)
    valid = get_args(Objective)
    if not isinstance(raw, dict) or not raw:
        errors.append(
            f"tune.objectives: expected a mapping such as {{val_accuracy: max, latency_ms: min}}"
            f" (objectives: {', '.join(valid)}), got {raw!r}"
        )
        return default
    out = []
    for name, mode in raw.items():
        if name not in valid:
            errors.append(
                f"tune.objectives.{name}: unknown objective (valid objectives: {', '.join(valid)})"
            )
            continue
        problem = check_value(Mode, mode)
        if problem:
            errors.append(f"tune.objectives.{name}: {problem}")
            continue
        out.append((name, mode))
    return tuple(out) or default


def _parse_scheduler(raw: Any, epochs: int | None, errors: list[str]) -> Any:
    """fifo or AshaSpec; `epochs` is base.optim.epochs when valid (ASHA's default max_t)."""
    if raw == "fifo":
        return "fifo"
    if raw == "asha":
        raw = {"asha": None}
    if not (isinstance(raw, dict) and list(raw) == ["asha"]):
        errors.append(
            "tune.scheduler: expected fifo, asha or {asha: {grace_period: G, max_t: T}},"
            f" got {raw!r}"
        )
        return "fifo"
    schema = {"grace_period": (int, 1, _at_least(1)), "max_t": (int, epochs, _at_least(1))}
    f = _fields(raw["asha"], "tune.scheduler.asha", schema, errors)
    if f["max_t"] is None:
        return "fifo"  # no max_t and no valid epochs: reported already
    grace, max_t = f["grace_period"], f["max_t"]
    if grace > max_t:
        errors.append(f"tune.scheduler.asha.grace_period: {grace} is above max_t={max_t}")
    if epochs is not None and max_t > epochs:
        errors.append(
            f"tune.scheduler.asha.max_t: {max_t} is above base.optim.epochs={epochs}"
            " (a trial never runs longer than its epochs)"
        )
    return AshaSpec(grace_period=grace, max_t=max_t)


def _parse_seeds(raw: Any, errors: list[str]) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or not raw
        or any(check_value(int, s) or s < 0 for s in raw)
        or len(set(raw)) != len(raw)
    ):
        errors.append(f"tune.seeds: expected a list of distinct integers >= 0, got {raw!r}")
        return None
    return tuple(raw)


def _parse_resources(raw: Any, errors: list[str]) -> ResourcesSpec:
    d = ResourcesSpec()
    schema = {
        "workers_per_trial": (int, d.workers_per_trial, _at_least(1)),
        "gpus_per_worker": (float, d.gpus_per_worker, _at_least(0)),
        "cpus_per_worker": (float, d.cpus_per_worker, _positive),
        "max_concurrent_trials": (int | None, d.max_concurrent_trials, _at_least(1)),
    }
    f = _fields(raw, "resources", schema, errors)
    gpus, workers = f["gpus_per_worker"], f["workers_per_trial"]
    if gpus > 1:
        errors.append(
            f"resources.gpus_per_worker: {gpus:g}, but each worker trains on one GPU (one"
            " rank per GPU); for a trial on N GPUs set workers_per_trial=N and"
            " gpus_per_worker=1"
        )
    if workers > 1 and gpus != int(gpus):
        errors.append(
            f"resources.gpus_per_worker: {gpus:g} with workers_per_trial={workers}: each worker"
            " of a multi-worker trial needs whole GPUs (two ranks of one trial on one GPU"
            " break NCCL)"
        )
    return ResourcesSpec(**f)


def _parse_tracking(raw: Any, errors: list[str]) -> TrackingSpec:
    schema = {
        "tracking_uri": (str | None, None, _non_empty),
        "experiment": (str | None, None, _non_empty),
    }
    return TrackingSpec(**_fields(raw, "tracking", schema, errors))


def _non_empty(v: str) -> str | None:
    return None if v.strip() else f"must not be empty, got {v!r}"


def _parse_storage_path(raw: Any, cwd: Path, errors: list[str]) -> str:
    default = str(cwd / "ray_results")
    if raw is None:
        return default
    problem = _check_leaf(str, raw, _non_empty)
    if problem:
        errors.append(f"storage_path: {problem}")
        return default
    if "://" in raw:  # s3://, gs://, ... stay as they are
        return raw
    return str((cwd / Path(raw).expanduser()).resolve())


def _parse_analysis(raw: Any, errors: list[str]) -> AnalysisSpec:
    defaults = AnalysisSpec()
    schema = {
        "blocks": (None, "all", None),
        "units": (ShpUnits, defaults.units, None),
        "pooling": (ShpPooling, defaults.pooling, None),
        "fit": (ShpFit, defaults.fit, None),
        "threshold": (float, defaults.threshold, _in_range(0, 1, lo_open=True)),
    }
    f = _fields(raw, "analysis", schema, errors)
    blocks = f["blocks"]
    if isinstance(blocks, list) and blocks and not any(check_value(int, b) for b in blocks):
        if min(blocks) < 0 or len(set(blocks)) != len(blocks):
            errors.append(f"analysis.blocks: block indices must be distinct and >= 0, got {blocks}")
        f["blocks"] = tuple(blocks)
    elif blocks not in ("all", "none"):
        errors.append(
            f"analysis.blocks: expected all, none or a list of block indices, got {blocks!r}"
        )
        f["blocks"] = "all"
    return AnalysisSpec(**f)


# --------------------------------------------------------------------------------------
# combinations across sections


def _check_searcher(
    search: Mapping[str, Domain], tune: TuneSpec, search_ok: bool, errors: list[str]
) -> None:
    # An invalid searcher was replaced by the default: judging by it would only add noise.
    s = tune.searcher if _clean(errors, "tune.searcher") else None
    if s in OPTUNA:
        errors += [
            f"search.{k}: grid needs searcher grid or random, not {s}; use choice"
            for k, d in search.items()
            if d.kind == "grid"
        ]
        if tune.seeds is not None:
            errors.append(
                f"tune.seeds: repeating each configuration over seeds needs searcher grid or"
                f" random, not {s}"
            )
        if not search and search_ok:
            errors.append(
                f"search: searcher {s} needs at least one searched key"
                " (searcher random runs the base config num_samples times)"
            )
    if s == "grid":
        errors += [
            f"search.{k}: searcher grid needs grid domains, got {d.kind}"
            for k, d in search.items()
            if d.kind != "grid"
        ]
    names = ", ".join(name for name, _ in tune.objectives)
    if len(tune.objectives) > 1 and s not in ("optuna-nsga2", None):
        errors.append(
            f"tune.objectives: {len(tune.objectives)} objectives ({names}) need searcher"
            f" optuna-nsga2, not {s}"
        )
    if isinstance(tune.scheduler, AshaSpec):
        if len(tune.objectives) > 1:
            errors.append(
                f"tune.scheduler: ASHA stops trials on one metric, but tune.objectives has"
                f" {len(tune.objectives)} ({names}); use fifo"
            )
        if "optim.epochs" in search:
            errors.append(
                "search.optim.epochs: cannot be searched with the ASHA scheduler"
                " (its max_t sets the budget)"
            )
    if tune.seeds is not None and "seed" in search:
        errors.append("search.seed: tune.seeds sets the seed as well; keep one of them")


def _check_device(base: TrainConfig, resources: ResourcesSpec, errors: list[str]) -> None:
    gpus = resources.gpus_per_worker
    if base.device == "cuda" and gpus == 0:
        errors.append(
            "base.device: 'cuda', but resources.gpus_per_worker is 0, so workers get no GPU"
        )
    if base.device == "cpu" and gpus > 0:
        errors.append(
            f"base.device: 'cpu', but resources.gpus_per_worker is {gpus:g}: the GPU would sit"
            " idle (set gpus_per_worker to 0)"
        )


def _check_blocks(analysis: AnalysisSpec, min_depth: int, errors: list[str]) -> None:
    if isinstance(analysis.blocks, tuple):
        errors += [
            f"analysis.blocks: block {b} does not exist when model.depth={min_depth}"
            " (blocks count from 0)"
            for b in analysis.blocks
            if b >= min_depth
        ]
