"""The validated, frozen form of one sweep file, and the two ways in: `load_spec` and
`config_for_trial`.

A sweep file is read once, every problem in it is collected (see `validate.py`), and the
result is a `SweepSpec` nobody can change. Nothing here imports Ray: the orchestrator turns a
spec into Tune objects, and `--dry-run` prints one without starting anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cct.config import SHP_THRESHOLD, SHP_THRESHOLD_RANGE, ShpFit, ShpPooling, ShpUnits, TrainConfig
from cct.typed_reader import POSITIVE, at_least, flatten, python_value

DomainKind = Literal["choice", "grid", "uniform", "loguniform", "randint"]
SearcherName = Literal["optuna-tpe", "optuna-nsga2", "optuna-gp", "optuna-cmaes", "random", "grid"]
Mode = Literal["max", "min"]
Objective = Literal["val_accuracy", "latency_ms", "macs", "params"]


class SpecError(Exception):
    """A sweep file cannot be run; `errors` lists every problem, one message each."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__(self.errors)  # args hold the list, so the error pickles intact

    def __str__(self) -> str:
        return "\n".join(self.errors)


@dataclass(frozen=True)
class Domain:
    """One searched key. `randint` bounds are both inclusive, whatever Tune's convention."""

    kind: DomainKind
    values: tuple[Any, ...] | None = None  # choice, grid
    low: float | int | None = None  # uniform, loguniform, randint
    high: float | int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The YAML form, e.g. {"choice": [2, 4]}."""
        if self.values is not None:
            return {self.kind: list(self.values)}
        return {self.kind: [self.low, self.high]}


@dataclass(frozen=True)
class AshaSpec:
    max_t: int = field(metadata=at_least(1))  # the validator's default: base.optim.epochs
    grace_period: int = field(default=1, metadata=at_least(1))


@dataclass(frozen=True)
class HyperBandSpec:
    """Tune's synchronous HyperBand: brackets of trials, each cut by `reduction_factor` at
    every rung; paused trials continue from their checkpoints."""

    max_t: int = field(metadata=at_least(1))  # the validator's default: base.optim.epochs
    reduction_factor: float = field(default=3.0, metadata=at_least(2))


@dataclass(frozen=True)
class MedianStopSpec:
    """Tune's median stopping rule: stop a trial whose best result so far is worse than the
    median of the other trials' running means at the same epoch."""

    grace_period: int = field(default=1, metadata=at_least(1))  # epochs before any stop
    min_samples_required: int = field(default=3, metadata=at_least(1))  # trials to compare


Scheduler = Literal["fifo"] | AshaSpec | HyperBandSpec | MedianStopSpec


@dataclass(frozen=True)
class TuneSpec:
    searcher: SearcherName = "optuna-tpe"
    objectives: tuple[tuple[Objective, Mode], ...] = (("val_accuracy", "max"),)
    num_samples: int = field(default=1, metadata=at_least(1))  # grid: repeats of the whole grid
    scheduler: Scheduler = "fifo"
    seeds: tuple[int, ...] | None = None
    time_budget_s: float | None = field(default=None, metadata=POSITIVE)
    max_epochs_without_gain: int | None = field(default=None, metadata=at_least(1))
    searcher_seed: int = field(default=0, metadata=at_least(0))
    # An earlier sweep (MLflow experiment name or sweep run id) whose finished trials seed
    # this sweep's Optuna searcher (orchestrator/study.py).
    warm_start: str | None = None


@dataclass(frozen=True)
class BudgetSpec:
    """Upper bounds a configuration must meet to be trained (README, "Budgets"). Parameters
    and MACs are priced in the driver before a trial starts; batch-1 latency is measured in
    the trial, on its own device, before its first training step. MACs count as the `macs`
    objective does: convolutions and linear layers, not the attention matmuls."""

    max_params: float | None = field(default=None, metadata=POSITIVE)
    max_macs: float | None = field(default=None, metadata=POSITIVE)
    max_latency_ms: float | None = field(default=None, metadata=POSITIVE)

    def bounds(self) -> dict[str, float]:
        """The bounds set, by the metric they bound: {"params": ..., "macs": ...}."""
        named = {"params": self.max_params, "macs": self.max_macs}
        named["latency_ms"] = self.max_latency_ms
        return {k: float(v) for k, v in named.items() if v is not None}

    @property
    def active(self) -> bool:
        return bool(self.bounds())


@dataclass(frozen=True)
class ResourcesSpec:
    workers_per_trial: int = field(default=1, metadata=at_least(1))
    gpus_per_worker: float = field(default=0.0, metadata=at_least(0))
    cpus_per_worker: float = field(default=1.0, metadata=POSITIVE)
    # None: as many as fit
    max_concurrent_trials: int | None = field(default=None, metadata=at_least(1))
    # In any currency: the sweep's GPU-hours and CPU-hours become a cost (orchestrator.cost)
    price_per_gpu_hour: float | None = field(default=None, metadata=at_least(0))
    price_per_cpu_hour: float | None = field(default=None, metadata=at_least(0))

    def prices(self) -> dict[str, float]:
        """The prices the file names, by unit: {"GPU": ..., "CPU": ...}, either left out."""
        named = {"GPU": self.price_per_gpu_hour, "CPU": self.price_per_cpu_hour}
        return {unit: price for unit, price in named.items() if price is not None}

    def price_rates(self) -> list[str]:
        """The prices as text, e.g. ["2.5 per GPU-hour"]."""
        return [f"{price:g} per {unit}-hour" for unit, price in self.prices().items()]


@dataclass(frozen=True)
class TrackingSpec:
    # None: the orchestrator uses sqlite:///<absolute cwd>/mlflow.db.
    tracking_uri: str | None = None
    experiment: str | None = None


@dataclass(frozen=True)
class AnalysisSpec:
    blocks: Literal["all", "none"] | tuple[int, ...] = "all"
    units: ShpUnits = "heads"
    pooling: ShpPooling = "mean"
    fit: ShpFit = "fast"
    threshold: float = field(default=SHP_THRESHOLD, metadata={"range": SHP_THRESHOLD_RANGE})
    # also analyse the trial's untrained model (its initial weights) as the SNR reference
    # (analysis/shp/reference.py): about the cost of the analysis itself, so off by default
    reference: bool = False


@dataclass(frozen=True)
class SystemMetricsSpec:
    """CPU, memory and GPU samples of every worker into its trial's run (README, "System
    metrics"). Monitoring only: it is not part of the spec hash, so a resume may change it."""

    # auto: on when the workers hold GPUs; YAML's on/off (true/false) force it either way.
    enabled: Literal["auto"] | bool = "auto"
    # MLflow's own monitor samples every 10 s, W&B's every 15 s; much faster and each
    # worker's MLflow writes would cost more than the samples show.
    interval_s: float = field(default=10.0, metadata=at_least(1))

    def active(self, gpus_per_worker: float) -> bool:
        """Whether trials whose workers hold `gpus_per_worker` GPUs each are sampled."""
        return gpus_per_worker > 0 if self.enabled == "auto" else bool(self.enabled)


NotifyEvent = Literal["finished", "failed", "interrupted", "trial_failed"]
NOTIFY_EVENTS: tuple[str, ...] = ("finished", "failed", "interrupted", "trial_failed")


@dataclass(frozen=True)
class NotifySpec:
    """Messages to a Slack-compatible webhook when the sweep ends and when a trial fails for
    good (README, "Notifications"). Not part of the spec hash: a resume may change it."""

    # The environment variable that holds the webhook URL (never the URL itself: sweep files
    # are committed, logged on the sweep run and copied to clusters). None: no messages.
    webhook_env: str | None = None
    events: tuple[NotifyEvent, ...] = NOTIFY_EVENTS  # validated by the sweep file's reader
    timeout_s: float = field(default=5.0, metadata=POSITIVE)  # per POST; never slows the sweep
    # At most one message per kind of event in this long; the rest are summed into the next.
    min_interval_s: float = field(default=60.0, metadata=at_least(0))


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: TrainConfig
    search: tuple[tuple[str, Domain], ...] = ()  # sorted by key
    tune: TuneSpec = field(default_factory=TuneSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    storage_path: str = ""  # absolute path or URI
    keep_checkpoints: int = field(default=2, metadata=at_least(1))
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    system_metrics: SystemMetricsSpec = field(default_factory=SystemMetricsSpec)
    notify: NotifySpec = field(default_factory=NotifySpec)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    source: str = ""
    hash: str = ""

    @property
    def experiment(self) -> str:
        """The MLflow experiment: tracking.experiment, else the sweep name."""
        return self.tracking.experiment or self.name

    @property
    def objectives(self) -> tuple[tuple[str, str], ...]:
        return self.tune.objectives

    @property
    def search_dict(self) -> dict[str, Domain]:
        return dict(self.search)

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able (for the parent run and --dry-run)."""
        d = _defining_part(self)
        d.update(
            tracking=dataclasses.asdict(self.tracking),
            storage_path=self.storage_path,
            keep_checkpoints=self.keep_checkpoints,
            system_metrics=dataclasses.asdict(self.system_metrics),
            notify=dataclasses.asdict(self.notify),
            source=self.source,
            hash=self.hash,
        )
        return d


def spec_hash(spec: SweepSpec) -> str:
    """sha256 of what defines the sweep's trials: not where it is stored or tracked."""
    canonical = json.dumps(_defining_part(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _defining_part(spec: SweepSpec) -> dict[str, Any]:
    d = {
        "name": spec.name,
        "base": spec.base.to_dict(),
        "search": {k: d.to_dict() for k, d in spec.search},
        "tune": _tune_part(spec.tune),
        "resources": _resources_part(spec.resources),
        "analysis": _analysis_part(spec.analysis),
    }
    # Left out when unset, so sweeps started before budgets existed keep their hash.
    if spec.budget.active:
        d["budget"] = dataclasses.asdict(spec.budget)
    return d


def _analysis_part(analysis: AnalysisSpec) -> dict[str, Any]:
    # reference left out when off, so sweeps started before it existed keep their hash
    d = dataclasses.asdict(analysis)
    if not d["reference"]:
        del d["reference"]
    return d


def _resources_part(resources: ResourcesSpec) -> dict[str, Any]:
    # Prices only turn hours into a cost: a new price must not block a resume.
    d = dataclasses.asdict(resources)
    return {k: v for k, v in d.items() if not k.startswith("price_per_")}


def _tune_part(tune: TuneSpec) -> dict[str, Any]:
    # warm_start left out when unset, so sweeps started before it existed keep their hash
    # (and can still be resumed). The scheduler is named, as ASHA's dict alone was.
    d = dataclasses.asdict(tune)
    if isinstance(tune.scheduler, (HyperBandSpec, MedianStopSpec)):
        d["scheduler"] = {type(tune.scheduler).__name__: d["scheduler"]}
    if d["warm_start"] is None:
        del d["warm_start"]
    return d


# --------------------------------------------------------------------------------------
# per trial


def config_for_trial(spec: SweepSpec, params: Mapping[str, Any]) -> TrainConfig:
    """The frozen TrainConfig of one trial: spec.base with Tune's flat dotted params
    (including "seed") merged in. Raises cct.config.ConfigError for an unknown key."""
    flat = {k: python_value(v) for k, v in flatten(dict(params)).items()}
    if spec.tune.max_epochs_without_gain is not None:
        flat.setdefault("max_epochs_without_gain", spec.tune.max_epochs_without_gain)
    return spec.base.replace(**flat) if flat else spec.base


def check_resources(
    spec: SweepSpec, *, cpus: float, gpus: float, where: str = "this machine"
) -> list[str]:
    """Problems with resources `where` can never provide (the orchestrator calls this with
    the local machine's or the cluster's totals before starting trials)."""
    r = spec.resources
    errors = []
    if r.gpus_per_worker > 0 and gpus == 0:
        errors.append(
            f"resources.gpus_per_worker: {r.gpus_per_worker:g} GPU(s) per worker asked, but"
            f" {where} has no GPU; run on CPU with --set resources.gpus_per_worker=0"
        )
    elif r.gpus_per_worker * r.workers_per_trial > gpus:
        errors.append(
            f"resources: one trial needs {r.workers_per_trial} worker(s) x"
            f" {r.gpus_per_worker:g} GPU = {r.gpus_per_worker * r.workers_per_trial:g} GPUs,"
            f" but {where} has {gpus:g}"
        )
    if r.cpus_per_worker * r.workers_per_trial > cpus:
        errors.append(
            f"resources: one trial needs {r.workers_per_trial} worker(s) x"
            f" {r.cpus_per_worker:g} CPU = {r.cpus_per_worker * r.workers_per_trial:g} CPUs,"
            f" but {where} has {cpus:g}; lower resources.cpus_per_worker"
        )
    return errors
