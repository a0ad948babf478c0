"""deploy/slurm/sweep.sbatch on a real SLURM: a one-node cluster on this machine
(tests/slurm_cluster.py) that confines every task to its CPUs and preempts as sites do.
The sweep is submitted as a user submits it; while it runs, every process of its Ray must
hold the CPUs Ray is told it has, and its MLflow server must answer through an ssh tunnel's
Host header; then a job of a higher-priority partition preempts it: SLURM signals every step
at once and requeues it, and the requeued job must resume the sweep so that MLflow holds
every trial and every epoch once. The job must have stopped only the Ray it started: a Ray
instance this test runs next to it still works, and no process of the job's Ray is left.
Skips, saying why, where SLURM is not installed (.ci/run installs it)."""

from __future__ import annotations

import base64
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import local_env, small_sweep_yaml, wait_for
from tests.slurm_cluster import confinement, local_slurm, missing

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "deploy" / "slurm" / "sweep.sbatch"
EPOCHS = 4
CPUS = 2  # --cpus-per-task of the test job: what Ray is told, what its steps must get
SWEEP = small_sweep_yaml(
    name="slurm",
    epochs=EPOCHS,
    resources="{workers_per_trial: 1, cpus_per_worker: 0.9, max_concurrent_trials: 2}",
    analysis="{blocks: none}",
)


def _pids_of(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if int(p) != os.getpid()]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """(environment for sbatch, seconds SLURM took to start, SLURM's folder)."""
    lacking = missing()
    if lacking:
        pytest.skip(
            f"no local SLURM: missing {', '.join(lacking)} (apt-get install slurm-wlm munge)"
        )
    t0 = time.monotonic()
    root = tmp_path_factory.mktemp("slurm")
    with local_slurm(root) as env:
        job_env = {k: v for k, v in local_env().items() if not k.startswith("RAY_AUTH")}
        job_env["SLURM_CONF"] = env["SLURM_CONF"]
        job_env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
        # Steps get only the CPUs they ask for (as with `srun --exact`, which sites make
        # the default this way): a Ray step without --cpus-per-task would get one CPU.
        job_env["SLURM_EXACT"] = "1"
        yield job_env, time.monotonic() - t0, root


def sbatch(env: dict[str, str], submit: Path, *sweep_args: str, wait: bool) -> tuple[int, str]:
    """Submit the job file as a user does, from `submit`: (sbatch's exit code, job id)."""
    out = subprocess.run(
        ["sbatch", "--parsable", f"--cpus-per-task={CPUS}", *(["--wait"] if wait else []),
         str(SBATCH), *sweep_args],
        cwd=submit, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return out.returncode, out.stdout.strip().split(";")[0]


def job_fields(env: dict[str, str], job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (empty once SLURM has forgotten the job)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True
    )
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout)) if out.returncode == 0 else {}


def ray_cpus(job_id: str) -> dict[str, str]:
    """Every process of the job's Ray (its GCS, raylet and their children: the trial
    workers) -> the CPUs it may run on (`name[pid]` -> Cpus_allowed_list)."""
    import psutil

    found = {}
    for pid in _pids_of(f"(gcs_server|raylet).*cct-ray-{job_id}"):
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                status = Path(f"/proc/{p.pid}/status").read_text()
                cpus = re.search(r"Cpus_allowed_list:\s*(\S+)", status).group(1)
                name = Path((p.cmdline() or [p.name()])[0]).name
                found[f"{name}[{p.pid}]"] = cpus
        except (psutil.Error, OSError):
            continue  # it ended meanwhile
    return found


def _count(cpu_list: str) -> int:
    n = 0
    for part in cpu_list.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def _tunnel_request(log: str, submit: Path, host: str) -> int:
    """HTTP status of an MLflow API call sent as through `ssh -L`: to the server's address,
    with the browser's Host header and the generated credentials."""
    url = re.search(r"MLflow at (http://[\d.]+:\d+)", log).group(1)
    creds = dict(
        line.split("=", 1)
        for line in (submit / ".slurm-cct" / "mlflow_credentials").read_text().split()
    )
    auth = f"{creds['MLFLOW_TRACKING_USERNAME']}:{creds['MLFLOW_TRACKING_PASSWORD']}"
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=slurm",
        headers={
            "Host": host,
            "Authorization": "Basic " + base64.b64encode(auth.encode()).decode(),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def _preempt(env, submit: Path, job_id: str, figures: dict, t0: float) -> None:
    """Wait for a checkpoint, then submit a job to the higher-priority partition: SLURM
    requeues the sweep (every step gets SIGTERM at once, SIGKILL after KillWait)."""
    wait_for(lambda: list(submit.glob("ray_results/*-train/train-*/checkpoint_*")), 600, "a ckpt")
    figures["first checkpoint after submit (s)"] = round(time.monotonic() - t0, 1)
    figures["checkpoints before preemption"] = len(
        list(submit.glob("ray_results/*-train/train-*/checkpoint_*"))
    )
    subprocess.run(
        ["sbatch", "--parsable", "-p", "urgent", "--cpus-per-task=1", "-o", "/dev/null",
         "--wrap", "sleep 1"],
        cwd=submit, env=env, check=True, capture_output=True,
    )  # fmt: skip
    t1 = time.monotonic()
    wait_for(lambda: job_fields(env, job_id).get("Restarts") == "1", 60, "the requeue")
    wait_for(lambda: not _pids_of(f"cct-ray-{job_id}"), 60, "the job's Ray to end")
    figures["preemption -> no Ray process of the job left (s)"] = round(time.monotonic() - t1, 1)
    wait_for(lambda: job_fields(env, job_id).get("JobState") == "RUNNING", 300, "the restart")
    figures["preemption -> requeued job running again (s)"] = round(time.monotonic() - t1, 1)
    figures["_t_restart"] = time.monotonic()


@pytest.fixture(scope="module")
def slurm_job(slurm, tmp_path_factory):
    import ray

    env, started, root = slurm
    # A Ray instance of "another job" on the same machine: it must outlive the SLURM job.
    # (ray.init may turn on token auth in os.environ; later tests must not inherit it.)
    saved = {k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH")}
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
    neighbour = ray.get_runtime_context().get_node_id()
    try:
        submit = tmp_path_factory.mktemp("submit")
        (submit / "sweep.yaml").write_text(SWEEP)
        t0 = time.monotonic()
        rc, job_id = sbatch(env, submit, "--config", "sweep.yaml", wait=False)
        assert rc == 0
        log = submit / f"slurm-cct-sweep-{job_id}.out"
        figures = {"SLURM up (s)": round(started, 1)}
        # While it runs: what its Ray processes may run on, and the MLflow server.
        wait_for(lambda: len(ray_cpus(job_id)) >= 3 and "MLflow at" in log.read_text(), 600, "Ray")
        wait_for(lambda: "RayTrainWorker" in str(ray_cpus(job_id)), 600, "trial workers")
        cpus = ray_cpus(job_id)
        tunnel = {h: _tunnel_request(log.read_text(), submit, h) for h in
                  ("localhost:5000", "127.0.0.1:8080", "evil.example.com")}  # fmt: skip
        _preempt(env, submit, job_id, figures, t0)
        wait_for(lambda: job_fields(env, job_id).get("JobState") == "COMPLETED"
                 or job_fields(env, job_id).get("JobState", "").startswith(("FAIL", "CANC")),
                 900, "the requeued job to end")  # fmt: skip
        figures["requeued job: start -> end (s)"] = round(
            time.monotonic() - figures.pop("_t_restart"), 1
        )
        figures["submit -> end, whole sweep (s)"] = round(time.monotonic() - t0, 1)
        print(f"SLURM ({confinement()} confinement) preemption test: {figures}")
        alive = ray.get(ray.remote(lambda: ray.get_runtime_context().get_node_id()).remote())
        yield {
            "job": job_fields(env, job_id),
            "job_id": job_id,
            "submit": submit,
            "log": log.read_text() if log.is_file() else "(no job log)",
            "slurmctld_log": (root / "slurmctld.log").read_text(),
            "cpus": cpus,
            "tunnel": tunnel,
            "neighbour_alive": alive == neighbour,
        }
    finally:
        ray.shutdown()
        for key in [k for k in os.environ if k.startswith("RAY_AUTH")]:
            del os.environ[key]
        os.environ.update(saved)


def test_the_requeued_job_finished_the_sweep(slurm_job):
    job, log = slurm_job["job"], slurm_job["log"]
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log[-5000:]
    assert job["Restarts"] == "1"
    assert f"preempted JobId={slurm_job['job_id']} has been requeued" in slurm_job["slurmctld_log"]
    assert log.count(f"cct-sweep: job {slurm_job['job_id']} starts") == 2, log[-5000:]
    assert "Resuming sweep 'slurm'" in log, log[-5000:]
    assert "Best trials of sweep 'slurm' (2 finished, 0 errored)" in log, log[-5000:]


def test_every_ray_process_holds_the_cpus_ray_is_told(slurm_job):
    # gcs_server, raylet and the trial workers: confined to the job's CPUs by SLURM, and as
    # many as --num-cpus says (a Ray step without --cpus-per-task gets one CPU here).
    cpus = slurm_job["cpus"]
    assert any("raylet" in name for name in cpus), cpus
    assert {name: _count(c) for name, c in cpus.items()} == {name: CPUS for name in cpus}, cpus


def test_every_trial_and_epoch_in_mlflow_once(slurm_job):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{slurm_job['submit'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("slurm")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=50)
    assert len(runs) == 2, [r.data.tags.get("trial_id") for r in runs]
    assert len({r.data.tags["trial_id"] for r in runs}) == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all("test_accuracy" in r.data.metrics for r in runs)
    for run in runs:  # every epoch once, across the preempted and the requeued run
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), steps


def test_mlflow_answers_through_an_ssh_tunnel(slurm_job):
    # `ssh -L 5000:<head ip>:<port>`: the browser sends Host: localhost:5000 (any local port)
    tunnel = slurm_job["tunnel"]
    assert tunnel["localhost:5000"] == 200 and tunnel["127.0.0.1:8080"] == 200, tunnel
    assert tunnel["evil.example.com"] == 403, tunnel  # the Host check itself is still on


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
    # Ray's port is the job's own block, outside the kernel's ephemeral range: below it or
    # above it, as the job id picks (CI's job 3423273 got 62000, above Debian's 60999).
    port = int(re.search(r"Ray at [\d.]+:(\d+)", slurm_job["log"]).group(1))
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert 20000 <= port <= 65535 - 199 and port % 200 == 0
    assert port + 200 <= low or port > high, (port, low, high)


def test_the_job_stopped_only_its_own_ray(slurm_job):
    assert slurm_job["neighbour_alive"]  # the test's own Ray instance still runs tasks
    assert _pids_of(f"cct-ray-{slurm_job['job_id']}") == []
    assert not Path(f"/tmp/cct-ray-{slurm_job['job_id']}").exists()


def node_script(tmp_path: Path) -> Path:
    """The node-side script sweep.sbatch writes for srun (its `NODE` here-document)."""
    text = re.search(r"<< 'NODE'\n(.*?)\nNODE\n", SBATCH.read_text(), re.S).group(1)
    path = tmp_path / "ray-node.sh"
    path.write_text(text)
    return path


def test_two_jobs_starting_together_get_different_port_blocks(tmp_path):
    # Two jobs that pick the same first block (the same id here: with JOB % 180, ids 180
    # apart did): the second must take another block while the first holds its own.
    script = node_script(tmp_path)
    env = {**os.environ, "SLURM_JOB_ID": "7"}
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    first = subprocess.Popen(
        ["bash", str(script), "reserve", "30"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        base1 = int(first.stdout.readline())
        second = subprocess.run(
            ["bash", str(script), "reserve"], env=env, capture_output=True, text=True, timeout=60
        )
        base2 = int(second.stdout)
    finally:
        first.kill()
        first.wait()
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert base1 != base2
    for base in (base1, base2):  # outside the ephemeral range, whole block
        assert 20000 <= base <= 65535 - 199 and (base + 200 <= low or base > high), base


def _squeue_empty(env: dict[str, str], job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id], env=env, capture_output=True, text=True)
    return not out.stdout.strip()


@pytest.mark.skipif(
    os.environ.get("CCT_SLURM_PREEMPT") != "1",
    reason="two more SLURM jobs (~3 min on 2 cores, beyond the suite's budget): set "
    "CCT_SLURM_PREEMPT=1 to run it",
)
def test_the_time_limit_signal_stops_cleanly_and_the_same_command_resumes(slurm, tmp_path):
    # --signal=B:TERM@180 before the time limit: only the batch shell gets SIGTERM; the trap
    # forwards it to the driver, which marks its runs interrupted and exits 143.
    env, _, _ = slurm
    (tmp_path / "sweep.yaml").write_text(SWEEP.replace(f"epochs: {EPOCHS}", "epochs: 12"))
    rc, job_id = sbatch(env, tmp_path, "--config", "sweep.yaml", wait=False)
    assert rc == 0
    log = tmp_path / f"slurm-cct-sweep-{job_id}.out"
    wait_for(
        lambda: list(tmp_path.glob("ray_results/*-train/train-*/checkpoint_*")), 600, "a checkpoint"
    )
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
