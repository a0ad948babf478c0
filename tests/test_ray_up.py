"""`ray up` for real: deploy/onprem/cluster.yaml through deploy/up.sh, Ray's own launcher and
its SSH command runner, onto this machine as a throwaway unprivileged user.

The test starts an sshd on loopback (a free port, reached through the file's
`ssh_proxy_command` with nc: Ray's auth has no port field), with a throwaway host key and a
throwaway client key for a user it creates. `ray up -y` runs the file's own initialization,
setup (reusing this test's Python environment, as a lab reuses one on its shared filesystem)
and start commands (deploy/head/start.sh: Ray with token authentication, MLflow with basic
authentication). Then a shortened quickstart runs on the cluster as the README says
(`ray exec ... 'cd ~/cct && python -m orchestrator.sweep ... --address auto'`), a job goes
through the Jobs API, the trials are found in the head's MLflow, and `ray down` ends it; its
`ray stop` runs as that user, so it stops that user's Ray only. Head only: a worker on a
second loopback address would share this host, its ports and its `ray stop`.

It skips, saying why, without root (to create the user), sshd, rsync or nc. Everything it
started is stopped by process id, and the user is removed.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
EPOCHS = 2
SWEEP = (
    "cd ~/cct && python -m orchestrator.sweep --config search_spaces/quickstart.yaml "
    f"--address auto --set optim.epochs={EPOCHS} --set analysis.blocks=none"
)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root, to create a throwaway unprivileged user"
    for tool in ("useradd", "userdel", "ssh", "ssh-keygen", "rsync", "nc", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs openssh-server, rsync, netcat)"
    if not os.access(SSHD, os.X_OK):
        return "sshd is not installed (Debian: openssh-server)"
    return None


def _run(cmd: list[str], env: dict, timeout: float, log: list) -> str:
    """Run a local command (as a user runs it on a laptop), with each line's time kept."""
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            log.append((time.monotonic() - start, line.rstrip()))
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, f"{' '.join(cmd[:3])} exited {proc.returncode}:\n{out[-6000:]}"
    return out


def _cluster_file(base: Path, user: str, home: Path, ports: dict[str, int]) -> Path:
    """The on-prem file with this machine's values where a lab puts its own: nothing else."""
    config = yaml.safe_load((ROOT / "deploy/onprem/cluster.yaml").read_text())
    config["cluster_name"] = f"cct-test-{os.getpid()}"
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {
        "ssh_user": user,
        "ssh_private_key": str(base / "key"),
        "ssh_proxy_command": f"nc 127.0.0.1 {ports['ssh']}",
    }
    settings = {
        # the head's "private address": another loopback address, so that MLflow listens on
        # it and on 127.0.0.1 (a port-forward's end) as on a real head
        "CCT_HEAD_ADDRESS": "127.0.0.2",
        "CCT_STORAGE_PATH": f"{home}/shared/ray_results",
        "CCT_PYTHON_ENV": sys.prefix,
        "CCT_RAY_PORT": str(ports["ray"]),
        "CCT_DASHBOARD_PORT": str(ports["dashboard"]),
        "CCT_MLFLOW_PORT": str(ports["mlflow"]),
    }
    extra = (
        f"--ray-client-server-port={ports['client']} "
        f"--dashboard-agent-listen-port={ports['agent']} --num-cpus=2"
    )
    env_cmd = config["setup_commands"][0]
    for key, value in settings.items():
        env_cmd, n = re.subn(rf"{key}=\S+?(?=[ '])", f"{key}={value}", env_cmd)
        assert n == 1, key
    # inside printf's single-quoted argument: the value in double quotes
    env_cmd, n = re.subn(r"CCT_RAY_START_ARGS=(?=')", f'CCT_RAY_START_ARGS="{extra}"', env_cmd)
    assert n == 1
    config["setup_commands"][0] = env_cmd
    path = base / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _start_sshd(base: Path, user: str, home: Path, port: int) -> subprocess.Popen:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", base / "hostkey"], check=True
    )
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", base / "key"], check=True)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text((base / "key.pub").read_text())
    shutil.chown(ssh_dir, user, user)
    shutil.chown(ssh_dir / "authorized_keys", user, user)
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'hostkey'}\n"
        f"PidFile {base / 'sshd.pid'}\nAllowUsers {user}\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin no\nX11Forwarding no\nAllowTcpForwarding yes\nMaxSessions 50\n"
        "MaxStartups 50\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    # sshd, and so every session of the user, in a mount namespace of its own where the
    # folders on the way to this test's Python are passable (see _passable)
    script = "set -e\n" + _passable(base) + f"exec {SSHD} -D -e -f {config}\n"
    sshd = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stdout=open(base / "sshd.log", "w"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(100):
        try:
            import socket

            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return sshd
        except OSError:
            time.sleep(0.1)
    sshd.kill()
    pytest.fail(f"sshd did not listen: {(base / 'sshd.log').read_text()}")


def _passable(base: Path) -> str:
    """Shell lines that make this test's Python reachable for the throwaway user, inside the
    namespace only: a folder on its way that others may not enter (pyenv under a 0700
    /root) becomes an empty 0755 tmpfs holding just the next folder of the way. The real
    folders and their modes are untouched; nothing of this outlives sshd."""
    lines = []
    for target in {Path(os.path.realpath(sys.executable)), Path(sys.prefix).resolve()}:
        for parent in reversed(target.parents):
            if parent == Path("/") or os.stat(parent).st_mode & 0o001:
                continue
            child = target.relative_to(parent).parts[0]
            stash = base / f"stash-{len(lines)}"
            stash.mkdir()
            lines += [f"mount --bind {parent / child} {stash}",
                      f"mount -t tmpfs -o mode=755 tmpfs {parent}",
                      f"mkdir {parent / child}", f"mount --bind {stash} {parent / child}"]  # fmt: skip
            break
    return "".join(line + "\n" for line in lines)


def _user_processes(uid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = _missing()
    if why:
        pytest.skip(why)
    base = tmp_path_factory.mktemp("rayup")
    # a SIGTERM (CI's timeout) still runs the cleanup below: the user and its processes go
    old_handler = signal.signal(signal.SIGTERM, _interrupt)
    user = f"cctup{os.getpid() % 100000}"
    home = Path(f"/tmp/{user}")
    subprocess.run(["useradd", "-m", "-d", str(home), "-s", "/bin/bash", user], check=True)
    uid = pwd.getpwnam(user).pw_uid
    state: dict = {"base": base, "user": user, "home": home, "log": [], "up": False}
    sshd = None
    try:
        # no password at all ('*'), rather than a locked account, which sshd refuses a key
        subprocess.run(["usermod", "-p", "*", user], check=True)
        ports = {k: free_port() for k in ("ssh", "ray", "dashboard", "mlflow", "client", "agent")}
        local_home = base / "home"
        local_home.mkdir()
        env = {
            **{
                k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "CCT_"))
            },
            "HOME": str(local_home),  # your machine's ~/.ray/auth_token and ~/.cct, not root's
            "RAY_TMPDIR": str(base / "rt"),  # the launcher's state file of the local provider
            "PATH": f"{sys.prefix}/bin:{os.environ['PATH']}",
        }
        sshd = _start_sshd(base, user, home, ports["ssh"])
        path = _cluster_file(base, user, home, ports)
        state.update(ports=ports, env=env, path=path)
        t0 = time.monotonic()
        state["up_out"] = _run([str(ROOT / "deploy/up.sh"), str(path), "-y", "--no-config-cache"],
                               env, 600, state["log"])  # fmt: skip
        state["up_s"] = time.monotonic() - t0
        state["provenance"] = json.loads((ROOT / "deploy/provenance/provenance.json").read_text())
        state["up"] = True
        yield state
    finally:
        if state["up"]:
            _down(state)
        if state.get("set_credentials"):  # set for this test's MLflow client only
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(key, None)
        if sshd is not None:
            sshd.terminate()
            sshd.wait(timeout=10)
        for pid in _user_processes(uid):  # what Ray or MLflow left of that user's, by id
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        subprocess.run(["userdel", "-r", "-f", user], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
        for left in (f"/tmp/ray-{user}", f"/tmp/torchinductor_{user}"):  # Ray's, torch's
            shutil.rmtree(left, ignore_errors=True)
        signal.signal(signal.SIGTERM, old_handler)


def _down(state: dict) -> None:
    """As the README says: MLflow off, then `ray down` (this user's Ray, by its `ray stop`)."""
    down_log: list = []
    t0 = time.monotonic()
    kill_mlflow = "kill -TERM -- -$(cat ~/.cct/mlflow.pid)"
    try:
        _run(["ray", "exec", str(state["path"]), kill_mlflow], state["env"], 120, down_log)
    finally:
        try:
            _run(["ray", "down", "-y", str(state["path"])], state["env"], 120, down_log)
        finally:
            state["down_s"] = time.monotonic() - t0
            _timeline(state, down_log)


def _timeline(state: dict, down_log: list) -> None:
    """Printed with -s: when ray up reached each of its steps, the sweep and ray down."""
    marks = {"sync": "Processing file mounts", "setup": "Running setup commands",
             "start": "Starting the Ray runtime"}  # fmt: skip
    seen = {k: next((t for t, line in state["log"] if m in line), None) for k, m in marks.items()}
    print(f"\nray up timeline: {seen}, up {state.get('up_s', 0):.0f} s; "
          f"sweep {state.get('sweep_s', 0):.0f} s (first trial result at "
          f"{state.get('first_trial_s')}); ray down {state.get('down_s', 0):.0f} s")  # fmt: skip


def _exec(state: dict, command: str, timeout: float = 400) -> str:
    return _run(["ray", "exec", str(state["path"]), command], state["env"], timeout, state["log"])


def test_ray_up_started_ray_and_mlflow_on_the_head(cluster):
    out = cluster["up_out"]
    assert "MLflow is up at http://127.0.0.2:" in out
    status = _exec(cluster, "ray status")
    assert "Active:" in status
    # the secrets are readable by the cluster's user only
    modes = _exec(cluster, "stat -c '%a %n' ~/.ray/auth_token ~/.cct/mlflow_credentials")
    assert re.findall(r"^(\d+) ", modes, re.M) == ["600", "600"], modes


def test_a_shortened_quickstart_runs_on_the_cluster(cluster):
    t0 = time.monotonic()
    out = _exec(cluster, SWEEP)
    cluster["sweep_s"] = time.monotonic() - t0
    assert "Starting sweep 'quickstart'" in out, out[-3000:]
    client = _mlflow(cluster)
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id], max_results=50)
    sweeps = [r for r in runs if r.data.tags.get("role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert len(sweeps) == 1 and len(trials) == 4, [r.data.tags for r in runs]
    assert all(r.info.status == "FINISHED" for r in trials), [r.info.status for r in trials]
    assert all(r.data.metrics.get("val_accuracy") is not None for r in trials)
    # the timeline: from the sweep run's start to the first trial's end
    first = min(r.info.end_time for r in trials) - sweeps[0].info.start_time
    cluster["first_trial_s"] = round(first / 1000, 1)
    # the commit reached the cluster without .git: from the file deploy/up.sh wrote
    tags = sweeps[0].data.tags
    assert tags["git_provenance"] == "file", tags
    assert tags["git_commit"] == cluster["provenance"]["commit"]
    assert tags["git_dirty"] == str(cluster["provenance"]["dirty"]).lower()
    # the study is kept with the checkpoints, in the shared storage
    journals = list((cluster["home"] / "shared/ray_results").glob("*-optuna/*.journal"))
    assert journals, list((cluster["home"] / "shared/ray_results").iterdir())


def test_the_jobs_api_runs_the_readmes_command(cluster):
    port = cluster["ports"]["dashboard"]
    out = _exec(
        cluster,
        f"RAY_ADDRESS=http://127.0.0.1:{port} ray job submit -- "
        "bash -c 'cd ~/cct && python -m cct.provenance'",
        timeout=200,
    )
    assert '"source": "file"' in out, out[-3000:]


def test_a_resume_on_a_head_that_lost_the_study_continues_it(cluster):
    # the driver's optuna/ folder gone (as on a new head): the same command resumes, and the
    # study comes back from the storage with every trial
    out = _exec(cluster, f"rm -rf ~/cct/optuna && {SWEEP}")
    assert "Resuming sweep 'quickstart'" in out, out[-3000:]
    assert "Restored the sweep's Optuna study from" in out, out[-3000:]
    count = _exec(
        cluster,
        'cd ~/cct && python -c "import optuna; s = optuna.storages.JournalStorage('
        "optuna.storages.journal.JournalFileBackend('optuna/quickstart.journal')); "
        "print('trials:', sum(len(optuna.load_study(study_name=x.study_name, storage=s).trials)"
        ' for x in optuna.get_all_study_summaries(s)))"',
    )
    assert "trials: 4" in count, count[-2000:]


def _mlflow(state: dict):
    from mlflow.tracking import MlflowClient

    creds = dict(
        line.split("=", 1)
        for line in (state["base"] / "home/.cct/mlflow_credentials").read_text().split()
    )
    state["set_credentials"] = True
    os.environ.update(creds)  # the MLflow client reads them from the environment
    return MlflowClient(f"http://127.0.0.1:{state['ports']['mlflow']}")
