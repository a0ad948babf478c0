"""Where one trial's wall time goes: marks (wall-clock `time.time()`) taken by the trial
function and by its rank-0 worker, logged once per attempt as metrics `phase.<mark>_s` on the
trial's MLflow run, in seconds since the trial function was entered (marks before it, the
trial actor's process start, are negative). Imports nothing heavy: every process of a trial
(driver, trial actor, Train controller, workers) may import it.

The marks, in the order a trial passes them (`python -m orchestrator.bench.overhead` prints the
gaps between them):

    actor_process_started   the trial actor's process (Tune) was spawned
    trial_entered           the Tune function trainable was called (imports done)
    run_ready               its MLflow child run found or created, params logged
    fit_called              TorchTrainer built, `fit` called
    worker_process_started  rank 0's process was spawned (controller, placement group
                            and worker actors started by then)
    worker_imported         orchestrator.worker.loop imported there (torch, mlflow, cct)
    worker_entered          the train function entered on rank 0 (process group set up)
    data_ready              the device chosen, the dataset loaded
    model_ready             the model built, its size and latency measured, run tagged
    first_epoch_done        the first epoch trained, evaluated and reported
    last_epoch_done         the last epoch, the final evaluation, its checkpoint reported
    final_done              final metrics, logits, checkpoint (and analysis) logged
    fit_returned            the worker group shut down, `fit` returned
    trial_closed            the driver closed the MLflow run: Tune saw the trial end
                            (the run's end time; read by the benchmark, never logged)

Each metric's timestamp is its mark's wall-clock time, so a reader can place the marks
against the run's start and end times.
"""

from __future__ import annotations

import os
import time
from typing import Any

from mlflow.entities import Metric

PREFIX = "phase."
ORDER = (
    "actor_process_started",
    "trial_entered",
    "run_ready",
    "fit_called",
    "worker_process_started",
    "worker_imported",
    "worker_entered",
    "data_ready",
    "model_ready",
    "first_epoch_done",
    "last_epoch_done",
    "final_done",
    "fit_returned",
    "trial_closed",
)


def metric_name(mark: str) -> str:
    return f"{PREFIX}{mark}_s"


def process_started() -> float | None:
    """This process's start, wall clock; None without psutil (Ray does not require it)."""
    try:
        # deferred: optional: Ray does not require psutil; the process-start mark is skipped without it
        import psutil
    except ImportError:
        return None
    return psutil.Process(os.getpid()).create_time()


class Marks:
    """Named wall-clock marks, relative to `t0` (the trial function's entry)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.at: dict[str, float] = {}

    def mark(self, name: str, at: float | None = None) -> None:
        if name not in ORDER:  # a typo would silently drop a phase from the breakdown
            raise ValueError(f"unknown phase mark {name!r}; known: {', '.join(ORDER)}")
        self.at.setdefault(name, time.time() if at is None else at)  # the first one counts

    def mark_process_start(self, name: str) -> None:
        started = process_started()
        if started is not None:
            self.mark(name, started)

    def metrics(self) -> dict[str, float]:
        return {metric_name(k): v - self.t0 for k, v in self.at.items()}

    def log(self, client: Any, run_id: str) -> None:
        """All marks in one MLflow call, each timestamped with its wall-clock time."""

        batch = [Metric(metric_name(k), v - self.t0, int(v * 1000), 0) for k, v in self.at.items()]
        client.log_batch(run_id, metrics=batch)


def gaps(marks: dict[str, float]) -> dict[str, float]:
    """Seconds from each mark to the next one present, keyed "<from>-><to>", in time order
    (ORDER breaks ties); `marks` are `phase.<mark>_s` metrics or keyed by mark name."""
    known = {m: marks[metric_name(m)] for m in ORDER if metric_name(m) in marks}
    known |= {m: marks[m] for m in ORDER if m in marks}
    present = sorted(known, key=lambda m: (known[m], ORDER.index(m)))
    return {f"{a}->{b}": known[b] - known[a] for a, b in zip(present, present[1:])}
