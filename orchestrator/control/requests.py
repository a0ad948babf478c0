"""Stop and cancel requests, written to the sweep's MLflow experiment by any shell, and the
driver's presence thread that renews its lease and acts on them.

A request is an experiment tag `cct.request.<sweep>.<id>` addressed to one driver (the
lease's): a resumed sweep's new driver never acts on an old request. The driver answers
with `cct.ack.<sweep>.<id>`; the asker waits for that, then removes both.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import ClassVar, Literal

from mlflow.tracking import MlflowClient
from ray.tune import Stopper

from orchestrator.control.lease import HEARTBEAT_S, Lease, acquire, new_lease, release, renew

REQUEST_PREFIX, ACK_PREFIX = "cct.request.", "cct.ack."
POLL_S = 5.0  # how often the driver looks for requests: a stop is acknowledged within it
Action = Literal["stop", "cancel"]


@dataclass(frozen=True)
class Request:
    id: str
    driver: str  # the lease's driver it is addressed to
    action: Action
    trial: str = ""  # the Tune trial id, for cancel
    by: str = ""  # host and process of the asker

    @classmethod
    def new(cls, driver: str, action: Action, trial: str = "") -> Request:
        by = f"{socket.gethostname()} (process {os.getpid()})"
        return cls(uuid.uuid4().hex[:12], driver, action, trial, by)


def request_key(sweep: str, rid: str) -> str:
    return f"{REQUEST_PREFIX}{sweep}.{rid}"


def ack_key(sweep: str, rid: str) -> str:
    return f"{ACK_PREFIX}{sweep}.{rid}"


def send(client: MlflowClient, experiment_id: str, sweep: str, request: Request) -> None:
    client.set_experiment_tag(
        experiment_id, request_key(sweep, request.id), json.dumps(asdict(request))
    )


def answered(client: MlflowClient, experiment_id: str, sweep: str, rid: str) -> bool:
    return ack_key(sweep, rid) in client.get_experiment(experiment_id).tags


def forget(client: MlflowClient, experiment_id: str, sweep: str, rid: str) -> None:
    """Remove a request and its answer (the asker's tidy-up once it has its answer)."""
    tags = client.get_experiment(experiment_id).tags
    for key in (request_key(sweep, rid), ack_key(sweep, rid)):
        if key in tags:
            client.delete_experiment_tag(experiment_id, key)


def addressed_to(tags: dict[str, str], sweep: str, driver: str) -> list[Request]:
    """The unanswered requests of `tags` for this driver of this sweep."""
    prefix = f"{REQUEST_PREFIX}{sweep}."
    out = []
    for key, text in tags.items():
        if not key.startswith(prefix) or ack_key(sweep, key[len(prefix) :]) in tags:
            continue
        try:
            request = Request(**json.loads(text))
        except (ValueError, TypeError):
            continue  # not one of ours
        if request.driver == driver:
            out.append(request)
    return out


class CancelStopper(Stopper):
    """Ends a cancelled trial at its next report (Tune asks after each one). What was
    cancelled lives on the class: Tuner.restore brings back the instance the sweep started
    with, not the one a resumed driver builds."""

    cancelled: ClassVar[dict[str, str]] = {}  # trial id -> who asked

    def __call__(self, trial_id: str, result: dict) -> bool:
        return trial_id in CancelStopper.cancelled

    def stop_all(self) -> bool:
        return False


class Presence(threading.Thread):
    """In the driver: renews the lease every HEARTBEAT_S and acts on requests every POLL_S.
    A stop is the SIGTERM path (the same exit, marks and resume command); a cancel hands the
    trial to CancelStopper. A store that does not answer for a while is tried again."""

    def __init__(self, tracking_uri: str, experiment_id: str, sweep: str, lease: Lease) -> None:
        super().__init__(name="sweep-presence", daemon=True)
        self.client = MlflowClient(tracking_uri)
        self.experiment_id, self.sweep, self.lease = experiment_id, sweep, lease
        self.done = threading.Event()
        self.stopping = False
        self.warned = False

    def run(self) -> None:
        last_beat = time.monotonic()
        while not self.done.wait(POLL_S):
            try:
                if time.monotonic() - last_beat >= HEARTBEAT_S:
                    self.lease = renew(self.client, self.experiment_id, self.sweep, self.lease)
                    last_beat = time.monotonic()
                tags = self.client.get_experiment(self.experiment_id).tags
                for request in addressed_to(tags, self.sweep, self.lease.driver):
                    self.act(request)
            except Exception as e:  # noqa: BLE001 - a store restarting must not end the sweep
                if not self.warned:
                    print(
                        f"warning: the MLflow store did not answer ({e}); retrying", file=sys.stderr
                    )
                    self.warned = True

    def act(self, request: Request) -> None:
        if request.action == "cancel":
            CancelStopper.cancelled[request.trial] = request.by
            print(f"trial {request.trial}: cancelled from {request.by}", flush=True)
        self.client.set_experiment_tag(
            self.experiment_id, ack_key(self.sweep, request.id), str(time.time())
        )
        if request.action == "stop" and not self.stopping:
            self.stopping = True
            print(f"stop requested from {request.by}", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)  # the main thread's SIGTERM path

    def attach(self, run_id: str) -> None:
        """Name the sweep run in the lease (written with the next heartbeat)."""
        self.lease = replace(self.lease, run_id=run_id)

    def close(self) -> None:
        self.done.set()
        if self.is_alive():
            self.join(timeout=POLL_S + 5)


@contextmanager
def driving(tracking_uri: str, experiment_id: str, sweep: str) -> Iterator[Presence]:
    """Hold the sweep's lease while the block runs (SweepBusy if another driver has it),
    renewing it and acting on requests; given up at the end."""
    client = MlflowClient(tracking_uri)
    mine = acquire(client, experiment_id, sweep, new_lease())
    CancelStopper.cancelled.clear()
    presence = Presence(tracking_uri, experiment_id, sweep, mine)
    presence.start()
    try:
        yield presence
    finally:
        presence.close()
        release(client, experiment_id, sweep, presence.lease)
