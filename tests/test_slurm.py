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

from tests.conftest import local_env, small_sweep_yaml
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
def slurm_job(tmp_path_factory):
    lacking = missing()
    if lacking:
        pytest.skip(
            f"no local SLURM: missing {', '.join(lacking)} (apt-get install slurm-wlm munge)"
        )
    import ray

    # A Ray instance of "another job" on the same machine: it must outlive the SLURM job.
    # (ray.init may turn on token auth in os.environ; later tests must not inherit it.)
    saved = {k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH")}
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
    neighbour = ray.get_runtime_context().get_node_id()
    try:
        t0 = time.monotonic()
        with local_slurm(tmp_path_factory.mktemp("slurm")) as env:
            started = time.monotonic() - t0
            submit = tmp_path_factory.mktemp("submit")
            (submit / "sweep.yaml").write_text(SWEEP)
            job_env = {**local_env(), "SLURM_CONF": env["SLURM_CONF"],
                       "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
            t1 = time.monotonic()
            out = subprocess.run(
                ["sbatch", "--wait", "--parsable", "--cpus-per-task=2", str(SBATCH),
                 "--config", "sweep.yaml"],
                cwd=submit, env=job_env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            wall = time.monotonic() - t1
            job_id = out.stdout.strip().split(";")[0]
            log = next(submit.glob("slurm-*.out"), None)
            print(f"SLURM up in {started:.1f} s; sbatch --wait took {wall:.1f} s")
            alive = ray.get(ray.remote(lambda: ray.get_runtime_context().get_node_id()).remote())
            yield {
                "rc": out.returncode,
                "job_id": job_id,
                "submit": submit,
                "log": log.read_text() if log else out.stderr,
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
