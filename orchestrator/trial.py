"""The Tune function trainable: one call per trial. It finds (or creates) the trial's MLflow
child run and runs a Ray Train `TorchTrainer` of the `cct` trainer — the Ray Train V2
pattern, since `Tuner(TorchTrainer(...))` no longer works."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch.distributed
from mlflow.tracking import MlflowClient
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from orchestrator.cost import Held
from orchestrator.phase_marks import Marks
from orchestrator.tracking import child_run
from orchestrator.worker.loop import train_loop_per_worker
from orchestrator.worker.tune_report import HoldingTuneReport
from search_spaces import SweepSpec, config_for_trial

# Ray Train V2 restores a run only when its name and storage path match: both are derived
# from the trial id, never from a timestamp, or a resumed trial would restart at epoch 0.
TRAIN_RUN_PREFIX = "train-"


@dataclass(frozen=True)
class SweepContext:
    """What every trial needs from the driver; small and picklable."""

    spec: SweepSpec
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    train_storage: str  # where the inner Train runs keep their checkpoints
    latency_shared: bool
    max_worker_failures: int = 3
    simulated_gpus: bool = False  # $CCT_SIMULATED_GPUS=1 for the driver: logical GPUs


_TRIALS_IN_PROCESS = [0]


def first_trial_in_process() -> bool:
    """True for the first trial this process runs: Tune reuses a trial actor for the next
    trial (the driver's `reuse_actors`), and only the first paid for its start."""
    _TRIALS_IN_PROCESS[0] += 1
    return _TRIALS_IN_PROCESS[0] == 1


def backend_for(use_gpu: bool) -> str:
    # NCCL for GPU ranks; gloo on CPU, and wherever torch was built without NCCL (a CPU
    # build driving logical GPUs in a simulated cluster).
    return "nccl" if use_gpu and torch.distributed.is_nccl_available() else "gloo"


def run_trial(params: dict[str, Any], ctx: SweepContext) -> None:
    marks = Marks(time.time())
    marks.mark("trial_entered", marks.t0)
    if first_trial_in_process():
        marks.mark_process_start("actor_process_started")
    spec = ctx.spec
    trial_id = tune.get_context().get_trial_id()
    cfg = config_for_trial(spec, params)
    client = MlflowClient(ctx.tracking_uri)
    run_id = child_run(
        client,
        ctx.experiment_id,
        parent_run_id=ctx.parent_run_id,
        trial_id=trial_id,
        params={**cfg.to_dict(), "searched": dict(params)},
        tags={"sweep": spec.name, "trial_name": tune.get_context().get_trial_name()},
    )
    marks.mark("run_ready")
    res = spec.resources
    use_gpu = res.gpus_per_worker > 0
    per_worker = {"CPU": res.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    analysis = None if spec.analysis.blocks == "none" else dataclasses.asdict(spec.analysis)
    sampled = spec.system_metrics.active(res.gpus_per_worker)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train_config": cfg.to_dict(),
            "tracking_uri": ctx.tracking_uri,
            "run_id": run_id,
            "analysis": analysis,
            "latency_shared": ctx.latency_shared,
            "objectives": [name for name, _ in spec.objectives],
            "gpus_per_worker": res.gpus_per_worker,
            "held": dataclasses.asdict(Held.of(res)),
            "simulated_gpus": ctx.simulated_gpus,
            "system_metrics": dataclasses.asdict(spec.system_metrics) if sampled else None,
            "phase_t0": marks.t0,
            "budget": spec.budget.bounds(),  # its latency bound is checked in the trial
        },
        torch_config=TorchConfig(backend=backend_for(use_gpu)),
        scaling_config=ScalingConfig(
            num_workers=res.workers_per_trial, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=f"{TRAIN_RUN_PREFIX}{trial_id}",
            storage_path=ctx.train_storage,
            callbacks=[HoldingTuneReport()],
            checkpoint_config=CheckpointConfig(num_to_keep=spec.keep_checkpoints),
            failure_config=FailureConfig(max_failures=ctx.max_worker_failures),
        ),
    )
    marks.mark("fit_called")
    trainer.fit()
    marks.mark("fit_returned")
    marks.log(client, run_id)
