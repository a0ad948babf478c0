"""Driver-side Tune callbacks: one closes each trial's MLflow run with the status Ray gave
it; one turns SIGINT and SIGTERM into a stop of the sweep.

Tuner.restore brings back the callbacks the sweep first started with (unpickled), not the
ones the driver builds on resume, so what the driver must read after `fit` lives in this
module, not on an instance."""

from __future__ import annotations

import signal
import sys
from typing import Any, ClassVar

from mlflow.tracking import MlflowClient
from ray.tune import Callback

from analysis.runs import FAILURE_TAG, STOPPED_EARLY_TAG, find_trial_run
from orchestrator.tracking import set_status


class MlflowStatusCallback(Callback):
    # The store this driver process logs to. A restored instance carries the URI of the
    # process that first started the sweep, which may be gone: a SLURM job's MLflow server
    # listens on that job's own port, so a resubmitted job's server has another one.
    live_tracking_uri: ClassVar[str | None] = None

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = (
            tracking_uri,
            experiment_id,
            parent_run_id,
        )

    @property
    def uri(self) -> str:
        return MlflowStatusCallback.live_tracking_uri or self.tracking_uri

    def _run_id(self, trial_id: str) -> str | None:
        run = find_trial_run(
            MlflowClient(self.uri), self.experiment_id, self.parent_run_id, trial_id
        )
        return run.info.run_id if run else None

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_id(trial.trial_id)
        if run_id is None:
            return
        client = MlflowClient(self.uri)
        last = trial.last_result or {}
        if Interruption.signum() is not None:  # the driver marks the unfinished runs
            return
        if FAILURE_TAG in last:  # failed for good; the worker tagged the reason
            set_status(client, run_id, "FAILED")
        elif "test_accuracy" in last:  # only the trainer's final report carries it
            set_status(client, run_id, "FINISHED")
        else:  # stopped by the scheduler (e.g. ASHA) before its budget
            client.set_tag(run_id, STOPPED_EARLY_TAG, "true")
            set_status(client, run_id, "KILLED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_id(trial.trial_id)
        if run_id is not None:
            client = MlflowClient(self.uri)
            if trial.error_file:
                client.set_tag(run_id, "error_file", str(trial.error_file))
            set_status(client, run_id, "FAILED")


class Interruption(Callback):
    """SIGINT and SIGTERM (what schedulers and spot reclaims send before the kill) stop the
    sweep: the first one asks Tune to stop its trials and save its state, a second one
    skips that. `install` before Ray starts; `setup` (Tune calls it once its own SIGINT
    handler is in place, the same one it puts on SIGUSR1) takes Tune's handler over."""

    _state: ClassVar[dict[str, Any]] = {"signum": None, "tune_stop": None}

    @classmethod
    def signum(cls) -> int | None:
        """The first signal received in this process, or None."""
        return cls._state["signum"]

    @classmethod
    def reset(cls) -> None:
        cls._state.update(signum=None, tune_stop=None)

    @classmethod
    def record(cls, signum: int) -> None:
        if cls._state["signum"] is None:
            cls._state["signum"] = signum

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handle)

    def setup(self, **info: Any) -> None:
        self._state["tune_stop"] = signal.getsignal(signal.SIGUSR1)
        self.install()

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.signum() is None
        self.record(signum)
        tune_stop = self._state["tune_stop"]
        if not (first and callable(tune_stop)):
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        print(f"\n{name}: stopping the sweep (again to skip saving Tune's state)", file=sys.stderr)
        tune_stop(signum, frame)
