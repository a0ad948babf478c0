"""A one-node SLURM on this machine for tests: munged, slurmctld and slurmd with every
state file, socket and log in one folder, on free ports, so nothing outside it is touched
(no /etc/slurm, no system munge socket). `python -m tests.slurm_cluster DIR` starts one by
hand and prints the SLURM_CONF to export."""

from __future__ import annotations

import os
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


def _node_line() -> str:
    # slurmd's own reading of the machine (CPUs, sockets, cores, RealMemory): a node that
    # claims more than it has is drained at registration.
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True)
    line = out.stdout.splitlines()[0]
    host = socket.gethostname()
    return f"NodeName={host} " + line.split(" ", 1)[1] + " State=UNKNOWN"


def write_conf(root: Path) -> Path:
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
                f"AuthInfo=socket={munge_socket}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'slurmd.log'}",
                # No cgroups in a container: track a job's processes by their parents.
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "SchedulerType=sched/backfill",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "MpiDefault=none",
                "ReturnToService=2",
                "KillWait=30",
                "SlurmdTimeout=60",
                _node_line(),
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
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
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    with local_slurm(folder) as slurm_env:
        print(f"export SLURM_CONF={slurm_env['SLURM_CONF']}  # Ctrl-C stops it", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
