"""A sweep on a lab's real stores (tests/servers.py: PostgreSQL, moto's S3 server and an MLflow
server on both, on loopback): it logs through the MLflow server with `storage_path` on S3, is
killed (SIGKILL, driver and Ray) after a checkpoint reached the bucket, and resumes with
nothing of it left on the driver's disk: Tune's state, the checkpoints and the Optuna study
come back from the bucket, every trial and every epoch is in MLflow once; then the committee
and the report read the sweep back, its artifacts from the bucket through the server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from analysis import runs
from tests.conftest import assert_study_agrees, local_env, small_sweep_yaml, wait_for

pytestmark = pytest.mark.slow

EPOCHS = 5
NAME = "lab"


def _env(stores) -> dict[str, str]:
    return {**local_env(), **stores.env(), "OMP_NUM_THREADS": "1"}


def _sweep(stores, tmp_path: Path) -> list[str]:
    storage = f"s3://{stores.bucket}/ray_results"
    (tmp_path / "sweep.yaml").write_text(
        small_sweep_yaml(
            name=NAME,
            epochs=EPOCHS,
            resources="{workers_per_trial: 1, cpus_per_worker: 0.9, max_concurrent_trials: 1}",
            analysis="{blocks: all}",
            checkpoint_every=1,
            extra=f"storage_path: {storage}",
        )
    )
    return [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml"]


def _checkpoints(stores) -> list[str]:
    return [k for k in stores.keys("ray_results/") if "/checkpoint_" in k]


def _kill_after_first_checkpoint(stores, tmp_path: Path, command: list[str]) -> None:
    log = tmp_path / "first.log"
    first = subprocess.Popen(
        command, cwd=tmp_path, env=_env(stores), stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killing it takes its Ray down too
    )  # fmt: skip
    try:
        wait_for(lambda: _checkpoints(stores), 300, "a checkpoint in the bucket", first)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{log.read_text()[-3000:]}") from None
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)


def _trial_runs(client: MlflowClient) -> tuple:
    exp = client.get_experiment_by_name(NAME)
    parent = runs.latest_sweep_run(client, exp.experiment_id, NAME)
    return parent, runs.trial_runs(client, exp.experiment_id, parent.info.run_id)


def _phase(name: str, since: list[float]) -> None:
    """Print how long the phase that ends now took (pytest -s shows them)."""
    now = time.monotonic()
    print(f"{name}: {now - since[0]:.1f} s", flush=True)
    since[0] = now


def test_a_sweep_killed_midway_resumes_from_s3_on_postgres(lab_stores, tmp_path):
    stores, command = lab_stores, _sweep(lab_stores, tmp_path)
    client = MlflowClient(stores.tracking_uri)
    clock = [time.monotonic()]
    _kill_after_first_checkpoint(stores, tmp_path, command)
    _phase("first run, killed after its first checkpoint in the bucket", clock)
    parent, trials = _trial_runs(client)
    assert not all(r.info.status == "FINISHED" for r in trials)  # cut off mid-sweep
    journal = [k for k in stores.keys("ray_results/") if k.endswith("-optuna/lab.journal")]
    assert len(journal) == 1, stores.keys("ray_results/")
    # The driver's disk loses everything the sweep wrote there: only the stores remain.
    for local in ("optuna", "ray_results", "mlartifacts", "mlflow.db"):
        path = tmp_path / local
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    again = subprocess.run(command, cwd=tmp_path, env=_env(stores), capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    _phase("resumed run", clock)
    assert f"Restored the sweep's Optuna study from s3://{stores.bucket}/{journal[0]}" in (
        again.stdout
    )
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlartifacts").exists()

    parent_after, trials = _trial_runs(client)
    assert parent_after.info.run_id == parent.info.run_id  # resumed, not a new sweep run
    assert parent_after.info.status == "FINISHED"
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    assert len({r.data.tags["trial_id"] for r in trials}) == 2
    for run in trials:
        for key in ("train_loss", "val_accuracy"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps)
    assert_study_agrees(parent_after, trials)

    # The artifacts are in the bucket, under the server's destination, and nowhere else.
    in_bucket = stores.keys("mlflow/")
    for run in trials:
        mine = [k for k in in_bucket if f"/{run.info.run_id}/artifacts/" in k]
        assert any("/checkpoint/" in k for k in mine) and any("/logits/" in k for k in mine)

    committee = subprocess.run(
        [sys.executable, "-m", "analysis.committee", "--experiment", NAME, "--tolerance", "100",
         "--size", "2", "--out", str(tmp_path / "committee")],
        cwd=tmp_path, env=_env(stores), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert committee.returncode == 0, committee.stderr[-3000:]
    _phase("committee", clock)
    members = json.loads((tmp_path / "committee" / "committee.json").read_text())["members"]
    assert len(members) == 2

    report = subprocess.run(
        [sys.executable, "-m", "analysis.report", "--experiment", NAME, "--no-remeasure",
         "--out", str(tmp_path / "report.html")],
        cwd=tmp_path, env=_env(stores), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]
    _phase("report", clock)
    assert (tmp_path / "report.html").stat().st_size > 0
    # Both logged their outputs back through the server: into the bucket too.
    after = set(stores.keys("mlflow/")) - set(in_bucket)
    assert any(k.endswith(".html") for k in after), sorted(after)
