"""Every Tune callback the driver hands its Tuner: MlflowStatusCallback closes each trial's
MLflow run with the status Ray gave it; Interruption turns SIGINT and SIGTERM into a stop of
the sweep; StatusTable prints the console's table (console.py formats it); StudyRecorder
writes the trials of random and grid sweeps into the sweep's Optuna study (study.py keeps
it). The callbacks that run inside Ray's worker processes are in orchestrator/worker/.

Tuner.restore brings back the callbacks the sweep first started with (unpickled), not the
ones the driver builds on resume, so what the driver must read after `fit` lives in this
module, not on an instance."""

from __future__ import annotations

import math
import signal
import sys
import time
from typing import Any, ClassVar

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from ray.tune import Callback

from analysis.runs import (
    CANCELLED_TAG,
    FAILURE_MESSAGE_TAG,
    FAILURE_TAG,
    OVER_BUDGET,
    STOPPED_EARLY_TAG,
    find_trial_run,
    ui_run_url,
    ui_server,
)
from cct.typed_reader import python_value
from orchestrator.console import format_eta, format_table, format_value
from orchestrator.control.notify import Notifier
from orchestrator.control.requests import CancelStopper
from orchestrator.study import StudyPlace, distributions, shared_journal, upload_journal
from orchestrator.tracking import set_status
from orchestrator.tune_objects import FAILED_KEY, FINISHED_KEY, TRIAL_ATTR
from search_spaces.spec import SweepSpec


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
            if last[FAILURE_TAG] != OVER_BUDGET:  # priced out is no failure to be told of
                why = f"{last[FAILURE_TAG]}: {last.get(FAILURE_MESSAGE_TAG, '')}"
                self._notify(trial.trial_id, run_id, why)
        elif "test_accuracy" in last:  # only the trainer's final report carries it
            set_status(client, run_id, "FINISHED")
        elif trial.trial_id in CancelStopper.cancelled:  # `orchestrator.sweep cancel`
            client.set_tag(run_id, CANCELLED_TAG, "true")
            client.set_tag(
                run_id,
                FAILURE_MESSAGE_TAG,
                f"cancelled from {CancelStopper.cancelled[trial.trial_id]}",
            )
            set_status(client, run_id, "KILLED")
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
            self._notify(trial.trial_id, run_id, f"errored after its retries ({trial.error_file})")

    def _notify(self, trial_id: str, run_id: str, why: str) -> None:
        if Notifier.active is not None:
            link = ui_run_url(ui_server(self.uri), self.experiment_id, run_id)
            Notifier.active.send(
                "trial_failed", f"trial {trial_id} failed for good, {why} — {link}"
            )


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


class StatusTable(Callback):
    """Driver-side: prints the table at most every `every_s` seconds while trials report,
    and a line when a trial ends. `epochs` is the base config's epoch count (a searched
    `optim.epochs` overrides it per trial)."""

    def __init__(self, searched: list[str], epochs: int, every_s: float = 30.0) -> None:
        self.searched, self.epochs, self.every_s = searched, epochs, every_s
        self.last_print = -math.inf
        self.latest: dict[str, dict] = {}  # trial id -> its latest result (Tune updates
        # trial.last_result only after the callbacks have seen a result)

    def _last(self, trial) -> dict:
        return self.latest.get(trial.trial_id) or trial.last_result or {}

    def _row(self, trial) -> dict[str, str]:
        last = self._last(trial)
        total = int(trial.config.get("optim.epochs", self.epochs))
        epoch = last.get("epoch")
        row = {"trial": str(trial.trial_id), "status": trial.status.lower()}
        for key in self.searched:
            row[key] = format_value(trial.config.get(key, ""))
        row["epoch"] = f"{epoch}/{total}" if epoch is not None else f"-/{total}"
        val = last.get("val_accuracy")
        row["val_acc"] = f"{val:.4f}" if isinstance(val, float) else "-"
        per_epoch = last.get("epoch_seconds")  # training time alone: start-up is not repeated
        if trial.status == "RUNNING" and epoch and per_epoch:
            row["ETA"] = format_eta(per_epoch * (total - epoch))
        else:
            row["ETA"] = "-"
        return row

    def lines(self, trials: list) -> list[str]:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status.lower()] = counts.get(t.status.lower(), 0) + 1
        order = ("running", "pending", "paused", "terminated", "error")
        words = {"terminated": "finished", "error": "errored"}
        head = ", ".join(f"{counts[s]} {words.get(s, s)}" for s in order if s in counts)
        columns = ["trial", "status", *self.searched, "epoch", "val_acc", "ETA"]
        rows = [self._row(t) for t in trials if t.status not in ("TERMINATED", "ERROR")]
        return [f"{time.strftime('%H:%M:%S')}  {head}", *format_table(rows, columns)]

    def _print(self, trials: list) -> None:
        self.last_print = time.monotonic()
        print("\n".join(self.lines(trials)), flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.latest[trial.trial_id] = result
        if time.monotonic() - self.last_print >= self.every_s:
            self._print(trials)

    def _ended(self, trial, how: str) -> None:
        last = self._last(trial)
        if last.get(FAILURE_TAG) == OVER_BUDGET:
            print(f"trial {trial.trial_id} over budget: {last.get(FAILURE_MESSAGE_TAG, '')}")
            return
        if last.get(FAILURE_TAG):  # the worker's report of a failure no retry heals
            message = last.get(FAILURE_MESSAGE_TAG, "")
            print(
                f"trial {trial.trial_id} failed for good ({last[FAILURE_TAG]}), not retried:"
                f" {message}",
                flush=True,
            )
            return
        val = last.get("val_accuracy")
        shown = f"val_accuracy {val:.4f}" if isinstance(val, float) else "no result"
        print(
            f"trial {trial.trial_id} {how}: {shown} after {last.get('epoch', 0)} epoch(s)",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "errored")


# random and grid sweeps: Tune's own generator asks no study, so the driver records
# each trial that ended


class StudyRecorder(Callback):
    """Records each trial that ended into the sweep's study: COMPLETE with the objectives
    of its final report, PRUNED when a scheduler stopped it (its last value as the
    intermediate value at its epoch), FAIL when it failed for good or errored.

    Tuner.restore brings this instance back from Tune's state; a trial already in the
    study (by its Tune trial id) is not added again, so the study wins on a resume."""

    def __init__(self, place: StudyPlace, spec: SweepSpec) -> None:
        self.place = place
        self.distributions = distributions(spec)
        self.metrics = [name for name, _ in spec.objectives]
        self._study: optuna.Study | None = None
        # the Tune trial ids the study holds: read from it once, then kept here (reading
        # every trial of the study at each end cost 5 ms at trial 100 and 52 at 1,000)
        self._recorded: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # the storage is reopened from the path, and what it holds read again from it
        return {**self.__dict__, "_study": None, "_recorded": set()}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if Interruption.signum() is not None:  # stopped by the interruption: it resumes
            return
        last = trial.last_result or {}
        if FAILED_KEY in last:
            self.record(trial, TrialState.FAIL)
        elif FINISHED_KEY in last:
            self.record(trial, TrialState.COMPLETE)
        else:
            self.record(trial, TrialState.PRUNED)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.record(trial, TrialState.FAIL)

    def record(self, trial: Any, state: TrialState) -> None:
        if self._study is None:
            self._study = self.place.load()
            held = self._study.get_trials(deepcopy=False)
            self._recorded = {t.user_attrs.get(TRIAL_ATTR) for t in held}
        if trial.trial_id in self._recorded:
            return
        last = trial.last_result or {}
        values = [_number(last.get(m)) for m in self.metrics]
        if state == TrialState.COMPLETE and None in values:
            state = TrialState.FAIL  # Optuna keeps no COMPLETE trial without its values
        intermediate, kept = {}, values if state == TrialState.COMPLETE else None
        if state == TrialState.PRUNED and len(values) == 1 and values[0] is not None:
            intermediate, kept = {int(last.get("epoch", 0)): values[0]}, values  # as Optuna does
        params = {k: python_value(v) for k, v in trial.config.items() if k in self.distributions}
        self._study.add_trial(
            optuna.trial.create_trial(
                state=state,
                params=params,
                distributions={k: self.distributions[k] for k in params},
                values=kept,
                intermediate_values=intermediate,
                user_attrs={TRIAL_ATTR: trial.trial_id},
            )
        )
        self._recorded.add(trial.trial_id)


def _number(v: Any) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class JournalSync(Callback):
    """Copies the study's journal to the shared storage at each save of Tune's state (Tune
    asks every callback for its state then) and at the end of the sweep."""

    def __init__(self, local: str, shared: str) -> None:
        self.local, self.shared = local, shared

    def get_state(self) -> dict | None:
        upload_journal(self.local, self.shared)
        return None  # nothing of its own to keep

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        upload_journal(self.local, self.shared)


def journal_sync(place: StudyPlace | None, storage_path: str, ray_experiment: str) -> list:
    """The callback that keeps `place` with the checkpoints ([] for a sweep without a study)."""
    if place is None:
        return []
    return [JournalSync(place.storage, shared_journal(storage_path, ray_experiment, place))]
