"""The per-worker loop Ray Train runs on every rank of a trial: rebuild the config, resume
from Ray's checkpoint if there is one, and run the `cct` trainer with callbacks that report
to Ray (every rank, every epoch) and log to MLflow (rank 0 only; every rank adds its own
system metrics when the sweep asks for them).

A failure no retry can heal (divergence, a model or batch the config cannot build, an
out-of-memory before the first step on a GPU of its own) ends the training function
normally with a failure record: Ray Train's failure policy retries every error it sees."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from mlflow.tracking import MlflowClient

from analysis.runs import FAILURE_MESSAGE_TAG, FAILURE_TAG, OVER_BUDGET
from cct import dist
from cct.config import ConfigError, TrainConfig
from cct.data import load_dataset
from cct.engine import OutOfMemoryAtStart, TrainingDiverged, fit
from orchestrator.cluster import this_node_id
from orchestrator.cost import ComputeClock, Held
from orchestrator.phase_marks import Marks
from orchestrator.tracking import NullTracker, RunTracker
from orchestrator.worker import system_metrics
from orchestrator.worker.callbacks import OverBudget, RayCallbacks
from orchestrator.worker.log import trial_log

FAILED = FAILURE_TAG  # in the one report of a trial that failed for good: its reason
OOM_RETRY_TAG = "oom_retry"  # set when a shared GPU's out-of-memory was retried once
OOM_WAIT_S = 600  # how long a retry waits for a neighbour to release its memory

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


def report_failure(
    tracker: NullTracker,
    reason: str,
    message: str,
    objectives: list[str],
    measured: dict[str, float] | None = None,
) -> None:
    """The trial's end, on every rank: the MLflow run FAILED with the reason (rank 0) and one
    report that tells Tune and its searcher it failed (the objectives as NaN: Tune checks
    every result carries them; over the budget, what was measured replaces them, so the
    searcher learns the constraint from real values)."""
    tracker.log_failure(reason, message)
    print(f"trial failed for good ({reason}), not retried: {message}", file=sys.stderr)
    values = {name: math.nan for name in objectives} | (measured or {})
    ray.train.report({**values, FAILED: reason, FAILURE_MESSAGE_TAG: message})


def failed_before(config: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when an earlier attempt of this trial recorded a failure no retry
    heals (a rank that ran out of memory alone, the other ranks waiting in a collective)."""
    tags = MlflowClient(config["tracking_uri"]).get_run(config["run_id"]).data.tags
    reason = tags.get(FAILURE_TAG)
    return (reason, tags.get(FAILURE_MESSAGE_TAG, "")) if reason else None


def out_of_memory(
    config: dict[str, Any], tracker: NullTracker, error: OutOfMemoryAtStart, world: int
) -> tuple[str, str] | None:
    """An out-of-memory before the first step. On a GPU of its own the model does not fit:
    (reason, message), or, with other ranks waiting in a collective, the reason recorded
    and the error raised (the restarted group reads it and stops at once). On a shared GPU
    a neighbour may hold the memory: raise, so Ray Train retries once, after waiting."""
    client = MlflowClient(config["tracking_uri"])
    run = client.get_run(config["run_id"])
    shared = config.get("gpus_per_worker", 1) < 1
    if shared and run.data.tags.get(OOM_RETRY_TAG) is None:
        free = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0
        client.set_tag(run.info.run_id, OOM_RETRY_TAG, str(free))
        print(f"out of memory on a shared GPU ({free} bytes free): retrying once", file=sys.stderr)
        raise error
    reason = ("out_of_memory", str(error))
    if world > 1:
        client.set_tag(run.info.run_id, FAILURE_TAG, reason[0])
        client.set_tag(run.info.run_id, FAILURE_MESSAGE_TAG, reason[1][:5000])
        raise error
    return reason


def wait_for_memory(config: dict[str, Any]) -> None:
    """Before the one retry of a shared GPU's out-of-memory: wait until more memory is free
    than when it failed (a neighbour released some), at most OOM_WAIT_S."""
    tags = MlflowClient(config["tracking_uri"]).get_run(config["run_id"]).data.tags
    if OOM_RETRY_TAG not in tags or not torch.cuda.is_available():
        return
    deadline = time.monotonic() + OOM_WAIT_S
    while torch.cuda.mem_get_info()[0] <= int(tags[OOM_RETRY_TAG]) and time.monotonic() < deadline:
        time.sleep(5)


@contextmanager
def sampling_system_metrics(config: dict[str, Any], device: torch.device) -> Iterator[None]:
    """This worker's system metrics sampled into the trial's run while the body runs, when
    the sweep asks for them: every rank, each under its node (orchestrator/worker/system_metrics.py);
    the training metrics stay rank 0's."""
    options = config.get("system_metrics")
    sampler = None
    if options:
        context = ray.train.get_context()
        sampler = system_metrics.start(
            tracking_uri=config["tracking_uri"],
            run_id=config["run_id"],
            interval_s=float(options["interval_s"]),
            node_id=this_node_id(),
            rank=context.get_world_rank(),
            node_keys=context.get_local_rank() == 0,  # the node's CPU and memory, once
            uuids=system_metrics.gpu_uuids(device),
        )
    try:
        yield
    finally:
        if sampler is not None:
            sampler.stop()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    marks = Marks(config.get("phase_t0", time.time()))
    marks.mark("worker_entered")
    marks.mark_process_start("worker_process_started")
    marks.mark("worker_imported", IMPORTED_AT)
    rank = ray.train.get_context().get_world_rank()
    with trial_log(config["tracking_uri"], config["run_id"], rank, this_node_id()):
        _train(config, rank, marks)


def _train(config: dict[str, Any], rank: int, marks: Marks) -> None:
    cfg = TrainConfig.from_dict(config["train_config"])
    world = ray.train.get_context().get_world_size()
    tracker = RunTracker(config["tracking_uri"], config["run_id"]) if rank == 0 else NullTracker()
    clock = None
    if rank == 0 and "held" in config:
        clock = ComputeClock(Held(**config["held"]), tracker.earlier_wall_hours)
    objectives = list(config.get("objectives", []))
    try:
        failure = failed_before(config)
        if failure is None:
            wait_for_memory(config)
            failure = _fit(cfg, config, tracker, world, clock, marks)
        if failure is not None:
            report_failure(tracker, *failure[:2], objectives, *failure[2:])
    finally:
        if clock is not None:  # the final evaluation and analysis, or up to a crash
            _log_compute(tracker, clock)


def _log_compute(tracker: NullTracker, clock: ComputeClock) -> None:
    try:
        tracker.log_compute(clock.hours())
    except Exception as e:  # never hide the error that brought us here
        print(f"could not log the trial's compute hours: {e}", file=sys.stderr)


def _fit(
    cfg: TrainConfig,
    config: dict[str, Any],
    tracker: NullTracker,
    world: int,
    clock: ComputeClock | None = None,
    marks: Marks | None = None,
) -> tuple[Any, ...] | None:
    """Run the trainer; (reason, message) for a failure no retry heals (plus what was
    measured, for a model over the budget), else None."""
    marks = marks or Marks(time.time())
    checkpoint = ray.train.get_checkpoint()
    callbacks = None
    try:
        gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        _, device = dist.setup(assigned_device(gpu_ids, simulated=simulated_gpus(config)))
        with sampling_system_metrics(config, device):
            data = load_dataset(cfg.data, device)  # the analysis reuses it
            marks.mark("data_ready")
            callbacks = RayCallbacks(
                tracker,
                config.get("analysis"),
                data,
                clock,
                marks,
                max_latency_ms=(config.get("budget") or {}).get("latency_ms"),
            )
            with checkpoint.as_directory() if checkpoint else nullcontext(None) as folder:
                fit(
                    cfg,
                    callbacks=callbacks,
                    resume_from=Path(folder) if folder else None,
                    data=data,
                    latency_shared=config.get("latency_shared", False),
                    device=device,
                )
    except OverBudget as e:
        return OVER_BUDGET, str(e), callbacks.measured if callbacks else {}
    except TrainingDiverged as e:
        return "diverged", str(e)
    except ConfigError as e:
        return "config", str(e)
    except GpuUnusable as e:  # the node's driver: another attempt on it fails the same way
        return "gpu_unusable", str(e)
    except OutOfMemoryAtStart as e:
        return out_of_memory(config, tracker, e, world)
    return None


# When this module's imports (torch, mlflow, cct) were done: a worker's phase mark.
IMPORTED_AT = time.time()
