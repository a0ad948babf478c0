"""The per-worker loop Ray Train runs on every rank of a trial: rebuild the config, resume
from Ray's checkpoint if there is one, and run the `cct` trainer with callbacks that report
to Ray (every rank, every epoch) and log to MLflow (rank 0 only)."""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import ray.train
from ray.train import Checkpoint

from analysis.runs import CHECKPOINT_DIR
from cct.config import TrainConfig
from cct.engine import fit
from orchestrator.cluster import this_node_id
from orchestrator.tracking import NullTracker, RunTracker


class RayCallbacks:
    def __init__(self, tracker: NullTracker, analysis: dict[str, Any] | None) -> None:
        self.tracker, self.analysis = tracker, analysis
        self.first_epoch: int | None = None

    def on_start(self, info: dict[str, Any]) -> None:
        self.tracker.log_start(info)

    def on_epoch_end(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        # MLflow first: if we die between the two, the epoch is re-run on resume and the
        # tracker skips it (already logged) instead of leaving a gap.
        if self.first_epoch is None:
            self.first_epoch = int(metrics["epoch"])
            self.tracker.log_attempt(self.first_epoch, this_node_id())
        self.tracker.log_epoch(metrics)
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        ray.train.report(
            numeric, checkpoint=Checkpoint.from_directory(str(checkpoint)) if checkpoint else None
        )

    def on_end(self, result: dict[str, Any], artifacts: Path | None) -> None:
        self.tracker.log_final(result, artifacts)
        if artifacts is not None and self.analysis is not None:
            run_analysis(self.tracker, artifacts / CHECKPOINT_DIR, self.analysis)


def run_analysis(tracker: NullTracker, checkpoint: Path, options: dict[str, Any]) -> None:
    """SHP/SNR analysis of the final model, logged under `shp/` in the trial's run."""
    from analysis.shp import analyze_checkpoint, log_to_mlflow

    with tempfile.TemporaryDirectory(prefix="shp-") as out:
        summary = analyze_checkpoint(checkpoint, out_dir=Path(out), **options)
        if isinstance(tracker, RunTracker):
            log_to_mlflow(summary, Path(out), run_id=tracker.run_id, client=tracker.client)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = TrainConfig.from_dict(config["train_config"])
    rank = ray.train.get_context().get_world_rank()
    tracker = RunTracker(config["tracking_uri"], config["run_id"]) if rank == 0 else NullTracker()
    callbacks = RayCallbacks(tracker, config.get("analysis"))
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else nullcontext(None) as folder:
        fit(
            cfg,
            callbacks=callbacks,
            resume_from=Path(folder) if folder else None,
            latency_shared=config.get("latency_shared", False),
        )
