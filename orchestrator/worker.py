"""The per-worker loop Ray Train runs on every rank of a trial: rebuild the config, resume
from Ray's checkpoint if there is one, and run the `cct` trainer with callbacks that report
to Ray (every rank, every epoch) and log to MLflow (rank 0 only)."""

from __future__ import annotations

import os
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint

from analysis.runs import CHECKPOINT_DIR
from cct.config import TrainConfig
from cct.engine import fit
from orchestrator.cluster import this_node_id
from orchestrator.tracking import NullTracker, RunTracker

SIMULATED_GPUS_ENV = "CCT_SIMULATED_GPUS"  # "1": Ray's GPUs are logical (tests on CPU)


class GpuUnusable(RuntimeError):
    """Ray gave this worker a GPU that CUDA cannot use (no driver, a mismatched one)."""


def assigned_device(gpu_ids: list[str], *, simulated: bool) -> torch.device:
    """The device this worker trains on, from the GPU ids Ray assigned it.

    No GPU assigned: the CPU, even on a GPU machine (Ray leaves CUDA_VISIBLE_DEVICES alone
    for workers given no GPU, so CUDA would still show the node's GPUs, reserved by
    others). A GPU assigned but unusable: fail now, rather than train on the CPU alone or
    crash later in NCCL. `simulated` (logical GPUs): the CPU underneath.
    """
    if not gpu_ids or simulated:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise GpuUnusable(
            f"Ray assigned GPU {','.join(gpu_ids)} to this worker on node "
            f"{ray.util.get_node_ip_address()}, but CUDA is unusable there (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}): check the "
            f"node's NVIDIA driver against that build; {SIMULATED_GPUS_ENV}=1 is only for "
            "clusters whose GPUs are logical"
        )
    return ray.train.torch.get_device()


def simulated_gpus(config: dict[str, Any]) -> bool:
    """Set for the sweep driver (passed in `config`) or in this node's environment."""
    return bool(config.get("simulated_gpus")) or os.environ.get(SIMULATED_GPUS_ENV) == "1"


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
    gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    device = assigned_device(gpu_ids, simulated=simulated_gpus(config))
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else nullcontext(None) as folder:
        fit(
            cfg,
            callbacks=callbacks,
            resume_from=Path(folder) if folder else None,
            latency_shared=config.get("latency_shared", False),
            device=device,
        )
