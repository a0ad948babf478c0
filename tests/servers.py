"""Throwaway servers on loopback for the tests that need a lab's real stores: PostgreSQL (run
as the `postgres` user from Debian's binaries: initdb refuses root), moto's S3 server, and an
MLflow tracking server on both (PostgreSQL backend, artifacts proxied to the bucket).

`lab_stores()` starts all three once per session (tests/test_pg_s3.py's fixture); each part
says why it cannot start (`missing()`), so a test skips naming what to install. Every server
is this session's own process, stopped by its process id."""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port, wait_for

PG_ROOT = Path("/usr/lib/postgresql")
REGION = "us-east-1"  # any region: moto accepts it, and every client names it explicitly


def pg_bin() -> Path | None:
    """The newest PostgreSQL server binaries Debian's `postgresql` package installed."""
    found = sorted(PG_ROOT.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def missing() -> str | None:
    """Why the lab stores cannot start here (None: they can)."""
    if pg_bin() is None:
        return f"no PostgreSQL server binaries under {PG_ROOT} (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run initdb as"
    for module in ("moto", "psycopg", "boto3"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[dev]')"
    return None


@dataclass(frozen=True)
class LabStores:
    """Where the servers listen, and the environment a sweep or a reader needs for them."""

    pg_url: str  # postgresql+psycopg://cct:<password>@127.0.0.1:<port>/mlflow
    s3_endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    tracking_uri: str  # http://127.0.0.1:<port>, the MLflow server

    def env(self) -> dict[str, str]:
        """What a lab exports to point a sweep at its S3-compatible store and MLflow server."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "AWS_ENDPOINT_URL": self.s3_endpoint,  # pyarrow (Ray's storage) and boto3
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,  # MLflow's S3 artifact store
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
        }

    def s3(self):
        """A boto3 client of the bucket's store."""
        import boto3  # deferred: a dev-extra import, only where a test asks for the client

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under `prefix`."""
        pages = (
            self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres() -> Iterator[str]:
    """A fresh PostgreSQL cluster on a loopback port with database `mlflow` owned by the
    password-authenticated user `cct`; yields its URL. Its data folder (owned by the user
    that runs it) is removed at the end."""
    bin_ = pg_bin()
    root = Path(tempfile.mkdtemp(prefix="cct-pg-"))  # not under pytest's 0700 tmp folders
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port, password = root / "data", free_port(), secrets.token_hex(16)
    (root / "pw").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(root / "pw", "postgres", "postgres")
    run = lambda *cmd: subprocess.run(_as_postgres([*cmd]), check=True, capture_output=True)  # noqa: E731
    try:
        run(str(bin_ / "initdb"), "-D", str(data), "-U", "postgres", "-A", "scram-sha-256",
            f"--pwfile={root / 'pw'}", "--no-sync")  # fmt: skip
        run(str(bin_ / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start",
            "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off")  # fmt: skip
        env = {**os.environ, "PGPASSWORD": password}
        for statement in (f"CREATE USER cct CREATEDB PASSWORD '{password}'",
                          "CREATE DATABASE mlflow OWNER cct"):  # fmt: skip
            subprocess.run(
                _as_postgres([str(bin_ / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U",
                              "postgres", "-d", "postgres", "-c", statement]),
                check=True, capture_output=True, env=env,
            )  # fmt: skip
        yield f"postgresql+psycopg://cct:{password}@127.0.0.1:{port}/mlflow"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_postgres([str(bin_ / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                         "-w", "stop"]), capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def _server(cmd: list[str], log: Path, url: str, env: dict[str, str]) -> Iterator[None]:
    """A server process in its own session, up once `url` answers, stopped at the end."""
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # fmt: skip

    def answers() -> bool:
        try:
            urllib.request.urlopen(url, timeout=2)
            return True
        except OSError:
            return False

    try:
        try:
            wait_for(answers, 120, f"{cmd[2]} at {url}", proc)
        except AssertionError as e:
            raise AssertionError(f"{e}; its log:\n{log.read_text()[-3000:]}") from None
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


@contextmanager
def lab_stores(logs: Path) -> Iterator[LabStores]:
    """PostgreSQL, moto's S3 server with a bucket, and an MLflow server on both: its runs in
    PostgreSQL, its artifacts proxied to s3://<bucket>/mlflow (clients need no S3 access for
    MLflow; Ray's checkpoints go to the bucket directly)."""
    s3_port, mlflow_port = free_port(), free_port()
    s3_endpoint = f"http://127.0.0.1:{s3_port}"
    with postgres() as pg_url:
        stores = LabStores(pg_url, s3_endpoint, "cct-lab", f"http://127.0.0.1:{mlflow_port}")
        env = {**os.environ, **stores.env()}
        env.pop("MLFLOW_TRACKING_URI")
        moto = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)]
        with _server(moto, logs / "moto.log", f"{s3_endpoint}/moto-api/", env):
            stores.s3().create_bucket(Bucket=stores.bucket)
            # the database's URL in the environment, as the clusters pass it: never in argv
            env["MLFLOW_BACKEND_STORE_URI"] = pg_url
            env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # as deploy/ starts it
            mlflow = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                      "--port", str(mlflow_port), "--workers", "1",
                      "--artifacts-destination", f"s3://{stores.bucket}/mlflow"]  # fmt: skip
            started = time.monotonic()
            with _server(mlflow, logs / "mlflow.log", f"{stores.tracking_uri}/health", env):
                print(f"lab stores up; MLflow on PostgreSQL in {time.monotonic() - started:.1f} s")
                yield stores
