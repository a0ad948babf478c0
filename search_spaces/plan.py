"""The `--dry-run` trial plan: what a sweep would run, as text, without starting Ray."""

from __future__ import annotations

import ast
import itertools
import math
from typing import Any

from cct.config import TrainConfig
from cct.typed_reader import flatten
from search_spaces.spec import (
    AshaSpec,
    Domain,
    HyperBandSpec,
    MedianStopSpec,
    SweepSpec,
    config_for_trial,
)

MAX_LISTED = 50  # trials spelled out one per line; more are summarised
ALWAYS_SHOWN = ("model.variant", "data.dataset", "optim.epochs", "optim.batch_size", "optim.lr")


def count_trials(spec: SweepSpec) -> int:
    """Trials the sweep starts (unless time_budget_s stops it first).

    Tune's generator runs num_samples x (product of grid sizes) x seeds; Optuna proposes
    num_samples trials (grids and seeds are refused with Optuna)."""
    grids = [len(d.values) for _, d in spec.search if d.kind == "grid"]
    seeds = len(spec.tune.seeds) if spec.tune.seeds else 1
    return spec.tune.num_samples * math.prod(grids) * seeds


def _domain_text(d: Domain) -> str:
    if d.values is not None:
        return f"{d.kind} {list(d.values)}"
    inclusive = " (both inclusive)" if d.kind == "randint" else ""
    return f"{d.kind} [{d.low!r}, {d.high!r}]{inclusive}"


def _trial_table(spec: SweepSpec) -> list[dict[str, str]] | None:
    """Each trial's searched values as text (a sampled key shows as "~"); None when Optuna
    picks them. The order may differ from the order Tune starts them in."""
    if spec.tune.searcher.startswith("optuna"):
        return None
    keys, lists = [], []
    for key, d in spec.search:
        keys.append(key)
        lists.append([repr(v) for v in d.values] if d.kind == "grid" else ["~"])
    if spec.tune.seeds:
        keys.append("seed")
        lists.append([repr(s) for s in spec.tune.seeds])
    combos = [dict(zip(keys, c, strict=True)) for c in itertools.product(*lists)]
    return combos * spec.tune.num_samples


def trial_configs(spec: SweepSpec) -> list[TrainConfig] | None:
    """The TrainConfig of every planned trial, in plan order: what a designed sweep (a grid
    with seeds) will train, checkable without Ray. None when a trial draws a value at random
    or Optuna proposes the trials (then only the sweep itself knows them)."""
    table = _trial_table(spec)
    if table is None or any(v == "~" for row in table for v in row.values()):
        return None
    return [
        config_for_trial(spec, {k: ast.literal_eval(v) for k, v in row.items()}) for row in table
    ]


def _describe_scheduler(s: Any) -> str:
    if isinstance(s, AshaSpec):
        return f"ASHA (grace_period {s.grace_period}, max_t {s.max_t} epochs)"
    if isinstance(s, HyperBandSpec):
        return f"HyperBand (max_t {s.max_t} epochs, reduction_factor {s.reduction_factor:g})"
    if isinstance(s, MedianStopSpec):
        return (
            f"median stopping (grace_period {s.grace_period} epochs, after"
            f" {s.min_samples_required} trials)"
        )
    return "FIFO (every trial runs all its epochs)"


def format_plan(spec: SweepSpec, *, tracking_uri: str | None = None) -> str:
    """Human-readable plan; `tracking_uri` is the resolved store (None: the default)."""
    t, r = spec.tune, spec.resources
    n = count_trials(spec)
    scheduler = _describe_scheduler(t.scheduler)
    gpu = f", {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else ""
    concurrent = (
        f"at most {r.max_concurrent_trials} trial(s) at once"
        if r.max_concurrent_trials
        else "as many trials at once as fit"
    )
    objectives = ", ".join(f"{name} ({mode})" for name, mode in t.objectives)
    lines = [
        f"Sweep {spec.name!r} from {spec.source}",
        f"  spec hash      {spec.hash[:16]}",
        f"  MLflow         experiment {spec.experiment!r} in"
        f" {tracking_uri or 'sqlite:///<this folder>/mlflow.db'}",
        f"  Ray results    {spec.storage_path} (keep {spec.keep_checkpoints}"
        " checkpoints per trial)",
        f"  checkpoints    every {spec.base.checkpoint_every.epochs} epochs or"
        f" {spec.base.checkpoint_every.minutes:g} min, and the last epoch",
        f"  searcher       {t.searcher}, {n} trial(s); objectives {objectives}",
        f"  scheduler      {scheduler}",
        f"  per trial      {r.workers_per_trial} worker(s) x ({r.cpus_per_worker:g} CPU{gpu});"
        f" {concurrent}",
    ]
    if t.time_budget_s is not None:
        lines.append(f"  time budget    {t.time_budget_s:g} s for the whole sweep")
    if t.max_epochs_without_gain is not None:
        lines.append(f"  early stop     after {t.max_epochs_without_gain} epochs without gain")
    if spec.budget.active:
        bounds = ", ".join(f"{k} <= {v:.4g}" for k, v in spec.budget.bounds().items())
        lines.append(f"  budget         {bounds} (outside: never trained)")
    if r.prices():
        lines.append(f"  prices         {', '.join(r.price_rates())} (the summary's cost)")
    sm = spec.system_metrics
    if sm.active(r.gpus_per_worker):
        lines.append(f"  system metrics every {sm.interval_s:g} s from every worker")
    lines.append("Fixed config (base; every other key has its TrainConfig default):")
    searched = {k for k, _ in spec.search} | ({"seed"} if t.seeds else set())
    defaults = flatten(TrainConfig().to_dict())
    for key, value in flatten(spec.base.to_dict()).items():
        shown = key in ALWAYS_SHOWN or value != defaults[key]
        if shown and key not in searched:
            lines.append(f"  {key} = {value!r}")
    lines.append("Searched:")
    for key, d in spec.search:
        lines.append(f"  {key}: {_domain_text(d)}")
    if t.seeds:
        lines.append(f"  seed: each configuration repeated with seeds {list(t.seeds)}")
    if not spec.search and not t.seeds:
        lines.append("  (nothing: every trial runs the base config)")
    lines += _trial_lines(spec)
    return "\n".join(lines)


def _trial_lines(spec: SweepSpec) -> list[str]:
    trials = _trial_table(spec)
    if trials is None:
        return [f"Trials: {count_trials(spec)}, proposed by Optuna while the sweep runs"]
    sampled = [k for k, d in spec.search if d.kind != "grid"]
    note = f" ('~': drawn at random per trial: {', '.join(sampled)})" if sampled else ""
    lines = [f"Trials ({len(trials)}){note}:"]
    for i, values in enumerate(trials[:MAX_LISTED]):
        text = " ".join(f"{k}={v}" for k, v in values.items()) or "(base config)"
        lines.append(f"  {i + 1:>3}  {text}")
    if len(trials) > MAX_LISTED:
        lines.append(f"  ... and {len(trials) - MAX_LISTED} more")
    return lines
