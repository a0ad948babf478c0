"""Driver-side Tune callback: closes each trial's MLflow run with the status Ray gave it."""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from ray.tune import Callback

from analysis.runs import FAILURE_TAG, STOPPED_EARLY_TAG, find_trial_run
from orchestrator.tracking import set_status


class MlflowStatusCallback(Callback):
    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = (
            tracking_uri,
            experiment_id,
            parent_run_id,
        )
        self.interrupted = False  # set by the driver on SIGINT/SIGTERM

    def _run_id(self, trial_id: str) -> str | None:
        run = find_trial_run(
            MlflowClient(self.tracking_uri), self.experiment_id, self.parent_run_id, trial_id
        )
        return run.info.run_id if run else None

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self._run_id(trial.trial_id)
        if run_id is None:
            return
        client = MlflowClient(self.tracking_uri)
        last = trial.last_result or {}
        if self.interrupted:  # the driver marks unfinished runs once Tune has stopped
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
            client = MlflowClient(self.tracking_uri)
            if trial.error_file:
                client.set_tag(run_id, "error_file", str(trial.error_file))
            set_status(client, run_id, "FAILED")
