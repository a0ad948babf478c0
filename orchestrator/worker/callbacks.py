"""The callbacks the `cct` trainer calls on every rank of a trial: each epoch goes to MLflow
(rank 0's tracker; other ranks hold a do-nothing one) and then to Ray Train, and the end of
training runs the SHP analysis before Tune hears the last epoch."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed
from ray.train import Checkpoint

from analysis.runs import ANALYSIS_LOGGED_TAG, CHECKPOINT_DIR
from analysis.shp.reference import run_reference
from cct.data import DeviceData
from orchestrator.cluster import this_node_id
from orchestrator.cost import ComputeClock
from orchestrator.phase_marks import Marks
from orchestrator.tracking import NullTracker, RunTracker
from orchestrator.worker.tune_report import HELD  # the last epoch's report, held back from Tune


class OverBudget(RuntimeError):
    """The trial's model is slower than the sweep's budget.max_latency_ms: not trained."""


class RayCallbacks:
    def __init__(
        self,
        tracker: NullTracker,
        analysis: dict[str, Any] | None,
        data: DeviceData,
        clock: ComputeClock | None = None,
        marks: Marks | None = None,
        max_latency_ms: float | None = None,
    ) -> None:
        self.tracker, self.analysis, self.data, self.clock = tracker, analysis, data, clock
        self.marks = marks or Marks(time.time())
        self.last_report: dict[str, Any] = {}
        self.max_latency_ms = max_latency_ms
        self.measured: dict[str, float] = {}  # params, MACs, latency: what on_start heard

    def on_start(self, info: dict[str, Any]) -> None:
        self.tracker.log_start(info)
        # Before any epoch: an attempt that fails in its first one is counted too.
        self.tracker.log_attempt(int(info["first_epoch"]), this_node_id())
        self.marks.mark("model_ready")
        self.check_budget(info)

    def check_budget(self, info: dict[str, Any]) -> None:
        """Before the first training step: OverBudget on every rank when the slowest rank's
        batch-1 latency is above the bound (a resumed attempt has passed it already; the
        ranks agree, so none waits alone in a collective)."""
        self.measured = {k: float(info[k]) for k in ("params", "macs", "latency_ms")}
        if self.max_latency_ms is None or int(info["first_epoch"]) != 1:
            return
        latency = self.measured["latency_ms"]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([latency], dtype=torch.float64, device=self.data.train_x.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            latency = float(t.item())
        self.measured["latency_ms"] = latency
        if latency > self.max_latency_ms:
            raise OverBudget(
                f"latency_ms {latency:.4g} above budget.max_latency_ms"
                f" {self.max_latency_ms:.4g} (batch 1, measured on this trial's device"
                " before its first step): not trained"
            )

    def on_epoch_end(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        # MLflow first: if we die between the two, the epoch is re-run on resume and the
        # tracker skips it (already logged) instead of leaving a gap.
        self.tracker.log_epoch(metrics, self.clock.hours() if self.clock else None)
        report = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if metrics.get("final"):
            self.last_report = report
            report = {**report, HELD: 1}
        ray.train.report(
            report, checkpoint=Checkpoint.from_directory(str(checkpoint)) if checkpoint else None
        )
        self.marks.mark("last_epoch_done" if metrics.get("final") else "first_epoch_done")

    def on_end(self, result: dict[str, Any], artifacts: Path | None) -> None:
        # The last epoch is checkpointed and reported to Ray Train by now: a crash below
        # resumes from it without training, and each step skips what it already logged.
        self.tracker.log_final(result, artifacts)
        done = isinstance(self.tracker, RunTracker) and (
            self.tracker.tag(ANALYSIS_LOGGED_TAG) == "true"
        )
        if artifacts is not None and self.analysis is not None and not done:
            options = {k: v for k, v in self.analysis.items() if k != "reference"}
            run_analysis(self.tracker, artifacts / CHECKPOINT_DIR, options, self.data)
            run_reference(self.tracker, artifacts / CHECKPOINT_DIR, self.analysis, self.data)
        self.marks.mark("final_done")
        if isinstance(self.tracker, RunTracker):
            self.marks.log(self.tracker.client, self.tracker.run_id)
        ray.train.report(self.last_report)  # every rank: now Tune hears the last epoch


def run_analysis(
    tracker: NullTracker, checkpoint: Path, options: dict[str, Any], data: DeviceData
) -> None:
    """SHP/SNR analysis of the final model on the training run's own data (already on the
    device), logged under `shp/` in the trial's run."""
    # deferred: analysis.shp (about 2.6 s with matplotlib) is imported only by a trial that analyses
    from analysis.shp import ShpOptions, analyze_checkpoint, log_to_mlflow

    settings = dict(options)  # the sweep file's `analysis:` section
    blocks = settings.pop("blocks")
    with tempfile.TemporaryDirectory(prefix="shp-") as out:
        summary = analyze_checkpoint(
            checkpoint,
            out_dir=Path(out),
            blocks=blocks,
            options=ShpOptions(**settings),
            data=data,
            device=data.train_x.device,
        )
        if isinstance(tracker, RunTracker):
            log_to_mlflow(summary, Path(out), run_id=tracker.run_id, client=tracker.client)
            tracker.client.set_tag(tracker.run_id, ANALYSIS_LOGGED_TAG, "true")
