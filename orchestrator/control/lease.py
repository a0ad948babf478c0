"""The driver's lease on its sweep, an experiment tag `cct.driver.<sweep name>` holding who
runs it and when it last said so. The lease is keyed by the sweep's name, not its run: two
drivers of a new sweep would otherwise each create a run of their own.

Taking it: a live lease of another driver refuses this one; a dead one is taken over: on
this machine, as soon as its process is gone (SIGKILL, a crash); from another machine, once
its heartbeat is EXPIRES_S old (that machine crashed or lost the store). MLflow's tags are
last-writer-wins, so a driver writes its lease, waits SETTLE_S and reads it back: of two
drivers that start together, the one whose write came first sees the other's and steps back.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import psutil
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

LEASE_PREFIX = "cct.driver."  # + the sweep's name
HEARTBEAT_S = 10.0  # how often a driver renews its lease
EXPIRES_S = 60.0  # a lease not renewed for this long belongs to a dead driver
SETTLE_S = 1.5  # between writing a lease and reading it back


class SweepBusy(Exception):
    """Another driver holds a fresh lease on the sweep; the message says where it runs."""

    def __init__(self, sweep: str, lease: Lease, problem: str = "") -> None:
        if problem:
            super().__init__(f"sweep {sweep!r}: {problem}")
            self.lease = lease
            return
        super().__init__(
            f"sweep {sweep!r} is already running: its driver is process {lease.pid} on "
            f"{lease.host}, since {_when(lease.since)} (last heartbeat "
            f"{time.time() - lease.heartbeat:.0f} s ago); stop it with "
            f"`python -m orchestrator.sweep stop {sweep}`"
        )
        self.lease = lease


@dataclass(frozen=True)
class Lease:
    driver: str  # a fresh id per driver process
    host: str
    pid: int
    since: float  # epoch seconds
    heartbeat: float
    run_id: str = ""  # the sweep run it drives, once known

    def fresh(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - self.heartbeat < EXPIRES_S

    def alive(self) -> bool:
        """Fresh, and on this machine also still running (a killed driver's lease is fresh
        for a minute, but its process is gone: the next run need not wait)."""
        return self.fresh() and (self.host != socket.gethostname() or _running(self))

    def to_tag(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_tag(cls, text: str) -> Lease | None:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None  # an unreadable tag holds nothing


def new_lease() -> Lease:
    now = time.time()
    return Lease(uuid.uuid4().hex, socket.gethostname(), os.getpid(), now, now)


def lease_key(sweep: str) -> str:
    return LEASE_PREFIX + sweep


def read_lease(client: MlflowClient, experiment_id: str, sweep: str) -> Lease | None:
    tags = client.get_experiment(experiment_id).tags
    text = tags.get(lease_key(sweep))
    return Lease.from_tag(text) if text else None


def running_elsewhere(tracking_uri: str, experiment: str, sweep: str) -> Lease | None:
    """A fresh lease on the sweep, read without writing anything (a local store that does
    not exist yet holds no lease, and is not created by asking)."""
    if tracking_uri.startswith("sqlite:///"):
        if not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
            return None
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    lease = read_lease(client, found.experiment_id, sweep)
    return lease if lease is not None and lease.alive() else None


def acquire(client: MlflowClient, experiment_id: str, sweep: str, mine: Lease) -> Lease:
    """Take the sweep's lease for `mine`, or raise SweepBusy naming the driver that has it."""
    held = read_lease(client, experiment_id, sweep)
    if held is not None and held.driver != mine.driver and held.alive():
        raise SweepBusy(sweep, held)
    try:
        client.set_experiment_tag(experiment_id, lease_key(sweep), mine.to_tag())
    except MlflowException:  # sqlite: two first writes of the tag at once, one fails
        pass  # the read-back below says who has it
    time.sleep(SETTLE_S)
    held = read_lease(client, experiment_id, sweep)
    if held is None:
        raise SweepBusy(sweep, mine, "could not write its lease; try again")
    if held.driver != mine.driver:
        raise SweepBusy(sweep, held)  # another driver wrote after us: it runs the sweep
    return mine


def renew(client: MlflowClient, experiment_id: str, sweep: str, mine: Lease) -> Lease:
    """The lease with a new heartbeat, written back (a driver that lost it keeps running
    what it runs: the other refused itself or will, by the read-back of `acquire`)."""
    renewed = replace(mine, heartbeat=time.time())
    client.set_experiment_tag(experiment_id, lease_key(sweep), renewed.to_tag())
    return renewed


def release(client: MlflowClient, experiment_id: str, sweep: str, mine: Lease) -> None:
    """Give the lease up if it is still ours."""
    held = read_lease(client, experiment_id, sweep)
    if held is not None and held.driver == mine.driver:
        client.delete_experiment_tag(experiment_id, lease_key(sweep))


def _running(lease: Lease) -> bool:
    """Whether the lease's process still runs here (the same process: a reused pid started
    after the lease was taken)."""
    try:
        return psutil.Process(lease.pid).create_time() <= lease.since + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # another user's process: assume it is the driver
        return True


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
