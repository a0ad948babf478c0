"""A one-node SLURM on this machine for tests: munged, slurmctld and slurmd with every
state file, socket and log in one folder, on free ports, so nothing outside it is touched
(no /etc/slurm, no system munge socket). `python -m tests.slurm_cluster DIR` starts one by
hand and prints the SLURM_CONF to export.

Like a production cluster it confines every task to the CPUs it was given (cgroup v1
cpusets, `task/cgroup` with `ConstrainCores=yes`; CPU affinity, `task/affinity`, where the
cgroup v1 cpuset and freezer hierarchies are not writable), so a step that asks for fewer
CPUs than the Ray it starts is told shows in that step's CPU list. It preempts as sites do:
a job in the `urgent` partition requeues what runs in `debug` (`PreemptMode=REQUEUE`)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo")
MUNGE_KEY = Path("/etc/munge/munge.key")  # the package makes one; we copy it


def missing() -> list[str]:
    """What this machine lacks to run a local SLURM (empty: it can)."""
    gone = [d for d in DAEMONS if shutil.which(d) is None]
    if os.geteuid() != 0:
        gone.append("root (slurmd runs jobs as their user)")
    return gone


CGROUP_V1 = Path("/sys/fs/cgroup")


def cgroup_v1_writable() -> bool:
    """Whether slurmd can confine tasks with cgroup v1 here: the cpuset and freezer
    hierarchies mounted as v1 and writable by us."""
    for controller in ("cpuset", "freezer"):
        folder = CGROUP_V1 / controller
        if not (folder / "cgroup.procs").is_file() or not os.access(folder, os.W_OK):
            return False
    return True


def confinement() -> str:
    """How the test SLURM binds tasks to their CPUs: "cgroup" or "affinity"."""
    return "cgroup" if cgroup_v1_writable() else "affinity"


def _node_line() -> str:
    # slurmd's own reading of the machine (CPUs, sockets, cores, RealMemory): a node that
    # claims more than it has is drained at registration.
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True)
    line = out.stdout.splitlines()[0]
    host = socket.gethostname()
    return f"NodeName={host} " + line.split(" ", 1)[1] + " State=UNKNOWN"


def _confinement_lines(root: Path) -> list[str]:
    if confinement() == "affinity":
        # No writable cgroup v1 here: CPU affinity alone, processes tracked by parent.
        return ["ProctrackType=proctrack/linuxproc", "TaskPlugin=task/affinity"]
    (root / "cgroup.conf").write_text(
        "CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\nConstrainCores=yes\n"
    )
    return ["ProctrackType=proctrack/cgroup", "TaskPlugin=task/cgroup,task/affinity"]


def write_conf(root: Path) -> Path:
    """slurm.conf (and cgroup.conf) under `root`."""
    munge_socket = root / "munge" / "munge.socket"
    host = socket.gethostname()
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=cct-test",
                f"SlurmctldHost={host}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={free_port()}",
                f"SlurmdPort={free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                # cred_expire: a requeued job may start again this many seconds after it
                # was stopped (Slurm's default, 1200 s, would hold the preemption test)
                f"AuthInfo=socket={munge_socket},cred_expire=10",
                # Job ids (and so cgroup paths, /sys/fs/cgroup/*/slurm/uid_0/job_<id>) of
                # two test SLURMs on one machine must differ.
                f"FirstJobId={random.randrange(10_000, 5_000_000)}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'slurmd.log'}",
                *_confinement_lines(root),
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "SchedulerType=sched/backfill",
                "SchedulerParameters=sched_interval=2,bf_interval=2",
                "PreemptType=preempt/partition_prio",
                "PreemptMode=REQUEUE",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "MpiDefault=none",
                "ReturnToService=2",
                "KillWait=15",  # SIGTERM to SIGKILL when a job is stopped (default 30)
                "SlurmdTimeout=60",
                _node_line(),
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
                " PriorityTier=1",
                "PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2",
                "",
            ]
        )
    )
    return conf


def _start_munge(root: Path) -> subprocess.Popen:
    d = root / "munge"
    d.mkdir(mode=0o700)
    key = d / "munge.key"
    shutil.copyfile(MUNGE_KEY, key)
    key.chmod(0o600)
    return subprocess.Popen(
        ["munged", "--foreground", "--force", f"--socket={d / 'munge.socket'}",
         f"--key-file={key}", f"--pid-file={d / 'munged.pid'}",
         f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'munged.seed'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _wait(predicate, timeout: float, what: str, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        dead = [p.args[0] for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}")
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def _node_idle(env: dict[str, str]) -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() in ("idle", "mix")


def _cancel_all_jobs(env: dict[str, str], procs: list[subprocess.Popen]) -> None:
    """Jobs still running when the test ends (a failed wait): cancel them and let slurmd
    kill their processes; stopped first, slurmd would leave them running, orphaned."""
    if len(procs) < 3 or any(p.poll() is not None for p in procs):
        return
    out = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True)
    jobs = out.stdout.split()
    if not jobs:
        return
    subprocess.run(["scancel", *jobs], env=env, capture_output=True)
    deadline = time.monotonic() + 60  # KillWait, then slurmd's SIGKILL
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True)
        if not out.stdout.strip():
            return
        time.sleep(1)


@contextmanager
def local_slurm(root: Path) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd under `root`; yield the environment for SLURM's
    clients (SLURM_CONF). Every daemon is stopped by its own process id afterwards."""
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True)
    conf = write_conf(root)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start_munge(root))
        _wait(lambda: (root / "munge" / "munge.socket").exists(), 30, "munged", procs)
        for daemon in ("slurmctld", "slurmd"):
            log = (root / f"{daemon}.out").open("w")
            procs.append(
                subprocess.Popen(
                    [daemon, "-D", "-f", str(conf)] + (["-i"] if daemon == "slurmctld" else []),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            )
        _wait(lambda: _node_idle(env), 60, "the SLURM node to be idle", procs)
        yield env
    finally:
        _cancel_all_jobs(env, procs)
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    signal.signal(signal.SIGTERM, _interrupt)  # `kill <pid>` stops the daemons too
    with local_slurm(folder) as slurm_env:
        print(
            f"export SLURM_CONF={slurm_env['SLURM_CONF']}  # Ctrl-C (or kill) stops it", flush=True
        )
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
