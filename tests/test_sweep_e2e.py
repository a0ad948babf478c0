"""A real sweep on local Ray, end to end: 2 trials x 2 gloo workers, TPE, MLflow.

One sweep is shared by every test here. While it runs, one training worker is killed
(the trial must resume from its checkpoint inside Ray Train) and then the whole driver,
Ray included, is killed; re-running the same command must resume the sweep. The tests
then check what MLflow and Ray's files hold.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EPOCHS = 12
SWEEP = f"""
name: e2e
base:
  model: {{variant: cct_2_3x2_32, tokenizer_layers: 1, depth: 2, embed_dim: 32,
          conv_blocks: 0, attn_dropout: 0.0, drop_path: 0.0}}
  data: {{dataset: digits}}
  optim: {{epochs: {EPOCHS}, batch_size: 64, lr: 2.0e-3, warmup_epochs: 1}}
  latency_runs: 10
search:
  model.num_heads: {{choice: [2, 4]}}
tune: {{searcher: optuna-tpe, num_samples: 2, objectives: {{val_accuracy: max}}}}
resources: {{workers_per_trial: 2, cpus_per_worker: 0.45, max_concurrent_trials: 2}}
analysis: {{blocks: all}}
"""


def _checkpoints(root: Path) -> dict[str, int]:
    """Trial id -> number of checkpoint folders Ray Train has persisted for it."""
    out = {}
    for run in root.glob("ray_results/*-train/train-*"):
        out[run.name.removeprefix("train-")] = len(list(run.glob("checkpoint_*")))
    return out


def _epochs_reported(root: Path) -> int:
    """Results Tune has recorded so far, over all trials (one per epoch)."""
    files = root.glob("ray_results/e2e-*/trial-*/result.json")
    return sum(len(f.read_text().splitlines()) for f in files)


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"sweep exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _start(cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml"],
        cwd=cwd,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killing it takes Ray down too
        env={**os.environ, "RAY_ADDRESS": ""},
    )


def _train_worker_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "sweep.yaml").write_text(SWEEP)
    log = root / "sweep.log"
    proc = _start(root, log)
    try:
        # 1. a worker dies after a checkpoint: Ray Train restarts the group from it
        _wait_for(lambda: max(_checkpoints(root).values(), default=0) >= 2, 240, "checkpoints", proc)
        pids = _train_worker_pids()
        assert pids, "no RayTrainWorker process found"
        os.kill(pids[0], signal.SIGKILL)
        # 2. later the driver dies, taking its local Ray instance with it
        reported = _epochs_reported(root)
        _wait_for(lambda: _epochs_reported(root) >= reported + 4, 240, "more epochs", proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    before_resume = _checkpoints(root)
    # 3. the same command again resumes the sweep
    proc = _start(root, log)
    try:
        assert proc.wait(420) == 0, log.read_text()[-5000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return {"root": root, "log": log.read_text(), "before_resume": before_resume}


@pytest.fixture(scope="module")
def mlflow_runs(sweep):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{sweep['root'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return client, runs


def test_resumed_sweep_reports_its_summary(sweep):
    assert "Resuming sweep 'e2e'" in sweep["log"]
    assert "Best trials of sweep 'e2e' (2 finished, 0 errored)" in sweep["log"]
    assert "python -m analysis.committee --experiment e2e" in sweep["log"]


def test_one_parent_and_one_child_run_per_trial(mlflow_runs):
    client, runs = mlflow_runs
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(parents) == 1
    assert len(children) == 2
    assert len({r.data.tags["trial_id"] for r in children}) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["spec_hash"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}


def test_every_epoch_logged_exactly_once(mlflow_runs):
    client, runs = mlflow_runs
    for run in (r for r in runs if r.data.tags.get("role") == "trial"):
        assert run.info.status == "FINISHED"
        for name in ("train_loss", "val_accuracy"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (name, steps)


def test_child_runs_hold_results_params_and_artifacts(mlflow_runs):
    client, runs = mlflow_runs
    heads = set()
    for run in (r for r in runs if r.data.tags.get("role") == "trial"):
        m, p, t = run.data.metrics, run.data.params, run.data.tags
        for key in ("val_accuracy", "test_accuracy", "latency_ms", "params", "macs"):
            assert key in m, key
        assert 0.5 < m["test_accuracy"] <= 1.0
        heads.add(p["model.num_heads"])
        assert p["data.dataset"] == "digits"
        assert t["split_hash"] and t["device"]
        files = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert {"checkpoint", "logits", "shp"} <= files
        ckpt = {f.path for f in client.list_artifacts(run.info.run_id, "checkpoint")}
        assert {"checkpoint/model.pt", "checkpoint/model.json"} <= ckpt
        shp = {f.path for f in client.list_artifacts(run.info.run_id, "shp")}
        assert "shp/summary.json" in shp
    assert heads <= {"2", "4"}


def test_epochs_continue_after_each_crash(sweep):
    root = sweep["root"]
    assert any(n >= 2 for n in sweep["before_resume"].values())
    for result_file in root.glob("ray_results/e2e-*/trial-*/result.json"):
        epochs = [json.loads(line)["epoch"] for line in result_file.read_text().splitlines()]
        # a restart from 0 would report epoch 1 again; a resume only goes forward
        assert epochs == sorted(set(epochs)), epochs
        assert epochs[-1] == EPOCHS


def test_optuna_study_keeps_its_trial_count(sweep):
    from ray.tune.search.optuna import OptunaSearch

    states = sorted(sweep["root"].glob("ray_results/e2e-*/searcher-state-*.pkl"))
    assert states, "no searcher state saved"
    searcher = OptunaSearch()
    searcher.restore(str(states[-1]))
    assert len(searcher._ot_study.trials) == 2
