"""The committee and MLflow: a sweep's trial runs as Candidates, and the committee's own run.

Reads and writes through the run contract (analysis/runs.py). Every failure a user can cause
(unknown experiment or run, missing logits, a split mismatch) raises CommitteeError or
RunLookupError naming the run, so the CLI answers with one line and exits 2.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis import runs
from analysis.committee.select import Candidate, CommitteeError, accuracy, check_same_split
from analysis.progress import progress
from analysis.shp.summary import read_summary


def sweep_candidates(
    client: MlflowClient,
    sweep: Any,
    *,
    members: Sequence[str] | None,
    include_stopped: bool,
    workdir: Path,
) -> list[Candidate]:
    """The sweep run's finished trials (or exactly `members`) as Candidates, checked to
    share one validation/test split."""
    trial_runs = runs.trial_runs(client, sweep.info.experiment_id, sweep.info.run_id)
    if members:
        if len(set(members)) != len(members):
            raise CommitteeError(f"--members {','.join(members)!r}: a run is listed twice")
        by_id = {r.info.run_id: r for r in trial_runs}
        unknown = [w for w in members if w not in by_id]
        if unknown:
            raise CommitteeError(
                f"--members: not trial runs of sweep run {sweep.info.run_id}: {', '.join(unknown)}"
            )
        trial_runs = [by_id[w] for w in members]
    else:
        trial_runs = [r for r in trial_runs if runs.eligible(r, include_stopped)]
    if not trial_runs:
        raise CommitteeError(
            f"sweep run {sweep.info.run_id} has no finished trial runs"
            + ("" if include_stopped else " (early-stopped ones need --include-stopped)")
        )
    candidates = [
        load_candidate(client, r, workdir)
        for r in progress(trial_runs, "reading the trials' logits", unit="run")
    ]
    best = int(np.argmax([accuracy(c.val_logits, c.val_labels) for c in candidates]))
    check_same_split(candidates, reference=best)
    return candidates


def load_candidate(client: MlflowClient, run: Any, workdir: Path) -> Candidate:
    """A trial run as a Candidate: its logits (required) and SHP label sets (optional)."""
    run_id = run.info.run_id
    try:
        path = runs.download(client, run, runs.LOGITS_ARTIFACT, workdir)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in runs.LOGITS_KEYS}
    except (MlflowException, OSError, KeyError, ValueError) as e:
        raise CommitteeError(
            f"run {run_id} has no usable {runs.LOGITS_ARTIFACT} ({type(e).__name__}: {e})"
        ) from None
    return Candidate(
        run_id=run_id,
        arch=runs.architecture(run.data.params),
        val_logits=arrays["val_logits"],
        val_labels=arrays["val_labels"],
        val_ids=arrays["val_ids"],
        test_logits=arrays["test_logits"],
        test_labels=arrays["test_labels"],
        test_ids=arrays["test_ids"],
        split_hash=str(arrays["split_hash"]),
        label_sets=_label_sets(client, run, workdir),
        info={
            "trial_id": run.data.tags.get(runs.TRIAL_ID_TAG),
            "status": run.info.status,
            "checkpoint_uri": runs.checkpoint_uri(run),
            "checkpoint": f"runs:/{run_id}/{runs.CHECKPOINT_DIR}",
        },
    )


def _label_sets(client: MlflowClient, run: Any, workdir: Path) -> tuple[frozenset[int], ...] | None:
    """Every analysed head's label set (all head blocks), or None without SHP output. A
    summary whose matrices did not come from the validation split is refused: its label
    sets would carry test data into selection. `run`: a Run, or a run id (runs.download)."""
    run_id = run if isinstance(run, str) else run.info.run_id
    try:
        summary = read_summary(runs.download(client, run, runs.SHP_SUMMARY_ARTIFACT, workdir))
    except (MlflowException, OSError, ValueError):
        return None
    if not summary.on_validation:
        raise CommitteeError(
            f"run {run_id}: {runs.SHP_SUMMARY_ARTIFACT} has held-out split "
            f"{summary.heldout!r}, not 'val'; selection may read validation only: rerun "
            f"python -m analysis.shp --run-id {run_id} (validation is its default)"
        )
    sets = [frozenset(head) for block in summary.head_blocks for head in block.label_sets]
    return tuple(sets) or None


def start_committee_run(
    client: MlflowClient, experiment_id: str, *, sweep_name: str, sweep_run_id: str
) -> str:
    """A new run in the sweep's experiment tagged role=committee (and committee=true)."""
    run = client.create_run(
        experiment_id,
        run_name=f"committee-{sweep_name}",
        tags={
            runs.ROLE: runs.COMMITTEE_ROLE,
            "committee": "true",
            runs.SWEEP_TAG: sweep_name,
            runs.SWEEP_RUN_TAG: sweep_run_id,
        },
    )
    return run.info.run_id


def finish_committee_run(
    client: MlflowClient,
    run_id: str,
    *,
    params: dict[str, str],
    metrics: dict[str, float],
    artifacts: list[Path],
) -> None:
    """Log the committee's params, metrics (step 0) and files, then close the run."""
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
    )
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status="FINISHED")


def scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="cct-committee-")
