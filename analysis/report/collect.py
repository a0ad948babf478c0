"""What the sweep report shows, collected from MLflow into plain dataclasses.

    collect(client, experiment=..., sweep_run_id=..., workdir=...) -> SweepData

The sweep's parent run (tag role=sweep: the given one, else the experiment's latest), its
finished trial runs (tag role=trial) with their params, final metrics, tags and optional
`shp/summary.json`, the split sizes from the best trial's logits, and the latest committee run
of that sweep (tag role=committee, see analysis/runs.py) with its committee.json.
Everything the user can get wrong (unknown experiment or run, no finished trial) raises
ReportError naming the value; a trial without analysis is kept, with `shp = None`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis import runs
from analysis.shp.summary import ShpSummary, read_summary


class ReportError(Exception):
    """Bad input for the report; the message names the value (CLI: exit 2)."""


@dataclass(frozen=True)
class Trial:
    """One finished trial run: what varied, what it reached, and its SHP summary."""

    run_id: str
    trial_id: str
    arch: dict[str, Any]  # variant, num_heads, head_dim, embed_dim, conv_blocks, depth
    seed: int | None
    metrics: dict[str, float]  # val_accuracy, test_accuracy, macs, params, latency_ms, ...
    tags: dict[str, str]
    shp: ShpSummary | None  # shp/summary.json, None when the trial has no analysis

    @property
    def name(self) -> str:
        """Short label of the architecture (seeds share it)."""
        return arch_label(self.arch)

    def metric(self, key: str) -> float | None:
        return self.metrics.get(key)


@dataclass(frozen=True)
class Committee:
    """The latest committee run of the sweep (analysis.committee)."""

    run_id: str
    members: list[dict[str, Any]]  # run_id, architecture, val_accuracy, test_accuracy, ...
    val_accuracy: float
    test_accuracy: float
    gain_over_best: float
    val_accuracy_by_size: list[float]
    tolerance: float | None
    combine: str


@dataclass(frozen=True)
class SweepData:
    experiment: str
    experiment_id: str
    sweep_run_id: str
    sweep_name: str
    trials: list[Trial]  # finished ones, best validation accuracy first
    not_finished: dict[str, int]  # status -> count of trial runs left out
    n_val: int | None
    n_test: int | None
    committee: Committee | None

    @property
    def best(self) -> Trial:
        return self.trials[0]


def arch_label(arch: dict[str, Any]) -> str:
    """e.g. "4h×16 d64 c1": heads × head width, embedding size, conv blocks."""
    return (
        f"{arch.get('num_heads')}h×{arch.get('head_dim')} d{arch.get('embed_dim')} "
        f"c{arch.get('conv_blocks')}"
    )


def collect(
    client: MlflowClient,
    *,
    experiment: str | None,
    sweep_run_id: str | None,
    workdir: Path,
) -> SweepData:
    """Everything the report shows except re-measured latency (see report_latency.py)."""
    try:
        exp_id, sweep = runs.find_sweep(client, experiment=experiment, sweep_run_id=sweep_run_id)
    except runs.RunLookupError as e:
        raise ReportError(str(e)) from None
    trial_runs = runs.trial_runs(client, exp_id, sweep.info.run_id)
    finished = [r for r in trial_runs if runs.eligible(r, include_stopped=False)]
    if not finished:
        raise ReportError(
            f"sweep run {sweep.info.run_id} (experiment "
            f"{experiment or client.get_experiment(exp_id).name!r}) has no finished trial "
            f"({len(trial_runs)} trial run(s) in all)"
        )
    not_finished: dict[str, int] = {}
    done = {r.info.run_id for r in finished}
    for r in trial_runs:
        if r.info.run_id not in done:
            not_finished[r.info.status] = not_finished.get(r.info.status, 0) + 1
    trials = [_trial(client, r, workdir) for r in finished]
    trials.sort(key=lambda t: (-(t.metric("val_accuracy") or -1.0), t.run_id))
    n_val, n_test = _split_sizes(client, trials[0].run_id, workdir)
    return SweepData(
        experiment=client.get_experiment(exp_id).name,
        experiment_id=exp_id,
        sweep_run_id=sweep.info.run_id,
        sweep_name=sweep.data.tags.get(runs.SWEEP_TAG, ""),
        trials=trials,
        not_finished=not_finished,
        n_val=n_val,
        n_test=n_test,
        committee=_committee(client, exp_id, sweep.info.run_id, workdir),
    )


def _trial(client: MlflowClient, run: Any, workdir: Path) -> Trial:
    seed = run.data.params.get("seed")
    return Trial(
        run_id=run.info.run_id,
        trial_id=run.data.tags.get(runs.TRIAL_ID_TAG, run.info.run_id[:8]),
        arch=runs.architecture(run.data.params),
        seed=int(seed) if seed not in (None, "None", "") else None,
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
        shp=_shp_summary(client, run.info.run_id, workdir),
    )


def _json_artifact(client: MlflowClient, run_id: str, path: str, workdir: Path) -> Any:
    try:
        return json.loads(runs.download(client, run_id, path, workdir).read_text())
    except (MlflowException, OSError, ValueError):
        return None


def _shp_summary(client: MlflowClient, run_id: str, workdir: Path) -> ShpSummary | None:
    doc = _json_artifact(client, run_id, runs.SHP_SUMMARY_ARTIFACT, workdir)
    try:
        return None if doc is None else read_summary(doc)
    except ValueError:
        return None


def _split_sizes(client: MlflowClient, run_id: str, workdir: Path) -> tuple[int | None, ...]:
    """(validation, test) sample counts from a trial's logits; None when it has none."""
    try:
        local = runs.download(client, run_id, runs.LOGITS_ARTIFACT, workdir)
        with np.load(local, allow_pickle=False) as z:
            return len(z["val_labels"]), len(z["test_labels"])
    except (MlflowException, OSError, KeyError, ValueError):
        return None, None


def _committee(
    client: MlflowClient, exp_id: str, sweep_run_id: str, workdir: Path
) -> Committee | None:
    run = runs.latest_committee_run(client, exp_id, sweep_run_id)
    if run is None:
        return None
    run_id = run.info.run_id
    doc = _json_artifact(client, run_id, runs.COMMITTEE_JSON, workdir)
    if not doc or not doc.get("members"):
        return None
    return Committee(
        run_id=run_id,
        members=list(doc["members"]),
        val_accuracy=float(doc["val_accuracy"]),
        test_accuracy=float(doc["test_accuracy"]),
        gain_over_best=float(doc["gain_over_best"]),
        val_accuracy_by_size=[float(x) for x in doc.get("val_accuracy_by_size", [])],
        tolerance=doc.get("tolerance"),
        combine=str(doc.get("combine", "probs")),
    )
