"""The multi-node path, simulated on this machine with the same code as on a cloud cluster.

`ray.cluster_utils.Cluster` starts a head and three worker nodes, each worker declaring one
logical GPU (torch is the CPU build: Ray Train picks the gloo backend and the trainer runs
on the CPU underneath). MLflow is a real `mlflow server` process on loopback, reached over
HTTP as on the cloud; results go to a storage path every node sees. The sweep runs as a
user runs it (`python -m orchestrator.sweep --address ...`, the tracking URI and storage
from the environment, as ray_cluster.yaml sets them on the head).

While it runs, the node hosting one trial's rank 0 is removed after that trial has
checkpointed: the trial must continue from the checkpoint on the spare node and finish, and
MLflow must show it once, with one value per epoch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port, local_env, small_sweep_yaml, wait_for

pytestmark = pytest.mark.slow

EPOCHS = 30
SWEEP = small_sweep_yaml(
    name="multinode",
    epochs=EPOCHS,
    resources="{workers_per_trial: 1, cpus_per_worker: 1, gpus_per_worker: 1, "
    "max_concurrent_trials: 2}",
    analysis="{blocks: none}",
)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextmanager
def serve_mlflow(root: Path, store: str = "mlflow.db"):
    """`mlflow server` on loopback with a database backend (`root / store`) and proxied
    artifacts, as the head node of ray_cluster.yaml runs it (there on the private address);
    yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / store}",
         "--artifacts-destination", str(root / "artifacts")],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: _healthy(url), 180, "the MLflow server", proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # a loaded machine: do not wait for gunicorn
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with serve_mlflow(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture(scope="module")
def ray_cluster():
    from ray.cluster_utils import Cluster

    def start() -> tuple[Cluster, list]:
        cluster = Cluster(
            initialize_head=True,
            connect=False,
            head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False},
        )
        try:
            # Three one-GPU nodes for two one-GPU trials: one spare to restart on after a loss.
            workers = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(3)]
            cluster.wait_for_nodes(timeout=120)
        except Exception:
            cluster.shutdown()
            raise
        return cluster, workers

    try:
        cluster, workers = start()
    except Exception:  # Ray waits a fixed 30 s for each raylet; a busy machine may need two
        cluster, workers = start()
    try:
        yield cluster, workers
    finally:
        cluster.shutdown()


def _sweep_env(tracking_uri: str, storage: Path) -> dict[str, str]:
    # The nodes' GPUs are logical: the workers train on the CPU underneath.
    return {
        **local_env(),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "CCT_STORAGE_PATH": str(storage),
        "CCT_SIMULATED_GPUS": "1",
    }


def _client(url: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(url)


def _trial_runs(url: str, experiment: str) -> list:
    client = _client(url)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=50)


def epochs_before_last_attempt(client, run_id: str) -> int:
    """How many epochs the trial's earlier attempts logged: those whose points are older than
    the last attempt's start. Counted afterwards, not when the node is removed: a worker of
    the removed node can outlive its raylet by a moment and log (and checkpoint) one more."""
    attempts = client.get_metric_history(run_id, "attempt_first_epoch")
    last_start = max(attempts, key=lambda m: m.step).timestamp
    losses = client.get_metric_history(run_id, "train_loss")
    return sum(1 for m in losses if m.timestamp < last_start)


def _checkpoints(storage: Path, trial_id: str) -> int:
    return len(list(storage.glob(f"*-train/train-{trial_id}/checkpoint_*")))


@pytest.fixture(scope="module")
def multinode_sweep(ray_cluster, mlflow_server, tmp_path_factory):
    cluster, workers = ray_cluster
    root = tmp_path_factory.mktemp("multinode")
    storage = root / "shared"  # every simulated node sees this path, as with a mounted FS
    (root / "sweep.yaml").write_text(SWEEP)
    log = root / "sweep.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml",
         "--address", cluster.address],
        cwd=root, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        env=_sweep_env(mlflow_server, storage),
    )  # fmt: skip
    removed = {}
    try:
        # Both trials running, on two different nodes.
        def running_on_two_nodes():
            runs = _trial_runs(mlflow_server, "multinode")
            nodes = {r.data.tags.get("ray_node_id") for r in runs} - {None}
            return runs if len(runs) == 2 and len(nodes) == 2 else None

        runs = wait_for(running_on_two_nodes, 300, "two trials on two nodes", proc)
        first_nodes = {r.data.tags["trial_id"]: r.data.tags["ray_node_id"] for r in runs}
        # Seen from another shell, through the MLflow server alone (orchestrator/control).
        watched = {
            command: subprocess.run(
                [sys.executable, "-m", "orchestrator.sweep", command, *extra],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=120,
                env=_sweep_env(mlflow_server, storage),
            )  # fmt: skip
            for command, extra in (("list", []), ("status", ["multinode"]))
        }

        # One of them has checkpointed and logged a few epochs: take its rank 0's node away.
        def epochs_logged(trial_id: str) -> int:
            run = next(r for r in _trial_runs(mlflow_server, "multinode")
                       if r.data.tags["trial_id"] == trial_id)  # fmt: skip
            return len(_client(mlflow_server).get_metric_history(run.info.run_id, "train_loss"))

        def checkpointed():
            ready = [t for t in first_nodes if _checkpoints(storage, t) >= 2]
            ready = [t for t in ready if epochs_logged(t) >= 3]
            return ready[0] if ready else None

        victim = wait_for(checkpointed, 300, "a trial with checkpoints and 3 epochs", proc)
        node = next(w for w in workers if w.node_id == first_nodes[victim])
        cluster.remove_node(node, allow_graceful=False)
        # A lower bound only: the node's workers can outlive its raylet by a moment.
        removed = {
            "trial_id": victim,
            "node_id": node.node_id,
            "epochs_logged_before": epochs_logged(victim),
        }
        assert proc.wait(600) == 0, log.read_text()[-5000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return {
        "root": root,
        "storage": storage,
        "log": log.read_text(),
        "first_nodes": first_nodes,
        "removed": removed,
        "watched": watched,
    }


def test_list_and_status_see_the_running_sweep_from_another_shell(multinode_sweep):
    listed, status = multinode_sweep["watched"]["list"], multinode_sweep["watched"]["status"]
    assert listed.returncode == 0 and "multinode" in listed.stdout, listed.stderr
    assert "running" in listed.stdout, listed.stdout
    assert status.returncode == 0, status.stderr
    nodes = {n[:8] for n in multinode_sweep["first_nodes"].values()}
    assert all(n in status.stdout for n in nodes), status.stdout  # each trial's node


def test_trials_ran_on_different_nodes(multinode_sweep):
    assert len(set(multinode_sweep["first_nodes"].values())) == 2
    assert "Best trials of sweep 'multinode' (2 finished, 0 errored)" in multinode_sweep["log"]


def test_lost_node_trial_continued_from_its_checkpoint(multinode_sweep, mlflow_server):
    removed = multinode_sweep["removed"]
    client = _client(mlflow_server)
    run = next(
        r
        for r in _trial_runs(mlflow_server, "multinode")
        if r.data.tags["trial_id"] == removed["trial_id"]
    )
    assert run.info.status == "FINISHED", (run.info.status, removed)
    assert "test_accuracy" in run.data.metrics, sorted(run.data.metrics)
    # It restarted on another node, and that attempt began after the checkpointed epochs.
    assert run.data.tags["ray_node_id"] != removed["node_id"]
    # Its restart began from a checkpoint (epoch 2 or later), never from scratch, and no
    # later than right after the epochs its lost attempt finished: Ray Train resumes from
    # the last checkpoint it registered, which can be one behind the newest folder on disk.
    starts = [m.value for m in client.get_metric_history(run.info.run_id, "attempt_first_epoch")]
    assert starts[0] == 1
    assert len(starts) >= 2
    before = epochs_before_last_attempt(client, run.info.run_id)
    assert before >= removed["epochs_logged_before"], (before, removed)
    assert 2 <= starts[-1] <= before + 1, (starts, before, removed)


def test_every_epoch_logged_once_over_http(multinode_sweep, mlflow_server):
    client = _client(mlflow_server)
    runs = _trial_runs(mlflow_server, "multinode")
    assert len(runs) == 2  # the restarted trial was not duplicated
    for run in runs:
        for key in ("train_loss", "val_accuracy"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"checkpoint", "logits"} <= artifacts


def test_committee_reads_members_over_http(multinode_sweep, mlflow_server, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "analysis.committee", "--experiment", "multinode",
         "--tolerance", "100", "--size", "2", "--out", str(tmp_path / "committee")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=_sweep_env(mlflow_server, multinode_sweep["storage"]),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "committee" / "committee.json").read_text())
    assert len(report["members"]) == 2


def test_local_store_refused_on_many_nodes(ray_cluster, tmp_path):
    cluster, _ = ray_cluster
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    env = _sweep_env("", tmp_path / "shared")
    del env["MLFLOW_TRACKING_URI"]
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml",
         "--address", cluster.address],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr
    assert "tracking.tracking_uri=sqlite:///" in lines[0]
    assert "MLFLOW_TRACKING_URI" in lines[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was written


def test_stop_resume_and_cancel_from_another_shell_on_the_cluster(
    ray_cluster, mlflow_server, tmp_path
):
    """orchestrator/control on the multi-node path, through the MLflow server alone: a grid of
    a short trial and one far too long; the sweep stopped, resumed, the long trial cancelled
    in the resumed sweep, which ends with the short one finished once."""
    cluster, _ = ray_cluster
    short, long = 8, 2000
    (tmp_path / "sweep.yaml").write_text(
        small_sweep_yaml(
            name="multictl",
            epochs=short,
            resources="{workers_per_trial: 1, cpus_per_worker: 1, gpus_per_worker: 1, "
            "max_concurrent_trials: 2}",
            analysis="{blocks: none}",
            search=f"{{optim.epochs: {{grid: [{short}, {long}]}}}}",
            tune="{searcher: grid, objectives: {val_accuracy: max}}",
        )
    )
    env = _sweep_env(mlflow_server, tmp_path / "shared")

    def sweep() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml",
             "--address", cluster.address],
            cwd=tmp_path, stdout=(tmp_path / "sweep.log").open("a"), stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )  # fmt: skip

    def control(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.sweep", *argv],
            cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env,
        )  # fmt: skip

    client = _client(mlflow_server)

    def by_budget() -> dict[int, object]:
        runs = _trial_runs(mlflow_server, "multictl")
        # a run just created may not have its params yet: it is not listed until it has
        return {
            int(r.data.params["optim.epochs"]): r for r in runs if "optim.epochs" in r.data.params
        }

    def long_running_past(epoch: int) -> bool:
        run = by_budget().get(long)
        if run is None or client.get_run(run.info.run_id).info.status != "RUNNING":
            return False
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        return max((m.step for m in history), default=0) > epoch

    driver = sweep()
    try:
        wait_for(lambda: long_running_past(0), 420, "the long trial training", driver)
        stop = control("stop", "multictl")
        assert stop.returncode == 0, stop.stderr
        assert driver.wait(180) == 128 + signal.SIGTERM
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    long_run = by_budget()[long]
    reached = max(m.step for m in client.get_metric_history(long_run.info.run_id, "val_accuracy"))
    resumed = sweep()
    try:
        wait_for(lambda: long_running_past(reached), 420, "the long trial resumed", resumed)
        cancel = control("cancel", "multictl", long_run.data.tags["trial_id"])
        assert cancel.returncode == 0, cancel.stderr
        assert resumed.wait(600) == 0, (tmp_path / "sweep.log").read_text()[-4000:]
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
    final = by_budget()
    assert final[long].info.status == "KILLED"
    assert final[long].data.tags.get("cancelled") == "true"
    assert final[short].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(final[short].info.run_id, "val_accuracy")]
    assert sorted(steps) == list(range(1, short + 1)), steps
