"""A sweep on a cluster that grows, simulated with Ray's fake autoscaler on this machine.

The head has CPUs only; the one worker type has a logical GPU and `min_workers: 0`, so
when the sweep starts there is no GPU anywhere, as with ray_cluster.yaml on AWS. The sweep
must start anyway, the autoscaler must add nodes for its trials (two at once, on two
nodes), every trial must finish and appear once in MLflow (a real `mlflow server` on
loopback). Then a worker node is killed mid-trial: its trial must resume on a new node
from its checkpoint.

Ray's `AutoscalingCluster` helper is not used: its start and shutdown run `ray stop
--force`, which kills every Ray instance on the machine. This file starts its own head
with a private temp dir and free ports, and stops only the processes it started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, local_env, small_sweep_yaml, wait_for
from tests.test_cluster import (
    _checkpoints,
    _client,
    _trial_runs,
    epochs_before_last_attempt,
    serve_mlflow,
)

pytestmark = pytest.mark.slow

EPOCHS = 20
SWEEP = small_sweep_yaml(
    name="autoscaled",
    epochs=EPOCHS,
    resources="{workers_per_trial: 1, cpus_per_worker: 1, gpus_per_worker: 1}",
    analysis="{blocks: none}",
)
WORKER_TYPE = {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0}
MAX_WORKERS = 3  # two trials, and one node to replace the one killed


def _autoscaler_config(gcs_address: str) -> dict:
    return {
        "cluster_name": "fake-autoscaled",
        "max_workers": MAX_WORKERS,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {**WORKER_TYPE, "max_workers": MAX_WORKERS},
        },
        "auth": {"ssh_user": "ubuntu"},
        **{k: [] for k in ("setup_commands", "head_setup_commands", "worker_setup_commands")},
        **{k: [] for k in ("head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
    }


def _processes_under(root: str) -> dict[int, str]:
    """PID -> command line of every process started for this cluster (all name `root`)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if root in cmd and int(pid) != os.getpid():
            found[int(pid)] = cmd
    return found


def _node_of(pid: int) -> str | None:
    """The fake node a process belongs to (the provider names it in the environment)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RAY_OVERRIDE_NODE_ID_FOR_TESTING="):
            return item.split(b"=", 1)[1].decode()
    return None


def _stop(root: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _processes_under(root):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)


def _worker_raylets(root: str) -> dict[int, str]:
    """PID -> node id of the fake worker nodes' raylets that are running."""
    return {
        pid: _node_of(pid)
        for pid, cmd in _processes_under(root).items()
        if "raylet/raylet" in cmd and "sockets/raylet." in cmd
    }


@pytest.fixture(scope="module")
def fake_cluster():
    root = tempfile.mkdtemp(prefix="cct-fake-as-")  # short: Ray's socket paths have a limit
    port = free_port()
    config = Path(root) / "autoscaler.yaml"
    config.write_text(json.dumps(_autoscaler_config(f"127.0.0.1:{port}")))
    env = {**local_env(), "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    # Token authentication on, with the cluster's own token: a fresh machine has no
    # ~/.ray/auth_token, and `ray start` refuses to start without one.
    token = Path(root) / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN_PATH"] = "token", str(token)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    cmd = [
        ray_cli, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
        "--num-cpus=2", "--num-gpus=0", f"--temp-dir={root}/ray",
        f"--autoscaling-config={config}", "--include-dashboard=false", "--disable-usage-stats",
        *(f"--{flag}={free_port()}" for flag in (
            "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port", "ray-client-server-port")),
    ]  # fmt: skip
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        if started.returncode != 0:  # say why: Ray's own words, not only the command line
            pytest.fail(
                f"ray start --head failed:\n{started.stdout[-3000:]}{started.stderr[-3000:]}"
            )
        yield {"root": root, "address": f"127.0.0.1:{port}", "config": config}
    finally:
        _stop(root)


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    with serve_mlflow(tmp_path_factory.mktemp("mlflow-autoscaled")) as url:
        yield url


def _env(cluster: dict, url: str, storage: Path) -> dict[str, str]:
    return {
        **local_env(),
        "MLFLOW_TRACKING_URI": url,
        "CCT_STORAGE_PATH": str(storage),
        "CCT_SIMULATED_GPUS": "1",  # logical GPUs: the workers train on the CPU underneath
        "CCT_AUTOSCALING_CONFIG": str(cluster["config"]),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(Path(cluster["root"]) / "auth_token"),
    }


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces, so split after the ")"
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(stat.parent.name))
    return out


def _kill_node(root: str, node_id: str) -> list[int]:
    """SIGKILL the fake node's raylet and every process under it (its workers), as when
    an instance vanishes: nothing of it may log after this."""
    raylets = [p for p, node in _worker_raylets(root).items() if node == node_id]
    pids, todo = [], list(raylets)
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += _children(pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


@pytest.fixture(scope="module")
def autoscaled_sweep(fake_cluster, mlflow_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("autoscaled")
    storage = root / "shared"
    (root / "sweep.yaml").write_text(SWEEP)
    log = root / "sweep.log"
    assert _worker_raylets(fake_cluster["root"]) == {}  # no GPU node when the sweep starts
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml",
         "--address", fake_cluster["address"]],
        cwd=root, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        env=_env(fake_cluster, mlflow_url, storage),
    )  # fmt: skip
    joined: dict[str, float] = {}  # node id -> seconds after the sweep started
    peak = {"concurrent": 0}

    def observe():
        for node in _worker_raylets(fake_cluster["root"]).values():
            if node is not None:  # None: a raylet starting or dying as we looked
                joined.setdefault(node, round(time.monotonic() - t0, 1))
        runs = _trial_runs(mlflow_url, "autoscaled")
        active = [r for r in runs if r.info.status == "RUNNING" and "ray_node_id" in r.data.tags]
        peak["concurrent"] = max(peak["concurrent"], len(active))
        return runs

    removed = {}
    try:

        def on_two_nodes():
            runs = observe()
            nodes = {r.data.tags.get("ray_node_id") for r in runs} - {None}
            return runs if len(runs) == 2 and len(nodes) == 2 else None

        runs = wait_for(on_two_nodes, 420, "two trials on two autoscaled nodes", proc)
        first_nodes = {r.data.tags["trial_id"]: r.data.tags["ray_node_id"] for r in runs}
        two_at_once = round(time.monotonic() - t0, 1)

        def epochs_logged(trial_id: str) -> int:
            run = next(r for r in observe() if r.data.tags["trial_id"] == trial_id)
            return len(_client(mlflow_url).get_metric_history(run.info.run_id, "train_loss"))

        def checkpointed():
            ready = [t for t in first_nodes if _checkpoints(storage, t) >= 2]
            ready = [t for t in ready if epochs_logged(t) >= 3]
            return ready[0] if ready else None

        victim = wait_for(checkpointed, 300, "a trial with checkpoints and 3 epochs", proc)
        killed = _kill_node(fake_cluster["root"], first_nodes[victim])
        removed = {
            "trial_id": victim,
            "node_id": first_nodes[victim],
            "at": round(time.monotonic() - t0, 1),
            "pids": len(killed),
            "epochs_logged_before": epochs_logged(victim),
        }
        while proc.poll() is None and time.monotonic() - t0 < 900:
            observe()
            time.sleep(1)
        assert proc.wait(1) == 0, log.read_text()[-5000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    timeline = {
        "nodes_joined_s": joined,
        "two_trials_on_two_nodes_s": two_at_once,
        "peak_trials_running": peak["concurrent"],
        "killed": removed,
        "sweep_s": round(time.monotonic() - t0, 1),
    }
    print("autoscaling timeline:", json.dumps(timeline), flush=True)
    return {"log": log.read_text(), "first_nodes": first_nodes, **timeline}


def test_the_sweep_grew_the_cluster_and_ran_two_trials_at_once(autoscaled_sweep):
    assert "The cluster can grow to 5 CPUs and 3 GPUs" in autoscaled_sweep["log"]
    assert len(set(autoscaled_sweep["first_nodes"].values())) == 2
    assert autoscaled_sweep["peak_trials_running"] == 2
    # Two nodes at least for the two trials; the autoscaler may launch the third (the one
    # the killed node's trial moves to) before or after the kill.
    assert 2 <= len(autoscaled_sweep["nodes_joined_s"]) <= MAX_WORKERS
    assert "Best trials of sweep 'autoscaled' (2 finished, 0 errored)" in autoscaled_sweep["log"]


def test_each_trial_is_in_mlflow_once_with_every_epoch(autoscaled_sweep, mlflow_url):
    client = _client(mlflow_url)
    runs = _trial_runs(mlflow_url, "autoscaled")
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert sorted(steps) == list(range(1, EPOCHS + 1))


def test_the_killed_nodes_trial_resumed_elsewhere_from_its_checkpoint(autoscaled_sweep, mlflow_url):
    removed = autoscaled_sweep["killed"]
    run = next(
        r
        for r in _trial_runs(mlflow_url, "autoscaled")
        if r.data.tags["trial_id"] == removed["trial_id"]
    )
    assert run.data.tags["ray_node_id"] != removed["node_id"]
    client = _client(mlflow_url)
    starts = [m.value for m in client.get_metric_history(run.info.run_id, "attempt_first_epoch")]
    assert starts[0] == 1 and len(starts) >= 2
    before = epochs_before_last_attempt(client, run.info.run_id)
    assert before >= removed["epochs_logged_before"], (before, removed)
    assert 2 <= starts[-1] <= before + 1, (starts, before, removed)


def test_a_worker_that_fits_no_node_type_is_refused(fake_cluster, mlflow_url, tmp_path):
    text = SWEEP.replace("cpus_per_worker: 1", "cpus_per_worker: 2")
    (tmp_path / "sweep.yaml").write_text(text.replace("name: autoscaled", "name: refused"))
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml",
         "--address", fake_cluster["address"]],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=_env(fake_cluster, mlflow_url, tmp_path / "shared"),
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "a worker needs 2 CPU and 1 GPU on one node" in lines[0]
    assert "the largest is gpu_worker (CPU 1, GPU 1)" in lines[0]
    assert _client(mlflow_url).get_experiment_by_name("refused") is None  # nothing written


def test_a_dry_run_against_the_cluster_checks_the_fit(fake_cluster, mlflow_url, tmp_path):
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml", "--dry-run",
         "--address", fake_cluster["address"]],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=_env(fake_cluster, mlflow_url, tmp_path / "shared"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resource fit   checked: the cluster can grow to 5 CPUs and 3 GPUs" in out.stdout
