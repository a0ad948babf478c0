"""Raw YAML -> SweepSpec, collecting every problem in the file before anything runs.

Each message is "<dotted key>: <what is wrong, with the value>", so a user can fix the whole
file in one go. The schema is the dataclasses': `cct.config.read_fields` reads each section
into its dataclass (TrainConfig for `base:`, TuneSpec, ResourcesSpec, ...), checking every
key against its field's type and range, so the keys, types, defaults and ranges are stated
once, on the fields. Impossible model shapes are checked with cct.models.resolve_settings.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import yaml

from cct.config import ConfigError, TrainConfig
from cct.models.registry import variant_names
from cct.typed_reader import (
    Problem,
    check_value,
    field_ranges,
    field_types,
    normalise,
    parse_override,
    read_fields,
    unknown_key,
)
from search_spaces.shapes import check_shapes
from search_spaces.spec import (
    NOTIFY_EVENTS,
    AnalysisSpec,
    AshaSpec,
    BudgetSpec,
    Domain,
    HyperBandSpec,
    MedianStopSpec,
    Mode,
    NotifySpec,
    Objective,
    ResourcesSpec,
    SpecError,
    SweepSpec,
    SystemMetricsSpec,
    TrackingSpec,
    TuneSpec,
)

# The file's sections: SweepSpec's fields, less what the loader fills in.
TOP_KEYS = [f.name for f in dataclasses.fields(SweepSpec) if f.name not in ("source", "hash")]
KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
OPTUNA = ("optuna-tpe", "optuna-nsga2", "optuna-gp", "optuna-cmaes")
MULTI_OBJECTIVE = ("optuna-nsga2", "optuna-gp")  # the samplers that keep a Pareto front
CONSTRAINED = ("optuna-tpe", "optuna-nsga2", "optuna-gp")  # Optuna's constraint-aware ones
# The scheduler section's names: fifo, or one of these with its settings.
SCHEDULERS = {"asha": AshaSpec, "hyperband": HyperBandSpec, "median_stopping": MedianStopSpec}
SCHEDULER_NAMES = {"asha": "ASHA", "hyperband": "HyperBand", "median_stopping": "median stopping"}
TRAIN_TYPES = field_types(TrainConfig)  # dotted leaf -> type: the keys `search:` may name
TRAIN_RANGES = field_ranges(TrainConfig)  # dotted leaf -> Range, off the fields' metadata


def _known_variant(v: Any) -> str | None:
    known = variant_names()
    return None if v in known else f"unknown variant {v!r} (known: {', '.join(known)})"


# Checks beyond type and range, for base values and searched values alike.
TRAIN_CHECKS = {"model.variant": _known_variant}


def _train_value(key: str, value: Any) -> str | None:
    """What is wrong with `value` for training key `key` (type, range, extra check), or None."""
    problem = check_value(TRAIN_TYPES[key], value)
    if problem is None and value is not None and key in TRAIN_RANGES:
        problem = TRAIN_RANGES[key].problem(value)
    if problem is None and value is not None and key in TRAIN_CHECKS:
        problem = TRAIN_CHECKS[key](value)
    return problem


def _is_float_key(t: Any) -> bool:
    return check_value(t, 0.5) is None


def _is_int_key(t: Any) -> bool:
    return check_value(t, 1) is None and not _is_float_key(t)


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
    errors: list[Problem] = []
    errors += [unknown_key(str(k), TOP_KEYS) for k in raw if k not in TOP_KEYS]
    top_level_ok = not errors  # a misspelt section would make the others look empty
    name = _parse_name(raw.get("name"), errors)
    # Sections parse independently; each keeps its valid part, so the checks across
    # sections below still run and a file's problems all come out in one go.
    base = _parse_base(raw.get("base"), errors)
    search = _parse_search(raw.get("search"), errors)
    # Shapes only from a clean model/data part: a typo there would cause follow-on noise.
    model_data = ("base.model", "base.data", "search.model", "search.data")
    shapes_ok = top_level_ok and _clean(errors, *model_data, exact=("base", "search"))
    epochs = base.optim.epochs if _clean(errors, "base.optim", exact=("base",)) else None
    tune = _parse_tune(raw.get("tune"), base, epochs, errors)
    resources = _parse_resources(raw.get("resources"), errors)
    tracking = _parse_tracking(raw.get("tracking"), errors)
    storage_path = _parse_storage_path(raw.get("storage_path", default_storage), cwd, errors)
    top = _read(SweepSpec, {k: raw[k] for k in ("keep_checkpoints",) if k in raw}, "", errors)
    analysis = _parse_analysis(raw.get("analysis"), errors)
    system_metrics = _parse_system_metrics(raw.get("system_metrics"), errors)
    notify = _parse_notify(raw.get("notify"), errors)
    budget = _parse_budget(raw.get("budget"), errors)

    _check_searcher(search, tune, top_level_ok and _clean(errors, "search"), errors)
    _check_budget(search, tune, budget, errors)
    _check_device(base, resources, errors)
    if shapes_ok:
        shape_errors, min_depth = check_shapes(base, search)
        errors += shape_errors
        if min_depth is not None:
            _check_blocks(analysis, min_depth, errors)
    if errors:
        raise SpecError([str(p) for p in errors])
    return SweepSpec(
        name=name,
        base=base,
        search=tuple(sorted(search.items())),
        tune=tune,
        resources=resources,
        tracking=tracking,
        storage_path=storage_path,
        analysis=analysis,
        system_metrics=system_metrics,
        notify=notify,
        budget=budget,
        source=source,
        **top,
    )


def _clean(errors: list[Problem], *sections: str, exact: Sequence[str] = ()) -> bool:
    """No problem at or under any of `sections`, nor at any key of `exact`."""
    return not any(
        p.key in exact or any(p.key == s or p.key.startswith(f"{s}.") for s in sections)
        for p in errors
    )


def _mapping(raw: Any, key: str, errors: list[Problem]) -> dict[str, Any] | None:
    """A section's mapping ({} when absent), or None after reporting a non-mapping."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append(Problem(key, f"expected a mapping, got {raw!r}", raw))
        return None
    return raw


def _read(cls: type, raw: Any, where: str, errors: list[Problem], **kw: Any) -> dict[str, Any]:
    """read_fields on one section (`where`: its key; "" for the top level); its problems
    join `errors` under `where`."""
    values, problems = read_fields(cls, raw, **kw)
    errors += [p.under(where) if where else p for p in problems]
    return values


def _parse_name(value: Any, errors: list[Problem]) -> str:
    if value is None:
        errors.append(
            Problem(
                "name", "missing (it names the sweep, its Ray results and its MLflow experiment)"
            )
        )
        return ""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        errors.append(Problem("name", f"{value!r} may only use letters, digits, '_', '.' and '-'"))
        return ""
    return value


def _parse_base(raw: Any, errors: list[Problem]) -> TrainConfig:
    """The base config from its valid leaves (defaults for the rest)."""
    section = _mapping(raw, "base", errors) or {}
    values, problems = read_fields(TrainConfig, section, checks=TRAIN_CHECKS)
    errors += [_searched_hint(p).under("base") for p in problems]
    return TrainConfig(**values)


def _searched_hint(p: Problem) -> Problem:
    # A search domain written under base: say where it goes.
    if p.key in TRAIN_TYPES and isinstance(p.value, dict) and set(p.value) & set(KINDS):
        hint = f" (searched values go under search: as {p.key}: ...)"
        return Problem(p.key, p.message + hint, p.value)
    return p


def _parse_search(raw: Any, errors: list[Problem]) -> dict[str, Domain]:
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


def _parse_domain(key: str, value: Any, errors: list[Problem]) -> Domain | None:
    where = f"search.{key}"
    if key not in TRAIN_TYPES:
        errors.append(unknown_key(where, _valid_search_keys(key), name=key))
        return None
    if not isinstance(value, dict) or len(value) != 1:
        errors.append(
            Problem(
                where,
                "expected one domain such as {choice: [a, b]} or {uniform: [low, high]}"
                f" (kinds: {', '.join(KINDS)}), got {value!r}",
            )
        )
        return None
    ((kind, args),) = value.items()
    if kind not in KINDS:
        errors.append(
            Problem(where, f"unknown domain kind {kind!r} (valid kinds: {', '.join(KINDS)})")
        )
        return None
    if kind in ("choice", "grid"):
        return _parse_values(key, kind, args, errors)
    return _parse_bounds(key, kind, args, errors)


def _parse_values(key: str, kind: str, args: Any, errors: list[Problem]) -> Domain | None:
    where = f"search.{key}"
    if not isinstance(args, list) or not args:
        errors.append(Problem(where, f"{kind} needs a non-empty list of values, got {args!r}"))
        return None
    problems = [Problem(where, f"{kind} value: {p}") for v in args if (p := _train_value(key, v))]
    values = [normalise(TRAIN_TYPES[key], v) for v in args]
    dupes = sorted({repr(v) for i, v in enumerate(values) if v in values[:i]})
    if dupes:
        problems.append(Problem(where, f"{kind} lists {', '.join(dupes)} more than once"))
    errors += problems
    return None if problems else Domain(kind, values=tuple(values))


def _parse_bounds(key: str, kind: str, args: Any, errors: list[Problem]) -> Domain | None:
    where, t = f"search.{key}", TRAIN_TYPES[key]
    if not isinstance(args, list) or len(args) != 2:
        errors.append(Problem(where, f"{kind} needs [low, high], got {args!r}"))
        return None
    if kind == "randint" and not _is_int_key(t):
        errors.append(Problem(where, f"randint draws integers, but {key} is not an integer key"))
        return None
    if kind != "randint" and not _is_float_key(t):
        hint = "; use randint" if _is_int_key(t) else "; use choice"
        errors.append(Problem(where, f"{kind} draws real numbers, but {key} is not a float{hint}"))
        return None
    problems = []
    for side, v in zip(("low", "high"), args, strict=True):
        # check_value gives the "write 5.0e-4" hint for strings
        problem = check_value(int if kind == "randint" else float, v)
        if problem is None and key in TRAIN_RANGES:
            problem = TRAIN_RANGES[key].problem(v)
        if problem:
            problems.append(Problem(where, f"{kind} {side}: {problem}"))
    if problems:
        errors.extend(problems)
        return None
    low, high = args
    if kind == "loguniform" and low <= 0:
        errors.append(Problem(where, f"loguniform low must be > 0, got {low!r}"))
        return None
    if low >= high:
        errors.append(Problem(where, f"{kind} low {low!r} must be below high {high!r}"))
        return None
    if kind != "randint":
        low, high = float(low), float(high)
    return Domain(kind, low=low, high=high)


def _parse_tune(raw: Any, base: TrainConfig, epochs: int | None, errors: list[Problem]) -> TuneSpec:
    d = TuneSpec()  # the defaults live in the dataclass only
    section = _mapping(raw, "tune", errors) or {}
    own = ("objectives", "scheduler", "seeds")
    f = _read(TuneSpec, section, "tune", errors, own=own, checks={"warm_start": _non_empty})
    objectives = _parse_objectives(f.pop("objectives", dict(d.objectives)), errors)
    scheduler = _parse_scheduler(f.pop("scheduler", d.scheduler), epochs, errors)
    seeds = _parse_seeds(f.pop("seeds", d.seeds), errors)
    patience = f.get("max_epochs_without_gain")
    if patience is not None and base.max_epochs_without_gain is not None:
        errors.append(
            Problem(
                "tune.max_epochs_without_gain",
                f"{patience!r} is also set as"
                f" base.max_epochs_without_gain={base.max_epochs_without_gain!r}; set it once",
            )
        )
    return TuneSpec(objectives=objectives, scheduler=scheduler, seeds=seeds, **f)


def _parse_objectives(raw: Any, errors: list[Problem]) -> tuple[tuple[str, str], ...]:
    default = TuneSpec().objectives
    valid = get_args(Objective)
    if not isinstance(raw, dict) or not raw:
        errors.append(
            Problem(
                "tune.objectives",
                "expected a mapping such as {val_accuracy: max, latency_ms: min}"
                f" (objectives: {', '.join(valid)}), got {raw!r}",
            )
        )
        return default
    out = []
    for name, mode in raw.items():
        where = f"tune.objectives.{name}"
        if name not in valid:
            errors.append(
                Problem(where, f"unknown objective (valid objectives: {', '.join(valid)})")
            )
            continue
        problem = check_value(Mode, mode)
        if problem:
            errors.append(Problem(where, problem, mode))
            continue
        out.append((name, mode))
    return tuple(out) or default


def _parse_scheduler(raw: Any, epochs: int | None, errors: list[Problem]) -> Any:
    """fifo, or a scheduler's spec; `epochs` is base.optim.epochs when valid (the default
    max_t, and the longest a trial runs)."""
    if raw == "fifo":
        return "fifo"
    if isinstance(raw, str) and raw in SCHEDULERS:
        raw = {raw: None}
    if not (isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in SCHEDULERS):
        errors.append(
            Problem(
                "tune.scheduler",
                f"expected fifo, {', '.join(SCHEDULERS)} or {{asha: {{grace_period: G,"
                f" max_t: T}}}}, got {raw!r}",
            )
        )
        return "fifo"
    ((name, settings),) = raw.items()
    where, cls = f"tune.scheduler.{name}", SCHEDULERS[name]
    section = _mapping(settings, where, errors) or {}
    f = _read(cls, section, where, errors)
    if cls is MedianStopSpec:
        return MedianStopSpec(**f)
    f = {"max_t": epochs, **f}
    if f["max_t"] is None:
        return "fifo"  # no max_t and no valid epochs: reported already
    scheduler = cls(**f)
    grace = getattr(scheduler, "grace_period", 1)
    if grace > scheduler.max_t:
        errors.append(Problem(f"{where}.grace_period", f"{grace} is above max_t={scheduler.max_t}"))
    if epochs is not None and scheduler.max_t > epochs:
        errors.append(
            Problem(
                f"{where}.max_t",
                f"{scheduler.max_t} is above base.optim.epochs={epochs}"
                " (a trial never runs longer than its epochs)",
            )
        )
    return scheduler


def _parse_seeds(raw: Any, errors: list[Problem]) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or not raw
        or any(check_value(int, s) or s < 0 for s in raw)
        or len(set(raw)) != len(raw)
    ):
        errors.append(
            Problem("tune.seeds", f"expected a list of distinct integers >= 0, got {raw!r}", raw)
        )
        return None
    return tuple(raw)


def _parse_resources(raw: Any, errors: list[Problem]) -> ResourcesSpec:
    section = _mapping(raw, "resources", errors) or {}
    r = ResourcesSpec(**_read(ResourcesSpec, section, "resources", errors))
    gpus, workers = r.gpus_per_worker, r.workers_per_trial
    if gpus > 1:
        errors.append(
            Problem(
                "resources.gpus_per_worker",
                f"{gpus:g}, but each worker trains on one GPU (one rank per GPU); for a trial"
                " on N GPUs set workers_per_trial=N and gpus_per_worker=1",
            )
        )
    if workers > 1 and gpus != int(gpus):
        errors.append(
            Problem(
                "resources.gpus_per_worker",
                f"{gpus:g} with workers_per_trial={workers}: each worker of a multi-worker"
                " trial needs whole GPUs (two ranks of one trial on one GPU break NCCL)",
            )
        )
    return r


def _non_empty(v: str) -> str | None:
    return None if v.strip() else f"must not be empty, got {v!r}"


def _parse_tracking(raw: Any, errors: list[Problem]) -> TrackingSpec:
    section = _mapping(raw, "tracking", errors) or {}
    checks = {f.name: _non_empty for f in dataclasses.fields(TrackingSpec)}
    return TrackingSpec(**_read(TrackingSpec, section, "tracking", errors, checks=checks))


def _parse_storage_path(raw: Any, cwd: Path, errors: list[Problem]) -> str:
    default = str(cwd / "ray_results")
    if raw is None:
        return default
    problem = check_value(str, raw) or _non_empty(raw)
    if problem:
        errors.append(Problem("storage_path", problem, raw))
        return default
    if "://" in raw:  # s3://, gs://, ... stay as they are
        return raw
    return str((cwd / Path(raw).expanduser()).resolve())


def _parse_analysis(raw: Any, errors: list[Problem]) -> AnalysisSpec:
    section = _mapping(raw, "analysis", errors) or {}
    f = _read(AnalysisSpec, section, "analysis", errors, own=("blocks",))
    blocks = f.pop("blocks", AnalysisSpec().blocks)
    if isinstance(blocks, list) and blocks and not any(check_value(int, b) for b in blocks):
        if min(blocks) < 0 or len(set(blocks)) != len(blocks):
            errors.append(
                Problem(
                    "analysis.blocks",
                    f"block indices must be distinct and >= 0, got {blocks}",
                    blocks,
                )
            )
        blocks = tuple(blocks)
    elif blocks not in ("all", "none"):
        errors.append(
            Problem(
                "analysis.blocks",
                f"expected all, none or a list of block indices, got {blocks!r}",
                blocks,
            )
        )
        blocks = "all"
    return AnalysisSpec(blocks=blocks, **f)


def _parse_budget(raw: Any, errors: list[Problem]) -> BudgetSpec:
    section = _mapping(raw, "budget", errors) or {}
    return BudgetSpec(**_read(BudgetSpec, section, "budget", errors))


def _parse_system_metrics(raw: Any, errors: list[Problem]) -> SystemMetricsSpec:
    if isinstance(raw, bool) or raw == "auto":  # the short form: `system_metrics: on`
        raw = {"enabled": raw}
    section = _mapping(raw, "system_metrics", errors) or {}
    f = _read(SystemMetricsSpec, section, "system_metrics", errors, own=("enabled",))
    enabled = f.pop("enabled", SystemMetricsSpec().enabled)
    if not isinstance(enabled, bool) and enabled != "auto":
        errors.append(
            Problem(
                "system_metrics.enabled",
                f"expected auto, on or off, got {enabled!r}"
                " (auto: on when resources.gpus_per_worker > 0)",
                enabled,
            )
        )
        enabled = SystemMetricsSpec().enabled
    return SystemMetricsSpec(enabled=enabled, **f)


def _parse_notify(raw: Any, errors: list[Problem]) -> NotifySpec:
    section = dict(_mapping(raw, "notify", errors) or {})
    f = _read(NotifySpec, section, "notify", errors, own=("webhook_env", "events"))
    env = section.get("webhook_env")
    if env is not None:
        if not isinstance(env, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
            hint = (
                " (name the variable that holds the URL, not the URL)" if "://" in str(env) else ""
            )
            errors.append(
                Problem("notify.webhook_env", f"expected a variable name{hint}, got {env!r}")
            )
            env = None
        elif not os.environ.get(env, "").strip():
            errors.append(
                Problem(
                    "notify.webhook_env", f"${env} is not set here (it holds the webhook URL)", env
                )
            )
            env = None
    events = section.get("events", NOTIFY_EVENTS)
    if isinstance(events, str):
        events = [events]
    bad = (
        [e for e in events if e not in NOTIFY_EVENTS]
        if isinstance(events, (list, tuple))
        else [events]
    )
    if bad:
        errors.append(
            Problem("notify.events", f"{bad!r}: choose from {', '.join(NOTIFY_EVENTS)}", events)
        )
        events = NOTIFY_EVENTS
    f.pop("webhook_env", None)
    f.pop("events", None)
    return NotifySpec(webhook_env=env, events=tuple(events), **f)


# --------------------------------------------------------------------------------------
# combinations across sections


def _check_searcher(
    search: Mapping[str, Domain], tune: TuneSpec, search_ok: bool, errors: list[Problem]
) -> None:
    # An invalid searcher was replaced by the default: judging by it would only add noise.
    s = tune.searcher if _clean(errors, "tune.searcher") else None
    if s in OPTUNA:
        errors += [
            Problem(f"search.{k}", f"grid needs searcher grid or random, not {s}; use choice")
            for k, d in search.items()
            if d.kind == "grid"
        ]
        if tune.seeds is not None:
            errors.append(
                Problem(
                    "tune.seeds",
                    "repeating each configuration over seeds needs searcher grid or random,"
                    f" not {s}",
                )
            )
        if not search and search_ok:
            errors.append(
                Problem(
                    "search",
                    f"searcher {s} needs at least one searched key"
                    " (searcher random runs the base config num_samples times)",
                )
            )
    if tune.warm_start is not None and s in ("random", "grid"):
        errors.append(
            Problem(
                "tune.warm_start",
                f"seeds an Optuna searcher with earlier trials, but searcher {s} draws"
                " without looking at results; use optuna-tpe or optuna-nsga2, or drop it",
            )
        )
    if s == "grid":
        errors += [
            Problem(f"search.{k}", f"searcher grid needs grid domains, got {d.kind}")
            for k, d in search.items()
            if d.kind != "grid"
        ]
    n, names = len(tune.objectives), ", ".join(name for name, _ in tune.objectives)
    if n > 1 and s not in (*MULTI_OBJECTIVE, None):
        errors.append(
            Problem(
                "tune.objectives",
                f"{n} objectives ({names}) need searcher optuna-nsga2 or optuna-gp, not {s}",
            )
        )
    if s == "optuna-cmaes":
        _check_cmaes(search, errors)
    if not isinstance(tune.scheduler, str):
        _check_scheduler(search, tune, n, names, errors)
    if tune.seeds is not None and "seed" in search:
        errors.append(Problem("search.seed", "tune.seeds sets the seed as well; keep one of them"))


def _check_cmaes(search: Mapping[str, Domain], errors: list[Problem]) -> None:
    # CMA-ES adapts a Gaussian over real coordinates: Optuna's CmaEsSampler draws a
    # categorical key at random, unseen by the search, and would do so quietly.
    errors += [
        Problem(
            f"search.{k}",
            "optuna-cmaes searches real and integer ranges only, not a choice; use"
            " uniform/loguniform/randint, or searcher optuna-gp or optuna-tpe",
        )
        for k, d in search.items()
        if d.kind == "choice"
    ]


def _check_scheduler(
    search: Mapping[str, Domain], tune: TuneSpec, n: int, names: str, errors: list[Problem]
) -> None:
    """ASHA, HyperBand and median stopping compare trials on one metric at the same epoch."""
    key = next(k for k, cls in SCHEDULERS.items() if isinstance(tune.scheduler, cls))
    name = SCHEDULER_NAMES[key]
    if n > 1:
        errors.append(
            Problem(
                "tune.scheduler",
                f"{name} stops trials on one metric, but tune.objectives has {n} ({names});"
                " use fifo",
            )
        )
    if "optim.epochs" in search:
        errors.append(
            Problem(
                "search.optim.epochs",
                f"cannot be searched with the {name} scheduler (it compares trials at the"
                " same epoch, and its max_t or the base epochs set the budget)",
            )
        )
    if key == "hyperband" and tune.searcher not in ("random", "grid"):
        # Tune's HyperBand pauses and resumes trials; a sampler asked for the next point
        # would see a paused trial neither running nor finished.
        errors.append(
            Problem(
                "tune.scheduler",
                f"HyperBand pauses trials and resumes them, which searcher {tune.searcher}"
                " cannot follow; use it with random or grid, or use asha with an Optuna"
                " searcher (the asynchronous form of the same idea)",
            )
        )


def _check_budget(
    search: Mapping[str, Domain], tune: TuneSpec, budget: BudgetSpec, errors: list[Problem]
) -> None:
    if not budget.active or not _clean(errors, "tune.searcher", "budget"):
        return
    s = tune.searcher
    if s in OPTUNA and s not in CONSTRAINED:
        errors.append(
            Problem(
                "budget",
                f"searcher {s} cannot learn constraints (Optuna's CmaEsSampler ignores them);"
                f" use {', '.join(CONSTRAINED)}, random or grid with a budget",
            )
        )
    if tune.warm_start is not None:
        errors.append(
            Problem(
                "tune.warm_start",
                "cannot seed a sweep with a budget: the earlier trials carry no constraint"
                " values, and the searcher needs them on every trial; drop one of the two",
            )
        )


def _check_device(base: TrainConfig, resources: ResourcesSpec, errors: list[Problem]) -> None:
    gpus = resources.gpus_per_worker
    if base.device == "cuda" and gpus == 0:
        errors.append(
            Problem(
                "base.device", "'cuda', but resources.gpus_per_worker is 0, so workers get no GPU"
            )
        )
    if base.device == "cpu" and gpus > 0:
        errors.append(
            Problem(
                "base.device",
                f"'cpu', but resources.gpus_per_worker is {gpus:g}: the GPU would sit idle"
                " (set gpus_per_worker to 0)",
            )
        )


def _check_blocks(analysis: AnalysisSpec, min_depth: int, errors: list[Problem]) -> None:
    if isinstance(analysis.blocks, tuple):
        errors += [
            Problem(
                "analysis.blocks",
                f"block {b} does not exist when model.depth={min_depth} (blocks count from 0)",
            )
            for b in analysis.blocks
            if b >= min_depth
        ]
