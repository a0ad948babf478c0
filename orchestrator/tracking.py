"""MLflow bookkeeping for a sweep: one experiment, one parent run per sweep, one child run
per trial found again by its trial id (never duplicated), and the trackers workers use.

Everything goes through an explicit `MlflowClient(tracking_uri)`: Tune changes each
trial's working directory and runs trials in other processes, so no global MLflow state
is relied on.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis import runs
from analysis.runs import default_tracking_uri, find_trial_run, latest_sweep_run
from cct import environment
from cct.provenance import source_provenance
from cct.typed_reader import flatten
from orchestrator.cost import WALL_HOURS

START_METRICS = ("params", "macs", "macs_with_attn", "latency_ms", "throughput")
EPOCH_METRICS = ("train_loss", "val_accuracy", "samples_per_s", "epoch_seconds", "lr")
MAX_BATCH = 900  # MLflow accepts at most 1000 entries per log_batch call


def is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, creating it (with an absolute artifact location) if needed."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        if runs.EXPERIMENT_KIND_TAG not in found.tags:  # a store from before the tag
            client.set_experiment_tag(
                found.experiment_id, runs.EXPERIMENT_KIND_TAG, runs.TRAINING_KIND
            )
        return found.experiment_id
    location = str((artifact_root / name).resolve()) if artifact_root is not None else None
    return client.create_experiment(
        name, artifact_location=location, tags={runs.EXPERIMENT_KIND_TAG: runs.TRAINING_KIND}
    )


def create_parent_run(
    client: MlflowClient, experiment_id: str, *, sweep: str, tags: dict[str, str], params: dict
) -> str:
    run = client.create_run(
        experiment_id,
        run_name=f"sweep-{sweep}",
        tags={runs.ROLE: runs.SWEEP_ROLE, runs.SWEEP_TAG: sweep, **tags},
    )
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def child_run(
    client: MlflowClient,
    experiment_id: str,
    *,
    parent_run_id: str,
    trial_id: str,
    params: dict[str, Any],
    tags: dict[str, str],
) -> str:
    """The run of `trial_id` under `parent_run_id`: found again on resume, else created."""
    found = find_trial_run(client, experiment_id, parent_run_id, trial_id)
    if found is not None:
        reopen(client, found)
        return found.info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"trial-{trial_id}",
        tags={
            runs.ROLE: runs.TRIAL_ROLE,
            runs.TRIAL_ID_TAG: trial_id,
            runs.PARENT_TAG: parent_run_id,
            **tags,
        },
    )
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def priced_out_run(
    client: MlflowClient,
    experiment_id: str,
    *,
    parent_run_id: str,
    trial_id: str,
    params: dict[str, Any],
    price: dict[str, float],
    message: str,
) -> str:
    """The run of a configuration the driver priced out of the sweep's budget: its params,
    its price as metrics, FAILED with failure_reason=over_budget and the bound it broke.
    Found again (not duplicated) when a resumed searcher prices the same trial id."""
    run_id = child_run(
        client,
        experiment_id,
        parent_run_id=parent_run_id,
        trial_id=trial_id,
        params=params,
        tags={runs.PRICED_OUT_TAG: "true"},
    )
    client.log_batch(run_id, metrics=_metrics(price, 0))
    client.set_tag(run_id, runs.FAILURE_TAG, runs.OVER_BUDGET)
    client.set_tag(run_id, runs.FAILURE_MESSAGE_TAG, message[:5000])
    set_status(client, run_id, "FAILED")
    return run_id


def reopen(client: MlflowClient, run: Any) -> None:
    """A run resumed: RUNNING again, its `interrupted` tag removed."""
    if run.info.status != "RUNNING":
        client.update_run(run.info.run_id, status="RUNNING")
    if runs.INTERRUPTED_TAG in run.data.tags:
        client.delete_tag(run.info.run_id, runs.INTERRUPTED_TAG)


def mark_interrupted(client: MlflowClient, experiment_id: str, sweep_run_id: str) -> int:
    """The sweep run and its unfinished (RUNNING) trial runs KILLED with interrupted=true;
    returns how many trial runs were unfinished."""
    unfinished = [
        r
        for r in runs.trial_runs(client, experiment_id, sweep_run_id)
        if r.info.status == "RUNNING"
    ]
    for run_id in [r.info.run_id for r in unfinished] + [sweep_run_id]:
        client.set_tag(run_id, runs.INTERRUPTED_TAG, "true")
        set_status(client, run_id, "KILLED")
    return len(unfinished)


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    flat = flatten(params)
    items = [Param(k, str(v)[:6000]) for k, v in sorted(flat.items())]
    for i in range(0, len(items), MAX_BATCH):
        client.log_batch(run_id, params=items[i : i + MAX_BATCH])


def set_status(client: MlflowClient, run_id: str, status: str) -> None:
    """Close a run with FINISHED, FAILED or KILLED (no-op if it already has that status)."""
    if client.get_run(run_id).info.status != status:
        client.set_terminated(run_id, status=status)


class NullTracker:
    """What ranks other than 0 get: every call does nothing."""

    def log_start(self, info: dict[str, Any]) -> None:
        pass

    earlier_wall_hours = 0.0

    def log_epoch(self, metrics: dict[str, Any], compute: dict[str, float] | None = None) -> None:
        pass

    def log_compute(self, hours: dict[str, float]) -> None:
        pass

    def log_final(self, result: dict[str, Any], artifacts: Path | None) -> None:
        pass

    def log_failure(self, reason: str, message: str) -> None:
        pass

    def log_attempt(self, first_epoch: int, node_id: str) -> None:
        pass


class RunTracker(NullTracker):
    """Rank 0's writer to the trial's child run. Idempotent on resume: an epoch whose
    metrics are already in the run is not logged twice."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        history = self.client.get_metric_history(run_id, "train_loss")
        self.logged_epochs = {m.step for m in history}
        # The hours are cumulative, one point per log: a restart carries on from the last.
        wall = self.client.get_metric_history(run_id, WALL_HOURS)
        self.earlier_wall_hours = max((m.value for m in wall), default=0.0)
        self.compute_step = len(wall)

    def log_start(self, info: dict[str, Any]) -> None:
        record_environment(self.client, self.run_id)  # of the node rank 0 runs on
        tags = {
            "device": str(info["device"]),
            "precision": str(info["precision"]),
            "split_hash": str(info["split_hash"]),
            "latency_shared": str(info["latency_shared"]).lower(),
            "world_size": str(info["world_size"]),
        }
        self.client.log_batch(
            self.run_id,
            tags=[RunTag(k, v) for k, v in tags.items()],
            metrics=_metrics(
                {
                    **{k: info[k] for k in START_METRICS},
                    # the split sizes: the committee's default tolerance rests on n_val
                    **{k: info.get(k) for k in ("n_val", "n_test")},
                },
                step=0,
            ),
        )

    def log_epoch(self, metrics: dict[str, Any], compute: dict[str, float] | None = None) -> None:
        """The epoch's metrics (unless an earlier attempt logged them) and, in the same
        call, the compute held so far."""
        epoch = int(metrics["epoch"])
        batch = (
            []
            if epoch in self.logged_epochs
            else _metrics({k: metrics[k] for k in EPOCH_METRICS if k in metrics}, epoch)
        )
        if compute is not None:
            batch += self._compute_points(compute)
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)
        self.logged_epochs.add(epoch)

    def log_compute(self, hours: dict[str, float]) -> None:
        self.client.log_batch(self.run_id, metrics=self._compute_points(hours))

    def _compute_points(self, hours: dict[str, float]) -> list[Metric]:
        self.compute_step += 1
        return _metrics(hours, step=self.compute_step)

    def tag(self, key: str) -> str | None:
        return self.client.get_run(self.run_id).data.tags.get(key)

    def log_final(self, result: dict[str, Any], artifacts: Path | None) -> None:
        """The final metrics and artifacts, once: a resumed run that already logged them
        (it crashed in the analysis after) logs nothing."""
        if self.tag(runs.FINAL_LOGGED_TAG) == "true":
            return
        final = {
            k: v
            for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        final = {f"final_{k}" if k == "epochs" else k: v for k, v in final.items()}
        # The last epoch's report already carried the final val_accuracy (of the weights
        # kept, see cct.engine); logging it again would give that step two values.
        final = {k: v for k, v in final.items() if k not in EPOCH_METRICS}
        self.client.log_batch(self.run_id, metrics=_metrics(final, step=int(result["epochs"])))
        if artifacts is not None:
            logits, checkpoint = artifacts / runs.LOGITS_FILE, artifacts / runs.CHECKPOINT_DIR
            self.client.log_artifact(self.run_id, str(logits), runs.LOGITS_DIR)
            self.client.log_artifacts(self.run_id, str(checkpoint), runs.CHECKPOINT_DIR)
        self.client.set_tag(self.run_id, runs.FINAL_LOGGED_TAG, "true")

    def log_failure(self, reason: str, message: str) -> None:
        """Close the run FAILED with the reason as a tag: a failure no retry can heal."""
        self.client.set_tag(self.run_id, runs.FAILURE_TAG, reason)
        self.client.set_tag(self.run_id, runs.FAILURE_MESSAGE_TAG, message[:5000])
        set_status(self.client, self.run_id, "FAILED")

    def log_attempt(self, first_epoch: int, node_id: str) -> None:
        """One point per (re)start of the trial's workers: the first epoch it trained and,
        as a tag, the Ray node of rank 0. A restart after a lost worker or node shows up as
        a second point whose epoch continues from the checkpoint instead of starting at 1."""
        attempt = len(self.client.get_metric_history(self.run_id, "attempt_first_epoch"))
        self.client.log_batch(
            self.run_id,
            metrics=_metrics({"attempt_first_epoch": first_epoch}, step=attempt),
            tags=[RunTag("ray_node_id", node_id)],
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _metrics(values: dict[str, Any], step: int) -> list[Metric]:
    now = _now_ms()
    return [
        Metric(k, float(v), now, step)
        for k, v in values.items()
        if v is not None and math.isfinite(float(v))
    ]


def provenance_tags() -> dict[str, str]:
    """git_commit and git_dirty of the code that runs: from git, or on a cluster synced without
    .git from the provenance file deploy/up.sh wrote (git_provenance says which)."""
    found = source_provenance()
    dirty = found["dirty"]
    return {
        "git_commit": str(found["commit"] or "unknown"),
        "git_dirty": "unknown" if dirty is None else str(dirty).lower(),
        "git_provenance": str(found["source"]),
    }


def library_versions() -> dict[str, str]:

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "ray", "optuna", "mlflow", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


__all__ = [
    "NullTracker",
    "RunTracker",
    "child_run",
    "create_parent_run",
    "default_tracking_uri",
    "find_trial_run",
    "ensure_experiment",
    "latest_sweep_run",
    "library_versions",
    "provenance_tags",
    "mark_interrupted",
    "reopen",
    "set_status",
]


def record_environment(client: MlflowClient, run_id: str) -> list[str] | None:
    """Log this process's environment (and the source tree's uncommitted diff) on the run;
    for a run that recorded one before, also what changed since (both stay recorded)."""
    env, diff = environment.capture(), environment.uncommitted_diff()
    tags = client.get_run(run_id).data.tags
    latest, starts = tags.get(runs.ENV_LATEST_TAG), int(tags.get(runs.ENV_STARTS_TAG, "0"))
    previous = _load_json(client, run_id, f"{latest}/{runs.ENV_FILE}") if latest else None
    folder = runs.ENV_DIR if starts == 0 else f"{runs.ENV_DIR}/start-{starts + 1}"
    client.log_dict(run_id, env, f"{folder}/{runs.ENV_FILE}")
    if diff:
        client.log_text(run_id, diff, f"{folder}/{runs.ENV_DIFF}")
    client.set_tag(run_id, runs.ENV_LATEST_TAG, folder)
    client.set_tag(run_id, runs.ENV_STARTS_TAG, str(starts + 1))
    return None if previous is None else environment.changes(previous, env)


def describe_changes(changed: list[str], shown: int = 6) -> str:
    more = f", and {len(changed) - shown} more" if len(changed) > shown else ""
    return ", ".join(changed[:shown]) + more


def _load_json(client: MlflowClient, run_id: str, path: str) -> dict | None:
    runs.no_progress_bars()  # none in the sweep's console or a worker's log for one small file
    with tempfile.TemporaryDirectory() as d:
        try:
            return json.loads(Path(client.download_artifacts(run_id, path, d)).read_text())
        except (OSError, ValueError, MlflowException):
            return None  # a record that cannot be read is no reference
