"""`python -m orchestrator.sweep list | status | stop | cancel`: the sweeps of an MLflow store
seen and steered from any shell that reaches it (the driver acts on what is written there).

    list                   every sweep run: state, trials, best so far, hours, heartbeat
    status NAME            a sweep's running trials: searched values, epoch, accuracy, ETA, node
    stop NAME              stop the sweep as SIGTERM does (resumable); returns once acknowledged
    cancel NAME TRIAL      stop one trial (its run KILLED, the searcher told), the sweep goes on

NAME is a sweep's name (its newest run) or a sweep run id. A name that matches nothing, or a
stop or cancel of a sweep that is not running, is one `error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable
from typing import Any

from mlflow.tracking import MlflowClient

from analysis.runs import (
    INTERRUPTED_TAG,
    ROLE,
    SWEEP_ROLE,
    SWEEP_TAG,
    TRIAL_ID_TAG,
    RunLookupError,
    default_tracking_uri,
    find_sweep,
    open_store,
    quiet_mlflow,
    trial_runs,
)
from cct.cli import OneLineParser, fail
from orchestrator.console import format_eta, format_table
from orchestrator.control.lease import Lease, read_lease
from orchestrator.control.requests import POLL_S, Request, answered, forget, send
from orchestrator.cost import CPU_HOURS, GPU_HOURS

COMMANDS = ("list", "status", "stop", "cancel")
RUN_ID_LENGTH = 32  # an MLflow run id: 32 hex digits


def sweep_runs(client: MlflowClient, name: str | None = None) -> list[Any]:
    """Every sweep run of the store (of that sweep name, if given), newest first."""
    ids = [e.experiment_id for e in client.search_experiments()]
    where = f"tags.{ROLE} = '{SWEEP_ROLE}'" + (f" and tags.{SWEEP_TAG} = '{name}'" if name else "")
    return client.search_runs(
        ids, filter_string=where, order_by=["attributes.start_time DESC"], max_results=10_000
    )


def find(client: MlflowClient, name: str) -> Any:
    """The sweep run NAME means: a sweep run id, else the newest run of that sweep name."""
    if len(name) == RUN_ID_LENGTH and all(c in "0123456789abcdef" for c in name):
        try:
            return find_sweep(client, experiment=None, sweep_run_id=name)[1]
        except RunLookupError:
            pass  # not a sweep run's id: perhaps a sweep's name
    found = sweep_runs(client, name)
    if not found:
        known = sorted({r.data.tags.get(SWEEP_TAG, "?") for r in sweep_runs(client)})
        raise RunLookupError(
            f"no sweep {name!r} in this store (sweeps: {', '.join(known) or 'none'})"
        )
    return found[0]


def driver_of(client: MlflowClient, run: Any) -> Lease | None:
    """The fresh lease of the driver running this sweep run, or None."""
    lease = read_lease(client, run.info.experiment_id, run.data.tags.get(SWEEP_TAG, ""))
    if lease is None or not lease.alive() or lease.run_id not in ("", run.info.run_id):
        return None
    return lease


def state(run: Any, lease: Lease | None) -> str:
    if lease is not None:
        return "running"
    status = run.info.status
    if status == "RUNNING":  # no driver renews its lease: it was killed, or its machine died
        return "interrupted (driver lost)"
    if status == "KILLED":
        return "interrupted" if run.data.tags.get(INTERRUPTED_TAG) == "true" else "stopped"
    return {"FINISHED": "finished", "FAILED": "failed"}.get(status, status.lower())


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M")


def _ago(t: float | None) -> str:
    return "-" if t is None else f"{time.time() - t:.0f} s ago"


def list_row(client: MlflowClient, run: Any) -> dict[str, str]:
    trials = trial_runs(client, run.info.experiment_id, run.info.run_id)
    count = {s: sum(t.info.status == s for t in trials) for s in ("FINISHED", "RUNNING", "FAILED")}
    accs = [t.data.metrics["val_accuracy"] for t in trials if "val_accuracy" in t.data.metrics]
    cpu = sum(t.data.metrics.get(CPU_HOURS, 0.0) for t in trials)
    gpu = sum(t.data.metrics.get(GPU_HOURS, 0.0) for t in trials)
    lease = driver_of(client, run)
    return {
        "sweep": run.data.tags.get(SWEEP_TAG, "?"),
        "run": run.info.run_id[:8],
        "state": state(run, lease),
        "done/run/fail": f"{count['FINISHED']}/{count['RUNNING']}/{count['FAILED']}",
        "best val_acc": f"{max(accs):.4f}" if accs else "-",
        "hours": f"{gpu:.2f} GPU" if gpu else f"{cpu:.3f} CPU",
        "started": _when(run.info.start_time),
        "heartbeat": _ago(lease.heartbeat if lease else None),
    }


def cmd_list(client: MlflowClient, args: argparse.Namespace) -> int:
    rows = [list_row(client, r) for r in sweep_runs(client)]
    if not rows:
        print("no sweeps in this store")
        return 0
    print("\n".join(format_table(rows, list(rows[0]))))
    return 0


def searched_keys(run: Any) -> list[str]:
    """The sweep's searched config keys, from its parent run's `search.<key>.<kind>` params."""
    return sorted(
        {
            k.removeprefix("search.").rsplit(".", 1)[0]
            for k in run.data.params
            if k.startswith("search.")
        }
    )


def trial_row(client: MlflowClient, trial: Any, keys: list[str]) -> dict[str, str]:
    history = client.get_metric_history(trial.info.run_id, "val_accuracy")
    epoch = max((m.step for m in history), default=0)
    total = int(float(trial.data.params.get("optim.epochs", 0) or 0))
    per_epoch = trial.data.metrics.get("epoch_seconds")
    row = {"trial": trial.data.tags.get(TRIAL_ID_TAG, trial.info.run_id[:8])}
    row.update({k: trial.data.params.get(k, "-") for k in keys})
    row["epoch"] = f"{epoch}/{total}" if total else str(epoch)
    row["val_acc"] = f"{history[-1].value:.4f}" if history else "-"
    row["ETA"] = format_eta(per_epoch * (total - epoch)) if per_epoch and total else "-"
    row["node"] = trial.data.tags.get("ray_node_id", "-")[:8]
    return row


def cmd_status(client: MlflowClient, args: argparse.Namespace) -> int:
    run = find(client, args.name)
    lease = driver_of(client, run)
    where = f", driver: process {lease.pid} on {lease.host}" if lease else ""
    print(f"sweep {args.name} (run {run.info.run_id}): {state(run, lease)}{where}")
    keys = searched_keys(run)
    running = [
        t
        for t in trial_runs(client, run.info.experiment_id, run.info.run_id)
        if t.info.status == "RUNNING"
    ]
    if not running:
        print("no trial is running")
        return 0
    rows = [trial_row(client, t, keys) for t in running]
    print("\n".join(format_table(rows, list(rows[0]))))
    return 0


def running_driver(client: MlflowClient, run: Any, name: str) -> Lease:
    lease = driver_of(client, run)
    if lease is None:
        raise RunLookupError(f"sweep {name!r} is not running ({state(run, None)})")
    return lease


def ask(client: MlflowClient, run: Any, request: Request, timeout: float) -> None:
    """Write the request and wait for the driver's answer (then tidy both away)."""
    experiment_id, sweep = run.info.experiment_id, run.data.tags[SWEEP_TAG]
    send(client, experiment_id, sweep, request)
    deadline = time.monotonic() + timeout
    while not answered(client, experiment_id, sweep, request.id):
        if time.monotonic() > deadline:
            forget(client, experiment_id, sweep, request.id)
            raise RunLookupError(f"the driver did not answer within {timeout:.0f} s")
        time.sleep(1.0)
    forget(client, experiment_id, sweep, request.id)


def cmd_stop(client: MlflowClient, args: argparse.Namespace) -> int:
    run = find(client, args.name)
    lease = running_driver(client, run, args.name)
    started = time.monotonic()
    ask(client, run, Request.new(lease.driver, "stop"), args.timeout)
    print(
        f"sweep {args.name}: the driver (process {lease.pid} on {lease.host}) acknowledged the "
        f"stop after {time.monotonic() - started:.1f} s; its trials are stopping and Tune's "
        "state is saved. Resume it with the same sweep command (or --resume)."
    )
    return 0


def cmd_cancel(client: MlflowClient, args: argparse.Namespace) -> int:
    run = find(client, args.name)
    lease = running_driver(client, run, args.name)
    trials = trial_runs(client, run.info.experiment_id, run.info.run_id)
    match = [t for t in trials if args.trial in (t.data.tags.get(TRIAL_ID_TAG), t.info.run_id)]
    if not match or match[0].info.status != "RUNNING":
        running = [t.data.tags.get(TRIAL_ID_TAG, "?") for t in trials if t.info.status == "RUNNING"]
        what = "not running" if match else "not a trial of this sweep"
        raise RunLookupError(
            f"trial {args.trial!r} is {what} (running: {', '.join(running) or 'none'})"
        )
    trial_id = match[0].data.tags[TRIAL_ID_TAG]
    ask(client, run, Request.new(lease.driver, "cancel", trial_id), args.timeout)
    print(f"trial {trial_id}: cancel acknowledged; it stops at its next epoch report")
    return 0


def parser(command: str) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=f"python -m orchestrator.sweep {command}", description=__doc__.split("\n")[0]
    )
    if command != "list":
        p.add_argument("name", help="a sweep's name (its newest run) or a sweep run id")
    if command == "cancel":
        p.add_argument("trial", help="the trial's id (as `status` shows it) or its MLflow run id")
    p.add_argument(
        "--tracking-uri",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)",
    )
    if command in ("stop", "cancel"):
        p.add_argument(
            "--timeout",
            type=float,
            default=6 * POLL_S + 30,
            help="seconds to wait for the driver's answer",
        )
    return p


RUN: dict[str, Callable[[MlflowClient, argparse.Namespace], int]] = {
    "list": cmd_list,
    "status": cmd_status,
    "stop": cmd_stop,
    "cancel": cmd_cancel,
}


def main(argv: list[str]) -> int:
    """`argv` starts with one of COMMANDS."""
    command, rest = argv[0], argv[1:]
    args = parser(command).parse_args(rest)
    quiet_mlflow()
    try:
        client = open_store(args.tracking_uri or default_tracking_uri())
        return RUN[command](client, args)
    except RunLookupError as e:
        fail(e)
