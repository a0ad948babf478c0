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
from tests.conftest import (
    assert_study_agrees,
    free_port,
    local_env,
    small_sweep_yaml,
    wait_for,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

EPOCHS = 9  # the kill comes at a trial's 2nd checkpoint: 7 more epochs keep it mid-trial
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
            analysis="{blocks: none}",  # the report's SHP sections have tests of their own
            checkpoint_every=1,
            extra=f"storage_path: {storage}",
        )
    )
    return [sys.executable, "-m", "orchestrator.sweep", "--config", "sweep.yaml"]


def _second_checkpoint(stores) -> bool:
    """Some trial has two checkpoint folders in the bucket: by the second, Ray Train has
    registered the first, which a resume restores (folders: <run>/checkpoint_<time>/)."""
    folders: dict[str, set[str]] = {}
    for key in stores.keys("ray_results/"):
        run, sep, rest = key.partition("/checkpoint_")
        if sep:
            folders.setdefault(run, set()).add(rest.split("/", 1)[0])
    return any(len(f) >= 2 for f in folders.values())


def _kill_after_a_checkpoint(stores, tmp_path: Path, command: list[str]) -> None:
    log = tmp_path / "first.log"
    first = subprocess.Popen(
        command, cwd=tmp_path, env=_env(stores), stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killing it takes its Ray down too
    )  # fmt: skip
    try:
        wait_for(lambda: _second_checkpoint(stores), 300, "checkpoints in the bucket", first)
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
    _kill_after_a_checkpoint(stores, tmp_path, command)
    _phase("first run, killed once checkpoints were in the bucket", clock)
    parent, trials = _trial_runs(client)
    done = {
        r.info.run_id: len(client.get_metric_history(r.info.run_id, "train_loss")) for r in trials
    }
    cut = [run_id for run_id, n in done.items() if 1 <= n < EPOCHS]
    assert len(cut) == 1, done  # killed in the middle of a trial that had checkpointed
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
    # the cut trial went on from its checkpoint in the bucket, not from its first epoch (the
    # newest checkpoint may be ahead of the epochs MLflow had when the driver died)
    starts = [m.value for m in client.get_metric_history(cut[0], "attempt_first_epoch")]
    assert len(starts) == 2 and 2 <= starts[1] <= EPOCHS, (starts, done)

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


def test_the_head_start_runs_mlflow_on_the_labs_postgres(lab_stores, tmp_path):
    """deploy/head/start.sh as `ray up` runs it on a head whose ~/.cct/mlflow_db.env names a
    PostgreSQL (Ray's CLI stubbed: a real `ray stop` would stop every Ray on this machine)."""
    home, port = tmp_path / "home", free_port()
    for d in ("bin", ".cct", ".ray"):
        (home / d).mkdir(parents=True)
    (home / "bin/ray").write_text('#!/bin/sh\necho "ray $*" >> "$HOME/ray-calls"\n')
    (home / "bin/ray").chmod(0o755)
    (home / ".ray/auth_token").write_text("token\n")
    (home / ".cct/mlflow_credentials").write_text(
        "MLFLOW_TRACKING_USERNAME=cct\nMLFLOW_TRACKING_PASSWORD=head-test-password-0123\n"
    )
    (home / ".cct/mlflow_db.env").write_text(f"CCT_MLFLOW_BACKEND_URI={lab_stores.pg_url}\n")
    (home / ".cct_env").write_text(
        "set -a; . ~/.cct/mlflow_credentials; set +a\n"
        f"export CCT_HEAD_ADDRESS=127.0.0.1 CCT_MLFLOW_PORT={port} CCT_MLFLOW_WORKERS=1\n"
        f"export CCT_STORAGE_PATH=s3://{lab_stores.bucket}/head/ray_results\n"
    )
    env = {**_env(lab_stores), "HOME": str(home),
           "PATH": f"{home / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI")
    start = subprocess.run(["bash", str(ROOT / "deploy/head/start.sh")], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    pid = int((home / ".cct/mlflow.pid").read_text()) if (home / ".cct/mlflow.pid").exists() else 0
    try:
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        # the database's URL (its password) is in no command line and no world-readable file
        args = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert lab_stores.pg_url.split("@")[0] not in args
        assert (home / ".cct/basic_auth.ini").stat().st_mode & 0o777 == 0o600
        uri = f"http://127.0.0.1:{port}"
        os.environ.update(
            MLFLOW_TRACKING_USERNAME="cct", MLFLOW_TRACKING_PASSWORD="head-test-password-0123"
        )
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("head-check"))
        client.log_text(run.info.run_id, "kept in the bucket", "note.txt")
        assert any(k.endswith(f"/{run.info.run_id}/artifacts/note.txt")
                   for k in lab_stores.keys("head/mlflow/"))  # fmt: skip
        # the same runs as the lab's other server: one database
        assert MlflowClient(lab_stores.tracking_uri).get_run(run.info.run_id).info.run_id
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)
        if pid:
            os.killpg(pid, signal.SIGTERM)


@pytest.mark.skipif(shutil.which("pgloader") is None, reason="pgloader is not installed")
def test_a_sqlite_store_moves_to_postgres_with_every_run_id(lab_stores, tmp_path):
    """The README's route: MLflow makes the schema in an empty database, pgloader copies the
    rows (data only), and the runs keep their ids, parents, params and metric histories."""
    import psycopg  # deferred: a dev-extra driver, only for making the empty database

    sqlite = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = sqlite.create_experiment("old", artifact_location=str(tmp_path / "mlartifacts"))
    parent = sqlite.create_run(exp, tags={runs.ROLE: runs.SWEEP_ROLE}).info.run_id
    for i in range(3):
        run_id = sqlite.create_run(exp, tags={runs.PARENT_TAG: parent}).info.run_id
        for step in (1, 2, 3):
            sqlite.log_metric(run_id, "val_accuracy", i + step / 10, step=step)
        sqlite.log_param(run_id, "model.num_heads", str(2**i))
        sqlite.set_terminated(run_id, "FINISHED")
    before = {r.info.run_id: r for r in sqlite.search_runs([exp])}

    with psycopg.connect(lab_stores.pg_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("CREATE DATABASE migrated")
    url = lab_stores.pg_url.rsplit("/", 1)[0] + "/migrated"
    # (the README's first step, `mlflow db upgrade` of the sqlite file, is a no-op for a file
    # this MLflow just made)
    steps = [
        [sys.executable, "-m", "mlflow", "db", "upgrade", url],  # the schema, in the new one
        [
            "pgloader",
            "--with",
            "data only",
            "--with",
            "truncate",
            "--with",
            "reset sequences",
            f"sqlite://{tmp_path / 'mlflow.db'}",
            url.replace("+psycopg", ""),
        ],  # fmt: skip
    ]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (cmd[:4], done.stdout[-2000:], done.stderr[-2000:])

    pg = MlflowClient(url)
    after = {r.info.run_id: r for r in pg.search_runs([exp])}
    assert after.keys() == before.keys()
    for run_id, run in before.items():
        assert after[run_id].data.tags == run.data.tags
        assert after[run_id].data.params == run.data.params
        assert after[run_id].info.status == run.info.status
        history = [(m.step, m.value) for m in pg.get_metric_history(run_id, "val_accuracy")]
        assert history == [
            (m.step, m.value) for m in sqlite.get_metric_history(run_id, "val_accuracy")
        ]
    assert int(pg.create_experiment("new")) > int(exp)  # the sequences go on after the copy
