"""deploy/slurm/sweep.sbatch on a real SLURM: a one-node cluster on this machine
(tests/slurm_cluster.py), the sweep submitted as a user submits it (`sbatch --wait`), then
MLflow must hold every trial once, finished, and the job must have stopped only the Ray it
started: a Ray instance this test runs next to it still works, and no process of the job's
Ray is left. Skips, saying why, where SLURM is not installed (.ci/run installs it)."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import local_env, small_sweep_yaml, wait_for
from tests.slurm_cluster import local_slurm, missing

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "deploy" / "slurm" / "sweep.sbatch"
SWEEP = small_sweep_yaml(
    name="slurm",
    epochs=2,
    resources="{workers_per_trial: 1, cpus_per_worker: 0.9, max_concurrent_trials: 2}",
    analysis="{blocks: none}",
)


def _pids_of(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if int(p) != os.getpid()]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """(environment for sbatch, seconds SLURM took to start)."""
    lacking = missing()
    if lacking:
        pytest.skip(
            f"no local SLURM: missing {', '.join(lacking)} (apt-get install slurm-wlm munge)"
        )
    t0 = time.monotonic()
    with local_slurm(tmp_path_factory.mktemp("slurm")) as env:
        job_env = {k: v for k, v in local_env().items() if not k.startswith("RAY_AUTH")}
        job_env["SLURM_CONF"] = env["SLURM_CONF"]
        job_env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        yield job_env, time.monotonic() - t0


def sbatch(env: dict[str, str], submit: Path, *sweep_args: str, wait: bool) -> tuple[int, str]:
    """Submit the job file as a user does, from `submit`: (sbatch's exit code, job id)."""
    out = subprocess.run(
        ["sbatch", "--parsable", "--cpus-per-task=2", *(["--wait"] if wait else []),
         str(SBATCH), *sweep_args],
        cwd=submit, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return out.returncode, out.stdout.strip().split(";")[0]


@pytest.fixture(scope="module")
def slurm_job(slurm, tmp_path_factory):
    import ray

    env, started = slurm
    # A Ray instance of "another job" on the same machine: it must outlive the SLURM job.
    # (ray.init may turn on token auth in os.environ; later tests must not inherit it.)
    saved = {k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH")}
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
    neighbour = ray.get_runtime_context().get_node_id()
    try:
        submit = tmp_path_factory.mktemp("submit")
        (submit / "sweep.yaml").write_text(SWEEP)
        t1 = time.monotonic()
        rc, job_id = sbatch(env, submit, "--config", "sweep.yaml", wait=True)
        wall = time.monotonic() - t1
        log = submit / f"slurm-cct-sweep-{job_id}.out"
        print(f"SLURM up in {started:.1f} s; sbatch --wait took {wall:.1f} s")
        alive = ray.get(ray.remote(lambda: ray.get_runtime_context().get_node_id()).remote())
        yield {
            "rc": rc,
            "job_id": job_id,
            "submit": submit,
            "log": log.read_text() if log.is_file() else "(no job log)",
            "neighbour_alive": alive == neighbour,
        }
    finally:
        ray.shutdown()
        for key in [k for k in os.environ if k.startswith("RAY_AUTH")]:
            del os.environ[key]
        os.environ.update(saved)


def test_the_job_ran_the_sweep(slurm_job):
    assert slurm_job["rc"] == 0, slurm_job["log"][-5000:]
    assert "Best trials of sweep 'slurm' (2 finished, 0 errored)" in slurm_job["log"]


def test_every_trial_in_mlflow_once_and_finished(slurm_job):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{slurm_job['submit'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("slurm")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=50)
    assert len(runs) == 2, [r.data.tags.get("trial_id") for r in runs]
    assert len({r.data.tags["trial_id"] for r in runs}) == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all("test_accuracy" in r.data.metrics for r in runs)


def test_security_token_auth_and_mlflow_basic_auth(slurm_job):
    run = slurm_job["submit"] / ".slurm-cct" / slurm_job["job_id"]
    token = run / "ray_auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(token.read_text().strip()) == 64
    creds = slurm_job["submit"] / ".slurm-cct" / "mlflow_credentials"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    # The basic-auth app ran and made the generated user its admin.
    users = sqlite3.connect(slurm_job["submit"] / "mlflow_auth.db").execute(
        "SELECT username, is_admin FROM users"
    )
    assert users.fetchall() == [("cct", 1)]
    # Ray's port is the job's own, not Ray's default 6379 that every job would share.
    port = int(re.search(r"Ray at [\d.]+:(\d+)", slurm_job["log"]).group(1))
    assert port == 20000 + (int(slurm_job["job_id"]) % 180) * 200


def test_the_job_stopped_only_its_own_ray(slurm_job):
    assert slurm_job["neighbour_alive"]  # the test's own Ray instance still runs tasks
    assert _pids_of(f"cct-ray-{slurm_job['job_id']}") == []
    assert not Path(f"/tmp/cct-ray-{slurm_job['job_id']}").exists()


def _squeue_empty(env: dict[str, str], job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id], env=env, capture_output=True, text=True)
    return not out.stdout.strip()


@pytest.mark.skipif(
    os.environ.get("CCT_SLURM_PREEMPT") != "1",
    reason="two more SLURM jobs (~3 min on 2 cores, beyond the suite's budget): set "
    "CCT_SLURM_PREEMPT=1 to run it",
)
def test_a_preempted_job_stops_cleanly_and_the_same_command_resumes(slurm, tmp_path):
    env, _ = slurm
    (tmp_path / "sweep.yaml").write_text(SWEEP.replace("epochs: 2", "epochs: 12"))
    rc, job_id = sbatch(env, tmp_path, "--config", "sweep.yaml", wait=False)
    assert rc == 0
    log = tmp_path / f"slurm-cct-sweep-{job_id}.out"
    wait_for(
        lambda: list(tmp_path.glob("ray_results/*-train/train-*/checkpoint_*")), 300, "a checkpoint"
    )
    # What SLURM does before a preemption or at the time limit (--signal=B:TERM)
    subprocess.run(["scancel", "--signal=TERM", "--batch", job_id], env=env, check=True)
    wait_for(lambda: _squeue_empty(env, job_id), 120, "the job to end")
    text = log.read_text()
    assert "interrupted by SIGTERM" in text and "the sweep exited with 143" in text, text[-3000:]
    assert _pids_of(f"cct-ray-{job_id}") == []
    rc, job2 = sbatch(env, tmp_path, "--config", "sweep.yaml", wait=True)
    text = (tmp_path / f"slurm-cct-sweep-{job2}.out").read_text()
    assert rc == 0 and "Resuming sweep 'slurm'" in text, text[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("slurm")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=50)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:  # every epoch once, across the two jobs
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, 13)), steps
