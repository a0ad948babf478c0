"""One live driver per sweep, and control from any shell (orchestrator/control): the lease
refuses a second driver and is taken over once stale; `list`, `status`, `cancel` and `stop`
against a real running sweep, then a resume that finishes every trial once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from analysis.runs import CANCELLED_TAG, trial_runs
from orchestrator import sweep as sweep_cli
from orchestrator.control import commands
from orchestrator.control.lease import EXPIRES_S, SweepBusy, acquire, new_lease, read_lease
from orchestrator.control.requests import Request, addressed_to, request_key
from tests.conftest import local_env, small_sweep_yaml, wait_for
from tests.test_notify import Hook


def store(tmp_path) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client, client.create_experiment("ctl")


def test_the_command_words_are_the_controls():
    assert sweep_cli.CONTROL_COMMANDS == commands.COMMANDS


def test_a_fresh_lease_refuses_a_second_driver_and_names_where_the_first_runs(tmp_path):
    client, exp = store(tmp_path)
    first = acquire(client, exp, "ctl", new_lease())
    with pytest.raises(SweepBusy, match=f"process {first.pid} on {first.host}"):
        acquire(client, exp, "ctl", new_lease())
    assert read_lease(client, exp, "ctl").driver == first.driver


@pytest.mark.parametrize("how", ["its machine went silent", "its process is gone"])
def test_a_dead_drivers_lease_is_taken_over(tmp_path, how):
    client, exp = store(tmp_path)
    if how == "its machine went silent":  # another host: its heartbeat expired
        dead = replace(new_lease(), host="gone", heartbeat=time.time() - EXPIRES_S - 1)
    else:  # this host, fresh heartbeat, but the process was SIGKILLed
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        dead = replace(new_lease(), pid=child.pid)
    client.set_experiment_tag(exp, "cct.driver.ctl", dead.to_tag())
    mine = acquire(client, exp, "ctl", new_lease())
    assert read_lease(client, exp, "ctl").driver == mine.driver != dead.driver


def test_a_live_driver_elsewhere_is_not_taken_over(tmp_path):
    client, exp = store(tmp_path)
    other = replace(new_lease(), host="another-machine", pid=1)  # fresh heartbeat
    client.set_experiment_tag(exp, "cct.driver.ctl", other.to_tag())
    with pytest.raises(SweepBusy, match="on another-machine"):
        acquire(client, exp, "ctl", new_lease())


def test_of_two_drivers_starting_together_one_runs(tmp_path):
    client, exp = store(tmp_path)
    won, lost = [], []

    def start() -> None:
        try:
            won.append(acquire(MlflowClient(client.tracking_uri), exp, "ctl", new_lease()))
        except SweepBusy:
            lost.append(1)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(won), len(lost)) == (1, 1)
    assert read_lease(client, exp, "ctl").driver == won[0].driver


def test_a_request_reaches_only_the_driver_it_names():
    req = Request.new("driver-a", "cancel", "t1")
    tags = {request_key("ctl", req.id): json.dumps(req.__dict__)}
    assert addressed_to(tags, "ctl", "driver-a") == [req]
    assert addressed_to(tags, "ctl", "driver-b") == []  # a resumed sweep's new driver
    assert addressed_to({**tags, f"cct.ack.ctl.{req.id}": "1"}, "ctl", "driver-a") == []


def test_a_second_sweep_command_is_refused_before_anything_is_written(
    tmp_path, monkeypatch, capsys
):
    client, exp = store(tmp_path)
    held = acquire(client, exp, "ctl", new_lease())
    (tmp_path / "sweep.yaml").write_text(
        small_sweep_yaml(name="ctl", epochs=1, resources="{}", analysis="{blocks: none}")
    )
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()  # the store's own creation lines
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "CCT_STORAGE_PATH"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as e:
        sweep_cli.main(["--config", "sweep.yaml"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"process {held.pid} on {held.host}" in err[0], err
    assert client.search_runs([exp]) == [] and not (tmp_path / "ray_results").exists()


@pytest.mark.parametrize("argv", [["status", "nope"], ["stop", "nope"], ["cancel", "nope", "t"]])
def test_a_name_that_matches_nothing_is_one_error_line(tmp_path, argv, capsys):
    store(tmp_path)
    capsys.readouterr()  # the store's own creation lines
    with pytest.raises(SystemExit) as e:
        commands.main([*argv, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no sweep 'nope'" in err[0], err


# --------------------------------------------------------------------------------------
# against a real sweep


HOOK_ENV = "CCT_TEST_HOOK"  # the sweep file's notify.webhook_env


def control(root, *argv: str, hook: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", *argv],
        cwd=root, env={**local_env(), HOOK_ENV: hook}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    # the transcript, for `pytest -s`
    print(f"$ python -m orchestrator.sweep {' '.join(argv)}   # {time.monotonic() - t0:.1f} s")
    print(done.stdout + done.stderr, end="")
    return done


def start_driver(root, hook: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml"],
        cwd=root, env={**local_env(), HOOK_ENV: hook}, stdout=(root / "sweep.log").open("a"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


SHORT, LONG = 12, 2000  # epochs: the long trial keeps the sweep running until it is cancelled


@pytest.mark.slow
def test_list_status_stop_resume_then_cancel_finishes_every_trial_once(tmp_path):
    """A grid of two trials, one short and one far too long: the long one keeps the sweep
    running whatever the machine's speed. Watched and stopped from other shells; resumed;
    the long trial cancelled in the resumed sweep, which then ends with every trial once."""
    root = tmp_path
    (root / "sweep.yaml").write_text(
        small_sweep_yaml(
            name="ctl",
            epochs=SHORT,
            resources="{workers_per_trial: 1, cpus_per_worker: 0.45, max_concurrent_trials: 2}",
            analysis="{blocks: none}",
            search=f"{{optim.epochs: {{grid: [{SHORT}, {LONG}]}}}}",
            tune="{searcher: grid, objectives: {val_accuracy: max}}",
        )
        + f"notify: {{webhook_env: {HOOK_ENV}}}\n"
    )
    hook = Hook()  # the sweep's webhook, on loopback
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")

    def trials() -> dict[int, Any]:
        """Epoch budget -> trial run."""
        exp = client.get_experiment_by_name("ctl")
        parents = client.search_runs([exp.experiment_id], "tags.role = 'sweep'") if exp else []
        runs = trial_runs(client, exp.experiment_id, parents[0].info.run_id) if parents else []
        # a run just created may not have its params yet: it is not listed until it has
        return {
            int(r.data.params["optim.epochs"]): r for r in runs if "optim.epochs" in r.data.params
        }

    def long_trial_running_at(epoch: int) -> bool:
        run = trials().get(LONG)
        history = client.get_metric_history(run.info.run_id, "val_accuracy") if run else []
        status = client.get_run(run.info.run_id).info.status if run else None
        return status == "RUNNING" and max((m.step for m in history), default=0) >= epoch

    driver = start_driver(root, hook.url)
    try:
        wait_for(lambda: long_trial_running_at(1), 420, "the long trial training", driver)
        second = control(root, "--config", "sweep.yaml", hook=hook.url)
        assert second.returncode == 2 and "already running" in second.stderr, second.stderr
        listed = control(root, "list")
        assert listed.returncode == 0 and "running" in listed.stdout, listed.stdout
        status = control(root, "status", "ctl")
        assert status.returncode == 0 and "optim.epochs" in status.stdout, status.stdout
        t0 = time.monotonic()
        stop = control(root, "stop", "ctl")
        assert stop.returncode == 0 and "acknowledged" in stop.stdout, stop.stderr
        assert driver.wait(120) == 128 + signal.SIGTERM
        print(f"stop: acknowledged and the driver gone in {time.monotonic() - t0:.1f} s")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert control(root, "stop", "ctl").returncode == 2  # not running any more
    reached = max(
        m.step for m in client.get_metric_history(trials()[LONG].info.run_id, "val_accuracy")
    )

    resumed = start_driver(root, hook.url)
    try:
        wait_for(lambda: long_trial_running_at(reached + 1), 420, "the long trial resumed", resumed)
        victim = trials()[LONG].data.tags["trial_id"]
        cancel = control(root, "cancel", "ctl", victim)
        assert cancel.returncode == 0 and "cancel acknowledged" in cancel.stdout, cancel.stderr
        assert resumed.wait(420) == 0, (root / "sweep.log").read_text()[-4000:]
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
        hook.close()
    events = [p["event"] for p in hook.received]
    assert events == ["interrupted", "finished"], hook.received
    assert "resume with" in hook.received[0]["text"] and "/runs/" in hook.received[1]["text"]
    print("payloads:", json.dumps(hook.received, indent=1))
    final = trials()
    assert len(final) == 2
    cancelled = final[LONG]
    assert cancelled.info.status == "KILLED" and cancelled.data.tags.get(CANCELLED_TAG) == "true"
    other = final[SHORT]
    assert other.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(other.info.run_id, "val_accuracy")]
    assert sorted(steps) == list(range(1, SHORT + 1)), steps  # every epoch once
    long_steps = [m.step for m in client.get_metric_history(cancelled.info.run_id, "val_accuracy")]
    assert len(long_steps) == len(set(long_steps)) < LONG  # once each, and cut short
    # the environment on the sweep run (started, then resumed: two records) and each trial run
    parent = client.get_run(other.data.tags["mlflow.parentRunId"])
    assert parent.data.tags.get("environment_starts") == "2"
    assert int(other.data.tags.get("environment_starts", "0")) >= 1
