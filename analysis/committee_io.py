"""MLflow side of the committee CLI: find the sweep, load its trials as Candidates, log the
committee run. Explicit `MlflowClient(tracking_uri)` everywhere, as in orchestrator/tracking.

Every failure a user can cause (unknown experiment or run, missing logits) becomes a
CommitteeError naming the run, so the CLI can answer with one line and exit 2.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis.committee_select import Candidate, CommitteeError

LOGITS_ARTIFACT = "logits/logits.npz"
SHP_SUMMARY_ARTIFACT = "shp/summary.json"
CHECKPOINT_ARTIFACT = "checkpoint"
LOGITS_KEYS = (
    "val_logits",
    "val_ids",
    "val_labels",
    "test_logits",
    "test_ids",
    "test_labels",
    "split_hash",
)


def default_tracking_uri(cwd: Path | None = None) -> str:
    """The store every command uses unless told otherwise: $MLFLOW_TRACKING_URI (set on a
    cluster's head by ray_cluster.yaml), else mlflow.db in the current folder as an absolute
    URI. The one copy of this rule: the orchestrator imports it from here."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{(cwd or Path.cwd()).resolve() / 'mlflow.db'}"


def open_store(tracking_uri: str) -> MlflowClient:
    """A client on an existing store: a missing sqlite file is an error, not a new store."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise CommitteeError(f"no MLflow store at {tracking_uri} (give --tracking-uri)")
    return MlflowClient(tracking_uri)


def find_sweep(
    client: MlflowClient, *, experiment: str | None, sweep_run_id: str | None
) -> tuple[str, Any]:
    """(experiment id, parent run): the given sweep run, else the experiment's latest one."""
    if sweep_run_id is not None:
        try:
            run = client.get_run(sweep_run_id)
        except MlflowException:
            raise CommitteeError(f"unknown sweep run {sweep_run_id!r}") from None
        if run.data.tags.get("role") != "sweep":
            raise CommitteeError(
                f"run {sweep_run_id} is not a sweep's parent run "
                f"(tag role={run.data.tags.get('role')!r}, expected 'sweep')"
            )
        return run.info.experiment_id, run
    exp = client.get_experiment_by_name(experiment or "")
    if exp is None or exp.lifecycle_stage == "deleted":
        raise CommitteeError(f"unknown experiment {experiment!r}")
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.role = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise CommitteeError(f"experiment {experiment!r} has no sweep run (tag role=sweep)")
    return exp.experiment_id, runs[0]


def trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.role = 'trial'",
        max_results=10_000,
    )
    return sorted(runs, key=lambda r: r.info.run_id)  # a fixed order: selection ties


def eligible(run: Any, include_stopped: bool) -> bool:
    """Finished trials; scheduler-stopped ones (KILLED + stopped_early) only when asked."""
    if run.info.status == "FINISHED":
        return True
    stopped = run.data.tags.get("stopped_early") == "true" and run.info.status == "KILLED"
    return include_stopped and stopped


def architecture(params: dict[str, str]) -> dict[str, Any]:
    """The model's resolved architecture from the flat `model.*` params: "None" means the
    variant's own value (cct/models/registry.py), filled in from the variant table."""
    from cct.models.registry import VARIANTS  # plain data; no model is built

    raw = {k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")}
    out: dict[str, Any] = dict(VARIANTS.get(raw.get("variant", ""), {}))
    out["variant"] = raw.get("variant")
    for key, text in raw.items():
        if key != "variant" and text not in ("None", ""):
            out[key] = _number(text)
    if out.get("head_dim") is None and out.get("num_heads"):
        width = out.get("attn_dim") or out.get("embed_dim")
        out["head_dim"] = int(width) // int(out["num_heads"]) if width else None
    return {
        k: out.get(k)
        for k in ("variant", "num_heads", "head_dim", "embed_dim", "conv_blocks", "depth")
    }


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def load_candidate(client: MlflowClient, run: Any, workdir: Path) -> Candidate:
    """A trial run as a Candidate: its logits.npz (required) and SHP label sets (optional)."""
    run_id = run.info.run_id
    dst = workdir / run_id
    dst.mkdir(parents=True, exist_ok=True)
    try:
        path = client.download_artifacts(run_id, LOGITS_ARTIFACT, str(dst))
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in LOGITS_KEYS}
    except (MlflowException, OSError, KeyError, ValueError) as e:
        raise CommitteeError(
            f"run {run_id} has no usable {LOGITS_ARTIFACT} ({type(e).__name__}: {e})"
        ) from None
    return Candidate(
        run_id=run_id,
        arch=architecture(run.data.params),
        val_logits=arrays["val_logits"],
        val_labels=arrays["val_labels"],
        val_ids=arrays["val_ids"],
        test_logits=arrays["test_logits"],
        test_labels=arrays["test_labels"],
        test_ids=arrays["test_ids"],
        split_hash=str(arrays["split_hash"]),
        label_sets=_label_sets(client, run_id, dst),
        info={
            "trial_id": run.data.tags.get("trial_id"),
            "status": run.info.status,
            "checkpoint_uri": f"{run.info.artifact_uri.rstrip('/')}/{CHECKPOINT_ARTIFACT}",
            "checkpoint": f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}",
        },
    )


def _label_sets(client: MlflowClient, run_id: str, dst: Path) -> tuple[frozenset[int], ...] | None:
    """Every analysed head's label set (blocks with unit "head"), or None without SHP output."""
    try:
        path = client.download_artifacts(run_id, SHP_SUMMARY_ARTIFACT, str(dst))
        summary = json.loads(Path(path).read_text())
    except (MlflowException, OSError, ValueError):
        return None
    sets = [
        frozenset(int(x) for x in head)
        for block in summary.get("blocks", [])
        if block.get("unit") == "head"
        for head in block.get("label_sets") or []
    ]
    return tuple(sets) or None


def start_committee_run(
    client: MlflowClient, experiment_id: str, *, sweep_name: str, sweep_run_id: str
) -> str:
    """A new run in the sweep's experiment tagged role=committee (and committee=true)."""
    run = client.create_run(
        experiment_id,
        run_name=f"committee-{sweep_name}",
        tags={
            "role": "committee",
            "committee": "true",
            "sweep": sweep_name,
            "sweep_run_id": sweep_run_id,
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
    client.log_batch(
        run_id,
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        metrics=[Metric(k, float(v), _now_ms(), 0) for k, v in metrics.items()],
    )
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status="FINISHED")


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def scratch() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="cct-committee-")
