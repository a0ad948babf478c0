"""The analysis and MLflow: fetch a run's checkpoint, log results back under `shp/`.

Only MLflow's client API with an explicit run id: no reliance on a global active run
beyond picking it up when no run id is given.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from analysis.runs import CHECKPOINT_DIR, SHP_BLOCK_METRICS, shp_dir, shp_metric


def download_checkpoint(run_id: str, dst: Path, tracking_uri: str | None = None) -> Path:
    """Download the run's `checkpoint/` artifact folder into `dst`; returns its local path."""
    client = MlflowClient(tracking_uri=tracking_uri)
    client.get_run(run_id)  # a clear MlflowException for an unknown run id
    local = client.download_artifacts(run_id, CHECKPOINT_DIR, str(dst))
    path = Path(local)
    if not (path / "model.json").is_file():
        raise FileNotFoundError(
            f"run {run_id} has no checkpoint: artifact '{CHECKPOINT_DIR}/model.json' missing"
        )
    return path


def log_to_mlflow(
    summary: dict[str, Any],
    out_dir: Path,
    run_id: str | None = None,
    *,
    tracking_uri: str | None = None,
    client: MlflowClient | None = None,
) -> str:
    """Log the folder `out_dir` under artifact path `shp/` and the per-block metrics
    shp_readout_accuracy, shp_snr_labels, shp_snr_area (step = block index; nulls skipped)
    to `run_id`, or to the active run when None. An analysis whose matrices came from any
    split but validation goes to its own folder and names (`shp_test/`, shp_test_*), never
    over the validation analysis that committee selection reads. `client` (or else `tracking_uri`, or else
    MLflow's current tracking URI) says which store. Returns the run id."""
    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise ValueError("log_to_mlflow: no run_id given and no active MLflow run")
        run_id = active.info.run_id
    client = client or MlflowClient(tracking_uri=tracking_uri)
    heldout = str(summary.get("heldout") or "unknown")
    client.log_artifacts(run_id, str(out_dir), artifact_path=shp_dir(heldout))
    now = int(time.time() * 1000)
    metrics = [
        Metric(shp_metric(name, heldout), float(block[key]), now, int(block["block"]))
        for block in summary.get("blocks", [])
        for key, name in SHP_BLOCK_METRICS.items()
        if block.get(key) is not None
    ]
    for i in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    return run_id
