"""deploy/kuberay/rayjob.yaml's entrypoint as KubeRay v1.6.2 runs it: the submitter Job's
container runs `/bin/bash -ce -- "<ray job status> ; then ray job submit ... -- <entrypoint>
; fi ; ray job logs --follow ..."` with the entrypoint pasted in unquoted
(tests/kuberay.py: submitter_command). First with a stand-in `ray` that records what the
shell hands it, then for real: against a local Ray head this test starts (`ray start --head
--block` with the manifest's rayStartParams and token auth, as the head pod runs it) and
stops by its process id, with a two-trial sweep file in place of the manifest's: the sweep
itself must have run as the Ray job, not in the submitter."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, local_env, small_sweep_yaml, wait_for
from tests.kuberay import submitter_command

ROOT = Path(__file__).resolve().parents[1]
RAYJOB = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayjob.yaml").read_text())
JOB_ID = "cct-sweep-cifar100-lsmha-x7k2p"  # KubeRay: the RayJob's name and a random suffix
SWEEP = small_sweep_yaml(
    name="rayjob",
    epochs=1,
    resources="{workers_per_trial: 1, cpus_per_worker: 0.45, max_concurrent_trials: 2}",
    analysis="{blocks: none}",
)
# The stand-in: records each call's arguments, one JSON list per line; `ray job status`
# fails, as it does for a job not yet submitted.
FAKE = """#!/bin/sh
"{python}" -c 'import json, sys; print(json.dumps(sys.argv[2:]), file=open(sys.argv[1], "a"))' \
  "{log}" "$(basename "$0")" "$@"
[ "$1 $2" != "job status" ]
"""


def _with_entrypoint(entrypoint: str) -> dict:
    job = json.loads(json.dumps(RAYJOB))
    job["spec"]["entrypoint"] = entrypoint
    return job


def _recorded_calls(tmp_path: Path, job: dict) -> list[list[str]]:
    """Run the submitter's command with stand-ins for `ray` and `python`: what they got."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    for name in ("ray", "python"):
        (bin_dir / name).write_text(FAKE.format(python=sys.executable, log=log))
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    cmd = submitter_command(job, JOB_ID, "cct-sweep-head-svc.default.svc.cluster.local:8265")
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, timeout=60)
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_the_submitter_hands_ray_the_whole_entrypoint(tmp_path):
    calls = _recorded_calls(tmp_path, RAYJOB)
    assert [c[:3] for c in calls] == [["ray", "job", "status"], ["ray", "job", "submit"],
                                      ["ray", "job", "logs"]]  # fmt: skip
    submit = calls[1]
    assert submit[submit.index("--") + 1 :] == shlex.split(RAYJOB["spec"]["entrypoint"])


def test_the_old_entrypoint_ran_the_sweep_in_the_submitter(tmp_path):
    # What the review found: `cd ... && python ...` became the Ray job `cd /home/ray/cct`,
    # and the sweep ran in the submitter pod (here: the stand-in `python` was called).
    old = "cd /home/ray/cct &&\npython -m orchestrator.sweep --config x.yaml --address auto"
    calls = _recorded_calls(tmp_path, _with_entrypoint(old))
    submit = calls[1]
    assert submit[submit.index("--") + 1 :] == ["cd", "/home/ray/cct"]
    assert ["python", "-m", "orchestrator.sweep", "--config", "x.yaml", "--address", "auto"] in [
        c for c in calls
    ]


def _head_command(ports: dict[str, int], temp_dir: str) -> list[str]:
    """`ray start --head --block` with the manifest's rayStartParams, as KubeRay's
    generateRayStartCommand writes them, on ports of this test's own."""
    params = RAYJOB["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    return [
        "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        *(f"--{k}={v}" for k, v in params.items()),
        "--num-cpus=2", f"--port={ports['gcs']}", f"--dashboard-port={ports['dashboard']}",
        "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={ports['agent']}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip


def _healthz(port: int) -> int:
    """The readiness probe KubeRay 1.6.2 gives Ray >= 2.53 pods: GET /api/healthz on the
    dashboard agent's listen port, without any token (the kubelet has none)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/healthz", timeout=5) as r:
            return r.status
    except OSError:
        return 0


JOB_INFO = """
import json, sys
from ray.job_submission import JobSubmissionClient
client = JobSubmissionClient(sys.argv[1])
info = client.get_job_info(sys.argv[2])
print(json.dumps({"status": str(info.status), "entrypoint": info.entrypoint,
                  "logs": client.get_job_logs(sys.argv[2])}))
"""


@pytest.fixture(scope="module")
def ray_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("rayjob")
    (root / "sweep.yaml").write_text(SWEEP)
    for sub in ("head", "submitter"):
        (root / sub).mkdir()
    ports = {k: free_port() for k in ("gcs", "dashboard", "agent")}
    token = os.urandom(32).hex()
    base = {k: v for k, v in local_env().items() if not k.startswith("RAY_AUTH")}
    base["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}  # what KubeRay gives each pod
    head_env = {**base, **auth, "NVIDIA_VISIBLE_DEVICES": "void",
                "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
                "CCT_STORAGE_PATH": str(root / "ray_results")}  # fmt: skip
    temp_dir = tempfile.mkdtemp(prefix="cct-rj-")  # short: Ray's socket paths are limited
    head = subprocess.Popen(
        _head_command(ports, temp_dir), cwd=root / "head", env=head_env,
        stdout=(root / "head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: _healthz(ports["agent"]) == 200, 120, "the head's readiness probe", head)
        # The manifest's entrypoint, unchanged but for the sweep file (the image's path).
        entrypoint = RAYJOB["spec"]["entrypoint"]
        config = shlex.split(entrypoint)[shlex.split(entrypoint).index("--config") + 1]
        job = _with_entrypoint(entrypoint.replace(config, str(root / "sweep.yaml")))
        dashboard = f"127.0.0.1:{ports['dashboard']}"
        submitter = subprocess.run(
            submitter_command(job, JOB_ID, dashboard), cwd=root / "submitter",
            env={**base, **auth, "PYTHONUNBUFFERED": "1", "RAY_DASHBOARD_ADDRESS": dashboard,
                 "RAY_JOB_SUBMISSION_ID": JOB_ID},
            capture_output=True, text=True, timeout=480,
        )  # fmt: skip
        info = subprocess.run(
            [sys.executable, "-c", JOB_INFO, f"http://{dashboard}", JOB_ID],
            env={**base, **auth}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        yield {
            "root": root,
            "entrypoint": job["spec"]["entrypoint"].strip(),
            "submitter": submitter,
            "job": json.loads(info.stdout) if info.returncode == 0 else {"error": info.stderr},
        }
    finally:
        if head.poll() is None:
            head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
            try:
                head.wait(15)  # (its graceful stop can take 30 s; the rest is killed below)
            except subprocess.TimeoutExpired:
                head.kill()
                head.wait(10)
        try:  # whatever of that instance is left (its own process group)
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        subprocess.run(["rm", "-rf", temp_dir], check=False)


@pytest.mark.slow
def test_the_sweep_ran_as_the_ray_job(ray_job):
    job, submitter = ray_job["job"], ray_job["submitter"]
    assert submitter.returncode == 0, submitter.stdout[-3000:] + submitter.stderr[-3000:]
    assert job.get("status") == "SUCCEEDED", job
    assert job["entrypoint"] == ray_job["entrypoint"]  # the whole command, not `cd ...`
    final = "Best trials of sweep 'rayjob' (2 finished, 0 errored)"
    assert final in job["logs"], job["logs"][-3000:]
    assert final in submitter.stdout  # followed by `ray job logs --follow`


@pytest.mark.slow
def test_the_ray_jobs_trials_are_in_mlflow(ray_job):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{ray_job['root'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rayjob")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'trial'", max_results=50)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
